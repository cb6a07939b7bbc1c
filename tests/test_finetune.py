"""Fine-tuning end to end: every task family on real data with a tiny BERT, the CLIs, initialisation, bad input.

The tiny encoders are random, so they learn by memorising: each run trains on 32 examples for 24 epochs (one batch
each) at a high learning rate, and "loss falls" compares the first and last logged training losses. Metrics
and prediction files are checked against references computed here (scikit-learn / SciPy / hand-written), the
losses of every head against Hugging Face's, and the loaded encoder against the source checkpoint's tensors.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import finetune, finetune_data, heads, predict
from tests.conftest import SHARED_DATA, load_config

REPO = Path(__file__).resolve().parents[1]
GLUE = SHARED_DATA / "glue"
VOCAB = SHARED_DATA / "vocab" / "bert-base-uncased-vocab.txt"


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny random model directory with BERT's real vocabulary, and small data sets
# ----------------------------------------------------------------------------------------------------------------------


def random_params(config, seed=0):
    """BertForPreTraining parameters drawn with NumPy (no compilation): N(0, 0.02) kernels and tables, LayerNorm 1/0."""
    import flax.linen as nn

    from bert_jax.model import BertForPreTraining, abstract_params

    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(abstract_params(BertForPreTraining(config)))

    def draw(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("LayerNorm/scale"):
            return np.ones(leaf.shape, np.float32)
        if name.endswith("bias"):
            return np.zeros(leaf.shape, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def save_tiny_model(directory, vocab_file=VOCAB, hidden=64, seed=0, max_positions=128):
    from bert_jax.model import BertConfig
    from bert_jax.pretrained import save_pretrained
    from bert_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(vocab_file))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=2, num_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=max_positions)
    save_pretrained(directory, config, random_params(config, seed), tokenizer)
    return directory


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module (and the CLI runs it starts): the runs that share shapes
    (the classification runs below all use 64 tokens, 32 rows and 24 steps) compile their steps once."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    directory = tmp_path_factory.mktemp("jax_cache")
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cache.reset_cache()  # an earlier test module may have compiled without a cache: start using this one
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield directory
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    cache.reset_cache()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# The config file of each task (a GLUE task's otherwise), loaded with its `tiny` modifier by tiny_config.
CONFIG_FILES = {"squad_v1.1": "configs/squad.py:v1.1", "conll2003": "configs/ner.py:conll2003",
                "swag": "configs/swag.py:swag", "classify": "configs/classify.py:classification"}


def tiny_config(task: str, init_checkpoint, **data):
    """The task's config file with `tiny` (32 training examples of at most 64 tokens) made a run that memorises
    them: one batch per epoch for 24 epochs at lr 2e-3, evaluation twice (of up to 48 examples)."""
    config = load_config(CONFIG_FILES.get(task, f"configs/glue.py:{task}") + ",tiny")
    config.init_checkpoint = str(init_checkpoint)
    config.data.source = ""  # not TFDS: each test gives its files (data.source, or data.train and data.dev)
    config.data.max_eval_examples = 48
    for key, value in data.items():
        config.data[key] = value
    config.optimizer.learning_rate = 2e-3
    config.train.batch_size = 32
    config.train.num_steps = 24
    config.train.eval_every = 12
    config.train.log_every = 4
    config.train.eval_batch_size = 32
    config.train.tensorboard = False
    config.train.async_checkpoints = False
    return config


def train_losses(workdir) -> list:
    lines = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def assert_loss_falls(workdir, factor=0.7):
    losses = train_losses(workdir)
    assert len(losses) >= 4, losses
    assert np.isfinite(losses).all(), losses
    assert losses[-1] < factor * losses[0], f"training loss did not fall: {losses}"


def read_tsv(path) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ----------------------------------------------------------------------------------------------------------------------
# GLUE through the command line: finetune, then predict on new input
# ----------------------------------------------------------------------------------------------------------------------


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "bert_jax", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def sst2_run(tiny_model, tmp_path_factory, compilation_cache):
    """`python -m bert_jax finetune` on SST-2 (48 train / 48 dev sentences, a 40-sentence test file)."""
    tmp = tmp_path_factory.mktemp("sst2")
    test_file = tmp / "test.tsv"
    test_file.write_text("".join((GLUE / "SST-2" / "test.tsv").read_text(encoding="utf-8").splitlines(True)[:41]))
    workdir = tmp / "workdir"
    config = tiny_config("sst2", tiny_model)  # the same settings as the runs in process, as flags
    overrides = {f"{section}.{key}": config[section][key] for section, keys in (
        ("data", ("max_seq_length", "max_train_examples", "max_eval_examples")),
        ("optimizer", ("learning_rate",)),
        ("train", ("batch_size", "num_steps", "eval_every", "log_every", "eval_batch_size", "tensorboard")))
        for key in keys}
    result = run_cli("finetune", "--config", "configs/glue.py:sst2,tiny", "--workdir", str(workdir),
                     f"--compilation_cache={compilation_cache}", f"--config.init_checkpoint={tiny_model}",
                     f"--config.data.source={GLUE / 'SST-2'}",
                     f"--config.data.test={test_file}", *(f"--config.{k}={v}" for k, v in overrides.items()))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout


def test_finetune_cli_trains_sst2_and_writes_glue_files(sst2_run):
    workdir, stdout = sst2_run
    assert "train.tsv: 67349 examples from 67349 records, 0 skipped" in stdout  # the read report is printed
    assert_loss_falls(workdir)
    # Dev predictions carry the gold label; the accuracy reported is the one of that file.
    rows = read_tsv(workdir / "predictions" / "sst2_validation.tsv")
    assert len(rows) == 48 and {r["prediction"] for r in rows} <= {"0", "1"}
    gold = [line.split("\t")[1] for line in (GLUE / "SST-2" / "dev.tsv").read_text().splitlines()[1:49]]
    assert [r["label"] for r in rows] == gold
    accuracy = np.mean([r["prediction"] == r["label"] for r in rows])
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["accuracy"] == pytest.approx(accuracy)
    best = json.loads((workdir / "best.json").read_text())
    assert best["step"] == results["step"] and best["score"] == pytest.approx(accuracy)
    # The test set gets a GLUE submission file: index<TAB>prediction for every test sentence, in order.
    submission = read_tsv(workdir / "predictions" / "SST-2.tsv")
    assert [r["index"] for r in submission] == [str(i) for i in range(40)]
    assert {r["prediction"] for r in submission} <= {"0", "1"}


def test_finetuned_model_directory_serves_predict_and_export(sst2_run, tmp_path, compilation_cache):
    from bert_jax.pretrained import load_pretrained, read_manifest

    workdir, _ = sst2_run
    model = workdir / "model"
    pretrained = load_pretrained(model)
    assert set(pretrained.params) == {"bert", "classifier"}
    assert pretrained.params["classifier"]["kernel"].shape == (64, 2)
    manifest = read_manifest(model)
    assert manifest["task"] == "sequence_classification" and manifest["labels"] == ["0", "1"]
    assert json.loads((model / "finetune.json").read_text())["task"] == "sst2"

    # predict on the same dev sentences gives the predictions the run wrote (same weights, same features).
    dev_file = tmp_path / "dev.tsv"
    dev_file.write_text("".join((GLUE / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines(True)[:49]))
    output = tmp_path / "out" / "predictions.tsv"
    result = run_cli("predict", "--checkpoint", str(model), "--input", str(dev_file), "--output", str(output),
                     "--batch_size=32", f"--compilation_cache={compilation_cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dev.tsv: 48 examples from 48 records, 0 skipped" in result.stdout
    written = read_tsv(workdir / "predictions" / "sst2_validation.tsv")
    predicted = read_tsv(output)
    assert [r["prediction"] for r in predicted] == [r["prediction"] for r in written]
    accuracy = np.mean([r["prediction"] == r["label"] for r in written])
    assert f"accuracy={accuracy:.4f}" in result.stdout

    # A checkpoint fine-tuned for one task refuses another.
    with pytest.raises(ValueError, match="fine-tuned for 'sst2', not 'cola'"):
        predict.predict(str(model), str(dev_file), str(tmp_path / "x.tsv"), task_name="cola")

    # export-hf reads it: transformers' BertForSequenceClassification gives the same logits.
    import torch
    from transformers import BertForSequenceClassification

    from bert_jax.convert import export_hf

    from bert_jax.tasks import get_task

    hf_dir = export_hf(str(model), str(tmp_path / "hf"))
    hf = BertForSequenceClassification.from_pretrained(hf_dir).eval()
    task = get_task("sst2")
    examples, _ = task.read("validation", str(dev_file))
    features = task.featurize(examples[:4], pretrained.tokenizer, max_seq_length=64)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(features["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(features["attention_mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(features["token_type_ids"], dtype=torch.long)).logits.numpy()
    objective = heads.FinetuneObjective("classification", pretrained.config, 2)
    ours = objective.apply(pretrained.params, {k: jnp.asarray(features[k]) for k in heads.INPUT_KEYS})
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_finetune_cli_rejects_a_bad_config_in_one_line(tiny_model, tmp_path):
    result = run_cli("finetune", "--config", "configs/glue.py:sst2", "--workdir", str(tmp_path / "never"),
                     f"--config.data.source={GLUE / 'SST-2'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("finetune: error: config.init_checkpoint: missing;")
    assert not (tmp_path / "never").exists()  # rejected before anything was written


# ----------------------------------------------------------------------------------------------------------------------
# The other GLUE kinds in process: CoLA (headerless, MCC), STS-B (regression), RTE (pairs)
# ----------------------------------------------------------------------------------------------------------------------


def test_cola_reports_matthews_correlation(tiny_model, tmp_path):
    from sklearn.metrics import matthews_corrcoef

    config = tiny_config("cola", tiny_model, source=str(GLUE / "CoLA"))
    result = finetune.train_and_evaluate(config, str(tmp_path / "cola"))
    assert_loss_falls(tmp_path / "cola", factor=0.8)  # CoLA is 70% acceptable: the prior alone lowers the loss
    rows = read_tsv(tmp_path / "cola" / "predictions" / "cola_validation.tsv")
    assert len(rows) == 48
    gold = [line.split("\t")[1] for line in (GLUE / "CoLA" / "dev.tsv").read_text().splitlines()[:48]]
    assert [r["label"] for r in rows] == gold
    expected = matthews_corrcoef([r["label"] for r in rows], [r["prediction"] for r in rows])
    assert result["metrics"]["mcc"] == pytest.approx(expected, abs=1e-9)


def test_stsb_is_a_regression(tiny_model, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    from bert_jax.pretrained import load_pretrained
    from bert_jax.tasks import get_task

    config = tiny_config("stsb", tiny_model, source=str(GLUE / "STS-B"))
    config.optimizer.learning_rate = 1e-3  # MSE on scores in [0, 5] is less forgiving than cross-entropy
    result = finetune.train_and_evaluate(config, str(tmp_path / "stsb"))
    assert_loss_falls(tmp_path / "stsb", factor=0.5)  # from ~(mean score)^2 down to the scores' spread
    rows = read_tsv(tmp_path / "stsb" / "predictions" / "stsb_validation.tsv")
    assert len(rows) == 48 and all(0.0 <= float(r["prediction"]) <= 5.0 for r in rows)
    # The file rounds and clips for GLUE; the metrics are those of the model's raw scores, recomputed here.
    model = load_pretrained(tmp_path / "stsb" / "model")
    assert model.params["classifier"]["kernel"].shape == (64, 1)
    task = get_task("stsb")
    examples, _ = task.read("validation", str(GLUE / "STS-B"))
    features = task.featurize(examples[:48], model.tokenizer, max_seq_length=64)
    objective = heads.FinetuneObjective("regression", model.config, 1)
    scores = np.asarray(jax.jit(objective.apply)(model.params, {k: features[k] for k in heads.INPUT_KEYS}))[:, 0]
    gold = [float(r["label"]) for r in rows]
    np.testing.assert_allclose(np.clip(scores, 0, 5), [float(r["prediction"]) for r in rows], atol=1e-3)
    assert result["metrics"]["pearson"] == pytest.approx(pearsonr(scores, gold)[0], abs=1e-4)
    assert result["metrics"]["spearman"] == pytest.approx(spearmanr(scores, gold)[0], abs=1e-4)


def test_rte_sentence_pairs(tiny_model, tmp_path):
    config = tiny_config("rte", tiny_model, source=str(GLUE / "RTE"))
    result = finetune.train_and_evaluate(config, str(tmp_path / "rte"))
    assert_loss_falls(tmp_path / "rte")
    rows = read_tsv(tmp_path / "rte" / "predictions" / "rte_validation.tsv")
    assert len(rows) == 48 and {r["prediction"] for r in rows} <= {"entailment", "not_entailment"}
    assert [r["index"] for r in rows] == [str(i) for i in range(48)]
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    assert "test.tsv" not in os.listdir(GLUE / "RTE")  # no test split in the folder: no submission file, no error
    assert not (tmp_path / "rte" / "predictions" / "RTE.tsv").exists()


def mnli_folder(directory: Path) -> Path:
    """A miniature MNLI folder in GLUE's layout (the real one is not available offline)."""
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t" \
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    pairs = [("The cat sat on the mat.", "A cat is sitting.", "entailment"),
             ("The cat sat on the mat.", "The dog is running.", "contradiction"),
             ("A man plays the guitar.", "The man is a musician.", "neutral"),
             ("A man plays the guitar.", "Nobody is playing.", "contradiction")]
    directory.mkdir()
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        rows = [f"{i}\t0\t0\tfiction\t-\t-\t-\t-\t{a}\t{b}\t{label}\t{label}\n"
                for i, (a, b, label) in enumerate(pairs)]
        (directory / name).write_text(header + "".join(rows), encoding="utf-8")
    return directory


