"""Documents -> NSP pairs -> masked pretraining instances, faithful to Google's create_pretraining_data.py.

SPEC.md §1 is the contract. The pure generation logic lives here, on token ids, with an explicit
`random.Random` so that it is unit-testable and shared by both input modes:

    truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
    create_masked_lm_predictions(tokens, config, vocab, rng) -> (masked tokens, positions, labels)
    create_instances_from_document(documents, index, config, vocab, rng, mask=True) -> [TrainingInstance]
    create_training_instances(documents, config, vocab, rng, dupe_factor) -> [TrainingInstance]

The calls on `rng` happen in the same order as in the original script, so for the same documents and
`random.Random(seed)` the instances are the ones the original would write. One deliberate deviation:
with whole-word masking, a '##' piece right after [CLS]/[SEP] (B truncated from the front) starts a word
of its own instead of joining the last word of A across the [SEP].

Masking also exists as a TensorFlow op, `mask_batch_tf`, for dynamic (RoBERTa-style) masking inside
tf.data: the same candidates, counts, whole-word rule and 80/10/10 split, vectorised over a batch, with
randomness drawn from a counter-based hash of (seed, example key, position), so an example's mask depends
on the seed and its key only -- not on batching, threads or how many examples were read before.

The offline writer `prepare_pretraining_data` (behind `python -m bert_jax prepare-pretraining-data`)
writes sharded TFRecords with the original feature names. It works per input file (in parallel over
files with multiprocessing; each file has its own seeded RNG and its own output shard, so the output does
not depend on the number of workers) and streams: a file is read in blocks of about `block_chars`
characters of text, and each block is one run of the original algorithm -- its documents are shuffled,
`dupe_factor` passes make instances, and the instances are shuffled. Random-next segments B are therefore
drawn from the documents of the same block (a bounded buffer of neighbouring documents) rather than from
the whole corpus, which keeps memory bounded on a corpus larger than RAM. A file smaller than one block
gives exactly the original's output for that file. Worker processes tokenize with the Python tokenizer
(in-graph for files over GRAPH_TOKENIZER_MIN_BYTES) and write the TFRecord framing themselves
(`write_tfrecords`), so they do not import TensorFlow.

`random.Random` (not a NumPy Generator) is the RNG throughout: it is what reproduces the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import multiprocessing
import os
import random
import re
import struct
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from bert_jax import text_reader

FEATURE_NAMES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)
METADATA_FILE = "pretraining_data.json"
# The shards this writer names (part-XXXXX-of-NNNNN.tfrecord), finished or not: what an earlier run leaves.
SHARD_PATTERN = re.compile(r"^part-\d{5,}-of-\d{5,}\.tfrecord(\.incomplete)?$")
RANDOM_DOCUMENT_TRIES = 10  # the original tries 10 times to pick a document other than the current one

# A tokenized document: its sentences as lists of token ids.
TokenizedDocument = list[list[int]]


# ----------------------------------------------------------------------------------------------------
# Configuration and vocabulary facts
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """How instances are made (SPEC.md §1); names follow the original flags."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    whole_word_masking: bool = False

    def __post_init__(self):
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length={self.max_seq_length}: needs at least 5 ([CLS] a [SEP] b [SEP])")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq={self.max_predictions_per_seq} must be >= 1")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"masked_lm_prob={self.masked_lm_prob} must be in (0, 1)")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob={self.short_seq_prob} must be in [0, 1]")

    @property
    def max_num_tokens(self) -> int:
        return self.max_seq_length - 3  # room for [CLS], [SEP], [SEP]

    def num_to_predict(self, num_tokens: int) -> int:
        """How many wordpieces to mask in a sequence of `num_tokens` (special tokens included)."""
        return min(self.max_predictions_per_seq, max(1, int(round(num_tokens * self.masked_lm_prob))))


@dataclasses.dataclass(frozen=True)
class VocabInfo:
    """The ids masking needs, and which ids continue a word (WordPiece '##', SentencePiece no '▁')."""

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    is_continuation: np.ndarray  # bool [vocab_size]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "VocabInfo":
        continuation = np.array([bool(tokenizer.is_continuation(t)) for t in tokenizer.inv_vocab], dtype=bool)
        for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"{getattr(tokenizer, 'source_file', tokenizer)}: vocabulary lacks {name}")
        return cls(
            vocab_size=tokenizer.vocab_size,
            pad_id=tokenizer.pad_id,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            mask_id=tokenizer.mask_id,
            is_continuation=continuation,
        )


