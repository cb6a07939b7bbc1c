"""bert_jax.tokenizer against Hugging Face's BertTokenizerFast (Rust `tokenizers`) on real text and edge cases,
and SentencePieceTokenizer against the sentencepiece processor itself."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from bert_jax import tokenizer as tok_lib
from bert_jax.tokenizer import (
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    infer_lower_case,
    load_tokenizer,
    save_tokenizer,
    truncate_longest_first,
    truncate_original,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-uncased-vocab.txt"


# ----------------------------------------------------------------------------------------------------------------
# Real text and the reference tokenizers
# ----------------------------------------------------------------------------------------------------------------


def _tsv_column(path: Path, columns, header=True) -> list[str]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[1:] if header else rows
    return [row[c] for row in rows for c in columns if len(row) > c]


def _conll_sentences(path: Path) -> list[str]:
    sentences, words = [], []
    for line in open(path, encoding="utf-8"):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(" ".join(words))
            words = []
        else:
            words.append(line.split()[0])
    return sentences + ([" ".join(words)] if words else [])


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    squad = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    texts = [p["context"] for p in paragraphs]
    texts += [qa["question"] for p in paragraphs for qa in p["qas"]][:4000]
    texts += _tsv_column(DATA / "glue" / "SST-2" / "dev.tsv", [0])
    texts += _tsv_column(DATA / "glue" / "CoLA" / "dev.tsv", [3], header=False)
    texts += _tsv_column(DATA / "glue" / "STS-B" / "dev.tsv", [7, 8])
    texts += _tsv_column(DATA / "glue" / "RTE" / "dev.tsv", [1, 2])
    texts += _conll_sentences(DATA / "conll2003" / "valid.txt")
    return texts


def _hf(lower_case: bool):
    from transformers import BertTokenizerFast

    # transformers 5 ignores vocab_file= (it would build a 5-token vocabulary); vocab= takes the file.
    hf = BertTokenizerFast(vocab=str(VOCAB), do_lower_case=lower_case)
    assert len(hf) == 30522
    return hf


@pytest.fixture(scope="module")
def hf_uncased():
    return _hf(True)


@pytest.fixture(scope="module")
def hf_cased():
    return _hf(False)


@pytest.fixture(scope="module")
def uncased():
    return WordPieceTokenizer(str(VOCAB), lower_case=True)


@pytest.fixture(scope="module")
def cased():
    return WordPieceTokenizer(str(VOCAB), lower_case=False)


def _first_difference(texts, expected, got, hf):
    for text, a, b in zip(texts, expected, got):
        if a != b:
            return f"{text[:120]!r}: HF {hf.convert_ids_to_tokens(a)[:30]} ours {hf.convert_ids_to_tokens(b)[:30]}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Ids against Hugging Face
# ----------------------------------------------------------------------------------------------------------------


def test_ids_match_hugging_face_on_real_text(real_texts, uncased, hf_uncased):
    assert len(real_texts) >= 10_000
    expected = hf_uncased(real_texts, add_special_tokens=False)["input_ids"]
    got = [uncased.token_ids(text) for text in real_texts]
    mismatches = sum(a != b for a, b in zip(expected, got))
    example = _first_difference(real_texts, expected, got, hf_uncased)
    assert mismatches == 0, f"{mismatches} texts differ, e.g. {example}"
    assert sum(map(len, got)) > 500_000  # a real amount of text was compared


def test_cased_ids_match_hugging_face_do_lower_case_false(real_texts, cased, hf_cased):
    texts = real_texts[:2500] + real_texts[-2500:]
    expected = hf_cased(texts, add_special_tokens=False)["input_ids"]
    got = [cased.token_ids(text) for text in texts]
    assert expected == got, _first_difference(texts, expected, got, hf_cased)
    # Case really kept: capitalised words are not in this uncased vocabulary.
    assert sum(ids.count(cased.unk_id) for ids in got) > 1000


EDGE_CASES = [
    "",
    "   \t  \n ",
    "Café naïve résumé Ünïcödé façade",  # precomposed accents
    "Cafe\u0301 nai\u0308ve",  # combining accents
    " \u0301 lone combining mark",
    "東京は日本の首都です。北京和上海",  # CJK ideographs split, kana not
    "\uf902\uf90a compatibility ideographs",
    "한국어 텍스트",
    "ab\x00cd \u200bef\u200b \tgh\rij\r\nkl\x0bmn\x85op\ufeffqr\ufffdst",  # control characters, BOM, U+FFFD
    "x\u2028y\u2029z\u00a0w\u3000v\u2003u",  # separators and Unicode spaces
    "ΟΔΟΣ, σας. İstanbul ß Straße",  # final sigma, dotted capital I, sharp s
    "Hello, World! (yes) [no] {maybe} $5.00 + 3% = #1 @user ~tilde^ `back` a_b|c\\d",
    "“Curly quotes” — em-dash – en-dash … ellipsis « guillemets » ¿qué? ¡sí!",
    "ﬁ ﬂ ² ½ Ⅻ ＡＢＣ ｱｲｳ",  # compatibility characters (NFD leaves them; NFKC would not)
    "emoji 😀👍🏽 and symbols ©®™ ∑∫√",
    "a" * 100 + " " + "b" * 101 + " " + "é" * 101,  # max_input_chars_per_word = 100
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "a [MASK] b a[MASK]b [mask] [MASK][MASK] [UNK] [PAD] [CLS]x[SEP] [MASK ]",  # special tokens in text
    "don't won't I'm you're it's we've",
    "1,234,567.89 3.14159 2019-05-01 10:30pm",
]


@pytest.mark.parametrize("lower_case", [True, False])
def test_edge_cases_match_hugging_face(lower_case, uncased, cased, hf_uncased, hf_cased):
    ours, hf = (uncased, hf_uncased) if lower_case else (cased, hf_cased)
    expected = hf(EDGE_CASES, add_special_tokens=False)["input_ids"]
    for text, ids in zip(EDGE_CASES, expected):
        assert ours.token_ids(text) == ids, (text, hf.convert_ids_to_tokens(ids), ours.tokenize(text))


@pytest.mark.parametrize("lower_case", [True, False])
def test_single_characters_match_hugging_face(lower_case, uncased, cased, hf_uncased, hf_cased):
    """Every character whose Unicode category is the same in Unicode 3.2 and today (so that Python's tables and
    the older ones inside `tokenizers` agree), inside a word and alone: all below U+3400, a sample above."""
    ours, hf = (uncased, hf_uncased) if lower_case else (cased, hf_cased)
    old = unicodedata.ucd_3_2_0
    chars = [chr(cp) for cp in range(0x110000)
             if (cp < 0x3400 or cp % 13 == 0)
             and unicodedata.category(chr(cp)) not in ("Cn", "Co", "Cs")
             and old.category(chr(cp)) == unicodedata.category(chr(cp))]
    assert len(chars) > 15_000
    texts = [f"a{c}b {c}" for c in chars]
    expected = hf(texts, add_special_tokens=False)["input_ids"]
    bad = [(hex(ord(c)), hf.convert_ids_to_tokens(ids)) for c, t, ids in zip(chars, texts, expected)
           if ours.token_ids(t) != ids]
    assert not bad, f"{len(bad)} characters differ, e.g. {bad[:5]}"


def test_characters_outside_the_normalized_planes_are_left_alone():
    # changed_chars() (the in-graph table) only looks at planes 0-3 and 14; everything else must be inert.
    outside = [cp for cp in range(0x40000, 0x110000, 7) if not tok_lib.NORMALIZED_PLANES[1][0] <= cp < 0xF0000]
    assert {unicodedata.category(chr(cp)) for cp in outside} <= {"Cn", "Co"}
    assert all(tok_lib.normalize_char(chr(cp), lower) == chr(cp) for cp in outside[::50] for lower in (True, False))


def test_documented_difference_private_use_characters(uncased, hf_uncased):
    # Google's original keeps private-use characters (-> [UNK]); Hugging Face drops them.
    assert uncased.tokenize("a \ue000 b") == ["a", "[UNK]", "b"]
    assert hf_uncased.tokenize("a \ue000 b") == ["a", "b"]


def test_long_words_become_unk(uncased):
    assert uncased.tokenize("a" * 100) != ["[UNK]"]
    assert uncased.tokenize("a" * 101) == ["[UNK]"]
    assert uncased.tokenize("é" * 101) == ["[UNK]"]  # counted after accent stripping, in characters
    tokens, spans = uncased.tokenize_with_offsets("x " + "b" * 150 + " y")
    assert tokens == ["x", "[UNK]", "y"] and spans == [(0, 1), (2, 152), (153, 154)]


def test_wordpiece_is_greedy_longest_match_first(uncased):
    for word in ["unaffable", "tokenization", "antidisestablishmentarianism", "jaxformers", "playing"]:
        pieces = uncased.tokenize(word)
        assert "".join(p[2:] if i else p for i, p in enumerate(pieces)) == word
        assert all(p.startswith("##") == (i > 0) for i, p in enumerate(pieces))
        position = 0
        for i, piece in enumerate(pieces):  # each piece is the longest vocabulary entry that fits there
            length = len(piece) - (2 if i else 0)
            longer = [word[position:end] for end in range(position + length + 1, len(word) + 1)]
            assert not any((("##" if i else "") + s) in uncased.vocab for s in longer), (word, piece)
            position += length
    assert uncased.tokenize("playing") == ["playing"] and len(uncased.tokenize("unaffable")) == 3


# ----------------------------------------------------------------------------------------------------------------
# Offsets
# ----------------------------------------------------------------------------------------------------------------


def _normalized(tokenizer, text: str) -> str:
    return "".join(tokenizer.basic_tokenize(text))


@pytest.mark.parametrize("lower_case", [True, False])
def test_offsets_index_the_original_text(lower_case, real_texts, uncased, cased, hf_uncased, hf_cased):
    ours, hf = (uncased, hf_uncased) if lower_case else (cased, hf_cased)
    texts = real_texts[:600] + EDGE_CASES
    hf_offsets = hf(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for text, expected in zip(texts, hf_offsets):
        tokens, spans = ours.tokenize_with_offsets(text)
        assert tokens == ours.tokenize(text)
        assert spans == [tuple(s) for s in expected], text[:80]
        for token, (start, end) in zip(tokens, spans):
            assert 0 <= start < end <= len(text)
            if token not in SPECIAL_TOKENS:
                piece = token[2:] if ours.is_continuation(token) else token
                normalized = _normalized(ours, text[start:end])
                # A character that normalises to several (Hangul syllable -> jamo) may be split between pieces.
                assert normalized == piece or (end - start == 1 and piece in normalized), (text[start:end], token)


def test_offsets_with_accents_and_spaces(uncased, cased):
    text = "  Café\u200b  nai\u0308ve\tÜber "
    tokens, spans = uncased.tokenize_with_offsets(text)
    assert tokens == ["cafe", "naive", "uber"]
    assert [text[s:e] for s, e in spans] == ["Café", "nai\u0308ve", "Über"]
    tokens, spans = uncased.tokenize_with_offsets("Paris [MASK] France")
    assert tokens == ["paris", "[MASK]", "france"] and spans == [(0, 5), (6, 12), (13, 19)]
    tokens, spans = cased.tokenize_with_offsets("Café naïve")  # cased keeps accents: not in this vocabulary
    assert tokens == ["[UNK]", "[UNK]"] and spans == [(0, 4), (5, 10)]


# ----------------------------------------------------------------------------------------------------------------
# encode / decode
# ----------------------------------------------------------------------------------------------------------------


def test_encode_with_truncation_matches_hugging_face(uncased, hf_uncased):
    pairs = list(zip(_tsv_column(DATA / "glue" / "RTE" / "dev.tsv", [1]),
                     _tsv_column(DATA / "glue" / "RTE" / "dev.tsv", [2])))[:120]
    rng = random.Random(0)
    for a, b in pairs:
        max_length = rng.choice([5, 8, 16, 33, 64, 128, 512])
        for text, pair in ((a, b), (b, a), (a, None)):
            expected = hf_uncased(text, pair, truncation=True, max_length=max_length)
            got = uncased.encode(text, pair, max_length=max_length, truncation="longest_first")
            assert got.input_ids == expected["input_ids"], (max_length, text[:50], (pair or "")[:50])
            assert got.token_type_ids == expected["token_type_ids"]
            assert got.attention_mask == expected["attention_mask"]
    # No max_length: no truncation; an empty pair is no pair (as in Hugging Face).
    long_text = " ".join(a for a, _ in pairs[:20])
    assert uncased.encode(long_text).input_ids == hf_uncased(long_text)["input_ids"]
    assert uncased.encode("hi", "").input_ids == hf_uncased("hi", "")["input_ids"] == [101, 7632, 102]
    with pytest.raises(ValueError, match="max_length"):
        uncased.encode("a", "b", max_length=2)


def google_truncate_seq_pair(tokens_a, tokens_b, max_length):
    """run_classifier.py's _truncate_seq_pair, transcribed: pop from the longer list, from B on a tie."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return tokens_a, tokens_b


