"""Journeys through the command line, each command's output handed as it is to the next one (no manual fixing):

(c) `pretrain` on a text file -> `finetune` (configs/classify.py:tiny) from that pretraining workdir -> `predict` on
    new rows -> `export-hf` -> transformers loads the export (model and tokenizer) and predicts the same labels,
    with the same logits as the bert_jax model;
(d) `convert` a Hugging Face directory -> `finetune` SQuAD v1.1 (configs/squad.py:v1.1,tiny) on dev articles ->
    `evaluate-squad` on the predictions file it wrote gives the EM / F1 that finetune reported.

Tiny models (L2), 64-token sequences and a few dozen steps: the commands' start-up and compilation dominate.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, SPECIALS, SUFFIXES, WORDS, perturb

REPO = Path(__file__).resolve().parents[1]
BERT_VOCAB = SHARED_DATA / "vocab" / "bert-base-uncased-vocab.txt"
SQUAD_DEV = SHARED_DATA / "squad" / "dev-v1.1.json"


def run_cli(*args, fast_compile: bool = False):
    """`python -m bert_jax <args>`; fails the test with the command's stderr if it does not exit 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    if fast_compile:  # XLA's backend optimisation level 0 compiles faster; only for runs whose numerics are not compared
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    result = subprocess.run([sys.executable, "-m", "bert_jax", *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[0]} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def metrics_records(workdir: Path) -> list:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# (c) pretrain -> finetune -> predict -> export-hf -> transformers
# ----------------------------------------------------------------------------------------------------------------------


def write_vocab(path: Path) -> list:
    """A ~280-piece uncased WordPiece vocabulary (the words of conftest.WORDS, letters, suffixes); returns its tokens."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = list(dict.fromkeys(SPECIALS + list(".,!?") + letters + ["##" + c for c in letters] + SUFFIXES + WORDS))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return tokens


def write_corpus(path: Path, documents: int = 60, seed: int = 0) -> None:
    """The original pretraining format: one sentence per line, a blank line between documents."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
                     for _ in range(rng.randint(3, 8))]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def keyword_rows(count: int, prefix: str, rng: random.Random) -> list:
    """A capitalised review whose label is given by one keyword among filler words (learnable in a few dozen
    steps)."""
    filler = "the a movie film story actor city river house time year day world".split()
    keywords = {"pos": ["great", "fun", "good"], "neg": ["boring", "dull", "bad"]}
    rows = []
    for i in range(count):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(filler) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(keywords[label]))
        rows.append({"id": f"{prefix}{i}", "text": " ".join(words).capitalize(), "label": label})
    return rows


