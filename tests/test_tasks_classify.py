"""Generic classification / regression on user CSV, TSV and JSONL files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bert_jax.tasks import get_task
from bert_jax.tasks.classify import TextExample
from bert_jax.tokenizer import WordPieceTokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(str(VOCAB), lower_case=True)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_quotes_pairs_and_inferred_labels(tmp_path, tokenizer):
    write(tmp_path / "train.csv", 'id,question,answer,label\n'
          '1,"Is it red, or blue?",Red,10\n'
          '2,"Multi\nline?","She said ""yes""",2\n'
          '3,Why,Because,2\n')
    write(tmp_path / "dev.csv", "id,question,answer,label\n4,What,That,10\n5,Who,Me,7\n")
    task = get_task("classify", text_column="question", text_pair_column="answer")
    train, report = task.read("train", str(tmp_path))
    assert report.ok and train == [TextExample("1", "Is it red, or blue?", "Red", "10"),
                                   TextExample("2", "Multi\nline?", 'She said "yes"', "2"),
                                   TextExample("3", "Why", "Because", "2")]
    with pytest.raises(ValueError, match="no label list"):
        task.featurize(train, tokenizer, max_seq_length=16)
    task = task.with_labels_from(train)
    assert task.labels == ("2", "10")  # integer labels sort as numbers
    dev, report = task.read("validation", str(tmp_path))  # dev.csv found for 'validation'
    assert [e.guid for e in dev] == ["4"]
    assert [(p.location, p.reason) for p in report.skipped] == [
        (f"{tmp_path / 'dev.csv'}:3", "label '7' not in the task's labels")]
    features = task.featurize(train, tokenizer, max_seq_length=16)
    np.testing.assert_array_equal(features["labels"], [1, 0, 0])
    assert features["input_ids"].shape == (3, 16) and features["token_type_ids"][0].max() == 1


def test_pair_features_match_hugging_face(tmp_path, tokenizer):
    from transformers import BertTokenizerFast

    shutil.copy(VOCAB, tmp_path / "vocab.txt")
    hf = BertTokenizerFast.from_pretrained(tmp_path, do_lower_case=True)
    examples = [TextExample(str(i), f"The first text number {i} is rather long, isn't it?", "Short pair.", "a")
                for i in range(5)] + [TextExample("5", "Naïve café owners", None, "b")]
    task = get_task("classify", labels=["a", "b"])
    for example in examples:
        features = task.featurize([example], tokenizer, max_seq_length=12, truncation="longest_first")
        reference = hf(example.text, example.text_pair, truncation=True, max_length=12, padding="max_length")
        assert features["input_ids"][0].tolist() == reference["input_ids"]
        assert features["token_type_ids"][0].tolist() == reference["token_type_ids"]
        assert features["attention_mask"][0].tolist() == reference["attention_mask"]


def test_tsv_is_read_without_quoting_and_bad_rows_are_reported(tmp_path):
    path = write(tmp_path / "data.tsv", 'text\tlabel\n'
                 'a "quoted" word\tpos\n'
                 'too\tmany\tcolumns\n'
                 '   \tneg\n'
                 'no label\t\n'
                 'fine\tneg\n')
    task = get_task("classify", labels=["neg", "pos"])
    examples, report = task.read("train", str(path))
    assert [(e.text, e.label) for e in examples] == [('a "quoted" word', "pos"), ("fine", "neg")]
    assert [(p.location, p.reason) for p in report.skipped] == [
        (f"{path}:3", "wrong column count (expected 2, got 3)"), (f"{path}:4", "empty text in 'text'"),
        (f"{path}:5", "empty label")]
    assert report.summary().startswith(f"{path}: 2 examples from 5 records, 3 skipped")


def test_jsonl_labels_of_any_json_type(tmp_path):
    path = write(tmp_path / "train.jsonl", "\n".join([
        json.dumps({"text": "good", "label": 1}),
        json.dumps({"text": "bad", "label": 0.0}),
        json.dumps({"text": "meh", "label": "1"}),
        "{not json",
        json.dumps({"label": 1}),
        json.dumps(["a list"]),
        "",
        json.dumps({"text": "", "label": 0}),
    ]) + "\n")
    task = get_task("classify")
    examples, report = task.read("train", str(path))
    assert [(e.text, e.label) for e in examples] == [("good", "1"), ("bad", "0"), ("meh", "1")]
    assert [(p.location.rsplit(":", 1)[1], p.reason.split(" (")[0]) for p in report.skipped] == [
        ("4", "invalid JSON"), ("5", "missing field 'text'"), ("6", "not a JSON object"), ("8", "empty text in 'text'")]
    assert task.with_labels_from(examples).labels == ("0", "1")


