"""Raw text -> documents (lists of sentences), the first stage of pretraining data.

Input formats (`fmt`):
  'sentences'      the original BERT format: one sentence per line, a blank line between documents.
  'paragraphs'     one paragraph per line, a blank line between documents; lines are split into sentences.
  'wikiextractor'  WikiExtractor output: `<doc id=.. title=..>`, the title line, one paragraph per line,
                   `</doc>`. The title line is dropped; paragraphs are split into sentences.
  'auto'           'wikiextractor' if the file's first non-blank line starts with `<doc`, else 'sentences'.

Inputs are files (plain or `.gz`), globs, directories (every non-hidden file below them, sorted), or a
comma-separated list of those (`resolve_input_files`); TFDS text datasets are read by name with
`iter_tfds_documents` (for example `wikipedia/20230601.en`, feature `text`).

Nothing is dropped silently: every skipped line, document or file is counted by reason in a `ReadStats`
(undecodable bytes, empty files, empty documents) and reported by the callers. A file that is not text at all
(a NUL byte, or most lines not UTF-8, in its first 8 KiB: TFRecords, an archive) is a ValueError naming it
(`check_is_text`), never read line by line.

Documents carry the byte offset just past their end (`end_offset`), so that a reader can restart exactly
at a document boundary (`iter_file_documents(path, start_offset=...)`): that is how the streaming pipeline
resumes without replaying the corpus.

`split_sentences` is a rule-based splitter written for encyclopaedic English (abbreviations, initials,
dotted acronyms, decimals, quotes and brackets after the stop, ellipses); see its docstring.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import os
import re
import zlib
from collections.abc import Iterator, Sequence

FORMATS = ("auto", "sentences", "paragraphs", "wikiextractor")

# ----------------------------------------------------------------------------------------------------
# Sentence splitting
# ----------------------------------------------------------------------------------------------------

# Words that end with a period but (almost) never end a sentence: titles before names, reference
# abbreviations before numbers, Latin abbreviations. Compared lower-cased with the dots removed.
_NEVER_FINAL = frozenset(
    """
    mr mrs ms messrs mme mlle dr prof st sr jr gen col lt sgt capt cmdr adm maj brig rev hon gov sen rep
    pres supt insp fr sra sgto mt ft vs cf viz eg ie al approx ca no nos vol vols pp fig figs eq eqs ch chap
    sec sect art op ed eds est dept univ assn bros jan feb febr mar apr jun jul aug sep sept oct nov dec
    """.split()
)
# After a dotted acronym ("U.S.", "a.m.") a capitalised word usually continues the sentence
# ("the U.S. Army"), unless it is a word that typically opens one.
_SENTENCE_OPENERS = frozenset(
    """
    a an the he she it its they their there these this those we i his her our my in on at after before
    during however but and although though while when where since following from for by as if then
    later today many most some several other another both each all one two three this
    """.split()
)
# A stop ([.!?] runs or an ellipsis), closing quotes/brackets, then a space (text is space-normalised).
# Starting with a single character class lets `re` scan for candidates quickly.
_BOUNDARY = re.compile("[.!?\u2026][.!?\u2026\"'\u201d\u2019\u00bb)\\]]* ")
# What follows a boundary: the next word character (past quotes, brackets, dashes), and its word.
_NEXT_WORD = re.compile(r"(\w)([\w']*)")
_NEXT_WORD_WINDOW = 12  # characters searched past the boundary
_OPENING = "\"'\u201c\u2018\u00ab(["
_DOTTED_ACRONYM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")


def split_sentences(text: str) -> list[str]:
    """Splits a paragraph into sentences.

    A boundary is a stop (`.`, `!`, `?`, runs of them, `...` or `\u2026`) followed by optional closing
    quotes/brackets and whitespace, where the next letter or digit (past quotes, brackets, dashes) is not
    lower-case.
    After a period it is not a boundary when the word before it is:
      - a title or reference abbreviation ("Dr.", "St.", "No.", "Fig.", "e.g.", "et al."),
      - a single letter (initials: "J. R. R. Tolkien", "George W. Bush"),
      - a dotted acronym ("U.S.", "a.m.") followed by a word that does not usually open a sentence.
    Decimals ("3.14"), dotted acronyms inside words and URLs never split because no space follows.
    Whitespace is normalised to single spaces; empty input gives [].
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end() - 1  # the boundary's trailing space
        if _is_sentence_end(text, start, match.start(), end + 1):
            sentences.append(text[start:end])
            start = end + 1
    sentences.append(text[start:])
    return sentences