@dataclasses.dataclass
class TrainingInstance:
    """[CLS] A [SEP] B [SEP] with its segment ids, NSP label and (once masked) the masked positions."""

    tokens: list[int]
    segment_ids: list[int]
    is_random_next: bool
    masked_lm_positions: list[int] = dataclasses.field(default_factory=list)
    masked_lm_labels: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class GenerationStats:
    """What instance generation saw; merged across blocks and workers, printed as the writer's summary."""

    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    instances: int = 0
    random_next: int = 0
    one_sentence_documents: int = 0
    one_token_documents: int = 0
    long_sentences: int = 0  # longer than max_num_tokens: kept, truncated by truncate_seq_pair
    truncated_tokens: int = 0
    random_next_from_same_document: int = 0  # a block of one document has no other to draw B from
    skipped_sentences_without_tokens: int = 0
    skipped_documents_without_tokens: int = 0

    def merge(self, other: "GenerationStats") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# The original algorithm, on ids
# ----------------------------------------------------------------------------------------------------


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> int:
    """Truncates in place to `max_num_tokens` in all: one token at a time from the longer side (B on ties),
    from its front or back with probability 1/2. Returns how many tokens were removed."""
    removed = 0
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        # Dropping from the front too adds randomness and avoids biasing towards sentence ends.
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()
        removed += 1
    return removed


def _candidate_words(tokens: Sequence[int], vocab: VocabInfo, whole_word_masking: bool) -> list[list[int]]:
    """Positions that may be masked, grouped into words ('##' pieces join the word before them)."""
    if not whole_word_masking:
        cls_id, sep_id = vocab.cls_id, vocab.sep_id
        return [[i] for i, token in enumerate(tokens) if token != cls_id and token != sep_id]
    cand_indexes: list[list[int]] = []
    previous_is_candidate = False
    for i, token in enumerate(tokens):
        if token == vocab.cls_id or token == vocab.sep_id:
            previous_is_candidate = False
            continue
        if previous_is_candidate and vocab.is_continuation[token]:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
        previous_is_candidate = True
    return cand_indexes