def test_regression_and_its_metrics(tmp_path):
    path = write(tmp_path / "scores.csv", "sentence,score\nA,0.5\nB,2\nC,high\nD,4.25\nE,nan\n")
    task = get_task("classify", kind="regression", text_column="sentence", label_column="score")
    examples, report = task.read("train", str(path))
    assert [e.label for e in examples] == [0.5, 2.0, 4.25]
    assert [p.reason for p in report.skipped] == ["label 'high' is not a number", "label 'nan' is not finite"]
    predictions = task.decode({"logits": np.array([[1.0], [1.5], [3.0]])}, None, examples)
    result = task.evaluate(predictions, examples)
    gold, scores = [0.5, 2.0, 4.25], [1.0, 1.5, 3.0]
    assert result == pytest.approx({"pearson": scipy.stats.pearsonr(scores, gold)[0],
                                    "spearman": scipy.stats.spearmanr(scores, gold)[0],
                                    "mse": np.mean((np.array(scores) - gold) ** 2)})


def test_classification_metrics_and_prediction_file(tmp_path):
    task = get_task("classify", labels=["neg", "neu", "pos"])
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 60)
    examples = [TextExample(str(i), "t", None, task.labels[g]) for i, g in enumerate(gold)]
    logits = rng.normal(size=(60, 3))
    predictions = task.decode({"logits": logits}, None, examples)
    result = task.evaluate(predictions, examples)
    assert result == pytest.approx({"accuracy": sklearn.metrics.accuracy_score(gold, logits.argmax(1)),
                                    "f1_macro": sklearn.metrics.f1_score(gold, logits.argmax(1), average="macro")})
    [path] = task.write_predictions(predictions, examples, str(tmp_path), "validation")
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "id\tprediction\tlabel"
    assert lines[1] == f"0\t{task.labels[logits[0].argmax()]}\t{task.labels[gold[0]]}"


def test_unlabeled_file_and_config_errors(tmp_path, tokenizer):
    write(tmp_path / "test.csv", "text\nhello\nworld\n")
    task = get_task("classify", labels=["a", "b"])
    examples, report = task.read("test", str(tmp_path))
    assert report.ok and [e.label for e in examples] == [None, None]
    assert "labels" not in task.featurize(examples, tokenizer, max_seq_length=8)
    with pytest.raises(ValueError, match=r"no column \['review'\] in the header"):
        get_task("classify", text_column="review").read("test", str(tmp_path / "test.csv"))
    write(tmp_path / "data.xml", "<x/>")
    with pytest.raises(ValueError, match="unknown file type '.xml'"):
        task.read("train", str(tmp_path / "data.xml"))
    with pytest.raises(ValueError, match="labels repeat"):
        get_task("classify", labels=["a", "a"])
    with pytest.raises(ValueError, match="kind must be"):
        get_task("classify", kind="tagging")
    mixed = [TextExample("1", "x", None, "a"), TextExample("2", "y", None, None)]
    with pytest.raises(ValueError, match="mix labeled and unlabeled"):
        task.featurize(mixed, tokenizer, max_seq_length=8)


def test_reads_any_tfds_text_dataset_through_mock_data():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    records = [{"sentence": "lovely", "label": 1, "idx": 0}, {"sentence": "awful", "label": 0, "idx": 1}]

    def as_dataset(builder, split, **kwargs):
        return tf.data.Dataset.from_generator(lambda: iter(records),
                                              output_signature=builder.info.features.get_tensor_spec())

    task = get_task("classify", text_column="sentence")
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        examples, report = task.read("train", "tfds:glue/sst2")
    assert report.ok and [(e.guid, e.text, e.label) for e in examples] == [("0", "lovely", "positive"),
                                                                          ("1", "awful", "negative")]
    with pytest.raises(ValueError, match="no TFDS dataset"):
        task.read("train", "tfds")
