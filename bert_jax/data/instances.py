"""Documents -> NSP pairs -> masked pretraining instances, faithful to Google's create_pretraining_data.py.

SPEC.md §1 is the contract. The generation logic works on token ids, with an explicit `random.Random`, so
that it is unit-testable and shared by the streaming pipeline (bert_jax/data/pipeline.py) and the offline
writer (bert_jax/data/offline_writer.py):

    truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
    create_masked_lm_predictions(tokens, config, vocab, rng) -> (masked tokens, positions, labels)
    create_instances_from_document(documents, index, config, vocab, rng, mask=True) -> [TrainingInstance]
    create_training_instances(documents, config, vocab, rng, dupe_factor) -> [TrainingInstance]

The calls on `rng` happen in the same order as in the original script, so for the same documents and
`random.Random(seed)` the instances are the ones the original would write. One deliberate deviation:
with whole-word masking, a '##' piece right after [CLS]/[SEP] (B truncated from the front) starts a word
of its own instead of joining the last word of A across the [SEP].

Also here: the settings (`InstanceConfig`) and vocabulary facts (`VocabInfo`) instances are made with, the
counts of what generation saw (`GenerationStats`), and the tokenization of documents in batches
(`SentenceTokenizer`, `tokenize_documents`, `documents_from_ids`, `iter_document_blocks`) that feeds the
algorithm. The same masking as a TensorFlow op is bert_jax/data/masking.py.

`random.Random` (not a NumPy Generator) is the RNG throughout: it is what reproduces the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from bert_jax.data import text_reader

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
    from bert_jax import graph_tokenizer  # imports TensorFlow: only for the in-graph path, not at import

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
