"""Vocabulary training: the incremental WordPiece learner against a naive re-counting one, trained vocabularies
on real Wikipedia text (special ids, held-out [UNK] rate, in-graph use), input handling and the CLI."""

from __future__ import annotations

import collections
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bert_jax.tokenizer import SPECIAL_TOKENS, SentencePieceTokenizer, WordPieceTokenizer, load_tokenizer
from bert_jax.tokenizer_training import count_words, iter_training_lines, learn_wordpiece_vocab, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WIKI = DATA / "wikipedia"


def _paragraphs(name: str, limit: int) -> list[str]:
    with open(WIKI / name, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("<")][:limit]


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    return _paragraphs("wiki_29", 1500)


def _unk_rate(tokenizer, texts) -> float:
    ids = [i for text in texts for i in tokenizer.token_ids(text)]
    return sum(i == tokenizer.unk_id for i in ids) / len(ids)


# ----------------------------------------------------------------------------------------------------------------
# The learner against a naive reference
# ----------------------------------------------------------------------------------------------------------------


def _naive_merges(word_counts: dict[str, int], size: int, min_frequency: int) -> list[str]:
    """Byte-pair merges over word counts, re-counting every pair from scratch at each step. Same rules as the
    learner's docstring: words in order of (-count, word) number the symbols, the most frequent pair wins, ties
    go to the pair of lowest symbol ids; merging is left to right without overlaps."""
    tokens, ids = [], {}

    def symbol(token):
        if token not in ids:
            ids[token] = len(tokens)
            tokens.append(token)
        return ids[token]

    words = []
    for word, count in sorted(word_counts.items(), key=lambda wc: (-wc[1], wc[0])):
        words.append(([symbol(word[0])] + [symbol("##" + c) for c in word[1:]], count))
    while len(tokens) < size:
        pairs = collections.Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merged = symbol(tokens[best[0]] + tokens[best[1]][2:])
        for index, (symbols, count) in enumerate(words):
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[index] = (out, count)
    return tokens


