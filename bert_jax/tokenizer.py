"""BERT tokenizers: WordPiece (a `vocab.txt`) and SentencePiece (a `.model`) behind one interface.

WordPiece follows Google's original `tokenization.py` (google-research/bert), re-implemented here:

1. Basic tokenization, one character at a time (`normalize_char`):
   - U+0000, U+FFFD and control characters (categories Cc and Cf, except tab, newline and carriage return) are
     dropped;
   - whitespace (space, tab, newline, carriage return, Zs, and the line/paragraph separators U+2028/U+2029 that
     Python's `str.split` also splits on) separates words;
   - CJK ideographs (the ranges of the original `_is_chinese_char`) become single-character words;
   - uncased (`lower_case=True`): lower-case each character, NFD-decompose it and drop the non-spacing marks
     (category Mn), i.e. strip accents;
   - punctuation (any P* category, plus the ASCII symbols ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``) becomes
     single-character words.
   Lower-casing is per character, as in Hugging Face `tokenizers` (so a final capital sigma becomes 'σ', not 'ς').
2. Greedy longest-match-first WordPiece on every word, continuation pieces prefixed with '##'; a word that cannot
   be covered by pieces, or that is longer than `max_input_chars_per_word` (100) characters, becomes [UNK].

Like Hugging Face (and unlike the original script), the special tokens SPECIAL_TOKENS written literally in the text
("Paris is the [MASK] of France.") are kept as single tokens, so fill-mask inputs work; their lower-case spelling
("[mask]") is ordinary text.

The ids equal those of Hugging Face `BertTokenizerFast` on real text (tests/test_tokenizer.py). One documented
difference: private-use (Co), unassigned (Cn) and surrogate (Cs) characters are kept as in Google's original
(they usually become [UNK]); Hugging Face drops them.

`load_tokenizer(path)` accepts a vocab.txt, a .model file, or a directory with `vocab.txt` or `spm.model` and an
optional `tokenizer_config.json`:

    {"type": "wordpiece" | "sentencepiece", "lower_case": true | false}

(a Hugging Face `tokenizer_config.json` with "do_lower_case" is understood too). `save_tokenizer` writes that layout.
Without a config, a WordPiece vocabulary is taken as uncased unless it is clearly cased (`infer_lower_case`), and a
SentencePiece model as cased (its own normalisation rules apply).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import shutil
import unicodedata
from typing import Iterable, Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS

WORDPIECE_VOCAB_FILE = "vocab.txt"
SENTENCEPIECE_MODEL_FILE = "spm.model"
CONFIG_FILE = "tokenizer_config.json"
MAX_INPUT_CHARS_PER_WORD = 100
CONTINUATION_PREFIX = "##"  # WordPiece: a piece that continues the previous one
WORD_START_MARK = "\u2581"  # SentencePiece: '▁' starts a piece that begins a word

_SPECIAL_TOKEN_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


@dataclasses.dataclass
class Encoding:
    """Model inputs of one example, as Python lists of equal length (no padding)."""

    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]


# ----------------------------------------------------------------------------------------------------------------
# Character classes of BERT's basic tokenizer
# ----------------------------------------------------------------------------------------------------------------

# Code point ranges the original `_is_chinese_char` treats as CJK ideographs (not Japanese kana or Hangul).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
    cp = ord(char)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def is_punctuation(char: str) -> bool:
    cp = ord(char)
    # ASCII symbols such as '$', '+', '^', '`' are not in a P* category, but BERT splits them off too.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def normalize_char(char: str, lower_case: bool) -> str:
    """What BERT's basic tokenizer makes of one character of the input.

    '' drops it, ' ' ends a word, and characters that form a word of their own (punctuation, CJK) come back
    wrapped in spaces. So `"".join(normalize_char(c) for c in text).split()` are the words of `text`.
    """
    category = unicodedata.category(char)
    if char in "\t\n\r\u2028\u2029" or category == "Zs":
        # Tab, newline and CR are Cc but BERT counts them as whitespace; U+2028/U+2029 are not Zs, but the
        # original splits words with str.split(), which splits on them.
        return " "
    if char in "\x00\ufffd" or category in ("Cc", "Cf"):
        return ""
    cjk = is_cjk(char)
    if category in ("Cn", "Co", "Cs") and not cjk:
        return char  # unassigned, private use, surrogate: kept as they are
    chars = char
    if lower_case:
        # NFD also maps CJK compatibility ideographs to unified ones (U+F902 -> U+8ECA).
        chars = unicodedata.normalize("NFD", char.lower())
        chars = "".join(c for c in chars if unicodedata.category(c) != "Mn")
    if cjk:
        return f" {chars} "
    return "".join(f" {c} " if is_punctuation(c) else c for c in chars)


class _CharTable(dict):
    """code point -> normalize_char(...), filled on first use; usable with str.translate at C speed."""

    def __init__(self, lower_case: bool):
        super().__init__()
        self.lower_case = lower_case

    def __missing__(self, cp: int) -> str:
        value = normalize_char(chr(cp), self.lower_case)
        self[cp] = value
        return value


_CHAR_TABLES = {True: _CharTable(True), False: _CharTable(False)}


class _LowerTable(dict):
    """code point -> its per-character lower case, filled on first use (for str.translate)."""

    def __missing__(self, cp: int) -> str:
        value = chr(cp).lower()
        self[cp] = value
        return value


_LOWER_TABLE = _LowerTable()


def lower_per_character(text: str) -> str:
    """Lower-case each character on its own (no final-sigma rule), the casing rule of both tokenizers."""
    return text.translate(_LOWER_TABLE)


# The code point ranges in which normalize_char can change a character: planes 0-3 and plane 14. Planes 4-13 are
# unassigned and planes 15-16 private use (Unicode 14/15): every character there stays as it is.
NORMALIZED_PLANES = ((0, 0x40000), (0xE0000, 0xF0000))


@functools.lru_cache(maxsize=4)
def changed_chars(lower_case: bool) -> dict[int, str]:
    """Every code point that `normalize_char` does not map to itself (for the in-graph tokenizer)."""
    changed = {}
    category = unicodedata.category
    for cp in itertools.chain(range(*NORMALIZED_PLANES[0]), range(*NORMALIZED_PLANES[1])):
        char = chr(cp)
        if category(char) in ("Cn", "Co", "Cs") and not is_cjk(char):
            continue  # identity, most of the code space: skip the slower checks
        value = normalize_char(char, lower_case)
        if value != char:
            changed[cp] = value
    return changed


@functools.lru_cache(maxsize=1)
def lowered_chars() -> dict[int, str]:
    """Every code point that per-character lower-casing changes (SentencePiece lower_case, in-graph)."""
    changed = {}
    for cp in itertools.chain(range(*NORMALIZED_PLANES[0]), range(*NORMALIZED_PLANES[1])):  # the rest has no case
        lowered = chr(cp).lower()
        if lowered != chr(cp):
            changed[cp] = lowered
    return changed


def _split_special_tokens(text: str) -> Iterable[tuple[int, int, bool]]:
    """(start, end, is_special) segments of `text`; special tokens written literally are their own segment."""
    position = 0
    for match in _SPECIAL_TOKEN_RE.finditer(text):
        if match.start() > position:
            yield position, match.start(), False
        yield match.start(), match.end(), True
        position = match.end()
    if position < len(text):
        yield position, len(text), False


# ----------------------------------------------------------------------------------------------------------------
# The shared interface
# ----------------------------------------------------------------------------------------------------------------


class Tokenizer:
    """Text <-> ids. Subclasses set `vocab`, `inv_vocab`, `lower_case` and implement `tokenize*` / `decode`."""

    vocab: dict[str, int]
    inv_vocab: list[str]
    lower_case: bool
    kind: str  # "wordpiece" or "sentencepiece", the "type" of tokenizer_config.json
    source_file: str

    def _init_special_ids(self, source: str) -> None:
        missing = [token for token in SPECIAL_TOKENS if token not in self.vocab]
        if missing:
            raise ValueError(f"{source}: vocabulary lacks the special token(s) {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    @property
    def vocab_size(self) -> int:
        return len(self.inv_vocab)

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        raise NotImplementedError

    def is_continuation(self, token: str) -> bool:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        vocab, unk_id = self.vocab, self.unk_id
        return [vocab.get(token, unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        inv_vocab, size = self.inv_vocab, len(self.inv_vocab)
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < size:
                raise ValueError(f"token id {i} outside the vocabulary of {size}")
            tokens.append(inv_vocab[i])
        return tokens

    def token_ids(self, text: str) -> list[int]:
        """Ids of `text` without [CLS]/[SEP]."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def encode(self, text: str, text_pair: str | None = None, max_length: int | None = None,
               truncation: str = "original") -> Encoding:
        """[CLS] A [SEP] (B [SEP]); with max_length, a pair is cut by `truncation` (see TRUNCATION)."""
        truncate = TRUNCATION.get(truncation)
        if truncate is None:
            raise ValueError(f"truncation={truncation!r}: expected one of {sorted(TRUNCATION)}")
        first = self.token_ids(text)
        second = self.token_ids(text_pair) if text_pair else None  # "" counts as no pair, as in Hugging Face
        if max_length is not None:
            num_special = 2 if second is None else 3
            if max_length < num_special:
                raise ValueError(f"max_length={max_length} leaves no room for the {num_special} special tokens")
            first, second = truncate(first, second, max_length - num_special)
        input_ids = [self.cls_id, *first, self.sep_id]
        token_type_ids = [0] * len(input_ids)
        if second is not None:
            input_ids += [*second, self.sep_id]
            token_type_ids += [1] * (len(second) + 1)
        return Encoding(input_ids, token_type_ids, [1] * len(input_ids))