def test_original_truncation_is_googles_truncate_seq_pair(uncased):
    """The default pair truncation is the original's; it differs from Hugging Face's only in who keeps the odd
    token when both sides are cut (here: the first)."""
    for len_a in range(0, 14):
        for len_b in range(0, 14):
            for budget in range(0, 20):
                a, b = list(range(len_a)), list(range(100, 100 + len_b))
                assert truncate_original(a, b, budget) == google_truncate_seq_pair(a, b, budget), (len_a, len_b, budget)
    assert truncate_original([1, 2, 3, 4], [5, 6, 7, 8], 5) == ([1, 2, 3], [5, 6])
    assert truncate_longest_first([1, 2, 3, 4], [5, 6, 7, 8], 5) == ([1, 2], [5, 6, 7])
    pairs = list(zip(_tsv_column(DATA / "glue" / "RTE" / "dev.tsv", [1]),
                     _tsv_column(DATA / "glue" / "RTE" / "dev.tsv", [2])))[:60]
    for a, b in pairs:
        for max_length in (9, 16, 33, 64):
            tokens_a, tokens_b = google_truncate_seq_pair(uncased.token_ids(a), uncased.token_ids(b), max_length - 3)
            expected = [uncased.cls_id, *tokens_a, uncased.sep_id, *tokens_b, uncased.sep_id]
            assert uncased.encode(a, b, max_length=max_length).input_ids == expected
    with pytest.raises(ValueError, match="truncation='longest'"):
        uncased.encode("a", "b", max_length=8, truncation="longest")