def create_masked_lm_predictions(
    tokens: Sequence[int], config: InstanceConfig, vocab: VocabInfo, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    """The original masking: (masked tokens, sorted masked positions, original ids at those positions)."""
    cand_indexes = _candidate_words(tokens, vocab, config.whole_word_masking)
    rng.shuffle(cand_indexes)
    output_tokens = list(tokens)
    num_to_predict = config.num_to_predict(len(tokens))
    masked: list[tuple[int, int]] = []  # (position, original id)
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        # A whole word that would exceed the budget is skipped, not cut.
        if len(masked) + len(index_set) > num_to_predict:
            continue
        # (The original also skips words already covered; with disjoint candidate words none ever is.)
        for index in index_set:
            if rng.random() < 0.8:
                masked_token = vocab.mask_id
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = rng.randint(0, vocab.vocab_size - 1)
            output_tokens[index] = masked_token
            masked.append((index, tokens[index]))
    masked.sort()
    return output_tokens, [p for p, _ in masked], [label for _, label in masked]


def create_instances_from_document(
    documents: Sequence[TokenizedDocument],
    document_index: int,
    config: InstanceConfig,
    vocab: VocabInfo,
    rng: random.Random,
    *,
    mask: bool = True,
    stats: GenerationStats | None = None,
) -> list[TrainingInstance]:
    """NSP pairs from one document (SPEC.md §1); masked as they are made when `mask` (the original order
    of random draws), unmasked for dynamic masking downstream."""
    document = documents[document_index]
    max_num_tokens = config.max_num_tokens
    # Mostly fill the whole sequence; sometimes a shorter one, to lessen the pretrain/finetune mismatch.
    target_seq_length = max_num_tokens
    if rng.random() < config.short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk: list[list[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for sentence in current_chunk[:a_end] for t in sentence]
                tokens_b: list[int] = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(RANDOM_DOCUMENT_TRIES):
                        random_document_index = rng.randint(0, len(documents) - 1)
                        if random_document_index != document_index:
                            break
                    if stats is not None and random_document_index == document_index:
                        stats.random_next_from_same_document += 1
                    random_document = documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The unused sentences of the chunk go back, to be used by the next chunk.
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = False
                    tokens_b = [t for sentence in current_chunk[a_end:] for t in sentence]
                removed = truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                tokens = [vocab.cls_id, *tokens_a, vocab.sep_id, *tokens_b, vocab.sep_id]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                instance = TrainingInstance(tokens, segment_ids, is_random_next)
                if mask:
                    instance.tokens, instance.masked_lm_positions, instance.masked_lm_labels = (
                        create_masked_lm_predictions(tokens, config, vocab, rng)
                    )
                instances.append(instance)
                if stats is not None:
                    stats.instances += 1
                    stats.random_next += is_random_next
                    stats.truncated_tokens += removed
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_training_instances(
    documents: Sequence[TokenizedDocument],
    config: InstanceConfig,
    vocab: VocabInfo,
    rng: random.Random,
    *,
    dupe_factor: int = 1,
    mask: bool = True,
    stats: GenerationStats | None = None,
) -> list[TrainingInstance]:
    """The original main loop over a set of documents: drop empty ones, shuffle them, `dupe_factor`
    passes of `create_instances_from_document`, shuffle all instances."""
    documents = [d for d in documents if d]
    if not documents:
        return []
    rng.shuffle(documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(documents)):
            instances.extend(
                create_instances_from_document(documents, document_index, config, vocab, rng, mask=mask, stats=stats)
            )
    rng.shuffle(instances)
    return instances


# ----------------------------------------------------------------------------------------------------
# Tokenizing documents in batches
# ----------------------------------------------------------------------------------------------------


def graph_tokenizer_for(tokenizer):
    """The in-graph twin of `tokenizer` (bert_jax.graph_tokenizer, tensorflow-text: the same ids), built once
    per vocabulary and casing in a process: building one takes seconds."""
    from bert_jax import graph_tokenizer

    key = (type(tokenizer).__name__, getattr(tokenizer, "source_file", id(tokenizer)), tokenizer.lower_case)
    if key not in _GRAPH_TOKENIZERS:
        _GRAPH_TOKENIZERS[key] = graph_tokenizer.make_graph_tokenizer(tokenizer)
    return _GRAPH_TOKENIZERS[key]


_GRAPH_TOKENIZERS: dict = {}


class SentenceTokenizer:
    """Sentences -> token ids in one batched call, in-graph (`graph_tokenizer_for`) or with the Python
    tokenizer (`use_graph=False`). Both give the same ids."""

    def __init__(self, tokenizer, use_graph: bool = True):
        self.tokenizer = tokenizer
        self._graph = graph_tokenizer_for(tokenizer) if use_graph else None

    @property
    def in_graph(self) -> bool:
        return self._graph is not None

    def __call__(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(flat ids int32 [T], row splits int64 [len(sentences) + 1])."""
        if not sentences:
            return np.zeros([0], np.int32), np.zeros([1], np.int64)
        if self._graph is not None:
            import tensorflow as tf

            ragged = self._graph.tokenize(tf.constant(list(sentences)))  # [N, (tokens)]
            return ragged.flat_values.numpy().astype(np.int32, copy=False), ragged.row_splits.numpy().astype(np.int64)
        ids = [self.tokenizer.token_ids(s) for s in sentences]
        splits = np.zeros([len(ids) + 1], np.int64)
        np.cumsum([len(x) for x in ids], out=splits[1:])
        flat = np.fromiter((t for x in ids for t in x), np.int32, count=int(splits[-1]))
        return flat, splits


def tokenize_documents(
    documents: Sequence[text_reader.Document],
    sentence_tokenizer: SentenceTokenizer,
    config: InstanceConfig,
    stats: GenerationStats,
) -> list[TokenizedDocument]:
    """Documents of text -> documents of id lists (see `documents_from_ids`)."""
    flat, splits = sentence_tokenizer([s for d in documents for s in d.sentences])
    doc_splits = np.zeros([len(documents) + 1], np.int64)
    np.cumsum([len(d.sentences) for d in documents], out=doc_splits[1:])
    return documents_from_ids(flat, splits, doc_splits, config, stats)


def documents_from_ids(
    flat: np.ndarray, splits: np.ndarray, doc_splits: np.ndarray, config: InstanceConfig, stats: GenerationStats
) -> list[TokenizedDocument]:
    """Flat token ids of a batch of sentences -> documents of id lists.

    `splits` [S + 1]: where each sentence's ids start in `flat`; `doc_splits` [D + 1]: where each document's
    sentences start. Sentences and documents without tokens are dropped (and counted), as in the original.
    """
    ids = np.asarray(flat).tolist()  # slicing one Python list beats converting many small arrays
    starts = np.asarray(splits).tolist()
    max_num_tokens = config.max_num_tokens
    result = []
    for d in range(len(doc_splits) - 1):
        first, last = int(doc_splits[d]), int(doc_splits[d + 1])
        lengths = [starts[k + 1] - starts[k] for k in range(first, last)]
        tokenized = [ids[starts[k] : starts[k + 1]] for k in range(first, last) if starts[k + 1] > starts[k]]
        stats.skipped_sentences_without_tokens += (last - first) - len(tokenized)
        if not tokenized:
            stats.skipped_documents_without_tokens += 1
            continue
        num_tokens = sum(lengths)
        stats.documents += 1
        stats.sentences += len(tokenized)
        stats.tokens += num_tokens
        stats.one_sentence_documents += len(tokenized) == 1
        stats.one_token_documents += num_tokens == 1
        stats.long_sentences += sum(length > max_num_tokens for length in lengths)
        result.append(tokenized)
    return result


@contextlib.contextmanager
def gc_paused():
    """Pauses the cyclic garbage collector while a block is paired: pairing allocates millions of small
    lists (freed by reference counting, no cycles), and the collections they trigger walk TensorFlow's
    large heap -- that doubled the cost of pairing. Collection resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def iter_document_blocks(
    documents: Iterable[text_reader.Document], block_chars: int
) -> Iterator[list[text_reader.Document]]:
    """Groups a document stream into blocks of at least `block_chars` characters (the last may be smaller)."""
    block, chars = [], 0
    for doc in documents:
        block.append(doc)
        chars += sum(len(s) for s in doc.sentences)
        if chars >= block_chars:
            yield block
            block, chars = [], 0
    if block:
        yield block


# ----------------------------------------------------------------------------------------------------
# Features and TFRecords
# ----------------------------------------------------------------------------------------------------


def instance_to_features(instance: TrainingInstance, config: InstanceConfig) -> dict[str, np.ndarray]:
    """The original feature dict: zero-padded to max_seq_length / max_predictions_per_seq."""
    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    n, m = len(instance.tokens), len(instance.masked_lm_positions)
    if n > seq or m > preds:
        raise ValueError(f"instance of {n} tokens / {m} predictions exceeds {seq} / {preds}")
    features = {
        "input_ids": np.zeros([seq], np.int64),
        "input_mask": np.zeros([seq], np.int64),
        "segment_ids": np.zeros([seq], np.int64),
        "masked_lm_positions": np.zeros([preds], np.int64),
        "masked_lm_ids": np.zeros([preds], np.int64),
        "masked_lm_weights": np.zeros([preds], np.float32),
        "next_sentence_labels": np.array([int(instance.is_random_next)], np.int64),
    }
    features["input_ids"][:n] = instance.tokens
    features["input_mask"][:n] = 1
    features["segment_ids"][:n] = instance.segment_ids
    features["masked_lm_positions"][:m] = instance.masked_lm_positions
    features["masked_lm_ids"][:m] = instance.masked_lm_labels
    features["masked_lm_weights"][:m] = 1.0
    return features


def serialize_instance(instance: TrainingInstance, config: InstanceConfig) -> bytes:
    """A serialized tf.train.Example with the original feature names and types (int64 lists, float weights).

    Encoded directly in the protobuf wire format (packed varints / floats): building tf.train.Feature
    messages costs more than making the instance. tests/test_pretraining_data.py parses it back with
    tf.io.parse_single_example.
    """
    parts = []
    for name, values in instance_to_features(instance, config).items():
        if values.dtype == np.float32:
            feature = _field(2, _field(1, values.astype("<f4").tobytes()))  # Feature.float_list.value
        else:
            feature = _field(3, _field(1, _packed_varints(values.tolist())))  # Feature.int64_list.value
        parts.append(_field(1, _field(1, name.encode()) + _field(2, feature)))  # Features.feature map entry
    return _field(1, b"".join(parts))  # Example.features


def _packed_varints(values: list[int]) -> bytes:
    try:
        return b"".join([_VARINTS[v] for v in values])
    except IndexError:  # an id beyond the table (a very large vocabulary)
        return b"".join(map(_varint, values))


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (all feature values are)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes([v]) for v in range(0x80)]
_VARINTS = [_varint(v) for v in range(1 << 17)]  # every id of a usual vocabulary, precomputed


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size = len(payload)
    if size < 0x80:
        return bytes(((number << 3) | 2, size)) + payload
    return bytes([(number << 3) | 2]) + _varint(size) + payload


def feature_spec(config: InstanceConfig) -> dict:
    """tf.io.parse_example spec for the records the writer produces."""
    import tensorflow as tf

    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    spec = {name: tf.io.FixedLenFeature([seq], tf.int64) for name in ("input_ids", "input_mask", "segment_ids")}
    spec["masked_lm_positions"] = tf.io.FixedLenFeature([preds], tf.int64)
    spec["masked_lm_ids"] = tf.io.FixedLenFeature([preds], tf.int64)
    spec["masked_lm_weights"] = tf.io.FixedLenFeature([preds], tf.float32)
    spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)
    return spec


# TFRecord framing, written here so that writer processes need no TensorFlow (importing it costs seconds per
# process): uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data. The CRCs of a
# chunk of records are computed together, one byte position at a time across all records, with NumPy.

TFRECORD_CHUNK = 4096


def _crc32c_table() -> np.ndarray:
    table = np.zeros([256], np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table[byte] = crc
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(chunks: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of each byte string, uint32 [len(chunks)]."""
    lengths = np.fromiter(map(len, chunks), np.int64, count=len(chunks))
    order = np.argsort(-lengths, kind="stable")  # longest first: at byte k the live rows are a prefix
    sorted_lengths = lengths[order]
    width = int(sorted_lengths[0]) if len(chunks) else 0
    data = np.zeros([len(chunks), width], np.uint8)
    data[np.arange(width)[None, :] < sorted_lengths[:, None]] = np.frombuffer(
        b"".join(chunks[i] for i in order), np.uint8
    )
    live = np.searchsorted(-sorted_lengths, -np.arange(width), side="left")  # rows longer than k, for each k
    crc = np.full([len(chunks)], 0xFFFFFFFF, np.uint32)
    for k in range(width):
        m = live[k]
        crc[:m] = _CRC32C_TABLE[(crc[:m] ^ data[:m, k]) & 0xFF] ^ (crc[:m] >> 8)
    result = np.empty_like(crc)
    result[order] = crc ^ np.uint32(0xFFFFFFFF)
    return result


def _masked_crc(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


def write_tfrecords(f, records: Sequence[bytes]) -> None:
    """Appends records to an open binary file in the TFRecord format (readable by tf.data.TFRecordDataset)."""
    if not records:
        return
    headers = [struct.pack("<Q", len(r)) for r in records]
    header_crcs = _masked_crc(crc32c(headers)).tolist()
    data_crcs = _masked_crc(crc32c(records)).tolist()
    f.write(b"".join(
        b"".join((h, struct.pack("<I", hc), r, struct.pack("<I", dc)))
        for h, hc, r, dc in zip(headers, header_crcs, records, data_crcs)
    ))


# ----------------------------------------------------------------------------------------------------
# Dynamic masking as a TensorFlow op
# ----------------------------------------------------------------------------------------------------

# Streams of the counter-based hash: one independent uniform per (example, position, purpose).
_PRIORITY, _KEEP_OR_MASK, _KEEP_OR_RANDOM, _RANDOM_TOKEN = range(4)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def _splitmix64_tf(x):
    """SplitMix64's finaliser on uint64 tensors: a bijection that scrambles all bits."""
    import tensorflow as tf

    u64 = tf.uint64
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, u64))) * tf.constant(_MIX[1], u64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, u64))) * tf.constant(_MIX[2], u64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, u64)))