def truncate_original(first: list, second: list | None, budget: int) -> tuple[list, list | None]:
    """Google's `_truncate_seq_pair` (run_classifier.py): drop the last token of the longer side, of the second on a
    tie, until the pair fits. A short side is kept whole; when both are cut, the first keeps the odd token."""
    return _cut_to_budget(first, second, budget, first_keeps_odd=True)


def truncate_longest_first(first: list, second: list | None, budget: int) -> tuple[list, list | None]:
    """Hugging Face `tokenizers`' longest-first truncation of one or two sequences to `budget` items in all.

    A short side that fits in half the budget is kept whole; otherwise both get half, the longer side (the
    second on a tie) the odd item.
    """
    return _cut_to_budget(first, second, budget, first_keeps_odd=second is not None and len(first) > len(second))


def _cut_to_budget(first: list, second: list | None, budget: int, first_keeps_odd: bool):
    """What both rules share: the longer side is cut first; a short side that fits in half the budget is kept
    whole; otherwise each side keeps half and `first_keeps_odd` says who keeps an odd budget's extra item."""
    if second is None:
        return first[:budget], None
    if len(first) + len(second) <= budget:
        return first, second
    short = min(len(first), len(second))
    if short <= budget // 2:  # only the longer side is cut
        return (first[:budget - short], second) if len(first) > len(second) else (first, second[:budget - short])
    half, odd = budget // 2, budget % 2
    keep_first = half + odd if first_keeps_odd else half
    return first[:keep_first], second[:budget - keep_first]


