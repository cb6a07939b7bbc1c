"""tf.data input for BERT pretraining: per-host shards -> NSP pairs -> masks -> batches.

Public API (used by the trainer, bert_jax/pretrain.py):

    spec = PipelineSpec(input_pattern=..., batch_size=32, max_seq_length=128, seed=0, ...)
        every argument of a pipeline, with its default: the one place they are written down. A variant (a
        phase at another length) is dataclasses.replace(spec, max_seq_length=512, ...).

    make_pretraining_dataset(spec, tokenizer) -> tf.data.Dataset
        batches (this host's rows) of the seven original features (bert_jax/data/features.py): input_ids,
        input_mask, segment_ids, masked_lm_positions, masked_lm_ids (int32 [B, L] / [B, P]),
        masked_lm_weights (float32 [B, P]), next_sentence_labels (int32 [B]).

    PretrainingIterator(spec, tokenizer)
        __next__() -> dict of numpy arrays (the same features); get_state() -> a small JSON-serialisable
        dict; set_state(state) repositions it exactly.

Modes:
  'streaming'  text in (files in any `text_reader` format, or a TFDS text dataset by name); NSP pairs are
               made on the fly by the original pairing rules (bert_jax/data/instances.py) and masks are drawn
               anew every time an example is read (dynamic masking, RoBERTa style; `dynamic_masking=False`
               instead freezes masks drawn by the original Python algorithm, `dupe_factor` passes per block).
               No offline step is needed.
  'offline'    reads the TFRecords written by `python -m bert_jax prepare-pretraining-data` (both CRCs of
               every record checked, bert_jax/data/tfrecord.py).

How a stream is made (streaming mode; the Python stages are bert_jax/data/blocks.py):
  1. Python generator: walks this host's files (or TFDS slice) in a seeded per-epoch file order and groups
     consecutive documents into *blocks* of `shuffle_buffer` documents (default 1,000); yields each
     block's sentences (text, paragraphs split into sentences by `text_reader`).
  2. Graph: the block is tokenized in one call by bert_jax.graph_tokenizer (tensorflow-text; the ids of
     the Python tokenizer), blocks in parallel.
  3. numpy_function: the block is paired by the original algorithm with an RNG seeded by (seed, host, block
     number): its documents are shuffled, random-next B is drawn from the other documents of the block --
     the bounded pool that keeps memory flat on any corpus -- and its instances are shuffled.
  4. Graph: rows are numbered (the example's index in this host's stream), batched, and masked
     vectorised over the batch (bert_jax/data/masking.py), in parallel; an example's mask depends on
     (seed, host, index) only.
Offline mode reads the TFRecord files in the same blocks (records, default 10,000, shuffled per block)
and parses them in the graph. The Python stages run no TensorFlow ops; `blocks.ExitGuard` lets a process
exit while a pipeline is still running (a TF 2.21 hang otherwise).

Multi-host. Each process reads a disjoint shard chosen by `process_index` / `process_count` (defaults:
jax.process_index() / jax.process_count()): file i goes to process i % count; with fewer files than
processes every process reads every file and keeps the documents (records) whose ordinal in the file is
its own modulo count; a TFDS split is cut into even slices read through `tfds.core.ReadInstruction`.
bert_jax.sharding.global_batch turns the per-host batches into global jax.Arrays.

Determinism and resumption. A seed fixes the stream. The state is the position where the block holding
the last consumed example starts (epoch, file, byte offset, ordinal, block number), how many of that
block's examples were consumed, and the next example index. `set_state` seeks there, regenerates that one
block (its RNG depends on the block number only) and skips the consumed examples, so a resumed run sees
exactly the examples of the uninterrupted run; the cost is one block, whatever the position. This is the
"deterministic skip counter" choice, made cheap by seeking files to byte offsets: the state stays a few
integers that fit in the trainer's JSON checkpoint metadata (a tf.data iterator checkpoint would carry
buffers and be opaque bytes).

Sequence-length phases (128 then 512): a new iterator on the phase's spec (another max_seq_length /
max_predictions_per_seq / batch_size) given the previous phase's state. The stream's fingerprint leaves
those out, so in streaming mode `set_state` takes the state and continues from the start of the block it
was in (documents of that block may be seen once more, none is skipped); this is what
bert_jax.pretrain.make_input does. Offline mode needs TFRecords written at the new length: other files,
another stream, read from its start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from bert_jax.data import masking, text_reader
from bert_jax.data.blocks import EXIT_GUARD, META_PREFIX, BlockSource, pair_names
from bert_jax.data.features import FEATURES
from bert_jax.data.instances import GenerationStats, InstanceConfig, VocabInfo, graph_tokenizer_for
from bert_jax.data.tfrecord import METADATA_FILE, feature_spec, iter_tfrecords, read_metadata

MODES = ("streaming", "offline")
DEFAULT_DOCUMENTS_PER_BLOCK = 1_000
DEFAULT_RECORDS_PER_BLOCK = 10_000
STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# The specification of a stream
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineSpec:
    """Everything that fixes one host's stream: the pipeline's arguments, each with its default.

    Pass one to `make_pretraining_dataset` or `PretrainingIterator`, which keep it resolved (`resolve()`:
    the input expanded to `files`, the host filled in); `fingerprint()` of a resolved spec names the stream.
    Values are checked when the spec is made (ValueError naming the argument).
    """

    batch_size: int  # rows per batch on this host
    # Files, globs, directories or a comma-separated list (text for 'streaming', the TFRecords of
    # prepare-pretraining-data for 'offline'); or tfds_name: a TFDS text dataset, in streaming mode.
    input_pattern: str | Sequence[str] | None = None
    tfds_name: str | None = None
    mode: str = "streaming"  # MODES
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    whole_word_masking: bool = False
    seed: int = 0
    process_index: int | None = None  # None: jax.process_index()
    process_count: int | None = None  # None: jax.process_count()
    # Items per block. Streaming: documents (DEFAULT_DOCUMENTS_PER_BLOCK), whose instances are shuffled
    # together and among which random-next B is drawn; offline: records shuffled together (DEFAULT_RECORDS_...).
    shuffle_buffer: int | None = None
    repeat: bool = True
    shuffle: bool = True  # False keeps the files in order (for evaluation); pairing is random either way
    text_format: str = "auto"  # text_reader.FORMATS
    tfds_split: str = "train"
    tfds_data_dir: str | None = None
    tfds_text_key: str = "text"
    dynamic_masking: bool = True  # False: masks drawn once by the original algorithm, dupe_factor passes a block
    dupe_factor: int = 1
    drop_remainder: bool = True
    # Set by resolve() (derived, so dataclasses.replace leaves it out and a variant is resolved afresh).
    files: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False)

    def __post_init__(self):
        # Plain Python values (configs hand in numpy or ml_collections ones): the fingerprint is JSON.
        for name in ("batch_size", "max_seq_length", "max_predictions_per_seq", "seed", "dupe_factor"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("whole_word_masking", "repeat", "shuffle", "dynamic_masking", "drop_remainder"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.input_pattern is not None and not isinstance(self.input_pattern, (str, os.PathLike)):
            object.__setattr__(self, "input_pattern", tuple(self.input_pattern))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        if (self.input_pattern is None) == (self.tfds_name is None):
            raise ValueError("give exactly one of input_pattern (files) and tfds_name")
        if self.mode == "offline" and self.tfds_name is not None:
            raise ValueError("mode='offline' reads TFRecords from prepare-pretraining-data: give input_pattern")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.dupe_factor < 1:
            raise ValueError(f"dupe_factor={self.dupe_factor} must be >= 1")
        if self.shuffle_buffer is not None and int(self.shuffle_buffer) < 1:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer} must be >= 1")
        _ = self.config  # building the InstanceConfig checks the lengths and probabilities now

    @property
    def config(self) -> InstanceConfig:
        return InstanceConfig(self.max_seq_length, self.max_predictions_per_seq, self.masked_lm_prob,
                              self.short_seq_prob, self.whole_word_masking)

    @property
    def block_size(self) -> int:
        if self.shuffle_buffer is not None:
            return int(self.shuffle_buffer)
        return DEFAULT_RECORDS_PER_BLOCK if self.mode == "offline" else DEFAULT_DOCUMENTS_PER_BLOCK

    def resolve(self) -> PipelineSpec:
        """This spec with the input expanded to `files` and the host filled in. FileNotFoundError names an
        input that gives no file; ValueError a process_index outside [0, process_count)."""
        index, count = self.process_index, self.process_count
        if index is None or count is None:
            import jax  # only to ask for the host: a pipeline given both numbers runs without jax

            index = jax.process_index() if index is None else index
            count = jax.process_count() if count is None else count
        if not 0 <= index < count:
            raise ValueError(f"process_index={index} is not in [0, process_count={count})")
        resolved = dataclasses.replace(self, process_index=int(index), process_count=int(count))
        if self.input_pattern is not None:
            # `files` is derived (init=False): set once here, on the new frozen instance.
            object.__setattr__(resolved, "files", tuple(text_reader.resolve_input_files(self.input_pattern)))
        return resolved

    def fingerprint(self) -> str:
        """Identifies the stream (input and seed); lengths and batch size may change between phases.
        Files count by name and size, so that a corpus moved to another directory keeps its positions."""
        if self.process_index is None or self.process_count is None or (self.input_pattern is not None
                                                                        and not self.files):
            raise ValueError("fingerprint() needs a resolved spec (PipelineSpec.resolve())")
        files = [(os.path.basename(p), os.path.getsize(p)) for p in self.files]
        ident = [self.mode, files, self.tfds_name, self.tfds_split, self.text_format, self.seed,
                 self.process_index, self.process_count, self.shuffle, self.dynamic_masking, self.dupe_factor]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def shape_key(self) -> list:
        c = self.config
        return [self.batch_size, c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob, c.short_seq_prob,
                c.whole_word_masking, self.block_size]


# ----------------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------------


def _initial_state() -> dict:
    return {"epoch": 0, "cursor": 0, "offset": 0, "ordinal": 0, "block": 0, "skip": 0, "example": 0}


def _finish_fn(spec: PipelineSpec, vocab: VocabInfo | None):
    """The in-graph half: parse records (offline) or mask (streaming), then the seven features."""
    import tensorflow as tf

    config = spec.config
    meta_names = ("_key", "_block", "_index")

    if spec.mode == "offline":
        parsing = feature_spec(config)

        @tf.autograph.experimental.do_not_convert
        def finish(batch):
            parsed = tf.io.parse_example(batch["serialized"], parsing)
            out = {name: tf.cast(parsed[name], tf.int32) for name in FEATURES if name != "masked_lm_weights"}
            out["masked_lm_weights"] = parsed["masked_lm_weights"]
            out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
            return {**out, **{k: batch[k] for k in meta_names}}

        return finish

    # The masks of this host's stream have a seed of their own; example keys index the stream.
    mask_seed = int(np.random.SeedSequence([spec.seed, spec.process_index]).generate_state(1, np.uint64)[0] >> 1)

    @tf.autograph.experimental.do_not_convert  # straight-line TF code: converting it only costs time
    def finish(batch):
        lengths = batch["lengths"]
        input_mask = tf.cast(tf.range(config.max_seq_length)[None, :] < lengths[:, None], tf.int32)
        out = {"input_mask": input_mask, "segment_ids": batch["segment_ids"],
               "next_sentence_labels": batch["next_sentence_labels"]}
        if spec.dynamic_masking:
            masked = masking.mask_batch_tf(batch["input_ids"], lengths, batch["_key"], config=config, vocab=vocab,
                                           seed=tf.constant(mask_seed, tf.int64))
            out.update(masked)
        else:
            out["input_ids"] = batch["input_ids"]
            for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
                out[name] = batch[name]
        return {**{name: out[name] for name in FEATURES}, **{k: batch[k] for k in meta_names}}

    return finish


def _build_dataset(source: BlockSource, state: dict, with_meta: bool):
    """generator (Python) -> [tokenize (graph) -> pair (numpy_function)] -> rows -> batches -> mask/parse."""
    import tensorflow as tf

    spec = source.spec
    config = spec.config
    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    EXIT_GUARD.watch()
    if spec.mode == "offline":
        signature = {"serialized": tf.TensorSpec([None], tf.string), "_block": tf.TensorSpec([None], tf.int64),
                     "_index": tf.TensorSpec([None], tf.int64)}
        rows = tf.data.Dataset.from_generator(lambda: source.elements(state), output_signature=signature).unbatch()
    else:
        signature = {"sentences": tf.TensorSpec([None], tf.string), "doc_splits": tf.TensorSpec([None], tf.int64),
                     "block": tf.TensorSpec([], tf.int64), "skip": tf.TensorSpec([], tf.int64)}
        blocks = tf.data.Dataset.from_generator(lambda: source.elements(state), output_signature=signature)
        graph_tokenizer = graph_tokenizer_for(source.tokenizer)

        @tf.autograph.experimental.do_not_convert
        def tokenize(block):
            ragged = graph_tokenizer.tokenize(block["sentences"])  # [S, (tokens)]
            return {"ids": tf.cast(ragged.flat_values, tf.int32), "splits": tf.cast(ragged.row_splits, tf.int64),
                    "doc_splits": block["doc_splits"], "block": block["block"], "skip": block["skip"]}

        names = pair_names(spec)
        shapes = {"input_ids": [None, seq], "segment_ids": [None, seq], "masked_lm_positions": [None, preds],
                  "masked_lm_ids": [None, preds], "masked_lm_weights": [None, preds]}
        types = {"masked_lm_weights": tf.float32, "_block": tf.int64, "_index": tf.int64}

        @tf.autograph.experimental.do_not_convert
        def pair(block):
            outputs = tf.numpy_function(
                source.pair_block, [block["ids"], block["splits"], block["doc_splits"], block["block"], block["skip"]],
                [types.get(name, tf.int32) for name in names], stateful=False,
            )
            return {name: tf.ensure_shape(x, shapes.get(name, [None])) for name, x in zip(names, outputs)}

        blocks = blocks.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        rows = blocks.map(pair).unbatch()  # pairing is sequential Python: one block at a time
    # Each example's key (its index in this host's stream) fixes its dynamic mask.
    rows = rows.enumerate(start=state["example"]).map(_with_key)
    batches = rows.batch(spec.batch_size, drop_remainder=spec.drop_remainder)
    batches = batches.map(_finish_fn(spec, getattr(source, "vocab", None)), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    if not with_meta:
        batches = batches.map(_without_meta)
    return batches.prefetch(tf.data.AUTOTUNE)


def _with_key(key, row):
    return {**row, "_key": key}


def _without_meta(batch):
    return {k: v for k, v in batch.items() if not k.startswith(META_PREFIX)}


def make_pretraining_dataset(spec: PipelineSpec, tokenizer=None):
    """This host's batches of pretraining examples as a tf.data.Dataset (see the module docstring).
    Streaming mode needs the `tokenizer`; offline mode reads token ids from the records."""
    spec = spec.resolve()
    source = BlockSource(spec, tokenizer)
    source.check_not_empty()
    _check_offline_records(spec)
    return _build_dataset(source, _initial_state(), with_meta=False)


def _check_offline_records(spec: PipelineSpec) -> None:
    """Offline TFRecords must have been written at this length: check before tf.data would fail."""
    if spec.mode != "offline":
        return
    directories = {os.path.dirname(p) for p in spec.files}
    for directory in directories:
        metadata = read_metadata(directory)
        if metadata is None:
            continue
        written = metadata["config"]
        for key in ("max_seq_length", "max_predictions_per_seq"):
            if written[key] != getattr(spec.config, key):
                raise ValueError(f"{os.path.join(directory, METADATA_FILE)}: records were written with "
                                 f"{key}={written[key]}, the pipeline asks for {getattr(spec.config, key)}")
    for path in spec.files:
        for record, _ in iter_tfrecords(path, 0):
            _check_record(record, path, spec.config)
            break


def _check_record(record: bytes, path: str, config: InstanceConfig) -> None:
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(record)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: not a TFRecord of tf.train.Example ({e})") from None
    features = example.features.feature
    expected = {"input_ids": config.max_seq_length, "masked_lm_positions": config.max_predictions_per_seq}
    for name in FEATURES:
        if name not in features:
            raise ValueError(f"{path}: record lacks the feature {name!r} (not written by prepare-pretraining-data?)")
    for name, size in expected.items():
        got = len(features[name].int64_list.value)
        if got != size:
            raise ValueError(f"{path}: {name} has length {got}, the pipeline expects {size}")


# ----------------------------------------------------------------------------------------------------
# The resumable iterator
# ----------------------------------------------------------------------------------------------------


class PretrainingIterator:
    """Numpy batches of this host's stream, with an exact, cheap, JSON-serialisable position.

        spec = PipelineSpec(input_pattern=..., batch_size=32, seed=0)
        it = PretrainingIterator(spec, tokenizer=tok)
        batch = next(it)                  # dict of numpy arrays, the seven features
        state = it.get_state()            # store in the checkpoint
        it2 = PretrainingIterator(spec, tokenizer=tok); it2.set_state(state)
        next(it2) == next(it)             # the same examples, masks included

    `spec` is kept resolved (`it.spec`); streaming mode needs the `tokenizer`.
    """

    def __init__(self, spec: PipelineSpec, tokenizer=None):
        self.spec = spec.resolve()
        self._source = BlockSource(self.spec, tokenizer)
        self._source.check_not_empty()
        _check_offline_records(self.spec)
        self._state = _initial_state()
        self._iterator = None
        EXIT_GUARD.watch(self)

    @property
    def read_stats(self) -> text_reader.ReadStats:
        return self._source.read_stats

    @property
    def generation_stats(self) -> GenerationStats:
        return self._source.generation_stats

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = _build_dataset(self._source, dict(self._state), with_meta=True).as_numpy_iterator()
        batch = next(self._iterator)
        block, index, key = (int(batch[name][-1]) for name in ("_block", "_index", "_key"))
        start = self._source.block_starts[block]
        self._state = {"epoch": start.epoch, "cursor": start.cursor, "offset": start.offset,
                       "ordinal": start.ordinal, "block": block, "skip": index + 1, "example": key + 1}
        return {k: v for k, v in batch.items() if not k.startswith(META_PREFIX)}

    def close(self) -> None:
        """Stops the underlying tf.data iterator (its threads); `next` starts it again from the position."""
        self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_state(self) -> dict:
        """The position after the last batch returned: a dict of ints and strings (JSON-serialisable)."""
        return {"version": STATE_VERSION, "fingerprint": self.spec.fingerprint(), "shape": self.spec.shape_key(),
                **self._state}

    def set_state(self, state: Mapping, *, allow_shape_change: bool = True) -> None:
        """Continues exactly after the batch at which `state` was taken.

        The state must come from the same input, seed and host (else ValueError). A state taken with
        another length, batch size or block size (a new sequence-length phase) continues from the start
        of its block, with a warning -- or, with allow_shape_change=False, is refused (ValueError).
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"input pipeline state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state.get("fingerprint") != self.spec.fingerprint():
            raise ValueError("input pipeline state was taken on another input, seed, mode or host shard "
                             f"(fingerprint {state.get('fingerprint')} != {self.spec.fingerprint()})")
        restored = {k: int(state[k]) for k in _initial_state()}
        if list(state.get("shape", [])) != self.spec.shape_key():
            if not allow_shape_change:
                raise ValueError(f"input pipeline state was taken with [batch, length, predictions, ...] = "
                                 f"{state.get('shape')}, this pipeline has {self.spec.shape_key()}")
            logging.warning("input pipeline state was taken with [batch, length, predictions, ...] = %s, this "
                            "pipeline has %s: continuing from the start of block %d", state.get("shape"),
                            self.spec.shape_key(), restored["block"])
            restored["skip"] = 0  # the block is re-made with the new settings: start it over
        self._state = restored
        self._iterator = None