def _hash_uniform_tf(seed, keys, length: int, stream: int):
    """Uniform floats in [0, 1) of shape [B, length], a hash of (seed, key, position, stream).

    Counter-based and elementwise, so an example's draws depend on (seed, key) only.
    """
    import tensorflow as tf

    u64 = tf.uint64
    seed = tf.bitcast(tf.cast(seed, tf.int64), u64)
    key = tf.bitcast(tf.cast(keys, tf.int64), u64)
    example = _splitmix64_tf(seed * tf.constant(_MIX[0], u64) + _splitmix64_tf(key + tf.constant(_MIX[3], u64)))
    counter = tf.cast(tf.range(length, dtype=tf.int64), u64) * tf.constant(4, u64) + tf.constant(stream, u64)  # [L]
    x = _splitmix64_tf(example[:, None] + counter[None, :] * tf.constant(_MIX[0], u64))  # [B, L]
    top24 = tf.cast(tf.bitwise.right_shift(x, tf.constant(40, u64)), tf.int32)
    return tf.cast(top24, tf.float32) * (1.0 / (1 << 24))


def num_to_predict_table(config: InstanceConfig) -> np.ndarray:
    """num_to_predict for every sequence length 0..max_seq_length, computed with Python's round."""
    return np.array([config.num_to_predict(n) for n in range(config.max_seq_length + 1)], np.int32)