def test_mnli_is_scored_on_matched_and_mismatched_dev(tiny_model, tmp_path):
    """Both dev sets are read from the folder (or from two files, in order); the best checkpoint is picked on the
    first (matched), the second's metrics are prefixed with its split name."""
    from bert_jax.tasks import get_task
    from bert_jax.tokenizer import load_tokenizer

    folder = mnli_folder(tmp_path / "MNLI")
    config = finetune.validate_config(tiny_config("mnli", tiny_model, source=str(folder)))
    task, train, dev, test = finetune_data.load_data(config, get_task("mnli"), load_tokenizer(str(VOCAB)))
    assert [split.name for split in dev] == ["validation_matched", "validation_mismatched"] and test == []
    # run_classifier.py's label order: contradiction, entailment, neutral
    assert list(train.features["labels"]) == [1, 0, 2, 0]

    def outputs_of(split):  # right on matched, wrong on mismatched
        right = np.eye(3)[split.features["labels"]]
        return {"logits": right if split.name == "validation_matched" else 1 - right}

    metrics, predictions = predict.evaluate_splits(task, dev, outputs_of, {})
    assert metrics == {"accuracy": 1.0, "validation_mismatched_accuracy": 0.0}
    assert task.best_metric == "accuracy"

    files = f"{folder / 'dev_matched.tsv'},{folder / 'dev_mismatched.tsv'}"
    config = finetune.validate_config(tiny_config("mnli", tiny_model, train=str(folder / "train.tsv"), dev=files))
    assert finetune_data.load_data(config, task, load_tokenizer(str(VOCAB)))[2][1].name == "validation_mismatched"