# How a pair that is too long is cut. The two differ only in which side keeps the odd token when both are cut.
TRUNCATION = {
    "original": truncate_original,  # Google's BERT (fine-tuning default: faithful to the original recipe)
    "longest_first": truncate_longest_first,  # Hugging Face's tokenizers, truncation=True / "longest_first"
}


# ----------------------------------------------------------------------------------------------------------------
# WordPiece
# ----------------------------------------------------------------------------------------------------------------


def read_vocab_file(vocab_file: str) -> list[str]:
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"vocabulary file not found: {vocab_file}")
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.strip() for line in f]  # stripped, as the original load_vocab does
    if not tokens:
        raise ValueError(f"{vocab_file}: empty vocabulary")
    return tokens


def infer_lower_case(tokens: Sequence[str]) -> bool:
    """Google's convention: vocabularies are uncased unless clearly cased.

    Cased means: at least 1% of the ordinary tokens (not [bracketed] specials) contain an upper-case letter.
    bert-base-uncased has none; a cased vocabulary has thousands (names, sentence-initial words).
    """
    ordinary = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    upper = sum(1 for t in ordinary if t != t.lower())
    return upper < 0.01 * max(1, len(ordinary))


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece from a `vocab.txt` (one token per line, line number = id)."""

    kind = "wordpiece"

    def __init__(self, vocab_file: str, lower_case: bool = True,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD):
        self.source_file = str(vocab_file)
        self.inv_vocab = read_vocab_file(self.source_file)
        # On a duplicated token the last line wins, as in the original and in Hugging Face.
        self.vocab = {token: index for index, token in enumerate(self.inv_vocab)}
        self._init_special_ids(self.source_file)
        self.lower_case = bool(lower_case)
        self.max_input_chars_per_word = max_input_chars_per_word
        self._char_table = _CHAR_TABLES[self.lower_case]
        self._word_cache: dict[str, tuple[str, ...]] = {}

    def __repr__(self):
        return f"WordPieceTokenizer({self.source_file!r}, lower_case={self.lower_case}, vocab_size={self.vocab_size})"

    def is_continuation(self, token: str) -> bool:
        return token.startswith(CONTINUATION_PREFIX)

    def wordpiece(self, word: str) -> tuple[str, ...]:
        """Greedy longest-match-first pieces of one basic-tokenized word."""
        pieces = self._word_cache.get(word)
        if pieces is not None:
            return pieces
        pieces = self._wordpiece_uncached(word)
        if len(self._word_cache) > 500_000:  # bound memory on endless streams of rare words
            self._word_cache.clear()
        self._word_cache[word] = pieces
        return pieces

    def _wordpiece_uncached(self, word: str) -> tuple[str, ...]:
        if len(word) > self.max_input_chars_per_word:
            return (UNK,)
        vocab = self.vocab
        pieces = []
        start, length = 0, len(word)
        while start < length:
            end = length
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:
                return (UNK,)  # no piece matches here: the whole word is unknown
            pieces.append(piece)
            start = end
        return tuple(pieces)

    def basic_tokenize(self, text: str) -> list[str]:
        """Words after BERT's basic tokenization (special tokens written literally stay whole)."""
        words = []
        for start, end, special in _split_special_tokens(text):
            if special:
                words.append(text[start:end])
            else:
                words.extend(text[start:end].translate(self._char_table).split())
        return words

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for start, end, special in _split_special_tokens(text):
            if special:
                tokens.append(text[start:end])
                continue
            for word in text[start:end].translate(self._char_table).split():
                tokens.extend(self.wordpiece(word))
        return tokens

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """Tokens and their (start, end) character spans in `text` itself (not in the normalised text).

        A piece spans the original characters its normalised characters came from, so with accents stripped
        'Café' -> 'cafe' spans (0, 4), and a word with a dropped control character inside spans over it.
        """
        tokens: list[str] = []
        spans: list[tuple[int, int]] = []
        word_chars: list[str] = []
        word_origins: list[int] = []  # index in `text` of every character of the current word

        def end_word():
            word = "".join(word_chars)
            position = 0
            for piece in self.wordpiece(word):
                if piece == UNK:
                    length = len(word)
                else:
                    length = len(piece) - (len(CONTINUATION_PREFIX) if position else 0)
                tokens.append(piece)
                spans.append((word_origins[position], word_origins[position + length - 1] + 1))
                position += length
            word_chars.clear()
            word_origins.clear()

        table = self._char_table
        for start, end, special in _split_special_tokens(text):
            if special:
                tokens.append(text[start:end])
                spans.append((start, end))
                continue
            for index in range(start, end):
                for char in table[ord(text[index])]:
                    if char == " ":
                        if word_chars:
                            end_word()
                    else:
                        word_chars.append(char)
                        word_origins.append(index)
            if word_chars:
                end_word()
        return tokens, spans

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Like Hugging Face `decode` for BERT (transformers 5: the `tokenizers` WordPiece decoder with its
        per-token cleanup of " ." " ," " ?" " !", no further clean_up_tokenization_spaces)."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        parts = []
        for position, token in enumerate(self.convert_ids_to_tokens(ids)):
            if position:
                token = token[len(CONTINUATION_PREFIX):] if token.startswith(CONTINUATION_PREFIX) else " " + token
            parts.append(_cleanup_decoded_token(token))
        return "".join(parts)