def _is_sentence_end(text: str, sentence_start: int, stop_at: int, next_at: int) -> bool:
    """Whether the stop at `stop_at` ends a sentence; the next word starts at `next_at`."""
    following = _NEXT_WORD.search(text, next_at, next_at + _NEXT_WORD_WINDOW)
    first = following.group(1) if following else ""
    if first.islower():
        return False
    if text[stop_at] != "." or text.startswith("...", stop_at) or text[stop_at + 1 : stop_at + 2] in "!?\u2026":
        return True  # "!", "?", or an ellipsis followed by a capital
    space = text.rfind(" ", sentence_start, stop_at)
    word = text[space + 1 if space >= 0 else sentence_start : stop_at].lstrip(_OPENING)
    if not word:
        return True
    if len(word) == 1:
        return not word.isalpha()  # an initial does not end a sentence
    if word.replace(".", "").lower() in _NEVER_FINAL:
        return False
    if "." in word and _DOTTED_ACRONYM.match(word):
        return following is not None and (first + following.group(2)).lower() in _SENTENCE_OPENERS
    return True


# ----------------------------------------------------------------------------------------------------
# Documents and statistics
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Document:
    """One document: its sentences, where it came from, and where the next document starts."""

    sentences: list[str]
    source: str  # file path (or `tfds:name[split]`)
    line: int  # 1-based line of the document's first line in `source` (example index for TFDS)
    end_offset: int  # byte offset in `source` just after this document (next example index for TFDS)