# ----------------------------------------------------------------------------------------------------------------------
# SQuAD v1.1 (dev articles split into train and eval parts), CoNLL-2003, SWAG, classify
# ----------------------------------------------------------------------------------------------------------------------


def squad_parts(tmp_path, train_questions=24, eval_questions=30):
    """Questions of one dev-v1.1 article for training and of another for evaluation, as two SQuAD JSON files."""
    dataset = json.loads((SHARED_DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))

    def part(article, limit):
        paragraphs, count = [], 0
        for paragraph in article["paragraphs"]:
            if count >= limit or len(paragraph["context"]) > 700:  # short contexts: few windows at 128 tokens
                continue
            paragraphs.append(paragraph)
            count += len(paragraph["qas"])
        return {"version": "1.1", "data": [dict(article, paragraphs=paragraphs)]}

    paths = {}
    for name, article, limit in (("train", dataset["data"][0], train_questions),
                                 ("eval", dataset["data"][1], eval_questions)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(part(article, limit)), encoding="utf-8")
    return paths


def token_f1(prediction: str, answers: list) -> float:
    """SQuAD's F1 written out: lower-case, drop punctuation and articles, bag-of-tokens overlap; best answer."""
    import re
    import string
    from collections import Counter

    def tokens(text):
        text = "".join(c for c in text.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", text).split()

    def f1(a, b):
        common = sum((Counter(a) & Counter(b)).values())
        if not a or not b:
            return float(a == b)
        return 0.0 if common == 0 else 2 * common / (len(a) + len(b))

    return max(f1(tokens(prediction), tokens(answer)) for answer in answers)


def test_squad_v1_spans(tiny_model, tmp_path):
    paths = squad_parts(tmp_path)
    config = tiny_config("squad_v1.1", tiny_model, train=str(paths["train"]), dev=str(paths["eval"]),
                         max_seq_length=128, doc_stride=64, max_query_length=32, max_train_examples=0)
    result = finetune.train_and_evaluate(config, str(tmp_path / "squad"))
    assert_loss_falls(tmp_path / "squad")  # from ~ln(128): the answer positions' distribution is learnt first
    predictions = json.loads((tmp_path / "squad" / "predictions" / "validation_predictions.json").read_text())
    nbest = json.loads((tmp_path / "squad" / "predictions" / "validation_nbest_predictions.json").read_text())
    eval_set = json.loads(paths["eval"].read_text())["data"][0]["paragraphs"]
    questions = {qa["id"]: (p["context"], [a["text"] for a in qa["answers"]]) for p in eval_set for qa in p["qas"]}
    assert set(predictions) == set(questions) == set(nbest)
    for qid, answer in predictions.items():
        assert answer in questions[qid][0]  # an extract of its own context
        assert nbest[qid][0]["text"] == answer and len(nbest[qid]) <= 20
        assert sum(entry["probability"] for entry in nbest[qid]) == pytest.approx(1.0)
    f1 = 100 * np.mean([token_f1(predictions[q], answers) for q, (_, answers) in questions.items()])
    assert result["metrics"]["f1"] == pytest.approx(f1)

    # predict on the same questions: the answers JSON at the path asked for, the n-best list beside it.
    output = tmp_path / "out" / "answers.json"
    predicted = predict.predict(str(tmp_path / "squad" / "model"), str(paths["eval"]), str(output), batch_size=32)
    assert predicted["paths"] == [str(output), str(tmp_path / "out" / "answers.nbest_predictions.json")]
    assert json.loads(output.read_text()) == predictions
    assert predicted["metrics"]["f1"] == pytest.approx(f1)


def conll_subset(source: Path, target: Path, sentences: int):
    blocks = source.read_text(encoding="utf-8").split("\n\n")
    kept = [b for b in blocks if b.strip()][:sentences + 1]  # the first block is the -DOCSTART- line
    target.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return target


def test_conll2003_tagging(tiny_model, tmp_path):
    train = conll_subset(SHARED_DATA / "conll2003" / "train.txt", tmp_path / "train.txt", 48)
    dev = conll_subset(SHARED_DATA / "conll2003" / "valid.txt", tmp_path / "valid.txt", 48)
    config = tiny_config("conll2003", tiny_model, train=str(train), dev=str(dev))
    result = finetune.train_and_evaluate(config, str(tmp_path / "ner"))
    assert_loss_falls(tmp_path / "ner", factor=0.5)  # most tags are O
    written = (tmp_path / "ner" / "predictions" / "conll2003_validation_predictions.txt").read_text().splitlines()
    source = [line.split() for line in dev.read_text().splitlines() if line and not line.startswith("-DOCSTART-")]
    tagged = [line.split() for line in written if line and not line.startswith("-DOCSTART-")]
    assert len(tagged) == len(source)
    from bert_jax.tasks.ner import CONLL2003_TAGS

    for ours, theirs in zip(tagged, source):
        assert ours[:-1] == theirs and ours[-1] in CONLL2003_TAGS  # the input columns, then the predicted tag
    accuracy = np.mean([ours[-1] == ours[-2] for ours in tagged])
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert {"precision", "recall", "f1", "accuracy", "PER_f1", "LOC_f1"} <= set(result["metrics"])

    # predict on the bare words (one per line, unlabeled): the same tags, appended to each word.
    words = tmp_path / "words.txt"
    words.write_text("\n".join(line.split()[0] if line.strip() else "" for line in dev.read_text().splitlines()))
    predicted = predict.predict(str(tmp_path / "ner" / "model"), str(words), str(tmp_path / "tags.txt"),
                                 batch_size=32)
    assert predicted["metrics"] is None  # nothing to score against
    lines = [line.split() for line in (tmp_path / "tags.txt").read_text().splitlines()
             if line and not line.startswith("-DOCSTART-")]
    assert lines == [[ours[0], ours[-1]] for ours in tagged]


SWAG_HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
               "ending0", "ending1", "ending2", "ending3", "label"]


