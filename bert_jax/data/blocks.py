"""The Python half of the pretraining pipeline (bert_jax/data/pipeline.py): this host's items in numbered blocks.

    FileShard / TfdsShard   which files (or which slice of a TFDS split) this host reads, from a Position on
    Position                where reading resumes: epoch, file in the epoch's order, byte offset, ordinal
    BlockSource             items grouped into numbered blocks (the unit of shuffling, pairing and
                            resumption), the generator tf.data reads, and the pairing of a tokenized block
    ExitGuard               lets a process exit while tf.data still runs these Python stages

Every `spec` here is a resolved bert_jax.data.pipeline.PipelineSpec (files expanded, host filled in); this
module reads its fields and imports nothing of the pipeline, so the imports run one way. Nothing here runs
TensorFlow ops: these functions run inside tf.data (from_generator, numpy_function), and a tf.data thread
caught inside an eager op at interpreter exit hangs the process.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from bert_jax.data import text_reader
from bert_jax.data.instances import (
    GenerationStats,
    VocabInfo,
    create_training_instances,
    documents_from_ids,
    gc_paused,
)
from bert_jax.data.tfrecord import iter_tfrecords

META_PREFIX = "_"  # per-example bookkeeping carried through tf.data, stripped before the trainer sees it


# ----------------------------------------------------------------------------------------------------
# Positions in this host's shard
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """Where reading resumes: epoch, index in the epoch's file order, byte offset in that file (or the
    example index in a TFDS slice), and the ordinal of the next item in the file (for dealt shards)."""

    epoch: int = 0
    cursor: int = 0
    offset: int = 0
    ordinal: int = 0


class FileShard:
    """This host's share of a file list: whole files (file i to host i % count) when there are enough
    files, else every file with its items dealt round-robin by ordinal."""

    def __init__(self, files: Sequence[str], spec):
        self.spec = spec
        if len(files) >= spec.process_count:
            self.files = list(files[spec.process_index :: spec.process_count])
            self.deal = None
        else:
            self.files = list(files)
            self.deal = (spec.process_index, spec.process_count)

    def order(self, epoch: int) -> list[int]:
        if not self.spec.shuffle:
            return list(range(len(self.files)))
        rng = np.random.default_rng([self.spec.seed, self.spec.process_index, epoch])
        return rng.permutation(len(self.files)).tolist()

    def iterate(self, read: Callable[[str, int], Iterator[tuple[object, int]]], start: Position):
        """(item, position after it) from `start` to the end of the epoch. `read(path, offset)` yields
        (item, byte offset after the item)."""
        order = self.order(start.epoch)
        for cursor in range(start.cursor, len(order)):
            path = self.files[order[cursor]]
            offset, ordinal = (start.offset, start.ordinal) if cursor == start.cursor else (0, 0)
            for item, end_offset in read(path, offset):
                mine = self.deal is None or ordinal % self.deal[1] == self.deal[0]
                ordinal += 1
                if mine:
                    yield item, Position(start.epoch, cursor, end_offset, ordinal)

    def describe(self) -> str:
        head = ", ".join(self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        return f"{len(self.files)} file(s) ({head})"


class TfdsShard:
    """This host's even slice of a TFDS split; `Position.offset` is the example index within the slice."""

    def __init__(self, spec, source: BlockSource):
        self.spec, self.source = spec, source

    def iterate(self, read, start: Position):
        del read
        for doc in text_reader.iter_tfds_documents(
            self.spec.tfds_name, split=self.spec.tfds_split, data_dir=self.spec.tfds_data_dir,
            text_key=self.spec.tfds_text_key, process_index=self.spec.process_index,
            process_count=self.spec.process_count, start=start.offset, stats=self.source.read_stats,
        ):
            yield doc, Position(start.epoch, 0, doc.end_offset, 0)

    def describe(self) -> str:
        return f"TFDS {self.spec.tfds_name}[{self.spec.tfds_split}]"


# ----------------------------------------------------------------------------------------------------
# Blocks: the unit of shuffling, pairing and resumption
# ----------------------------------------------------------------------------------------------------