@dataclasses.dataclass
class ReadStats:
    """Counts of what was read and what was skipped, by reason, with a few `file:line` examples."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    MAX_EXAMPLES = 3

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.skipped[reason] += count
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(where)

    def merge(self, other: "ReadStats") -> None:
        self.files += other.files
        self.documents += other.documents
        self.sentences += other.sentences
        for reason, count in other.skipped.items():
            self.skipped[reason] += count
            examples = self.examples.setdefault(reason, [])
            examples.extend(other.examples.get(reason, [])[: self.MAX_EXAMPLES - len(examples)])

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "documents": self.documents,
            "sentences": self.sentences,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

    def describe_skips(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        parts = []
        for reason, count in sorted(self.skipped.items()):
            where = ", ".join(self.examples.get(reason, []))
            parts.append(f"{count} {reason}" + (f" (e.g. {where})" if where else ""))
        return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def resolve_input_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands files, globs, directories and comma-separated lists into a de-duplicated file list, in order.

    A string is split at commas; a sequence is taken item by item (an item is not split, so a path may hold a
    comma). A glob gives the files it matches, sorted (directories it matches are not walked); a directory gives
    every non-hidden file below it, sorted by path. Every caller (the pretraining pipelines, the offline
    writer, tokenizer training) resolves its inputs here.

    Raises FileNotFoundError naming the first path, glob or directory that gives no file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        entries = os.fspath(inputs).split(",") if isinstance(inputs, str) else [os.fspath(inputs)]
    else:
        entries = [os.fspath(e) for e in inputs]
    files: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if glob.has_magic(entry):
            matched = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            if not matched:
                raise FileNotFoundError(f"input glob {entry!r} matches no file")
            files.extend(matched)
        elif os.path.isdir(entry):
            found = []
            for root, dirs, names in os.walk(entry):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
            if not found:
                raise FileNotFoundError(f"input directory {entry!r} holds no file")
            files.extend(sorted(found))
        elif os.path.isfile(entry):
            files.append(entry)
        else:
            raise FileNotFoundError(f"input file {entry!r} does not exist")
    if not files:
        raise FileNotFoundError(f"no input files given ({inputs!r})")
    return list(dict.fromkeys(files))


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


SNIFF_BYTES = 8192  # how much of a file `check_is_text` looks at


def check_is_text(path: str) -> None:
    """Raises ValueError naming `path` when it is not text: a NUL byte, or more than half of its lines not
    UTF-8, in its first SNIFF_BYTES (decompressed for .gz). Without this a binary file (TFRecords, an archive)
    given as text would be read line by line, its few decodable fragments trained on without a word."""
    try:
        with _open_binary(path) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, *GZIP_ERRORS):
        return  # unreadable or a corrupt .gz: reading the file itself reports that (corrupt_gzip_error)
    reason = not_text_reason(head, cut=len(head) == SNIFF_BYTES)
    if reason:
        raise ValueError(f"{path}: not text ({reason}); text input must be UTF-8")


def not_text_reason(head: bytes, cut: bool = False) -> str | None:
    """Why the bytes `head` (the start of a file; `cut`: it ends mid-file) are not UTF-8 text, or None."""
    nul = head.find(b"\0")
    if nul >= 0:
        return f"a NUL byte at byte {nul}"
    lines = head.split(b"\n")
    last = len(lines) - 1
    if cut and last > 0:
        lines, last = lines[:-1], -1  # the last line is cut short: judge the complete ones
    undecodable = 0
    nonblank = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        nonblank += 1
        # A single line cut at SNIFF_BYTES may end inside a multi-byte character: allow up to 3 bytes short.
        candidates = [line[: len(line) - k] for k in range(4)] if cut and i == last else [line]
        if not any(_is_utf8(c) for c in candidates):
            undecodable += 1
    if nonblank and 2 * undecodable > nonblank:
        return f"{undecodable} of the {nonblank} lines in its first {len(head)} bytes are not UTF-8"
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# What gzip raises on a truncated (EOFError), corrupt (zlib.error, CRC: BadGzipFile) or non-gzip .gz file.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def corrupt_gzip_error(path: str, lines_read: int, error: Exception) -> ValueError:
    where = f"after line {lines_read}" if lines_read else "at its start"
    return ValueError(f"{path}: truncated or corrupt gzip file, {where} ({error})")


def detect_format(path: str) -> str:
    """'wikiextractor' if the first non-blank line starts with `<doc`, else 'sentences'."""
    number = 0
    with _open_binary(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    return "wikiextractor" if raw.lstrip().startswith(b"<doc") else "sentences"
        except GZIP_ERRORS as e:
            raise corrupt_gzip_error(path, number, e) from e
    return "sentences"


def iter_file_documents(
    path: str,
    fmt: str = "auto",
    stats: ReadStats | None = None,
    start_offset: int = 0,
    splitter=split_sentences,
) -> Iterator[Document]:
    """Yields the documents of one file (plain or .gz), from byte `start_offset` (a document boundary).

    Undecodable (non-UTF-8) lines are skipped and counted; so are empty documents and empty files. A file
    that is not text at all (`check_is_text`) is a ValueError naming it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown text format {fmt!r} for {path}; expected one of {FORMATS}")
    check_is_text(path)
    stats = stats if stats is not None else ReadStats()
    if fmt == "auto":
        fmt = detect_format(path)
    stats.files += 1
    produced = 0
    reader = _read_wikiextractor if fmt == "wikiextractor" else _read_blank_separated
    for doc in reader(path, fmt, stats, start_offset, splitter):
        if not doc.sentences:
            stats.skip("empty documents", f"{path}:{doc.line}")
            continue
        stats.documents += 1
        stats.sentences += len(doc.sentences)
        produced += 1
        yield doc
    if produced == 0 and start_offset == 0:
        stats.skip("files without any document", path)


def numbered_raw_lines(path: str, start_offset: int = 0):
    """(line number, raw bytes with the line end) of a plain or .gz file, from byte `start_offset`; a truncated or
    corrupt gzip stream is a ValueError naming the file and the last line read. Line numbers are only exact from
    the start of the file; after a seek they count from there."""
    with _open_binary(path) as f:
        if start_offset:
            f.seek(start_offset)
        number = 0
        raws = enumerate(f, start=1)
        while True:
            try:
                number, raw = next(raws)
            except StopIteration:
                return
            except GZIP_ERRORS as e:
                raise corrupt_gzip_error(path, number, e) from e
            yield number, raw


