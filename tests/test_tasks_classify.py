"""Generic classification / regression on user CSV, TSV and JSONL files."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bert_jax.tasks import get_task
from bert_jax.tasks.classify import TextExample


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


def test_pair_features_match_hugging_face(tokenizer, hf_tokenizer):
    examples = [TextExample(str(i), f"The first text number {i} is rather long, isn't it?", "Short pair.", "a")
                for i in range(5)] + [TextExample("5", "Naïve café owners", None, "b")]
    task = get_task("classify", labels=["a", "b"])
    for example in examples:
        features = task.featurize([example], tokenizer, max_seq_length=12, truncation="longest_first")
        reference = hf_tokenizer(example.text, example.text_pair, truncation=True, max_length=12,
                                 padding="max_length")
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


# ----------------------------------------------------------------------------------------------------------------------
# Rows that used to be merged or lost without a word: unclosed quotes, bytes that are not UTF-8, missing columns
# ----------------------------------------------------------------------------------------------------------------------


def forty_rows(bad_line, bad_row, quoted_line=None):
    """A 40-row CSV (id,text,label; line n holds row n-1) with `bad_row` at line `bad_line`, and a well quoted
    text with a comma at `quoted_line`."""
    lines = ["id,text,label"] + [f"r{i},text number {i},{'pos' if i % 2 else 'neg'}" for i in range(1, 41)]
    lines[bad_line - 1] = bad_row
    if quoted_line:
        lines[quoted_line - 1] = f'r{quoted_line - 1},"a quoted, fine text",neg'
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("quoted_line, reason", [
    # The next quote in the file (line 13's) would close the field: 8 lines merged, then text after the quote.
    (13, "unclosed quote: the quoted field opened here would span 8 lines (to line 13) and close badly "
         "(',' expected after '\"')"),
    # No other quote: the field would swallow every row to the end of the file.
    (None, "unclosed quote: the quoted field opened here runs 36 lines to the end of the file"),
])
def test_an_unclosed_quote_costs_only_its_own_row(tmp_path, quoted_line, reason):
    path = write(tmp_path / "train.csv", forty_rows(6, 'r5,"an unclosed quote,pos', quoted_line))
    task = get_task("classify", labels=["neg", "pos"])
    examples, report = task.read("train", str(path))
    good = [i for i in range(1, 41) if i != 5]
    assert [e.guid for e in examples] == [f"r{i}" for i in good]  # every other row, read as a row of its own
    assert [e.text for e in examples[:5]] == ["text number 1", "text number 2", "text number 3", "text number 4",
                                              "text number 6"]
    if quoted_line:
        assert examples[good.index(12)].text == "a quoted, fine text"
    assert report.records == 40 and [(p.location, p.reason) for p in report.skipped] == [(f"{path}:6", reason)]
    assert report.summary().startswith(f"{path}: 39 examples from 40 records, 1 skipped")
    with pytest.raises(ValueError, match=f"^{path}:6: unclosed quote"):
        task.read("train", str(path), strict=True)


def test_quoted_fields_that_span_lines_and_close_stay_one_row(tmp_path):
    path = write(tmp_path / "train.csv", 'text,label\n'
                 '"First paragraph.\nWould buy again, definitely.\nFive stars",pos\n'  # lines 2-4: one row
                 '"Say ""hi""\nthen leave",neg\n'                                      # lines 5-6: one row
                 '"two lines\nthen",pos,extra\n'                                      # lines 7-8: 3 columns
                 'plain,neg\n'                                                         # line 9
                 '"open at the end,pos\n')                                             # line 10
    examples, report = get_task("classify").read("train", str(path))
    assert [(e.guid, e.text, e.label) for e in examples] == [
        ("2", "First paragraph.\nWould buy again, definitely.\nFive stars", "pos"),
        ("5", 'Say "hi"\nthen leave', "neg"),
        ("9", "plain", "neg")]
    # Line 7's field closes but leaves a row of 3 columns: its quote is taken as unclosed, line 8 read on its own.
    assert [(p.location, p.reason) for p in report.skipped] == [
        (f"{path}:7", "unclosed quote: the quoted field opened here would span 2 lines (to line 8) and leave a row "
                      "of 3 columns, not 2"),
        (f"{path}:8", "wrong column count (expected 2, got 3)"),
        (f"{path}:10", "unclosed quote: the quoted field opened here runs 1 line to the end of the file")]
    assert report.records == 6


def test_a_row_that_is_not_utf8_is_skipped_at_its_line(tmp_path):
    latin1 = "text\tlabel\ngood\tpos\ncaf\xe9 cr\xe8me\tneg\nfine\tneg\n".encode("latin-1")
    for name, data in [("a.csv", latin1.replace(b"\t", b",")), ("a.tsv", latin1),
                       ("a.jsonl", b'{"text": "good", "label": "pos"}\n{"text": "caf\xe9", "label": "neg"}\n'
                                   b'{"text": "fine", "label": "neg"}\n')]:
        (tmp_path / name).write_bytes(data)
        path = tmp_path / name
        task = get_task("classify", labels=["neg", "pos"])
        examples, report = task.read("train", str(path))
        line = 2 if name.endswith("jsonl") else 3
        assert [e.text for e in examples] == ["good", "fine"], name
        assert [(p.location, p.reason) for p in report.skipped] == [(f"{path}:{line}", "not UTF-8 (byte 0xe9)")]
        assert report.records == 3
        with pytest.raises(ValueError, match=f"^{path}:{line}: not UTF-8 \\(byte 0xe9\\)"):
            task.read("train", str(path), strict=True)
    (tmp_path / "b.csv").write_bytes("caf\xe9,label\nx,pos\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'b.csv'}:1: not UTF-8 .* in the header row"):
        get_task("classify").read("train", str(tmp_path / "b.csv"))


def test_a_missing_label_or_text_column_is_named(tmp_path):
    path = write(tmp_path / "train.csv", "review,stars\ngreat,5\n")
    task = get_task("classify", text_column="review")  # label_column defaults to 'label'
    with pytest.raises(ValueError, match=re.escape(f"{path}: no label column 'label' in the header "
                                                   "['review', 'stars']: a train file needs its labels")):
        task.read("train", str(path))
    with pytest.raises(ValueError, match="no label column 'label'.*a validation file"):
        task.read("validation", str(path))
    examples, report = task.read("test", str(path))  # a test file may be unlabeled
    assert report.ok and [(e.text, e.label) for e in examples] == [("great", None)]
    assert get_task("classify", text_column="review", label_column="stars").read("train", str(path))[0][0].label == "5"
    with pytest.raises(ValueError, match=re.escape(f"{path}: no column ['text'] in the header ['review', 'stars']")):
        get_task("classify").read("test", str(path))
    jsonl = write(tmp_path / "train.jsonl", '{"review": "great", "stars": 5}\n{"review": "fine", "label": 4}\n')
    examples, report = task.read("train", str(jsonl))
    assert [e.label for e in examples] == ["4"]
    assert [(p.location, p.reason) for p in report.skipped] == [
        (f"{jsonl}:1", "missing label field 'label' (fields: review, stars)")]
    examples, report = get_task("classify").read("train", str(jsonl))
    assert [p.reason for p in report.skipped] == ["missing field 'text' (fields: review, stars)",
                                                  "missing field 'text' (fields: review, label)"]


def test_a_config_task_section_gives_classify_its_options_and_no_other_task_any():
    from bert_jax.tasks import TASK_SETTINGS, task_options

    settings = {"text_column": "review", "text_pair_column": "", "label_column": "stars", "labels": ("1", "2"),
                "kind": "classification", "num_choices": 4}
    options = task_options("classify", settings)
    assert set(options) == set(TASK_SETTINGS["classify"]) and options["labels"] == ["1", "2"]
    task = get_task("classify", **options)
    assert task.text_pair_column is None and task.labels == ("1", "2")  # '' = no pair column
    assert task_options("swag", settings) == {"num_choices": 4}
    assert task_options("SST-2", settings) == {} and task_options("squad_v2", settings) == {}


def test_featurize_options_come_from_the_run_settings_the_family_takes(tokenizer):
    data = {"max_seq_length": 16, "truncation": "longest_first", "doc_stride": 8, "max_query_length": 4}
    assert get_task("classify").featurize_options(data) == {"max_seq_length": 16, "truncation": "longest_first"}
    assert get_task("squad_v1.1").featurize_options(data) == {"max_seq_length": 16, "doc_stride": 8,
                                                              "max_query_length": 4}
    assert get_task("conll2003").featurize_options(data) == {"max_seq_length": 16}
    assert get_task("sst2").decode_options({"n_best_size": 3}) == {}
    assert get_task("squad_v2.0").decode_options({"n_best_size": 3, "other": 1}) == {"n_best_size": 3}
    examples = [TextExample("1", "a good film", label="pos"), TextExample("2", "a bad one", label="neg")]
    task = get_task("classify", labels=["neg", "pos"])
    features = task.featurize(examples, tokenizer, **task.featurize_options(data))
    assert features["input_ids"].shape == (2, 16) and task.labeled(examples, features)
    unlabeled = [TextExample("3", "no label")]
    assert not task.labeled(unlabeled, task.featurize(unlabeled, tokenizer, max_seq_length=16))