def test_decode_matches_hugging_face(real_texts, uncased, hf_uncased):
    texts = real_texts[2000:2400] + EDGE_CASES + [
        "I don't know. Isn't it? Yes! No, 'quoted' it's we're I'm they've",
        "hello [MASK] world [UNK] [SEP] x",
    ]
    rng = random.Random(1)
    id_lists = [hf_uncased(t)["input_ids"] for t in texts]
    id_lists += [[rng.randrange(30522) for _ in range(rng.randrange(1, 30))] for _ in range(300)]  # pieces first too
    for ids in id_lists:
        for skip in (True, False):
            assert uncased.decode(ids, skip_special_tokens=skip) == hf_uncased.decode(ids, skip_special_tokens=skip)
    with pytest.raises(ValueError, match="30522"):
        uncased.decode([101, 30522])


# ----------------------------------------------------------------------------------------------------------------
# Loading, saving, errors
# ----------------------------------------------------------------------------------------------------------------


def test_vocab_without_special_tokens_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[SEP\], \[MASK\]"):
        WordPieceTokenizer(str(path))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        WordPieceTokenizer(str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir: holds neither"):
        load_tokenizer(str(tmp_path / "empty_dir"))


def test_infer_lower_case():
    uncased_tokens = tok_lib.read_vocab_file(str(VOCAB))
    assert infer_lower_case(uncased_tokens) is True
    # A cased vocabulary: the same tokens, a third of them capitalised (bert-base-cased has ~30%).
    cased_tokens = [t.capitalize() if i % 3 == 0 and not t.startswith("[") else t for i, t in enumerate(uncased_tokens)]
    assert infer_lower_case(cased_tokens) is False
    assert infer_lower_case(uncased_tokens + ["Paris", "London"]) is True  # a few names do not make it cased


def test_load_and_save_tokenizer(tmp_path):
    assert load_tokenizer(str(VOCAB)).lower_case is True
    assert load_tokenizer(str(VOCAB), lower_case=False).lower_case is False
    saved = save_tokenizer(WordPieceTokenizer(str(VOCAB), lower_case=False), str(tmp_path / "model"))
    assert json.loads((tmp_path / "model" / "tokenizer_config.json").read_text()) == {"type": "wordpiece",
                                                                                      "lower_case": False}
    reloaded = load_tokenizer(saved)
    assert isinstance(reloaded, WordPieceTokenizer) and reloaded.lower_case is False
    assert reloaded.inv_vocab == tok_lib.read_vocab_file(str(VOCAB))
    assert load_tokenizer(saved, lower_case=True).lower_case is True  # an explicit choice wins
    # A Hugging Face directory: its tokenizer_config.json says do_lower_case.
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_bytes(VOCAB.read_bytes())
    hf_config = {"do_lower_case": False, "tokenizer_class": "BertTokenizer"}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(hf_config))
    assert load_tokenizer(str(hf_dir)).lower_case is False
    (hf_dir / "tokenizer_config.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(str(hf_dir))


# ----------------------------------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> str:
    """A small unigram model with the BERT specials, trained directly with the sentencepiece trainer."""
    import sentencepiece

    sentences = _tsv_column(DATA / "glue" / "SST-2" / "train.tsv", [0])[:6000]
    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences), model_prefix=prefix, vocab_size=800, pad_id=0, pad_piece="[PAD]",
        unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2)
    return prefix + ".model"