def write_csv(path: Path, rows: list, columns: list) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_tsv(path: Path) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_pretrain_finetune_predict_export_then_transformers(tmp_path):
    import torch
    import transformers

    vocab = write_vocab(tmp_path / "vocab.txt")
    write_corpus(tmp_path / "corpus.txt")
    rng = random.Random(1)
    data = tmp_path / "reviews"
    data.mkdir()
    write_csv(data / "train.csv", keyword_rows(32, "train", rng), ["id", "text", "label"])
    write_csv(data / "dev.csv", keyword_rows(16, "dev", rng), ["id", "text", "label"])
    new_rows = keyword_rows(8, "new", rng)
    write_csv(tmp_path / "new.csv", new_rows, ["id", "text"])  # no label column: new data

    # 1. pretrain on the text file, with its vocabulary.
    pretraining = tmp_path / "pretraining"
    run_cli("pretrain", "--config=configs/pretrain.py:base,tiny", f"--workdir={pretraining}",
            f"--config.data.input_files={tmp_path / 'corpus.txt'}", f"--config.data.vocab_file={tmp_path / 'vocab.txt'}",
            "--config.model.dtype=float32",
            "--config.phases=({'fraction': 1.0, 'seq_length': 64, 'batch_size': 8, 'max_predictions': 10},)",
            "--config.train.num_steps=8", "--config.train.log_every=4", "--config.train.checkpoint_every=8",
            "--config.train.eval_every=0", "--config.train.tensorboard=False", fast_compile=True)
    losses = [r["loss"] for r in metrics_records(pretraining) if "loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all(), losses
    assert (pretraining / "checkpoints" / "8").is_dir()

    # 2. finetune from that pretraining workdir (its checkpoint, its vocabulary) on the CSV folder.
    finetuning = tmp_path / "finetuning"
    out = run_cli("finetune", "--config=configs/classify.py:tiny", f"--workdir={finetuning}",
                  f"--config.init_checkpoint={pretraining}", f"--config.data.source={data}",
                  "--config.optimizer.learning_rate=1e-3",
                  "--config.train.batch_size=32", "--config.train.num_steps=16", "--config.train.eval_every=16",
                  "--config.train.log_every=4", "--config.train.eval_batch_size=16", "--config.train.tensorboard=False",
                  fast_compile=True)
    assert f"encoder from the pretraining workdir {pretraining} at step 8" in out
    assert "labels inferred from the training examples: ['neg', 'pos']" in out
    losses = [r["loss"] for r in metrics_records(finetuning) if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses  # the keyword is learnt

    # 3. predict on new rows with the fine-tuned model directory.
    predictions = tmp_path / "predicted" / "new.tsv"
    out = run_cli("predict", f"--checkpoint={finetuning / 'model'}", f"--input={tmp_path / 'new.csv'}",
                  f"--output={predictions}", "--batch_size=8")
    assert "new.csv: 8 examples from 8 records, 0 skipped" in out
    predicted = read_tsv(predictions)
    assert [r["id"] for r in predicted] == [r["id"] for r in new_rows]
    labels = [r["prediction"] for r in predicted]
    assert set(labels) == {"neg", "pos"}, labels  # both classes: a swapped label order could not hide

    # 4. export-hf the same directory; transformers loads the tokenizer and the classifier.
    hf_dir = tmp_path / "hf"
    run_cli("export-hf", f"--checkpoint={finetuning / 'model'}", f"--output={hf_dir}")
    assert (hf_dir / "vocab.txt").read_text(encoding="utf-8") == (tmp_path / "vocab.txt").read_text(encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(hf_dir)
    assert len(tokenizer) == len(vocab)
    for word in ("movie", "great", "boring", "[CLS]", "##s"):  # the pretraining vocab.txt's ids
        assert tokenizer.convert_tokens_to_ids(word) == vocab.index(word), word
    texts = [r["text"] for r in new_rows]
    encoded = tokenizer(texts, padding="max_length", max_length=64, return_tensors="np")
    from bert_jax.pretrained import load_pretrained

    ours = load_pretrained(finetuning / "model")
    for text, ids in zip(texts, encoded["input_ids"]):  # the same word pieces as bert_jax's (both lower-case)
        assert ours.tokenizer.encode(text).input_ids == [i for i in ids.tolist() if i != 0], text

    hf = transformers.BertForSequenceClassification.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_logits = hf(**{k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()}).logits.numpy()
    assert [hf.config.id2label[i] for i in hf_logits.argmax(-1)] == labels

    import jax.numpy as jnp

    from bert_jax.heads import FinetuneObjective

    objective = FinetuneObjective("classification", ours.config, 2)
    our_logits = objective.apply(ours.params, {k: jnp.asarray(v, jnp.int32) for k, v in encoded.items()})
    np.testing.assert_allclose(np.asarray(our_logits, np.float32), hf_logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# (d) convert a Hugging Face directory -> finetune SQuAD -> evaluate-squad
# ----------------------------------------------------------------------------------------------------------------------


def save_hf_bert(directory: Path) -> None:
    """A random L2/H64 BertForPreTraining with BERT's uncased vocabulary, saved as transformers saves a model and its
    fast tokenizer (transformers 5: tokenizer.json, no vocab.txt)."""
    import torch
    import transformers

    tokenizer = transformers.BertTokenizerFast(vocab_file=str(BERT_VOCAB), do_lower_case=True)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    perturb(transformers.BertForPreTraining(config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_squad_folder(folder: Path, train_articles=(0, 1), dev_articles=(2,), questions_per_article=16) -> dict:
    """train-v1.1.json and dev-v1.1.json (the names a SQuAD folder holds) from disjoint articles of the real dev set
    (there is no train set in ../shared/data); short paragraphs, ~16 questions per article. Returns the dev set."""
    dataset = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))

    def subset(indices):
        articles = []
        for index in indices:
            article, paragraphs, count = dataset["data"][index], [], 0
            for paragraph in article["paragraphs"]:
                if count < questions_per_article and len(paragraph["context"]) <= 600:
                    paragraphs.append(paragraph)
                    count += len(paragraph["qas"])
            articles.append(dict(article, paragraphs=paragraphs))
        return {"version": dataset["version"], "data": articles}

    folder.mkdir()
    dev = subset(dev_articles)
    (folder / "train-v1.1.json").write_text(json.dumps(subset(train_articles)), encoding="utf-8")
    (folder / "dev-v1.1.json").write_text(json.dumps(dev), encoding="utf-8")
    return dev


def test_convert_finetune_squad_then_evaluate_squad(tmp_path):
    hf_dir = tmp_path / "hf"
    save_hf_bert(hf_dir)
    squad = tmp_path / "squad"
    dev = write_squad_folder(squad)
    questions = {qa["id"]: paragraph["context"] for article in dev["data"] for paragraph in article["paragraphs"]
                 for qa in paragraph["qas"]}

    # 1. convert the Hugging Face directory.
    converted = tmp_path / "converted"
    out = run_cli("convert", f"--source={hf_dir}", f"--output={converted}")
    assert "huggingface checkpoint; parts: encoder, pooler, mlm, nsp" in out

    # 2. finetune SQuAD v1.1 from the converted directory on the folder.
    workdir = tmp_path / "finetuning"
    out = run_cli("finetune", "--config=configs/squad.py:v1.1,tiny", f"--workdir={workdir}",
                  f"--config.init_checkpoint={converted}", f"--config.data.source={squad}",
                  "--config.data.max_train_examples=0",  # every training question (tiny keeps the first 32)
                  "--config.optimizer.learning_rate=1e-3", "--config.train.batch_size=32",
                  "--config.train.num_steps=12", "--config.train.eval_every=12", "--config.train.log_every=4",
                  "--config.train.eval_batch_size=64", "--config.train.tensorboard=False", fast_compile=True)
    assert f"encoder from the bert_jax model directory {converted}" in out
    assert f"dev-v1.1.json: {len(questions)} examples from {len(questions)} records, 0 skipped" in out
    losses = [r["loss"] for r in metrics_records(workdir) if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    reported = json.loads((workdir / "eval_results.json").read_text())
    predictions_file = workdir / "predictions" / "validation_predictions.json"
    predictions = json.loads(predictions_file.read_text())
    assert set(predictions) == set(questions)
    assert all(answer in questions[qid] for qid, answer in predictions.items())  # extracts of their own context
    assert reported["f1"] > 0  # some overlap, so that the comparison below is not 0 == 0

    # 3. evaluate-squad on the predictions file finetune wrote, against the dev file it read.
    scored = json.loads(run_cli("evaluate-squad", f"--data={squad / 'dev-v1.1.json'}",
                                f"--predictions={predictions_file}"))
    assert scored == {"exact_match": pytest.approx(reported["exact_match"]), "f1": pytest.approx(reported["f1"])}
    assert f"exact_match={reported['exact_match']:.4f} f1={reported['f1']:.4f}" in out  # what finetune printed