def swag_file(path: Path, count: int, seed: int):
    """Hand-made SWAG rows: a context, four endings, the right one picked at random."""
    rng = random.Random(seed)
    subjects = ["The man", "A woman", "The child", "Someone", "The dog", "A girl", "The players", "He", "She"]
    actions = ["opens the door", "picks up a cup", "runs down the street", "sits on the bench", "waves at the crowd",
               "plays the guitar", "jumps into the pool", "reads a book", "paints the wall", "climbs the ladder"]
    endings = ["smiles at the camera.", "falls asleep.", "walks away slowly.", "drinks some water.",
               "starts to dance.", "closes the window.", "looks at the sky.", "puts on a hat."]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SWAG_HEADER)
        for i in range(count):
            subject = rng.choice(subjects)
            four = rng.sample(endings, 4)
            writer.writerow([i, f"video{i}", 1000 + i, "", f"{subject} {rng.choice(actions)}.", subject, "gold",
                             *four, rng.randrange(4)])
    return path


def test_swag_multiple_choice(tiny_model, tmp_path):
    train, dev = swag_file(tmp_path / "train.csv", 32, 0), swag_file(tmp_path / "val.csv", 24, 1)
    config = tiny_config("swag", tiny_model, train=str(train), dev=str(dev), max_seq_length=24)
    result = finetune.train_and_evaluate(config, str(tmp_path / "swag"))
    assert_loss_falls(tmp_path / "swag", factor=0.8)  # from ln 4: four near-identical sentences to tell apart
    with open(tmp_path / "swag" / "predictions" / "swag_validation_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dev, newline="") as f:
        gold = list(csv.DictReader(f))
    assert [r["fold-ind"] for r in rows] == [g["fold-ind"] for g in gold]
    assert {r["label"] for r in rows} <= {"0", "1", "2", "3"}
    accuracy = np.mean([r["label"] == g["label"] for r, g in zip(rows, gold)])
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy)