def test_sentencepiece_ids_and_specials(spm_model, real_texts):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    sp = SentencePieceTokenizer(spm_model)
    assert (sp.pad_id, sp.unk_id, sp.cls_id, sp.sep_id, sp.mask_id) == (0, 1, 2, 3, 4)
    for text in real_texts[:300] + ["a [MASK] b", ""]:
        assert sp.token_ids(text) == processor.encode(text)
        assert sp.tokenize(text) == [processor.id_to_piece(i) for i in processor.encode(text)]
    assert sp.tokenize("the [MASK] movie")[:4] == ["▁the", "▁", "[MASK]", "▁movie"]
    assert sp.encode("a film", "a movie").input_ids[0] == 2 and sp.encode("x").input_ids[-1] == 3
    assert sp.is_continuation("ing") and not sp.is_continuation("▁the") and not sp.is_continuation("[MASK]")
    ids = processor.encode("a charming movie")
    assert sp.decode([2] + ids + [3]) == processor.decode(ids) == "a charming movie"


def test_sentencepiece_lower_case_and_offsets(spm_model):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    sp = SentencePieceTokenizer(spm_model, lower_case=True)
    assert sp.token_ids("A Charming [MASK] İs GOOD") == processor.encode("a charming [MASK] i\u0307s good")
    text = "  A Charming [MASK] film,  GOOD fun"
    tokens, spans = sp.tokenize_with_offsets(text)
    assert tokens == sp.tokenize(text) and "[MASK]" in tokens
    for token, (start, end) in zip(tokens, spans):
        original = text[start:end]
        if token != "[UNK]":
            expected = original if token in SPECIAL_TOKENS else original.lower()
            assert token.replace("▁", "") == expected, (token, original)
    assert [text[s:e] for t, (s, e) in zip(tokens, spans) if t == "[MASK]"] == ["[MASK]"]