class BlockSource:
    """The Python half of a pipeline: this host's items grouped into numbered blocks, the registry of
    where each block started (what `get_state` needs), and the pairing of a tokenized block.

    Nothing here runs TensorFlow ops: the generator and the pairing run inside tf.data (from_generator,
    numpy_function), and a tf.data thread caught inside an eager op at interpreter exit hangs the
    process. Tokenization is a graph stage between the two.
    """

    def __init__(self, spec, tokenizer=None):
        self.spec = spec
        self.read_stats = text_reader.ReadStats()
        self.generation_stats = GenerationStats()
        self.block_starts: dict[int, Position] = {}
        if spec.tfds_name is not None:
            self.shard = TfdsShard(spec, self)
        else:
            self.shard = FileShard(spec.files, spec)
        if spec.mode == "streaming":
            if tokenizer is None:
                raise ValueError("mode='streaming' needs a tokenizer")
            self.tokenizer = tokenizer
            self.vocab = VocabInfo.from_tokenizer(tokenizer)

    # -- reading items ------------------------------------------------------------------------------

    def _read_documents(self, path: str, offset: int):
        for doc in text_reader.iter_file_documents(path, self.spec.text_format, self.read_stats, start_offset=offset):
            yield doc, doc.end_offset

    def _read(self):
        return iter_tfrecords if self.spec.mode == "offline" else self._read_documents

    def check_not_empty(self) -> None:
        """Fails early, naming the input, when this host's shard holds no item at all."""
        counted, self.read_stats = self.read_stats, text_reader.ReadStats()  # a look ahead, not a pass
        try:
            for _ in self.shard.iterate(self._read(), Position()):
                return
            raise ValueError(
                f"no usable {'record' if self.spec.mode == 'offline' else 'document'} for process "
                f"{self.spec.process_index}/{self.spec.process_count} in {self.shard.describe()}: "
                + self.read_stats.describe_skips()
            )
        finally:
            self.read_stats = counted

    # -- blocks -------------------------------------------------------------------------------------

    def blocks(self, start: Position, number: int) -> Iterator[tuple[int, list]]:
        """(block number, items) from `start`, epoch after epoch when repeating."""
        spec = self.spec
        epoch_start = start
        self._register(number, start)
        while True:
            items: list = []
            produced = 0
            for item, after in self.shard.iterate(self._read(), epoch_start):
                items.append(item)
                if len(items) == spec.block_size:
                    yield number, items
                    produced += len(items)
                    number, items = number + 1, []
                    self._register(number, after)
            if items:
                yield number, items
                produced += len(items)
                number += 1
            if not spec.repeat:
                return
            if produced == 0 and epoch_start == Position(epoch_start.epoch):
                raise ValueError(f"a whole epoch of {self.shard.describe()} produced nothing: "
                                 + self.read_stats.describe_skips())
            epoch_start = Position(epoch_start.epoch + 1)
            self._register(number, epoch_start)

    def _register(self, number: int, start: Position) -> None:
        self.block_starts[number] = start
        self.block_starts.pop(number - 4096, None)  # bounded: tf.data runs only a few blocks ahead

    def elements(self, state: dict) -> Iterator[dict[str, np.ndarray]]:
        """`_elements`, with each step bracketed for `ExitGuard` (and none after interpreter exit began)."""
        inner = self._elements(state)
        while True:
            with EXIT_GUARD.python_call():
                if EXIT_GUARD.stopping:
                    return
                try:
                    element = next(inner)
                except StopIteration:
                    return
            yield element

    def _elements(self, state: dict) -> Iterator[dict[str, np.ndarray]]:
        """The generator of the pipeline: one element per block, from the position in `state`.

        offline:   the block's serialized records (shuffled), with their block number and index;
        streaming: the block's sentences, the sentence index where each document starts, the block
                   number, and how many of its instances to skip (non-zero for a resumed block only).
        """
        start = Position(state["epoch"], state["cursor"], state["offset"], state["ordinal"])
        for number, items in self.blocks(start, state["block"]):
            skip = state["skip"] if number == state["block"] else 0
            if self.spec.mode == "offline":
                if self.spec.shuffle:
                    random.Random(_block_seed(self.spec, number)).shuffle(items)
                if skip < len(items):
                    yield {"serialized": np.array(items[skip:], dtype=object),
                           "_block": np.full([len(items) - skip], number, np.int64),
                           "_index": np.arange(skip, len(items), dtype=np.int64)}
                continue
            doc_splits = np.zeros([len(items) + 1], np.int64)
            np.cumsum([len(d.sentences) for d in items], out=doc_splits[1:])
            yield {"sentences": np.array([s for d in items for s in d.sentences], dtype=object),
                   "doc_splits": doc_splits, "block": np.int64(number), "skip": np.int64(skip)}

    def pair_block(self, ids, splits, doc_splits, number, skip):
        """numpy_function body: a tokenized block -> rows of NSP pairs (SPEC §1), from instance `skip` on."""
        with EXIT_GUARD.python_call(), gc_paused():
            if EXIT_GUARD.stopping:
                ids, splits, doc_splits = ids[:0], splits[:1], doc_splits[:1]  # nothing more, quickly
            return self._pair_block(ids, splits, doc_splits, number, skip)

    def _pair_block(self, ids, splits, doc_splits, number, skip):
        documents = documents_from_ids(ids, splits, doc_splits, self.spec.config, self.generation_stats)
        rng = random.Random(_block_seed(self.spec, int(number)))
        instances = create_training_instances(
            documents, self.spec.config, self.vocab, rng, dupe_factor=self.spec.dupe_factor,
            mask=not self.spec.dynamic_masking, stats=self.generation_stats,
        )[int(skip):]
        arrays = _instances_to_arrays(instances, self.spec, self.vocab)
        arrays["_block"] = np.full([len(instances)], number, np.int64)
        arrays["_index"] = np.arange(int(skip), int(skip) + len(instances), dtype=np.int64)
        return [arrays[name] for name in pair_names(self.spec)]