def classify_files(directory: Path):
    """A keyword task in the user's formats: JSONL train (with one bad row), CSV dev; labels are names."""
    rng = random.Random(0)
    filler = "the a movie film story actor plot scene music city river house time year day world".split()
    keywords = {"pos": ["great", "wonderful", "fun"], "neg": ["boring", "dull", "bad"]}

    def rows(count):
        for i in range(count):
            label = rng.choice(["pos", "neg"])
            words = [rng.choice(filler) for _ in range(rng.randint(2, 6))]
            words.insert(rng.randint(0, len(words)), rng.choice(keywords[label]))
            yield {"id": f"r{i}", "text": " ".join(words), "label": label}

    directory.mkdir()
    lines = [json.dumps(r) for r in rows(32)]
    lines.insert(5, json.dumps({"id": "bad", "text": "", "label": "pos"}))  # an empty text: skipped and reported
    (directory / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(directory / "dev.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "label"])
        writer.writeheader()
        writer.writerows(rows(32))
    return directory


@pytest.fixture(scope="module")
def classify_run(tiny_model, tmp_path_factory):
    """(config, workdir, result, console output) of a classify run on classify_files."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("classify")
    config = tiny_config("classify", tiny_model, source=str(classify_files(tmp / "data")), max_train_examples=0)
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        result = finetune.train_and_evaluate(config, str(tmp / "workdir"))
    return config, tmp / "workdir", result, console.getvalue()


def test_classify_own_files(classify_run):
    _, workdir, result, out = classify_run
    assert "train.jsonl: 32 examples from 33 records, 1 skipped" in out
    assert "skipped 1 x empty text in 'text'" in out and "train.jsonl:6" in out
    assert "labels inferred from the training examples: ['neg', 'pos']" in out
    assert_loss_falls(workdir)
    rows = read_tsv(workdir / "predictions" / "classify_validation_predictions.tsv")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(32)]
    assert {r["prediction"] for r in rows} <= {"neg", "pos"}
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    record = json.loads((workdir / "model" / "finetune.json").read_text())
    assert record["task_options"]["labels"] == ["neg", "pos"] and record["task_options"]["text_column"] == "text"


def test_sigterm_then_resume_gives_the_uninterrupted_model(classify_run, tmp_path, capsys):
    """Stopped by SIGTERM at step 10 (checkpoint saved), then resumed: the same batches (the permutation of epoch
    11 on), the same dropout, the same evaluations, hence bit for bit the model of the uninterrupted run."""
    import signal

    from bert_jax.pretrained import load_pretrained

    config, whole_workdir, whole, _ = classify_run

    def stop_at_step_10(step, state):
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    from bert_jax.trainer import Preempted

    with pytest.raises(Preempted) as stopped:  # saved at step 10; the CLI exits with status 143
        finetune.train_and_evaluate(config, str(tmp_path / "resumed"), hooks=[stop_at_step_10])
    assert stopped.value.step == int(stopped.value.state.step) == 10
    assert not (tmp_path / "resumed" / "predictions").exists()
    assert not (tmp_path / "resumed" / "model").exists()  # no evaluation yet, nothing exported
    resumed = finetune.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert "resuming from the checkpoint at step 10" in capsys.readouterr().out
    assert resumed["best"] == whole["best"] and resumed["metrics"] == whole["metrics"]
    ours, theirs = (load_pretrained(path / "model").params for path in (tmp_path / "resumed", whole_workdir))
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


# ----------------------------------------------------------------------------------------------------------------------
# Initialisation: exactly the encoder, a fresh head, a fresh optimizer; from a pretraining workdir too
# ----------------------------------------------------------------------------------------------------------------------


def test_init_loads_the_encoder_exactly_and_the_head_fresh(make_hf_bert, tmp_path):
    """From a converted Hugging Face classifier: every encoder tensor equals the torch tensor, the source's own
    classifier is ignored, the optimizer starts at zero."""
    from safetensors.numpy import load_file

    from bert_jax.convert import convert_checkpoint, flatten, hf_name

    hf_dir = make_hf_bert(model_class="BertForSequenceClassification", num_labels=2)
    converted = tmp_path / "converted"
    convert_checkpoint(hf_dir, converted)
    data = classify_files(tmp_path / "data")
    config = tiny_config("classify", converted, source=str(data), max_seq_length=16)
    setup = finetune.prepare(config, str(tmp_path / "workdir"))
    try:
        state = jax.device_get(setup.state)
    finally:
        setup.checkpointer.close()
    torch_tensors = load_file(str(hf_dir / "model.safetensors"))
    encoder = flatten(state.params["bert"])
    assert len(encoder) == len([k for k in torch_tensors if k.startswith("bert.")])
    for path, value in encoder.items():
        name, transposed = hf_name(("bert", *path))
        expected = torch_tensors[name].T if transposed else torch_tensors[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    head = state.params["classifier"]
    assert head["kernel"].shape == (64, 2) and not np.allclose(head["kernel"], torch_tensors["classifier.weight"].T)
    np.testing.assert_array_equal(head["bias"], 0.0)
    assert np.abs(head["kernel"]).max() <= 2 * 0.02 and 0.01 < head["kernel"].std() < 0.03  # truncated N(0, 0.02)
    assert int(state.step) == 0
    assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)


def test_init_from_a_pretraining_workdir_checkpoint(small_vocab_file, tmp_path):
    """A pretraining run's Orbax checkpoint (the trainer's TrainState, MLM/NSP heads included) gives its encoder."""
    from bert_jax import optim, pretrain, sharding, trainer
    from bert_jax.checkpoints import Checkpointer

    workdir = tmp_path / "pretraining"
    workdir.mkdir()
    config = load_config("configs/pretrain.py:base,tiny")
    config.model.dtype = "float32"
    config.data.input_files = str(tmp_path / "unused.txt")
    config.data.vocab_file = str(small_vocab_file)
    config.phases = (dict(fraction=1.0, seq_length=32, batch_size=8, max_predictions=5),)
    config.train.num_steps = 10
    config.optimizer.warmup_steps = 1
    config = pretrain.validate_config(config)
    (workdir / "config.json").write_text(config.to_json(indent=2))
    from bert_jax.tokenizer import load_tokenizer

    bert = pretrain.model_config(config, load_tokenizer(str(small_vocab_file)))
    objective = pretrain.PretrainingObjective(bert)
    tx, _ = optim.make_optimizer("adamw", learning_rate=1e-4, warmup_steps=1, total_steps=10)
    mesh = sharding.make_mesh({"data": -1})
    params = random_params(bert, seed=3)
    state, _ = trainer.create_train_state(objective, tx, mesh, seed=0, params=params)
    state = state.replace(step=jnp.int32(7))  # as if trained for 7 steps
    with Checkpointer(str(workdir / "checkpoints"), save_every=1, async_save=False) as checkpointer:
        checkpointer.save(7, state, {"phase": 0, "step": 7, "process_states": [None]}, force=True)

    ft = finetune.validate_config(tiny_config("classify", workdir, source=str(tmp_path)))
    loaded_bert, encoder, tokenizer, description = finetune.load_encoder(ft, mesh)
    assert "pretraining workdir" in description and "step 7" in description
    assert tokenizer.vocab_size == bert.vocab_size and loaded_bert.hidden_size == 128
    jax.tree.map(np.testing.assert_array_equal, encoder, params["bert"])


# ----------------------------------------------------------------------------------------------------------------------
# Losses against Hugging Face's, for every head
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,model_class,extra", [
    ("classification", "BertForSequenceClassification", dict(num_labels=3)),
    ("regression", "BertForSequenceClassification", dict(num_labels=1, problem_type="regression")),
    ("tagging", "BertForTokenClassification", dict(num_labels=5)),
    ("span", "BertForQuestionAnswering", {}),
    ("multiple_choice", "BertForMultipleChoice", {}),
])
def test_losses_match_hugging_face(kind, model_class, extra, make_hf_bert, tmp_path):
    import torch
    import transformers

    from bert_jax.convert import convert_checkpoint
    from bert_jax.pretrained import load_pretrained
    from tests.conftest import random_inputs

    hf_dir = make_hf_bert(model_class=model_class, **extra)
    convert_checkpoint(hf_dir, tmp_path / "model")
    pretrained = load_pretrained(tmp_path / "model")
    hf = getattr(transformers, model_class).from_pretrained(hf_dir).eval()
    rng = np.random.default_rng(0)
    ids, mask, types = random_inputs(6, 16, pretrained.config.vocab_size)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if kind == "multiple_choice":
        batch = {k: v.reshape(2, 3, 16) for k, v in batch.items()}  # [6, T] -> [2 questions, 3 choices, T]
        batch["labels"] = rng.integers(0, 3, 2)
    if kind == "classification":
        batch["labels"] = rng.integers(0, 3, 6)
    if kind == "regression":
        batch["labels"] = rng.uniform(0, 5, 6).astype(np.float32)
    if kind == "tagging":
        labels = rng.integers(0, 5, (6, 16))
        labels[mask == 0] = -100
        labels[:, 0] = -100
        batch["labels"] = labels
    if kind == "span":
        lengths = mask.sum(1)
        assert lengths.min() < 16  # some windows are padded: the masking is exercised
        batch["start_positions"], batch["end_positions"] = rng.integers(0, lengths), rng.integers(0, lengths)
    with torch.no_grad():
        if kind == "span":
            # Our span loss is a softmax over each window's real tokens (padding masked, so that length buckets do
            # not change it): Hugging Face's on each window alone, unpadded, averaged.
            lengths = mask.sum(1)
            theirs = np.mean([hf(**{k: torch.tensor(v[i:i + 1, :lengths[i]] if v.ndim == 2 else v[i:i + 1])
                                    for k, v in batch.items()}).loss.item() for i in range(6)])
        else:
            theirs = hf(**{k: torch.tensor(v) for k, v in batch.items()}).loss.item()
    num_labels = {"classification": 3, "tagging": 5}.get(kind, 1)
    objective = heads.FinetuneObjective(kind, pretrained.config, num_labels, num_choices=3)
    head = "qa_outputs" if kind == "span" else "classifier"
    params = {"bert": pretrained.params["bert"], head: pretrained.params[head]}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, _ = jax.jit(lambda p, b: objective.loss(p, b, jax.random.PRNGKey(0), objective.normalizers(b), False))(
        params, batch)
    assert float(loss) == pytest.approx(theirs, rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Training batches, config validation, mismatched checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def test_train_batches_cover_every_feature_once_per_epoch_and_resume():
    features = {"input_ids": np.arange(10)[:, None] * np.ones((1, 3), np.int32), "labels": np.arange(10)}
    batches = finetune.TrainBatches(features, ("input_ids", "labels"), batch_size=4, seed=1)
    seen = np.concatenate([next(batches)["labels"] for _ in range(5)])  # 20 rows = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert list(seen[:10]) != list(seen[10:])  # a new order each epoch
    state = batches.get_state()
    following = next(batches)["labels"]
    resumed = finetune.TrainBatches(features, ("input_ids", "labels"), batch_size=4, seed=1)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["labels"], following)
    # Two processes each read their half of the same global batch.
    halves = [finetune.TrainBatches(features, ("labels",), 4, 1, rows=rows) for rows in (slice(0, 2), slice(2, 4))]
    np.testing.assert_array_equal(np.concatenate([next(h)["labels"] for h in halves]), seen[:4])


def test_training_steps_follow_run_classifier(tiny_model):
    config = finetune.validate_config(tiny_config("sst2", tiny_model, source=str(GLUE / "SST-2")))
    config.unlock()
    config.train.num_steps, config.train.num_epochs, config.train.batch_size = 0, 3.0, 32
    assert finetune.training_steps(config, 1000) == (93, 32)  # int(1000 / 32 * 3); an epoch = ceil(1000 / 32)


@pytest.mark.parametrize("key,value,message", [
    ("train.num_epoch", 2, "unknown config key 'train.num_epoch' (did you mean 'train.num_epochs'?)"),
    ("init_checkpoint", "", "config.init_checkpoint: missing"),
    ("init_checkpoint", "/nonexistent/model", "config.init_checkpoint='/nonexistent/model': no such directory"),
    ("data.dev", "/nonexistent/dev.tsv", "config.data.dev='/nonexistent/dev.tsv': no such file or folder"),
    ("task.name", "glue", "config.task: unknown task 'glue'"),
    ("task.text_column", "review", "config.task.text_column='review': only the classify task takes this option"),
    ("train.batch_size", "32", "config.train.batch_size='32': expected an integer"),
    ("optimizer.warmup_fraction", 1.5, "config.optimizer.warmup_fraction=1.5: must be in [0, 1)"),
    ("data.truncation", "longest", "config.data.truncation='longest': expected one of ['longest_first', 'original']"),
])
def test_config_errors_name_the_key(key, value, message, tiny_model):
    import ml_collections

    config = tiny_config("sst2", tiny_model, source=str(GLUE / "SST-2")).to_dict()
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        finetune.validate_config(ml_collections.ConfigDict(config))
    assert message in str(error.value)


def test_mismatched_checkpoints_are_clear_errors(tiny_model, tmp_path):
    import shutil

    data = classify_files(tmp_path / "data")
    # Weights that do not fit their config (model_config.json says 64 wide, the tensors are 32 wide).
    narrow = save_tiny_model(tmp_path / "narrow", hidden=32)
    shutil.copy(tiny_model / "model_config.json", narrow / "model_config.json")
    with pytest.raises(ValueError, match=r"config.init_checkpoint=.*narrow.*word_embeddings: expected shape "
                                         r"\(30522, 64\) \(from hidden_size=64\), found \(30522, 32\)"):
        finetune.prepare(tiny_config("classify", narrow, source=str(data)), str(tmp_path / "w1"))
    # A vocabulary larger than the embedding table.
    other = save_tiny_model(tmp_path / "other", hidden=32)
    with open(other / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra1\nextra2\n")
    with pytest.raises(ValueError, match="its tokenizer has 30524 tokens but the model's vocab_size is 30522"):
        finetune.prepare(tiny_config("classify", other, source=str(data)), str(tmp_path / "w2"))
    # Sequences longer than the position table.
    with pytest.raises(ValueError, match=r"config.data.max_seq_length=256: longer than the checkpoint's "
                                         r"max_position_embeddings=128"):
        finetune.prepare(tiny_config("classify", tiny_model, source=str(data), max_seq_length=256),
                         str(tmp_path / "w3"))
    # Resuming a workdir whose checkpoint holds the 64-wide model with a 32-wide init checkpoint.
    setup = finetune.prepare(tiny_config("classify", tiny_model, source=str(data)), str(tmp_path / "w4"))
    try:
        setup.checkpointer.save(1, setup.state, {"phase": 0, "step": 1, "process_states": [None]}, force=True)
        setup.checkpointer.wait()
    finally:
        setup.checkpointer.close()
    thin = save_tiny_model(tmp_path / "thin", hidden=32)
    with pytest.raises(ValueError, match="cannot restore onto this config's task and model"):
        finetune.prepare(tiny_config("classify", thin, source=str(data)), str(tmp_path / "w4"))