def _cleanup_decoded_token(token: str) -> str:
    """The replacements of `tokenizers`' WordPiece decoder (applied to each token with its leading space)."""
    for dirty, clean in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
        (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):
        token = token.replace(dirty, clean)
    return token


# ----------------------------------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------------------------------


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model whose vocabulary holds the BERT special tokens (as `train_tokenizer` makes them:
    [PAD]=0, [UNK]=1, then [CLS], [SEP], [MASK] as user-defined symbols, matched where they occur in the text).

    With lower_case=True the text is lower-cased per character (outside the special tokens) before the model's
    own normalisation. Continuation pieces are those not starting with '▁'.
    """

    kind = "sentencepiece"

    def __init__(self, model_file: str, lower_case: bool = False):
        import sentencepiece

        self.source_file = str(model_file)
        if not os.path.isfile(self.source_file):
            raise FileNotFoundError(f"SentencePiece model not found: {self.source_file}")
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.Load(self.source_file)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.source_file}: not a SentencePiece model ({e})") from None
        self.inv_vocab = [self.processor.IdToPiece(i) for i in range(self.processor.GetPieceSize())]
        self.vocab = {piece: i for i, piece in enumerate(self.inv_vocab)}
        self._init_special_ids(self.source_file)
        self.lower_case = bool(lower_case)

    def __repr__(self):
        return (f"SentencePieceTokenizer({self.source_file!r}, lower_case={self.lower_case}, "
                f"vocab_size={self.vocab_size})")

    def is_continuation(self, token: str) -> bool:
        return not token.startswith(WORD_START_MARK) and token not in SPECIAL_TOKENS

    def _prepare(self, text: str) -> str:
        """The text given to the model: lower-cased per character outside the special tokens if lower_case."""
        if not self.lower_case:
            return text
        return "".join(text[start:end] if special else lower_per_character(text[start:end])
                       for start, end, special in _split_special_tokens(text))

    def _prepare_with_origins(self, text: str) -> tuple[str, list[int]]:
        """`_prepare(text)`, and for each of its characters the index of the character of `text` it comes from
        (lower-casing can lengthen a character: 'İ' -> 'i̇')."""
        if not self.lower_case:
            return text, list(range(len(text)))
        chars, origins = [], []
        for start, end, special in _split_special_tokens(text):
            for index in range(start, end):
                lowered = text[index] if special else text[index].lower()
                chars.append(lowered)
                origins.extend([index] * len(lowered))
        return "".join(chars), origins

    def tokenize(self, text: str) -> list[str]:
        # Through the ids, so that an unknown piece reads [UNK] (the model would spell out its characters).
        return self.convert_ids_to_tokens(self.token_ids(text))

    def token_ids(self, text: str) -> list[int]:
        return self.processor.EncodeAsIds(self._prepare(text))

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """Pieces and their character spans in `text`; the space a '▁' stands for is not part of the span (a lone
        '▁' piece gets an empty span)."""
        prepared, origins = self._prepare_with_origins(text)
        encoded = self.processor.encode(prepared, out_type="proto")
        # The model reports UTF-8 byte offsets into `prepared`: turn them into character indices.
        char_at_byte = []
        for index, char in enumerate(prepared):
            char_at_byte.extend([index] * len(char.encode("utf-8")))
        char_at_byte.append(len(prepared))
        origins = origins + [len(text)]
        tokens, spans = [], []
        for piece in encoded.pieces:
            tokens.append(self.inv_vocab[piece.id])
            begin, end = char_at_byte[piece.begin], char_at_byte[piece.end]
            while begin < end and prepared[begin].isspace():
                begin += 1
            if begin == end:
                spans.append((origins[begin], origins[begin]))
            else:
                spans.append((origins[begin], origins[end - 1] + 1))
        return tokens, spans

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary of {self.vocab_size}")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.processor.DecodeIds(ids)


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving
# ----------------------------------------------------------------------------------------------------------------


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable tokenizer config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if "lower_case" not in config and "do_lower_case" in config:  # a Hugging Face tokenizer_config.json
        config["lower_case"] = config["do_lower_case"]
    if "type" in config and config["type"] not in ("wordpiece", "sentencepiece"):
        raise ValueError(f"{path}: \"type\" must be \"wordpiece\" or \"sentencepiece\", not {config['type']!r}")
    if config.get("lower_case") is not None and not isinstance(config["lower_case"], bool):
        raise ValueError(f"{path}: \"lower_case\" must be true or false")
    return config


def _find_in_directory(directory: str, kind: str | None) -> tuple[str, str]:
    vocab = os.path.join(directory, WORDPIECE_VOCAB_FILE)
    model = os.path.join(directory, SENTENCEPIECE_MODEL_FILE)
    if kind != "sentencepiece" and os.path.isfile(vocab):
        return vocab, "wordpiece"
    if kind != "wordpiece" and os.path.isfile(model):
        return model, "sentencepiece"
    models = sorted(f for f in os.listdir(directory) if f.endswith(".model"))
    if kind != "wordpiece" and len(models) == 1:
        return os.path.join(directory, models[0]), "sentencepiece"
    raise FileNotFoundError(f"{directory}: holds neither {WORDPIECE_VOCAB_FILE} nor {SENTENCEPIECE_MODEL_FILE}")


def load_tokenizer(path: str, lower_case: bool | None = None) -> Tokenizer:
    """A vocab.txt, a SentencePiece .model, or a directory holding one (+ optional tokenizer_config.json).

    lower_case=None takes it from tokenizer_config.json, else infers it (see the module docstring).
    """
    path = os.fspath(path)
    config: dict = {}
    if os.path.isdir(path):
        config = _read_config(path)
        path, kind = _find_in_directory(path, config.get("type"))
    elif os.path.isfile(path):
        kind = "sentencepiece" if path.endswith(".model") else "wordpiece"
    else:
        raise FileNotFoundError(f"tokenizer not found: {path} (expected a vocab.txt, a .model or a directory)")
    if lower_case is None:
        lower_case = config.get("lower_case")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path, lower_case=bool(lower_case))
    if lower_case is None:
        lower_case = infer_lower_case(read_vocab_file(path))
    return WordPieceTokenizer(path, lower_case=lower_case)


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> str:
    """Copy the vocabulary / model into `directory` and write tokenizer_config.json; returns the directory."""
    os.makedirs(directory, exist_ok=True)
    name = WORDPIECE_VOCAB_FILE if tokenizer.kind == "wordpiece" else SENTENCEPIECE_MODEL_FILE
    target = os.path.join(directory, name)
    if not (os.path.exists(target) and os.path.samefile(tokenizer.source_file, target)):
        shutil.copyfile(tokenizer.source_file, target)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump({"type": tokenizer.kind, "lower_case": tokenizer.lower_case}, f, indent=2)
        f.write("\n")
    return directory