def test_learner_matches_naive_recounting():
    with open(DATA / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        lines = [line.split("\t")[0] for line in f][1:300]
    counts = count_words(lines, lower_case=True)
    assert len(counts) > 1200
    learned = learn_wordpiece_vocab(counts, 300, min_frequency=2)
    assert learned == _naive_merges(counts, 300, min_frequency=2)
    assert len(learned) == 300 and len(set(learned)) == 300
    # Every word can be covered: each character is there in the forms it occurs in.
    assert {"t", "##h", "##e"} <= set(learned) and "the" in learned


def test_learner_stops_at_min_frequency():
    learned = learn_wordpiece_vocab({"abab": 1, "cd": 3}, 100, min_frequency=2)
    assert learned == ["c", "##d", "a", "##b", "##a", "cd"]  # 'cd' occurs 3 times; nothing else twice


# ----------------------------------------------------------------------------------------------------------------
# Trained on Wikipedia
# ----------------------------------------------------------------------------------------------------------------


def test_train_wordpiece_on_wikipedia(tmp_path, held_out):
    tokenizer = train_tokenizer([str(WIKI / "wiki_00")], str(tmp_path / "wp"), "wordpiece", vocab_size=3000)
    assert isinstance(tokenizer, WordPieceTokenizer) and tokenizer.lower_case is True
    assert tokenizer.inv_vocab[:5] == list(SPECIAL_TOKENS)
    special_ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    assert special_ids == (0, 1, 2, 3, 4)
    assert tokenizer.vocab_size == 3000 and len(set(tokenizer.inv_vocab)) == 3000
    assert all(t == t.lower() for t in tokenizer.inv_vocab[5:])  # lower-cased training text
    assert _unk_rate(tokenizer, held_out) < 0.005
    words = sum(len(tokenizer.basic_tokenize(t)) for t in held_out)
    assert sum(len(tokenizer.tokenize(t)) for t in held_out) < 1.6 * words  # mostly whole words
    reloaded = load_tokenizer(str(tmp_path / "wp"))
    assert reloaded.inv_vocab == tokenizer.inv_vocab and reloaded.lower_case is True
    # The in-graph tokenizer takes the trained vocabulary as it is (the pretraining pipeline relies on it).
    import tensorflow as tf

    from bert_jax.graph_tokenizer import make_graph_tokenizer

    graph = make_graph_tokenizer(tokenizer)
    assert graph.tokenize(tf.constant(held_out[:300])).to_list() == [tokenizer.token_ids(t) for t in held_out[:300]]


def test_train_sentencepiece_on_wikipedia(tmp_path, held_out):
    text = "\n".join(_paragraphs("wiki_01", 2500))
    (tmp_path / "wiki.txt").write_text(text, encoding="utf-8")
    tokenizer = train_tokenizer(str(tmp_path / "wiki.txt"), str(tmp_path / "sp"), "sentencepiece", vocab_size=2000)
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.lower_case is True
    assert tokenizer.inv_vocab[:5] == list(SPECIAL_TOKENS)
    assert 1800 <= tokenizer.vocab_size <= 2000
    assert _unk_rate(tokenizer, held_out) < 0.01
    tokens = tokenizer.tokenize("The [MASK] of France")
    assert tokens[:3] == ["▁the", "▁", "[MASK]"] and "".join(tokens[3:]) == "▁of▁france"  # lower-cased
    assert json.loads((tmp_path / "sp" / "tokenizer_config.json").read_text()) == {"type": "sentencepiece",
                                                                                 "lower_case": True}


# ----------------------------------------------------------------------------------------------------------------
# Inputs and options
# ----------------------------------------------------------------------------------------------------------------


def test_inputs_texts_gz_directories_and_globs(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("<doc id=\"1\" url=\"x\" title=\"T\">\nThe cat sat.\n\n</doc>\n", encoding="utf-8")
    with gzip.open(corpus / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("A dog ran.\nCafé au lait.\n")
    assert list(iter_training_lines([str(corpus)])) == ["The cat sat.", "A dog ran.", "Café au lait."]
    assert list(iter_training_lines([str(corpus / "**" / "*.gz")])) == ["A dog ran.", "Café au lait."]
    assert list(iter_training_lines(["just some text", str(corpus / "a.txt")])) == ["just some text", "The cat sat."]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list(iter_training_lines([str(tmp_path / "nothing-here" / "*.txt")]))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        list(iter_training_lines(["missing.txt"]))


def test_cased_unused_tokens_and_errors(tmp_path):
    texts = ["The Quick Brown Fox jumps over the lazy dog in Paris and London."] * 20
    tokenizer = train_tokenizer(texts, str(tmp_path / "cased"), "wordpiece", vocab_size=150, lower_case=False,
                                num_unused=3)
    assert tokenizer.inv_vocab[:8] == list(SPECIAL_TOKENS) + ["[unused0]", "[unused1]", "[unused2]"]
    assert tokenizer.lower_case is False and "Paris" in tokenizer.vocab
    assert tokenizer.tokenize("Paris") == ["Paris"]
    sp = train_tokenizer(texts * 5, str(tmp_path / "sp"), "sentencepiece", vocab_size=40, num_unused=2)
    assert sp.inv_vocab[:7] == list(SPECIAL_TOKENS) + ["[unused0]", "[unused1]"]
    bpe = train_tokenizer(texts * 5, str(tmp_path / "bpe"), "sentencepiece", vocab_size=60, sentencepiece_model="bpe")
    assert bpe.inv_vocab[:5] == list(SPECIAL_TOKENS)
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((tmp_path / "bpe" / "spm.model").read_bytes())
    assert proto.trainer_spec.model_type == proto.trainer_spec.BPE
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    for kind in ("wordpiece", "sentencepiece"):
        with pytest.raises(ValueError, match="no training text"):
            train_tokenizer(str(tmp_path / "empty.txt"), str(tmp_path / "out"), kind, vocab_size=100)
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(texts, str(tmp_path / "out"), "bpe", vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, str(tmp_path / "out"), "wordpiece", vocab_size=5)


def test_train_tokenizer_command(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with gzip.open(corpus / "part.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(_paragraphs("wiki_02", 300)))
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "bert_jax", *args], input=stdin.encode(), cwd=REPO, env=env,
                              capture_output=True, timeout=300)

    out = tmp_path / "vocab"
    result = run("train-tokenizer", "--input", str(corpus / "*.gz"), "--output", str(out), "--type", "wordpiece",
                 "--vocab-size", "1000")
    assert result.returncode == 0, result.stderr.decode()
    assert "1000 tokens" in result.stdout.decode()
    tokenizer = load_tokenizer(str(out))
    lines = _paragraphs("wiki_03", 5)
    printed = run("tokenize", "--vocab", str(out), stdin="\n".join(lines) + "\n")
    assert printed.returncode == 0, printed.stderr.decode()
    assert printed.stdout.decode().splitlines() == [" ".join(map(str, tokenizer.encode(t).input_ids)) for t in lines]
    failed = run("train-tokenizer", "--input", str(tmp_path / "nope" / "*.txt"), "--output", str(tmp_path / "x"))
    assert failed.returncode == 1 and "nope" in failed.stderr.decode()
    helped = run("train-tokenizer", "--help")
    assert helped.returncode == 0 and "--vocab-size" in helped.stdout.decode()