def _lines(path: str, stats: ReadStats, start_offset: int):
    """(line number, byte offset of the line, byte offset after it, stripped text or None if undecodable)."""
    offset = start_offset
    for number, raw in numbered_raw_lines(path, start_offset):
        line_start, offset = offset, offset + len(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            stats.skip("non-UTF-8 lines", f"{path}:{number} ({e.reason} at byte {line_start + e.start})")
            yield number, line_start, offset, None
            continue
        yield number, line_start, offset, text.strip()


def _read_blank_separated(path, fmt, stats, start_offset, splitter):
    sentences: list[str] = []
    first_line = None
    offset = start_offset
    for number, _, offset, text in _lines(path, stats, start_offset):
        if text is None:
            continue
        if not text:
            if first_line is not None:
                yield Document(sentences, path, first_line, offset)
            sentences, first_line = [], None
            continue
        if first_line is None:
            first_line = number
        if fmt == "sentences":
            sentences.append(text)
        else:
            sentences.extend(splitter(text))
    if first_line is not None:
        yield Document(sentences, path, first_line, offset)


def _read_wikiextractor(path, fmt, stats, start_offset, splitter):
    sentences: list[str] = []
    first_line = None  # line of the `<doc` tag of the open document, None outside documents
    title_pending = False
    offset = start_offset
    for number, line_start, offset, text in _lines(path, stats, start_offset):
        if text is None:
            continue
        if text.startswith("<doc ") or text == "<doc>":
            if first_line is not None:
                stats.skip("documents without </doc>", f"{path}:{first_line}")
                yield Document(sentences, path, first_line, line_start)  # the next one starts here
            sentences, first_line, title_pending = [], number, True
            continue
        if text == "</doc>":
            if first_line is None:
                stats.skip("stray </doc> lines", f"{path}:{number}")
                continue
            yield Document(sentences, path, first_line, offset)
            sentences, first_line = [], None
            continue
        if not text:
            continue
        if first_line is None:
            stats.skip("lines outside <doc> elements", f"{path}:{number}")
            continue
        if title_pending:
            title_pending = False  # WikiExtractor repeats the title as the first line
            continue
        sentences.extend(splitter(text))
    if first_line is not None:
        stats.skip("documents without </doc>", f"{path}:{first_line}")
        yield Document(sentences, path, first_line, offset)


def iter_documents(
    inputs: str | Sequence[str], fmt: str = "auto", stats: ReadStats | None = None
) -> Iterator[Document]:
    """Documents of every input file in order (see `resolve_input_files`)."""
    for path in resolve_input_files(inputs):
        yield from iter_file_documents(path, fmt, stats)


# ----------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------


def tfds_host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of this host's even share of a split (the same partition as `tfds.even_splits`)."""
    start = num_examples * process_index // process_count
    end = num_examples * (process_index + 1) // process_count
    return start, end


def iter_tfds_documents(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    text_key: str = "text",
    process_index: int = 0,
    process_count: int = 1,
    start: int = 0,
    stats: ReadStats | None = None,
    splitter=split_sentences,
) -> Iterator[Document]:
    """Documents of a TFDS text dataset (lines of `text_key` are paragraphs), this host's slice only.

    The host reads its even share [lo, hi) of the split from example `lo + start` through a
    `tfds.core.ReadInstruction` (no reading of what it skips). When the split's size is unknown (mocked
    data, `tfds.testing.mock_data`) it reads `tfds.even_splits(split, process_count)[process_index]` and
    skips `start` examples. `Document.end_offset` is the index (within the share) of the next example.
    """
    import tensorflow_datasets as tfds

    stats = stats if stats is not None else ReadStats()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names / missing data
        raise ValueError(f"TFDS dataset {name!r} could not be opened (data_dir={data_dir!r}): {e}") from e
    features = builder.info.features
    if features is not None and text_key not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_key!r} (has {list(features)})")
    source = f"tfds:{name}[{split}]"
    stats.files += 1
    read_config = tfds.ReadConfig(try_autocache=False)
    splits = builder.info.splits
    if split in splits and splits[split].num_examples:
        lo, hi = tfds_host_range(splits[split].num_examples, process_index, process_count)
        if lo + start >= hi:
            return
        instruction = tfds.core.ReadInstruction(split, from_=lo + start, to=hi, unit="abs")
        ds = builder.as_dataset(split=instruction, shuffle_files=False, read_config=read_config)
    elif splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r} (has {list(splits)})")
    else:
        lo = 0
        share = tfds.even_splits(split, n=process_count)[process_index]
        ds = builder.as_dataset(split=share, shuffle_files=False, read_config=read_config).skip(start)
    index = start
    for example in ds.as_numpy_iterator():
        index += 1
        raw = example[text_key]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            stats.skip("non-UTF-8 documents", f"{source}:{lo + index - 1} ({e.reason})")
            continue
        sentences = [s for line in text.split("\n") for s in splitter(line)]
        if not sentences:
            stats.skip("empty documents", f"{source}:{lo + index - 1}")
            continue
        stats.documents += 1
        stats.sentences += len(sentences)
        yield Document(sentences, source, lo + index - 1, index)

