"""Train a WordPiece or SentencePiece vocabulary with BERT's special tokens on plain text.

    tokenizer = train_tokenizer(["corpus/*.txt.gz"], "vocab_dir", "wordpiece", vocab_size=8000)
    python -m bert_jax train-tokenizer --input 'corpus/*.txt' --output vocab_dir --type wordpiece --vocab-size 8000

The output directory holds `vocab.txt` (WordPiece) or `spm.model` + `spm.vocab` (SentencePiece) and
tokenizer_config.json, so `bert_jax.tokenizer.load_tokenizer(output_dir)` loads it. Ids 0-4 are
[PAD], [UNK], [CLS], [SEP], [MASK], followed by `num_unused` [unused0].. [unusedN-1] placeholders (0 by default;
the original vocabularies reserve some to add domain words later without resizing the embeddings).

WordPiece: words come from the same basic tokenization the tokenizer applies (so lower-casing and accent
stripping match), then the vocabulary is grown bottom-up the way Hugging Face's WordPiece trainer does it: start
from the characters (word-initial `c` and continuation `##c`) and repeatedly add the concatenation of the most
frequent adjacent pair of pieces (byte-pair-encoding merges over word counts, with incremental pair counts, so a
few MB train in seconds). Tokenization then uses greedy longest-match-first over that vocabulary, as always.
tensorflow-text's `bert_vocab_from_dataset` learner gives similar vocabularies but took minutes on 3 MB here.

SentencePiece: the sentencepiece trainer (unigram model, or bpe: several times faster to train) with [PAD]/[UNK]
as its pad/unk pieces and [CLS], [SEP],
[MASK] (and the [unusedN]) as user-defined symbols; lower_case=True lower-cases the training text per character,
as SentencePieceTokenizer(lower_case=True) does at tokenization time.

Inputs: file paths, directories (all files below them), glob patterns, `.gz` files (resolved by
bert_jax.data.text_reader.resolve_input_files, as every other input); or texts. A string without
whitespace is a path or glob and must give a file; a string with whitespace that is not an existing path is a
text. WikiExtractor's `<doc ...>` / `</doc>` lines are not text and are skipped (the count is logged).

Nothing is dropped without a word: bytes that are not UTF-8 are dropped from their line (the rest of the line is
kept) and counted, with `file:line` examples, in an `InputReport`; a vocabulary smaller than `vocab_size` (a corpus
too small for that many pieces) is reported there too. `InputReport.warnings()` says both in a line each (the
train-tokenizer command prints them); with strict=True (--strict) a short vocabulary is an error instead.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import logging
import os
import re
from typing import Iterable, Iterator

from bert_jax.data.text_reader import numbered_raw_lines, resolve_input_files
from bert_jax.tokenizer import (
    CONFIG_FILE,
    CONTINUATION_PREFIX,
    SENTENCEPIECE_MODEL_FILE,
    SPECIAL_TOKENS,
    WORDPIECE_VOCAB_FILE,
    Tokenizer,
    _CHAR_TABLES,
    load_tokenizer,
    lower_per_character,
)

log = logging.getLogger(__name__)

KINDS = ("wordpiece", "sentencepiece")
_DOC_MARKER = re.compile(r"^\s*</?doc(\s[^>]*)?>\s*$")


# ----------------------------------------------------------------------------------------------------------------
# Reading the training text
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InputReport:
    """What training read and what it could not use (filled in by `train_tokenizer(..., report=...)`)."""

    lines: int = 0  # non-empty lines trained on
    doc_markers: int = 0  # WikiExtractor <doc>/</doc> lines skipped
    undecodable_lines: int = 0  # lines with bytes that are not UTF-8 (those bytes dropped, the rest kept)
    undecodable_bytes: int = 0
    examples: list = dataclasses.field(default_factory=list)  # `file:line` of the first undecodable lines
    distinct_words: int | None = None  # WordPiece: words after basic tokenization
    vocab_size: int | None = None  # what was learned, special tokens included
    vocab_size_asked: int | None = None

    MAX_EXAMPLES = 3

    def undecodable(self, where: str, num_bytes: int) -> None:
        self.undecodable_lines += 1
        self.undecodable_bytes += num_bytes
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(where)

    def short_vocabulary(self) -> str | None:
        """Why the vocabulary is smaller than asked for, or None if it is not."""
        if self.vocab_size is None or self.vocab_size_asked is None or self.vocab_size >= self.vocab_size_asked:
            return None
        words = f", {self.distinct_words} distinct words" if self.distinct_words is not None else ""
        return (f"learned a vocabulary of {self.vocab_size} tokens, fewer than the {self.vocab_size_asked} asked for: "
                f"the corpus ({self.lines} lines{words}) is too small for more pieces; give more text or a smaller "
                "vocab_size")

    def warnings(self) -> list[str]:
        out = []
        if self.undecodable_lines:
            out.append(f"dropped {self.undecodable_bytes} byte(s) that are not UTF-8 from {self.undecodable_lines} "
                       f"line(s) (e.g. {', '.join(self.examples)}); the rest of those lines was kept")
        short = self.short_vocabulary()
        if short:
            out.append(short)
        return out


# Each byte that is not UTF-8 decodes (surrogateescape) to one of U+DC80..U+DCFF: counted, then dropped.
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


def _file_lines(path: str, report: InputReport) -> Iterator[str]:
    """The lines of a file (plain or .gz) without their line ends, bytes that are not UTF-8 dropped and counted."""
    for number, raw in numbered_raw_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.decode("utf-8", "surrogateescape")
            bad = len(_ESCAPED_BYTES.findall(line))
            report.undecodable(f"{path}:{number} (byte {e.start} of the line)", bad)
            line = _ESCAPED_BYTES.sub("", line)
        yield line.rstrip("\r\n")


def _is_path_like(item) -> bool:
    if isinstance(item, os.PathLike):
        return True
    return isinstance(item, str) and (os.path.exists(item) or not any(c.isspace() for c in item))


def iter_training_lines(files_or_texts, report: InputReport | None = None) -> Iterator[str]:
    """Non-empty lines of the inputs (see the module docstring for what counts as a path); what was read and
    dropped is counted in `report`."""
    report = report if report is not None else InputReport()
    items = [files_or_texts] if isinstance(files_or_texts, (str, os.PathLike)) else list(files_or_texts)
    for item in items:
        if not _is_path_like(item):
            for line in str(item).splitlines():
                if line.strip():
                    report.lines += 1
                    yield line
            continue
        for path in resolve_input_files([item]):
            for line in _file_lines(path, report):
                if _DOC_MARKER.match(line):
                    report.doc_markers += 1
                elif line.strip():
                    report.lines += 1
                    yield line
    if report.doc_markers:
        log.info("skipped %d WikiExtractor <doc> marker lines", report.doc_markers)


# ----------------------------------------------------------------------------------------------------------------
# WordPiece
# ----------------------------------------------------------------------------------------------------------------


def count_words(lines: Iterable[str], lower_case: bool) -> collections.Counter:
    """Word counts after BERT's basic tokenization (the words WordPiece will be asked to cover)."""
    table = _CHAR_TABLES[lower_case]
    counts = collections.Counter()
    for line in lines:
        counts.update(line.translate(table).split())
    return counts