def mask_batch_tf(input_ids, lengths, keys, *, config: InstanceConfig, vocab: VocabInfo, seed):
    """Dynamic masking of a batch, as the original does it per sequence.

    Args:
      input_ids: int32 [B, L], [CLS] A [SEP] B [SEP] then padding.
      lengths: int32 [B], the number of real tokens (special tokens included).
      keys: int64 [B], a unique key per example (its index in the stream); with `seed` it fixes the mask.
    Returns dict: input_ids (masked), masked_lm_positions, masked_lm_ids (int32 [B, P]),
      masked_lm_weights (float32 [B, P]).

    Candidates are the real tokens other than [CLS]/[SEP]; whole words (a start plus its '##' pieces)
    are taken in a random order while they fit in num_to_predict(length) (a word that would pass it is
    skipped, not cut); chosen pieces become [MASK] 80%, stay 10%, a uniform vocabulary id 10%.
    """
    import tensorflow as tf

    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    lengths = tf.cast(lengths, tf.int32)
    batch, length = tf.shape(input_ids)[0], input_ids.shape[1]
    preds = config.max_predictions_per_seq

    positions = tf.range(length)[None, :]  # [1, L]
    candidate = (
        (positions < lengths[:, None]) & tf.not_equal(input_ids, vocab.cls_id) & tf.not_equal(input_ids, vocab.sep_id)
    )  # [B, L]
    if config.whole_word_masking:
        continuation = tf.gather(tf.constant(vocab.is_continuation), input_ids)
        previous_candidate = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
        word_start = candidate & ~(continuation & previous_candidate)
    else:
        word_start = candidate
    # Each candidate position belongs to the word that starts at or before it: word number along the row.
    word_number = tf.cumsum(tf.cast(word_start, tf.int32), axis=1) - 1  # [B, L]

    # A random order of the words: sort word starts by a uniform priority (non-starts last).
    priority = _hash_uniform_tf(seed, keys, length, _PRIORITY)
    priority = tf.where(word_start, priority, 2.0)
    order = tf.argsort(priority, axis=1, stable=True)  # [B, L] positions, shuffled words first
    word_sizes = tf.math.unsorted_segment_sum(
        tf.cast(candidate, tf.int32),
        tf.where(candidate, word_number, length) + tf.range(batch)[:, None] * (length + 1),
        batch * (length + 1),
    )
    word_sizes = tf.reshape(word_sizes, [batch, length + 1])[:, :length]  # [B, L] size of word k
    size_at_start = tf.where(word_start, tf.gather(word_sizes, tf.maximum(word_number, 0), batch_dims=1), 0)
    sizes_in_order = tf.gather(size_at_start, order, batch_dims=1)  # [B, L], 0 past the last word
    budget = tf.gather(tf.constant(num_to_predict_table(config)), lengths)  # [B]

    if config.whole_word_masking:
        # Greedy over the shuffled words: take a word if it still fits (original loop, vectorised over B).
        def take_next(count, size):
            taken = (size > 0) & (count + size <= budget)
            return tf.where(taken, count + size, count)

        counts_after = tf.scan(take_next, tf.transpose(sizes_in_order), initializer=tf.zeros([batch], tf.int32))
        counts_before = tf.concat([tf.zeros([1, batch], tf.int32), counts_after[:-1]], axis=0)
        taken_in_order = tf.transpose(counts_after > counts_before)  # [B, L]
    else:
        rank = tf.range(length)[None, :]
        taken_in_order = (sizes_in_order > 0) & (rank < budget[:, None])
    # Back from shuffled order to positions, then from word starts to all pieces of the word.
    taken_start = tf.scatter_nd(
        tf.stack([tf.repeat(tf.range(batch), length), tf.reshape(order, [-1])], axis=1),
        tf.reshape(tf.cast(taken_in_order, tf.int32), [-1]),
        [batch, length],
    )  # [B, L] 1 at the start of each chosen word
    start_positions = tf.where(word_start, positions, 0)
    start_of_word = tf.gather(
        tf.math.unsorted_segment_max(  # position of each word's start, indexed by word number
            tf.reshape(start_positions, [-1]),
            tf.reshape(tf.where(candidate, word_number, length) + tf.range(batch)[:, None] * (length + 1), [-1]),
            batch * (length + 1),
        ),
        tf.range(batch)[:, None] * (length + 1) + tf.maximum(word_number, 0),
    )  # [B, L]
    chosen = candidate & (tf.gather(taken_start, start_of_word, batch_dims=1) > 0)  # [B, L]

    # 80% [MASK], 10% unchanged, 10% a random id.
    u_mask = _hash_uniform_tf(seed, keys, length, _KEEP_OR_MASK)
    u_keep = _hash_uniform_tf(seed, keys, length, _KEEP_OR_RANDOM)
    u_token = _hash_uniform_tf(seed, keys, length, _RANDOM_TOKEN)
    random_ids = tf.minimum(tf.cast(u_token * vocab.vocab_size, tf.int32), vocab.vocab_size - 1)
    replacement = tf.where(u_mask < 0.8, vocab.mask_id, tf.where(u_keep < 0.5, input_ids, random_ids))
    masked_ids = tf.where(chosen, replacement, input_ids)

    # The chosen positions in increasing order, padded with 0 (weight 0) to max_predictions_per_seq.
    sort_key = tf.where(chosen, positions, length + positions)
    first = tf.sort(sort_key, axis=1)[:, :preds]  # [B, min(L, P)]
    if first.shape[1] < preds:
        first = tf.pad(first, [[0, 0], [0, preds - first.shape[1]]], constant_values=2 * length)
    real = first < length
    masked_positions = tf.where(real, first, 0)
    masked_labels = tf.where(real, tf.gather(input_ids, masked_positions, batch_dims=1), 0)
    return {
        "input_ids": masked_ids,
        "masked_lm_positions": masked_positions,
        "masked_lm_ids": masked_labels,
        "masked_lm_weights": tf.cast(real, tf.float32),
    }


