"""In-graph tokenization for tf.data, giving exactly the ids of `bert_jax.tokenizer`.

    graph = make_graph_tokenizer(load_tokenizer("vocab.txt"))
    ds = ds.batch(256).map(graph.tokenize)          # tf.string [N] -> tf.RaggedTensor [N, (tokens)] of ids
    continuation = graph.is_continuation(ids)        # True for '##' pieces (WordPiece) / non-'▁' pieces

Ids carry no [CLS]/[SEP]. `tokenize` also works eagerly and on a scalar string (-> [(tokens)]).

How the WordPiece ids stay identical to the Python tokenizer (rather than to tf-text's own BERT normaliser, which
case-folds with NFKC and turns control characters into spaces): the character normalisation is not done by ICU
or regex ops but by a lookup table built from `bert_jax.tokenizer.normalize_char` itself, covering every code
point it changes (drop control characters, whitespace -> ' ', lower-case + NFD + strip accents, spaces around
punctuation and CJK). After it, the words are what `str.split` gives on the Python side; a word longer than
`max_input_chars_per_word` characters is swapped for a character outside the vocabulary (-> [UNK]), and
FastWordpieceTokenizer (no pre-tokenisation of its own, so no Unicode-version differences) maps words to pieces.
Special tokens written in the text ("[MASK]") are marked with two private-use sentinel code points before
normalisation and found as whole words afterwards; the rare input that already holds a sentinel code point has
it swapped for another character outside the vocabulary, which leaves every id unchanged.

SentencePiece uses tf-text's SentencepieceTokenizer on the same model file; a lower-cased SentencePiece tokenizer
first lower-cases every character outside the special tokens written in the text, with the same kind of table.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from bert_jax.tokenizer import (
    CONTINUATION_PREFIX,
    NORMALIZED_PLANES,
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    changed_chars,
    lowered_chars,
    normalize_char,
)

# Private-use code points of plane 16 with a job inside the graph (asserted absent from the vocabulary).
_OPEN_SPECIAL = "\U0010fff0"  # starts a special token written in the text
_CLOSE_SPECIAL = "\U0010fff1"  # ends it
_OUT_OF_VOCAB = "\U0010fff2"  # a word made of it is [UNK]
_SPECIAL_PATTERN = r"\[(" + "|".join(token[1:-1] for token in SPECIAL_TOKENS) + r")\]"


class CharMapper:
    """Replaces code points by strings of up to 3 characters, in-graph, from a fixed table {code point: string}.

    Code points outside the table stay as they are. A dense table holds the output of every code point in the
    ranges that can change (planes 0-3, plane 14, the sentinels U+10FFF0..U+10FFFF; asserted), identity included,
    as fixed-width rows: per character one gather finds its output length, and one gather over the ragged range of
    its row collects the output. Code points elsewhere (unassigned / private-use planes) are put back afterwards.
    """

    WIDTH = 3
    RANGES = (*NORMALIZED_PLANES, (0x10FFF0, 0x110000))  # (first, end) in table order; then the sentinels

    def __init__(self, replacements: dict[int, str]):
        self._starts, size = [], 0
        for lo, hi in self.RANGES:
            self._starts.append(size)
            size += hi - lo
        self._elsewhere = size  # the slot of code points outside RANGES: a placeholder -1, put back later
        rows = np.zeros([size + 1, self.WIDTH], dtype=np.int32)
        lengths = np.ones([size + 1], dtype=np.int32)
        for (lo, hi), start in zip(self.RANGES, self._starts):
            rows[start : start + hi - lo, 0] = np.arange(lo, hi)  # identity
        rows[size, 0] = -1
        for cp, value in replacements.items():
            if len(value) > self.WIDTH:
                raise ValueError(f"CharMapper: U+{cp:04X} -> {value!r} is longer than {self.WIDTH} characters")
            slot = next((start + cp - lo for (lo, hi), start in zip(self.RANGES, self._starts) if lo <= cp < hi), None)
            if slot is None:
                raise ValueError(f"CharMapper: U+{cp:04X} lies outside the code point ranges it covers")
            rows[slot] = 0
            rows[slot, : len(value)] = [ord(c) for c in value]
            lengths[slot] = len(value)
        self._rows = tf.constant(rows.reshape(-1))  # [slots * WIDTH]
        self._lengths = tf.constant(lengths)  # [slots]

    def _slots(self, codepoints: tf.Tensor) -> tf.Tensor:
        slots = tf.fill(tf.shape(codepoints), self._elsewhere)
        for (lo, hi), start in zip(self.RANGES, self._starts):
            slots = tf.where((codepoints >= lo) & (codepoints < hi), codepoints - lo + start, slots)
        return slots

    def map_codepoints(self, codepoints: tf.RaggedTensor, keep: tf.Tensor | None = None) -> tf.RaggedTensor:
        """[N, (chars)] int32 code points -> [N, (chars')]; `keep` (bool per flat code point) exempts some."""
        flat = codepoints.flat_values  # [M]
        slots = self._slots(flat)
        if keep is not None:
            slots = tf.where(keep, self._elsewhere, slots)  # kept as they are, like code points elsewhere
        lengths = tf.gather(self._lengths, slots)  # [M] output characters per input character
        first = slots * self.WIDTH
        values = tf.gather(self._rows, tf.ragged.range(first, first + lengths).flat_values)  # [M']
        # Put back the code points that only got a placeholder (each has exactly one output character).
        placeholders = tf.where(tf.equal(values, -1))  # [P, 1]
        elsewhere = tf.boolean_mask(flat, tf.equal(slots, self._elsewhere))  # [P], in the same order
        values = tf.tensor_scatter_nd_update(values, placeholders, elsewhere)
        ends = tf.concat([[0], tf.cumsum(lengths)], axis=0)
        row_splits = tf.gather(ends, codepoints.row_splits)  # per text: where its characters start and end
        return tf.RaggedTensor.from_row_splits(values, tf.cast(row_splits, codepoints.row_splits.dtype))

    def __call__(self, strings: tf.Tensor) -> tf.Tensor:
        codepoints = tf.strings.unicode_decode(strings, "UTF-8", errors="replace", replacement_char=0xFFFD)
        return tf.strings.unicode_encode(self.map_codepoints(codepoints), "UTF-8")


class GraphTokenizer:
    """See the module docstring. Build with `make_graph_tokenizer`."""

    def __init__(self, tokenizer: Tokenizer, dtype: tf.DType = tf.int32):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.vocab_size = tokenizer.vocab_size
        self.pad_id, self.unk_id, self.cls_id = tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id
        self.sep_id, self.mask_id = tokenizer.sep_id, tokenizer.mask_id
        self._continuation = tf.constant([tokenizer.is_continuation(t) for t in tokenizer.inv_vocab], dtype=tf.bool)

    def tokenize(self, strings) -> tf.RaggedTensor:
        """tf.string [N] -> RaggedTensor [N, (tokens)] of ids (a scalar string -> a 1-D id tensor)."""
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        if strings.shape.rank == 0:
            return self._tokenize_batch(strings[tf.newaxis])[0]
        if strings.shape.rank not in (1, None):
            raise ValueError(f"GraphTokenizer.tokenize expects a scalar or a vector of strings, got {strings.shape}")
        return self._tokenize_batch(strings)

    def is_continuation(self, ids):
        """True where an id is a continuation piece; same (ragged) shape as `ids`."""
        if isinstance(ids, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.is_continuation, ids)
        return tf.gather(self._continuation, tf.cast(ids, tf.int32))

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        raise NotImplementedError


class WordPieceGraphTokenizer(GraphTokenizer):
    def __init__(self, tokenizer: WordPieceTokenizer, dtype: tf.DType = tf.int32):
        super().__init__(tokenizer, dtype)
        self.max_chars_per_word = tokenizer.max_input_chars_per_word
        reserved = (_OPEN_SPECIAL, _CLOSE_SPECIAL, _OUT_OF_VOCAB)
        clashing = [t for t in tokenizer.inv_vocab if any(c in t for c in reserved)]
        if clashing:
            raise ValueError(f"{tokenizer.source_file}: tokens {clashing[:3]} use the code points U+10FFF0..U+10FFF2 "
                             "that the in-graph tokenizer reserves")
        table = dict(changed_chars(tokenizer.lower_case))
        table[ord(_OPEN_SPECIAL)] = " " + _OPEN_SPECIAL  # a special token is a word of its own
        table[ord(_CLOSE_SPECIAL)] = _CLOSE_SPECIAL + " "
        self._normalize = CharMapper(table)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=self._graph_vocab(tokenizer),
            suffix_indicator=CONTINUATION_PREFIX,
            max_bytes_per_word=4 * self.max_chars_per_word + 8,  # the length limit (in characters) is ours
            token_out_type=dtype,
            unknown_token=self._special_word(SPECIAL_TOKENS[1], tokenizer.lower_case),
            no_pretokenization=True,  # words come split already, by the same rules as in Python
        )

    @staticmethod
    def _special_word(token: str, lower_case: bool) -> str:
        """The word a special token in the text becomes after normalisation: '\\U0010fff0mask\\U0010fff1'."""
        name = "".join(normalize_char(c, lower_case) for c in token[1:-1])
        return _OPEN_SPECIAL + name + _CLOSE_SPECIAL

    def _graph_vocab(self, tokenizer: WordPieceTokenizer) -> list[str]:
        """The vocabulary in the form FastWordpieceTokenizer needs: special tokens as their sentinel words, and
        tokens that can never be looked up (empty, or a duplicate of a later line) as unmatchable placeholders."""
        vocab = list(tokenizer.inv_vocab)
        for index, token in enumerate(vocab):
            if token == "" or tokenizer.vocab[token] != index:
                vocab[index] = f"{_OPEN_SPECIAL}unused{index}"  # only special words start with _OPEN_SPECIAL
            elif len(token.encode("utf-8")) > 256:
                raise ValueError(f"{tokenizer.source_file}: token {token[:20]!r}... is longer than the 256 bytes "
                                 "FastWordpieceTokenizer supports")
        for token in SPECIAL_TOKENS:
            vocab[tokenizer.vocab[token]] = self._special_word(token, tokenizer.lower_case)
        return vocab

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        # Input that already holds a sentinel gets a stand-in that is equally absent from the vocabulary.
        strings = tf.strings.regex_replace(strings, f"[{_OPEN_SPECIAL}{_CLOSE_SPECIAL}]", _OUT_OF_VOCAB)
        strings = tf.strings.regex_replace(strings, _SPECIAL_PATTERN, _OPEN_SPECIAL + r"\1" + _CLOSE_SPECIAL)
        normalized = self._normalize(strings)  # [N]: words separated by spaces
        words = tf.strings.split(normalized)  # [N, (words)]
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        words = words.with_flat_values(tf.where(too_long, _OUT_OF_VOCAB, words.flat_values))
        pieces = self._wordpiece.tokenize(words)  # [N, (words), (pieces)]
        return pieces.merge_dims(1, 2)  # [N, (tokens)]


class SentencePieceGraphTokenizer(GraphTokenizer):
    def __init__(self, tokenizer: SentencePieceTokenizer, dtype: tf.DType = tf.int32):
        super().__init__(tokenizer, dtype)
        with open(tokenizer.source_file, "rb") as f:
            self._model = tf_text.SentencepieceTokenizer(model=f.read(), out_type=dtype)
        self._lower = None
        if tokenizer.lower_case:
            self._lower = CharMapper(lowered_chars())

    def _lower_outside_special_tokens(self, strings: tf.Tensor) -> tf.Tensor:
        codepoints = tf.strings.unicode_decode(strings, "UTF-8", errors="replace")  # [N, (chars)]
        keep = _inside_special_tokens(codepoints)
        return tf.strings.unicode_encode(self._lower.map_codepoints(codepoints, keep=keep), "UTF-8")

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        if self._lower is not None:
            strings = self._lower_outside_special_tokens(strings)
        return self._model.tokenize(strings)


def _inside_special_tokens(codepoints: tf.RaggedTensor) -> tf.Tensor:
    """bool per flat code point: part of a special token written in the text ("[MASK]").

    Only the positions of '[' are compared with the tokens (no regex op: tf-text's regex_split stops at NUL
    characters). Two special tokens cannot overlap, as each has a single '['.
    """
    flat = codepoints.flat_values  # [M]
    splits = tf.cast(codepoints.row_splits, tf.int64)
    last = tf.size(flat, out_type=tf.int64) - 1
    candidates = tf.where(tf.equal(flat, ord("[")))[:, 0]  # [K] positions that may start a special token
    text_end = tf.gather(splits, tf.searchsorted(splits, candidates, side="right"))  # [K] end of each one's text
    covered = []
    for token in SPECIAL_TOKENS:
        length = len(token)
        match = candidates + length <= text_end  # the token fits inside the text
        for offset, char in enumerate(token[1:], start=1):
            match &= tf.equal(tf.gather(flat, tf.minimum(candidates + offset, last)), ord(char))
        starts = tf.boolean_mask(candidates, match)  # [S]
        covered.append(tf.reshape(starts[:, tf.newaxis] + tf.range(length, dtype=tf.int64), [-1]))
    covered = tf.concat(covered, axis=0)
    marks = tf.scatter_nd(covered[:, tf.newaxis], tf.ones_like(covered, dtype=tf.int32), tf.shape(flat, tf.int64))
    return marks > 0


def make_graph_tokenizer(tokenizer: Tokenizer, dtype: tf.DType = tf.int32) -> GraphTokenizer:
    """The in-graph twin of a `bert_jax.tokenizer` tokenizer (build once; reuse across datasets)."""
    if isinstance(tokenizer, WordPieceTokenizer):
        return WordPieceGraphTokenizer(tokenizer, dtype)
    if isinstance(tokenizer, SentencePieceTokenizer):
        return SentencePieceGraphTokenizer(tokenizer, dtype)
    raise TypeError(f"make_graph_tokenizer: unsupported tokenizer {type(tokenizer).__name__}")
