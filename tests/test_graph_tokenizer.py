"""The in-graph tokenizer gives exactly the ids of the Python tokenizer (itself tested against Hugging Face in
test_tokenizer.py): on real text, on every Unicode character, eagerly and inside tf.data.Dataset.map."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import tensorflow as tf

from bert_jax.graph_tokenizer import make_graph_tokenizer
from bert_jax.tokenizer import SentencePieceTokenizer, WordPieceTokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-uncased-vocab.txt"

EDGE_CASES = [
    "",
    "   \t\n ",
    "Café naïve Ünïcödé Cafe\u0301 \u0301 lone mark",
    "東京は日本の首都です。\uf902\uf90a 한국어",
    "ab\x00cd \u200bef\u200b \tgh\rij\r\nkl\x0bmn\x85op\ufeffqr\ufffdst x\u2028y\u2029z\u00a0w\u3000v",
    "ΟΔΟΣ, σας. İstanbul ß ﬁ ² Ⅻ ＡＢＣ emoji 😀👍🏽 \ue000 private \U000f0000 use",
    "Hello, World! (yes) [no] $5.00 + 3% = #1 @user ~tilde^ `back` a_b|c\\d “quotes” — … ¿qué?",
    "a" * 100 + " " + "b" * 101 + " " + "é" * 101 + " " + "東" * 150 + " " + "x" * 500,
    "a [MASK] b a[MASK]b [mask] [MASK][MASK] [UNK] [PAD] [CLS]x[SEP] [MASK ] [[MASK]]",
    # The code points the graph reserves, written in the text, behave as in Python.
    "\U0010fff0MASK\U0010fff1 a\U0010fff0b \U0010fff1 [MA\U0010fff1SK] \U0010fff2 x\U0010fff2y",
]


def _real_texts() -> list[str]:
    squad = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    texts = [p["context"] for p in paragraphs] + [qa["question"] for p in paragraphs for qa in p["qas"]][:2000]
    with open(DATA / "wikipedia" / "wiki_00", encoding="utf-8") as f:
        texts += [line.rstrip("\n") for line in f if not line.startswith("<")][:3000]
    with open(DATA / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        texts += [line.split("\t")[0] for line in f][1:]
    return texts


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    return _real_texts()


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def wordpiece(request):
    tokenizer = WordPieceTokenizer(str(VOCAB), lower_case=request.param)
    return tokenizer, make_graph_tokenizer(tokenizer)


def _graph_ids(graph, texts, batch_size=512) -> list[list[int]]:
    ids = []
    for start in range(0, len(texts), batch_size):
        ids.extend(graph.tokenize(tf.constant(texts[start : start + batch_size])).to_list())
    return ids


def _assert_same(tokenizer, texts, got):
    expected = [tokenizer.token_ids(t) for t in texts]
    bad = [(t[:80], tokenizer.convert_ids_to_tokens(e)[:20], tokenizer.convert_ids_to_tokens(g)[:20])
           for t, e, g in zip(texts, expected, got) if e != g]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"


def test_same_ids_as_python_on_real_text_eagerly(wordpiece, real_texts):
    tokenizer, graph = wordpiece
    got = _graph_ids(graph, real_texts)
    _assert_same(tokenizer, real_texts, got)
    assert sum(map(len, got)) > 400_000


def test_same_ids_inside_tf_data_map(wordpiece, real_texts):
    tokenizer, graph = wordpiece
    texts = real_texts[::5]
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(100).map(graph.tokenize, num_parallel_calls=2)
    got = [row for batch in batched for row in batch.to_list()]
    _assert_same(tokenizer, texts, got)
    # Unbatched: a scalar string per element -> a 1-D id tensor.
    single = tf.data.Dataset.from_tensor_slices(texts[:200]).map(graph.tokenize)
    got = [ids.numpy().tolist() for ids in single]
    _assert_same(tokenizer, texts[:200], got)
    assert single.element_spec.dtype == tf.int32 and single.element_spec.shape.rank == 1


def test_same_ids_on_edge_cases(wordpiece):
    tokenizer, graph = wordpiece
    _assert_same(tokenizer, EDGE_CASES, _graph_ids(graph, EDGE_CASES))
    # Undecodable bytes: the graph reads them as U+FFFD, like Python's errors="replace"; both drop U+FFFD.
    raw = [b"ab\xffcd \xc3 x\xe2\x82", b"caf\xc3\xa9 \xf0\x9f"]
    _assert_same(tokenizer, [r.decode("utf-8", "replace") for r in raw], graph.tokenize(tf.constant(raw)).to_list())


def test_same_ids_for_every_character(wordpiece):
    """Every assigned code point below U+3400 (alphabets, punctuation, symbols) and above it every 3rd (uncased,
    where the most happens to a character) or 7th (cased) one, plus every 97th unassigned or private-use one;
    inside a word and alone."""
    tokenizer, graph = wordpiece
    sample = 3 if tokenizer.lower_case else 7
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF
             and (unicodedata.category(chr(cp)) not in ("Cn", "Co") or cp % 97 == 0)
             and (cp < 0x3400 or cp % sample == 0)]
    assert len(chars) > (50_000 if tokenizer.lower_case else 30_000)
    texts = [f"a{c}b {c}" for c in chars]
    _assert_same(tokenizer, texts, _graph_ids(graph, texts, batch_size=20_000))


def test_is_continuation(wordpiece, real_texts):
    tokenizer, graph = wordpiece
    ids = graph.tokenize(tf.constant(real_texts[:50]))
    continuation = graph.is_continuation(ids)
    assert isinstance(continuation, tf.RaggedTensor)
    expected = [[tokenizer.is_continuation(t) for t in tokenizer.convert_ids_to_tokens(row)] for row in ids.to_list()]
    assert continuation.to_list() == expected
    assert any(any(row) for row in expected) and not all(all(row) for row in expected)
    dense = graph.is_continuation(tf.constant([[tokenizer.vocab["##ing"], tokenizer.vocab["the"]]]))
    assert dense.numpy().tolist() == [[True, False]]


def test_scalar_input_and_bad_rank(wordpiece):
    tokenizer, graph = wordpiece
    ids = graph.tokenize("Hello [MASK] worlds")
    assert isinstance(ids, tf.Tensor) and ids.numpy().tolist() == tokenizer.token_ids("Hello [MASK] worlds")
    with pytest.raises(ValueError, match="scalar or a vector"):
        graph.tokenize(tf.constant([["a"]]))
    assert graph.tokenize(tf.constant([], dtype=tf.string)).to_list() == []


def test_unusual_vocabularies(tmp_path):
    lines = VOCAB.read_text(encoding="utf-8").splitlines()
    # A duplicated token: the last line wins in Python (as in the original and Hugging Face) and in the graph.
    (tmp_path / "dup.txt").write_text("\n".join(lines + ["the", "##ing"]) + "\n", encoding="utf-8")
    tokenizer = WordPieceTokenizer(str(tmp_path / "dup.txt"))
    graph = make_graph_tokenizer(tokenizer, dtype=tf.int64)
    text = "the thing is going"
    ids = graph.tokenize(tf.constant([text]))
    assert ids.dtype == tf.int64 and ids.to_list() == [tokenizer.token_ids(text)]
    assert tokenizer.vocab["the"] == len(lines) and len(lines) in ids.to_list()[0]
    (tmp_path / "bad.txt").write_text("\n".join(lines + ["x\U0010fff0"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="U\\+10FFF0"):
        make_graph_tokenizer(WordPieceTokenizer(str(tmp_path / "bad.txt")))


# ----------------------------------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> str:
    import sentencepiece

    with open(DATA / "glue" / "SST-2" / "train.tsv", encoding="utf-8") as f:
        sentences = [line.split("\t")[0] for line in f][1:5001]
    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences), model_prefix=prefix, vocab_size=600, pad_id=0, pad_piece="[PAD]",
        unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2)
    return prefix + ".model"


@pytest.mark.parametrize("lower_case", [False, True])
def test_sentencepiece_same_ids_as_python(spm_model, real_texts, lower_case):
    tokenizer = SentencePieceTokenizer(spm_model, lower_case=lower_case)
    graph = make_graph_tokenizer(tokenizer)
    texts = real_texts[:1000] + EDGE_CASES + ["A Charming [MASK] İs GOOD [mask] [PAD]"]
    _assert_same(tokenizer, texts, _graph_ids(graph, texts))
    dataset = tf.data.Dataset.from_tensor_slices(texts[::4]).batch(64).map(graph.tokenize)
    _assert_same(tokenizer, texts[::4], [row for batch in dataset for row in batch.to_list()])
    ids = graph.tokenize(tf.constant(texts[:50]))
    expected = [[tokenizer.is_continuation(t) for t in tokenizer.convert_ids_to_tokens(row)] for row in ids.to_list()]
    assert graph.is_continuation(ids).to_list() == expected
    assert any(any(row) for row in expected) and not all(all(row) for row in expected)