def test_sentencepiece_load_and_errors(spm_model, tmp_path):
    directory = tmp_path / "sp"
    save_tokenizer(SentencePieceTokenizer(spm_model, lower_case=True), str(directory))
    assert (directory / "spm.model").is_file()
    loaded = load_tokenizer(str(directory))
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.lower_case is True
    assert isinstance(load_tokenizer(spm_model), SentencePieceTokenizer)
    import sentencepiece

    prefix = str(tmp_path / "plain")
    sentencepiece.SentencePieceTrainer.Train(sentence_iterator=iter(["a b c d e f g"] * 50), model_prefix=prefix,
                                             vocab_size=12, minloglevel=2)
    with pytest.raises(ValueError, match=r"plain\.model.*\[PAD\]"):
        SentencePieceTokenizer(prefix + ".model")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(str(tmp_path / "nope.model"))


# ----------------------------------------------------------------------------------------------------------------
# The tokenize command
# ----------------------------------------------------------------------------------------------------------------


def _run_cli(*args: str, stdin: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bert_jax", *args], input=stdin.encode("utf-8"), cwd=REPO,
                          capture_output=True, env=env, timeout=120)


def test_tokenize_command(real_texts, hf_uncased, hf_cased):
    lines = ["Hello, world!", "", "Café [MASK] naïve 東京"] + real_texts[5000:5030]
    result = _run_cli("tokenize", "--vocab", str(VOCAB), stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr.decode()
    printed = result.stdout.decode().splitlines()
    assert printed == [" ".join(map(str, hf_uncased(line)["input_ids"])) for line in lines]
    assert printed[1] == "101 102"  # an empty line is [CLS] [SEP]
    crlf = _run_cli("tokenize", "--vocab", str(VOCAB), stdin="one\rtwo\r\nthree")  # CR inside a line, CRLF, no EOL
    assert crlf.stdout.decode().splitlines() == ["101 2028 2048 102", "101 2093 102"]
    cased_result = _run_cli("tokenize", "--vocab", str(VOCAB), "--cased", stdin="Hello World\n")
    assert cased_result.stdout.decode().split() == [str(i) for i in hf_cased("Hello World")["input_ids"]]
    helped = _run_cli("tokenize", "--help", stdin="")
    assert helped.returncode == 0 and "--vocab" in helped.stdout.decode()
    missing = _run_cli("tokenize", "--vocab", "no/such/vocab.txt", stdin="x\n")
    assert missing.returncode == 1 and "no/such/vocab.txt" in missing.stderr.decode()