# ----------------------------------------------------------------------------------------------------
# The offline writer
# ----------------------------------------------------------------------------------------------------


# The writer tokenizes a file in-graph (tensorflow-text) from this size on, else with the Python tokenizer
# (same ids). In-graph is ~1.5x faster per token but takes seconds to build per worker process; with
# dupe_factor passes over the tokens, tokenization is a small share of the work on usual (~1 MB) files.
GRAPH_TOKENIZER_MIN_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class _WriterJob:
    input_file: str
    output_file: str
    seed: int
    tokenizer_path: str
    lower_case: bool | None
    config: InstanceConfig
    dupe_factor: int
    text_format: str
    block_chars: int


def unit_seed(seed: int, unit_index: int) -> int:
    """The RNG seed of one input file: independent streams per file, the same for any worker count."""
    return int(np.random.SeedSequence([seed, unit_index]).generate_state(1, np.uint64)[0])


def _write_file(job: _WriterJob) -> dict:
    """One input file -> one TFRecord shard. Runs in a worker process (without TensorFlow, unless the file
    is big enough for the in-graph tokenizer)."""
    tokenizer, vocab = _worker_tokenizer(job.tokenizer_path, job.lower_case)
    big_file = os.path.getsize(job.input_file) >= GRAPH_TOKENIZER_MIN_BYTES
    sentence_tokenizer = SentenceTokenizer(tokenizer, use_graph=big_file)
    rng = random.Random(job.seed)
    read_stats, gen_stats = text_reader.ReadStats(), GenerationStats()
    documents = text_reader.iter_file_documents(job.input_file, job.text_format, read_stats)
    temporary = job.output_file + ".incomplete"
    written = 0
    with open(temporary, "wb") as f:
        for block in iter_document_blocks(documents, job.block_chars):
            with gc_paused():
                tokenized = tokenize_documents(block, sentence_tokenizer, job.config, gen_stats)
                instances = create_training_instances(
                    tokenized, job.config, vocab, rng, dupe_factor=job.dupe_factor, stats=gen_stats
                )
                for first in range(0, len(instances), TFRECORD_CHUNK):
                    chunk = instances[first : first + TFRECORD_CHUNK]
                    write_tfrecords(f, [serialize_instance(instance, job.config) for instance in chunk])
                written += len(instances)
    if written:
        os.replace(temporary, job.output_file)
    else:
        os.remove(temporary)
    return {"input": job.input_file, "output": job.output_file if written else None, "instances": written,
            "read": read_stats, "generation": gen_stats}