class ExitGuard:
    """Lets a process exit while pipelines are running.

    With TensorFlow 2.21, a tf.data pipeline whose Python stages (from_generator, numpy_function) are busy
    when the interpreter finalizes can hang the process forever. At exit (an atexit hook registered after
    TensorFlow is imported, so it runs before TensorFlow's own) this closes the live PretrainingIterators,
    makes every further Python stage call return at once, and waits until none has run for a moment.
    """

    QUIET_SECONDS = 0.2
    MAX_WAIT_SECONDS = 10.0

    def __init__(self):
        self.stopping = False
        self._lock = threading.Lock()
        self._active = 0
        self._last_change = time.monotonic()
        self._iterators: weakref.WeakSet = weakref.WeakSet()  # the live iterators (anything with close())
        self._registered = False

    @contextlib.contextmanager
    def python_call(self):
        with self._lock:
            self._active += 1
            self._last_change = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._last_change = time.monotonic()

    def watch(self, iterator=None) -> None:
        if iterator is not None:
            self._iterators.add(iterator)
        if not self._registered:
            import tensorflow  # noqa: F401  (so that this hook runs before TensorFlow's)

            atexit.register(self.quiesce)
            self._registered = True

    def quiesce(self) -> None:
        self.stopping = True
        for iterator in list(self._iterators):
            iterator.close()
        deadline = time.monotonic() + self.MAX_WAIT_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0 and time.monotonic() - self._last_change > self.QUIET_SECONDS:
                    return
            time.sleep(0.02)


EXIT_GUARD = ExitGuard()


def pair_names(spec) -> list[str]:
    names = ["input_ids", "segment_ids", "lengths", "next_sentence_labels", "_block", "_index"]
    if not spec.dynamic_masking:
        names += ["masked_lm_positions", "masked_lm_ids", "masked_lm_weights"]
    return names


def _block_seed(spec, number: int) -> int:
    return int(np.random.SeedSequence([spec.seed, spec.process_index, number]).generate_state(1, np.uint64)[0])


def _instances_to_arrays(instances, spec, vocab: VocabInfo) -> dict[str, np.ndarray]:
    """Rows of unmasked (dynamic) or masked (static) instances, padded to max_seq_length."""
    seq, preds = spec.config.max_seq_length, spec.config.max_predictions_per_seq
    n = len(instances)
    lengths = np.fromiter((len(i.tokens) for i in instances), np.int32, count=n)
    b_starts = np.fromiter((i.segment_ids.index(1) for i in instances), np.int32, count=n)
    labels = np.fromiter((i.is_random_next for i in instances), np.int32, count=n)
    positions = np.arange(seq, dtype=np.int32)[None, :]
    real = positions < lengths[:, None]  # [n, seq]
    input_ids = np.full([n, seq], vocab.pad_id, np.int32)
    input_ids[real] = np.fromiter(itertools.chain.from_iterable(i.tokens for i in instances), np.int32,
                                  count=int(lengths.sum()))  # row-major: each row's tokens in order
    segment_ids = ((positions >= b_starts[:, None]) & real).astype(np.int32)
    arrays = {"input_ids": input_ids, "segment_ids": segment_ids, "lengths": lengths, "next_sentence_labels": labels}
    if not spec.dynamic_masking:
        masked_positions = np.zeros([n, preds], np.int32)
        masked_ids = np.zeros([n, preds], np.int32)
        weights = np.zeros([n, preds], np.float32)
        for i, instance in enumerate(instances):
            m = len(instance.masked_lm_positions)
            masked_positions[i, :m] = instance.masked_lm_positions
            masked_ids[i, :m] = instance.masked_lm_labels
            weights[i, :m] = 1.0
        arrays.update(masked_lm_positions=masked_positions, masked_lm_ids=masked_ids, masked_lm_weights=weights)
    return arrays
