"""SWAG-style multiple choice: the release's CSV layout, [N, choices, T] features vs Hugging Face, bad rows."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from bert_jax.tasks import get_task
from bert_jax.tasks.multiple_choice import ChoiceExample

HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
          "ending0", "ending1", "ending2", "ending3", "label"]  # SWAG's train.csv / val.csv (index column first)


def swag_csv(rows, header=HEADER):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


ROWS = [
    ["0", "lsmdc3001", "19", "Students lower their eyes nervously. She", "Students lower their eyes nervously.", "She",
     "gold", "pats her shoulder, then saunters toward someone.", "turns with two students.",
     "walks slowly towards someone.", "wheels around as her dog thunders out.", "2"],
    ["1", "anetv_jkn6", "3", "He rides the motorcycle down the hall, \"fast\".",
     "He rides the motorcycle down the hall, \"fast\".", "The man", "gen", "stops.", "smiles.", "jumps off.",
     "falls down.", "0"],
]


def test_reads_swag_csv(tmp_path):
    (tmp_path / "val.csv").write_text(swag_csv(ROWS), encoding="utf-8")
    task = get_task("swag")
    examples, report = task.read("validation", str(tmp_path))
    assert report.ok and len(examples) == 2
    assert examples[0] == ChoiceExample(
        "19", "Students lower their eyes nervously.",
        ("She pats her shoulder, then saunters toward someone.", "She turns with two students.",
         "She walks slowly towards someone.", "She wheels around as her dog thunders out."), 2)
    assert examples[1].context == 'He rides the motorcycle down the hall, "fast".' and examples[1].label == 0


def test_test_file_without_labels(tmp_path, tokenizer):
    header = [c for c in HEADER if c != "label"]
    (tmp_path / "test.csv").write_text(swag_csv([r[:-1] for r in ROWS], header), encoding="utf-8")
    task = get_task("swag")
    examples, report = task.read("test", str(tmp_path))
    assert report.ok and [e.label for e in examples] == [None, None]
    features = task.featurize(examples, tokenizer, max_seq_length=24)
    assert "labels" not in features and features["input_ids"].shape == (2, 4, 24)
    logits = np.array([[0.1, 0.2, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    predictions = task.decode({"logits": logits}, features, examples)
    [path] = task.write_predictions(predictions, examples, str(tmp_path / "out"), "test")
    assert Path(path).read_text().splitlines() == ["fold-ind,label", "19,2", "3,0"]


def test_features_match_hugging_face_per_choice(tmp_path, tokenizer, hf_tokenizer):
    (tmp_path / "train.csv").write_text(swag_csv(ROWS), encoding="utf-8")
    task = get_task("swag")
    examples, _ = task.read("train", str(tmp_path))
    features = task.featurize(examples, tokenizer, max_seq_length=20, truncation="longest_first")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert features[key].shape == (2, 4, 20) and features[key].dtype == np.int32
    np.testing.assert_array_equal(features["labels"], [2, 0])
    for n, example in enumerate(examples):
        reference = hf_tokenizer([example.context] * 4, list(example.endings), truncation=True, max_length=20,
                                 padding="max_length")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(features[key][n], np.asarray(reference[key]))


def test_bad_rows_are_reported(tmp_path):
    rows = [ROWS[0], ROWS[1][:-2] + [ROWS[1][-1]], ROWS[1][:-1] + ["4"], ROWS[1][:8] + ["", *ROWS[1][9:]]]
    path = tmp_path / "train.csv"
    path.write_text(swag_csv(rows), encoding="utf-8")
    examples, report = get_task("swag").read("train", str(path))
    assert [e.guid for e in examples] == ["19"]
    assert [(p.location, p.reason) for p in report.skipped] == [
        (f"{path}:3", "wrong column count (expected 12, got 11)"), (f"{path}:4", "label '4' not in 0..3"),
        (f"{path}:5", "empty text in 'ending1'")]


def test_decode_and_accuracy():
    task = get_task("swag")
    examples = [ChoiceExample(str(i), "c", ("a", "b", "c", "d"), label) for i, label in enumerate([0, 3, 1, 1])]
    logits = np.array([[2.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 5.0, 0], [0, 1.0, 0, 0]])
    predictions = task.decode({"logits": logits}, None, examples)
    np.testing.assert_array_equal(predictions, [0, 3, 2, 1])
    assert task.evaluate(predictions, examples) == {"accuracy": 0.75}
    with pytest.raises(ValueError, match=r"logits must be \[4, 4\]"):
        task.decode({"logits": logits[:, :3]}, None, examples)
    assert task.kind == "multiple_choice" and task.num_labels == 1