def learn_wordpiece_vocab(word_counts: dict[str, int], size: int, min_frequency: int = 2,
                          max_alphabet: int = 1000) -> list[str]:
    """Up to `size` WordPiece tokens learnt from word counts (no special tokens).

    The alphabet is the `max_alphabet` most frequent characters (words with rarer characters become [UNK] and
    are left out); each character enters as the forms it occurs in (`c` word-initially, `##c` inside words).
    Then merges of the most frequent adjacent pair, until `size` tokens or no pair occurs `min_frequency` times.
    """
    char_counts = collections.Counter()
    for word, count in word_counts.items():
        for char in word:
            char_counts[char] += count
    alphabet = {c for c, _ in char_counts.most_common(max_alphabet)}

    tokens: list[str] = []  # symbol id -> token string
    symbol_of: dict[str, int] = {}

    def symbol(token: str) -> int:
        if token not in symbol_of:
            symbol_of[token] = len(tokens)
            tokens.append(token)
        return symbol_of[token]

    words: list[list[int]] = []  # each word as a list of symbol ids
    counts: list[int] = []
    # Sorted so that symbol ids, and so tie-breaks between equally frequent pairs, do not depend on hash order.
    for word, count in sorted(word_counts.items(), key=lambda wc: (-wc[1], wc[0])):
        if not set(word) <= alphabet:
            continue
        words.append([symbol(word[0])] + [symbol(CONTINUATION_PREFIX + c) for c in word[1:]])
        counts.append(count)
    if len(tokens) >= size:  # more characters than room: keep the most frequent forms
        form_counts = collections.Counter()
        for word, count in zip(words, counts):
            for s in word:
                form_counts[s] += count
        return [tokens[s] for s, _ in form_counts.most_common(size)]

    # A pair of symbols (a, b) is the int a << 32 | b, and a heap entry the int -count << 64 | pair: plain int
    # keys and comparisons keep the loop below fast; the heap pops the most frequent pair, ties by lowest ids.
    pair_counts: dict[int, int] = collections.defaultdict(int)
    words_with: dict[int, set[int]] = collections.defaultdict(set)  # pair -> indices into `words`
    for index, (word, count) in enumerate(zip(words, counts)):
        for a, b in zip(word, word[1:]):
            pair_counts[a << 32 | b] += count
            words_with[a << 32 | b].add(index)
    heap = [-count << 64 | pair for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    low_bits = (1 << 64) - 1

    while len(tokens) < size and heap:
        entry = heapq.heappop(heap)
        pair, count = entry & low_bits, -(entry >> 64)
        current = pair_counts.get(pair, 0)
        if current != count:  # stale entry: the count changed since it was pushed
            if current > 0:
                heapq.heappush(heap, -current << 64 | pair)
            continue
        if count < min_frequency:
            break
        first, second = pair >> 32, pair & 0xFFFFFFFF
        merged = symbol(tokens[first] + tokens[second][len(CONTINUATION_PREFIX):])
        for index in words_with.pop(pair):
            word = words[index]
            at = _occurrences(word, first, second)
            if not at:
                continue  # the pair left this word through an earlier merge
            word_count, n = counts[index], len(word)
            # Only pairs touching a merged position change; the others map one to one onto the new word.
            for k in {k for i in at for k in (i - 1, i, i + 1) if 0 <= k < n - 1}:
                pair_counts[word[k] << 32 | word[k + 1]] -= word_count
            new_word = word[: at[0]]
            for j, i in enumerate(at):
                new_word.append(merged)
                new_word.extend(word[i + 2 : at[j + 1] if j + 1 < len(at) else n])
            words[index] = new_word
            n = len(new_word)
            for k in {k for j, i in enumerate(at) for k in (i - j - 1, i - j) if 0 <= k < n - 1}:
                key = new_word[k] << 32 | new_word[k + 1]
                pair_counts[key] += word_count
                words_with[key].add(index)
                heapq.heappush(heap, -pair_counts[key] << 64 | key)
        pair_counts.pop(pair, None)
    return tokens


def _occurrences(word: list[int], first: int, second: int) -> list[int]:
    """Start positions of the non-overlapping occurrences of (first, second) in word, left to right."""
    found, i, n = [], 0, len(word)
    while True:
        try:
            i = word.index(first, i)  # C-speed scan
        except ValueError:
            return found
        if i + 1 < n and word[i + 1] == second:
            found.append(i)
            i += 2
        else:
            i += 1


def train_wordpiece(lines: Iterable[str], output_dir: str, vocab_size: int, lower_case: bool = True,
                    num_unused: int = 0, min_frequency: int = 2, report: InputReport | None = None,
                    strict: bool = False) -> str:
    """Writes vocab.txt. A vocabulary smaller than `vocab_size` is noted in `report` (an error if `strict`,
    before anything is written)."""
    report = report if report is not None else InputReport()
    reserved = list(SPECIAL_TOKENS) + [f"[unused{i}]" for i in range(num_unused)]
    if vocab_size <= len(reserved):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(reserved)} reserved tokens")
    word_counts = count_words(lines, lower_case)
    if not word_counts:
        raise ValueError("no training text: the inputs hold no words")
    learned = learn_wordpiece_vocab(word_counts, vocab_size - len(reserved), min_frequency)
    report.distinct_words = len(word_counts)
    report.vocab_size, report.vocab_size_asked = len(reserved) + len(learned), vocab_size
    if strict and report.short_vocabulary():
        raise ValueError(report.short_vocabulary())
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, WORDPIECE_VOCAB_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token in reserved + learned)
    log.info("WordPiece vocabulary of %d tokens (%d distinct words) -> %s",
             len(reserved) + len(learned), len(word_counts), path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------------------------------


def train_sentencepiece(lines: Iterable[str], output_dir: str, vocab_size: int, lower_case: bool = False,
                        num_unused: int = 0, model_type: str = "unigram", strict: bool = False) -> str:
    """The sentencepiece trainer; model_type "unigram" (its default) or "bpe" (several times faster).

    A corpus too small for `vocab_size` pieces gives a smaller vocabulary, or with `strict` sentencepiece's error
    (which says the largest size it can learn)."""
    import sentencepiece

    if lower_case:
        lines = (lower_per_character(line) for line in lines)  # the rule of SentencePieceTokenizer(lower_case=True)
    os.makedirs(output_dir, exist_ok=True)
    prefix = os.path.join(output_dir, os.path.splitext(SENTENCEPIECE_MODEL_FILE)[0])
    try:
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=iter(lines),
            model_prefix=prefix,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=strict,  # if not: a small corpus gives a smaller vocabulary instead of an error
            pad_id=0, pad_piece=SPECIAL_TOKENS[0],
            unk_id=1, unk_piece=SPECIAL_TOKENS[1],
            bos_id=-1, eos_id=-1,
            user_defined_symbols=list(SPECIAL_TOKENS[2:]) + [f"[unused{i}]" for i in range(num_unused)],
            character_coverage=0.9995,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training failed: {e}") from None
    return prefix + ".model"


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def train_tokenizer(files_or_texts, output_dir: str, kind: str = "wordpiece", vocab_size: int = 8000,
                    lower_case: bool = True, num_unused: int = 0, sentencepiece_model: str = "unigram",
                    report: InputReport | None = None, strict: bool = False) -> Tokenizer:
    """Train a vocabulary on the inputs, write it (+ tokenizer_config.json) to output_dir and load it.

    `report` (an InputReport) receives the counts: lines read, bytes that were not UTF-8 (dropped), and the
    vocabulary size learned, for the caller to show `report.warnings()`; without one, they are logged.
    `strict`: a vocabulary smaller than `vocab_size` is a ValueError instead of a warning."""
    log_warnings = report is None
    report = report if report is not None else InputReport()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    reserved = len(SPECIAL_TOKENS) + num_unused
    if vocab_size <= reserved:
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {reserved} reserved tokens")
    lines = iter_training_lines(files_or_texts, report)
    first = next(lines, None)
    if first is None:
        what = repr(os.fspath(files_or_texts)) if isinstance(files_or_texts, (str, os.PathLike)) else "the input"
        raise ValueError(f"no training text: {what} holds no non-empty lines")
    lines = itertools.chain([first], lines)
    if kind == "wordpiece":
        train_wordpiece(lines, output_dir, vocab_size, lower_case, num_unused, report=report, strict=strict)
    else:
        train_sentencepiece(lines, output_dir, vocab_size, lower_case, num_unused, sentencepiece_model, strict)
    with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump({"type": kind, "lower_case": bool(lower_case)}, f, indent=2)
        f.write("\n")
    tokenizer = load_tokenizer(output_dir)
    report.vocab_size, report.vocab_size_asked = tokenizer.vocab_size, vocab_size
    for warning in report.warnings() if log_warnings else ():
        log.warning("%s", warning)
    return tokenizer