@functools.lru_cache(maxsize=4)
def _worker_tokenizer(path: str, lower_case: bool | None):
    """One tokenizer per worker process: its word cache stays warm from one file to the next."""
    from bert_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path, lower_case=lower_case)
    return tokenizer, VocabInfo.from_tokenizer(tokenizer)


def prepare_pretraining_data(
    inputs: str | Sequence[str],
    vocab: str,
    output_dir: str,
    config: InstanceConfig = InstanceConfig(),
    *,
    dupe_factor: int = 10,
    seed: int = 12345,
    num_workers: int = 1,
    lower_case: bool | None = None,
    text_format: str = "auto",
    block_chars: int = 4_000_000,
    overwrite: bool = False,
) -> dict:
    """Writes `output_dir/part-XXXXX-of-NNNNN.tfrecord` (one per input file) and `pretraining_data.json`.

    Returns the summary: counts of documents, sentences, instances, and what was skipped and why.
    Raises FileNotFoundError / ValueError (naming the file) for missing inputs, a bad vocabulary, a corrupt
    .gz input, or a corpus without a single usable document; FileExistsError if `output_dir` holds an
    earlier run's shards or pretraining_data.json, unless `overwrite`: then those files (and only those,
    by this writer's naming pattern) are removed first, their count in the summary's
    `removed_earlier_files`. A run that fails leaves none of its own shards behind.
    """
    from bert_jax.tokenizer import load_tokenizer

    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be >= 1")
    if text_format not in text_reader.FORMATS:
        raise ValueError(f"text format {text_format!r} is not one of {text_reader.FORMATS}")
    files = text_reader.resolve_input_files(inputs)
    tokenizer = load_tokenizer(vocab, lower_case=lower_case)  # fails here, naming the file, if unusable
    VocabInfo.from_tokenizer(tokenizer)
    earlier = earlier_outputs(output_dir)
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir}: holds {len(earlier)} file(s) of an earlier run ({os.path.basename(earlier[0])}"
            f"{', ...' if len(earlier) > 1 else ''}); pass --overwrite (overwrite=True) to remove them, or "
            "choose another output directory"
        )
    for path in earlier:  # after every check above: a rejected run removes nothing
        os.remove(path)
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    width = max(5, len(str(len(files))))
    jobs = [
        _WriterJob(path, os.path.join(output_dir, f"part-{i:0{width}d}-of-{len(files):0{width}d}.tfrecord"),
                   unit_seed(seed, i), vocab, tokenizer.lower_case, config, dupe_factor, text_format, block_chars)
        for i, path in enumerate(files)
    ]
    started = time.time()
    num_workers = max(1, min(num_workers, len(jobs)))
    try:
        if num_workers == 1:
            results = [_write_file(job) for job in jobs]
        else:
            # spawn: TensorFlow is not fork-safe once imported; each worker imports it afresh.
            with multiprocessing.get_context("spawn").Pool(num_workers, initializer=_limit_worker_threads) as pool:
                results = pool.map(_write_file, jobs, chunksize=1)
    except BaseException:
        # One failed file (a corrupt .gz, Ctrl-C) fails the run: its shards, finished or not, are an
        # incomplete set without pretraining_data.json. (The pool has stopped its workers by now.)
        for job in jobs:
            for path in (job.output_file, job.output_file + ".incomplete"):
                if os.path.exists(path):
                    os.remove(path)
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
        raise
    elapsed = time.time() - started

    read_stats, gen_stats = text_reader.ReadStats(), GenerationStats()
    for result in results:
        read_stats.merge(result["read"])
        gen_stats.merge(result["generation"])
    outputs = [r["output"] for r in results if r["output"]]
    summary = {
        "input_files": len(files),
        "output_files": len(outputs),
        "documents": gen_stats.documents,
        "sentences": gen_stats.sentences,
        "tokens": gen_stats.tokens,
        "instances": gen_stats.instances,
        "random_next_fraction": gen_stats.random_next / max(1, gen_stats.instances),
        "read": read_stats.to_dict(),
        "generation": gen_stats.to_dict(),
        "skipped": _skip_summary(read_stats, gen_stats, results),
        "seconds": round(elapsed, 3),
        "instances_per_second": round(gen_stats.instances / max(elapsed, 1e-9), 1),
        "removed_earlier_files": len(earlier),
    }
    if not outputs:
        raise ValueError(
            f"no usable document in {len(files)} input file(s) ({files[0]}{', ...' if len(files) > 1 else ''}): "
            + read_stats.describe_skips()
        )
    metadata = {
        "format": "bert_jax pretraining TFRecords (google-research/bert feature names)",
        "config": dataclasses.asdict(config),
        "dupe_factor": dupe_factor,
        "seed": seed,
        "vocab": os.path.abspath(vocab),
        "vocab_size": tokenizer.vocab_size,
        "lower_case": tokenizer.lower_case,
        "files": [os.path.basename(p) for p in outputs],
        "inputs": [os.path.abspath(p) for p in files],
        "summary": summary,
    }
    with open(os.path.join(output_dir, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")
    return summary


def _limit_worker_threads():
    # One worker per core: TensorFlow's own thread pools would oversubscribe the machine.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _skip_summary(read_stats: text_reader.ReadStats, gen_stats: GenerationStats, results: list[dict]) -> dict:
    skipped = dict(read_stats.skipped)
    if gen_stats.skipped_sentences_without_tokens:
        skipped["sentences without tokens"] = gen_stats.skipped_sentences_without_tokens
    if gen_stats.skipped_documents_without_tokens:
        skipped["documents without tokens"] = gen_stats.skipped_documents_without_tokens
    empty_outputs = [r["input"] for r in results if not r["output"]]
    if empty_outputs:
        skipped["input files without output"] = len(empty_outputs)
    return skipped


def earlier_outputs(output_dir: str) -> list[str]:
    """The files of an earlier run in `output_dir` (sorted): shards named as this writer names them, finished
    or not, and pretraining_data.json. Other files are not this writer's and are left alone."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(n for n in os.listdir(output_dir) if SHARD_PATTERN.match(n) or n == METADATA_FILE)
    return [os.path.join(output_dir, n) for n in names]


def read_metadata(directory: str) -> dict | None:
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def describe_summary(summary: dict) -> str:
    """Human-readable lines of a writer summary."""
    lines = [
        f"input files: {summary['input_files']}, output shards: {summary['output_files']}",
        f"documents: {summary['documents']}, sentences: {summary['sentences']}, tokens: {summary['tokens']}",
        f"instances: {summary['instances']} (random next {summary['random_next_fraction']:.1%}), "
        f"{summary['instances_per_second']:.0f}/s",
    ]
    if summary.get("removed_earlier_files"):
        lines.insert(0, f"removed {summary['removed_earlier_files']} file(s) of an earlier run (--overwrite)")
    gen = summary["generation"]
    lines.append(
        f"kept as is: {gen['one_sentence_documents']} one-sentence documents (B drawn at random), "
        f"{gen['one_token_documents']} one-token documents, {gen['long_sentences']} sentences longer than "
        f"the sequence (truncated)"
    )
    if summary["skipped"]:
        examples = summary["read"]["skipped_examples"]
        parts = [f"{count} {reason}" + (f" (e.g. {examples[reason][0]})" if examples.get(reason) else "")
                 for reason, count in sorted(summary["skipped"].items())]
        lines.append("skipped: " + "; ".join(parts))
    else:
        lines.append("skipped: nothing")
    return "\n".join(lines)

