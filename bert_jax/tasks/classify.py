"""Text and text-pair classification or regression on a user's own CSV / TSV / JSONL files.

    task = get_task("classify", text_column="review", label_column="stars")               # labels inferred ...
    train, report = task.read("train", "my_data/")          # my_data/train.csv (or .tsv / .jsonl)
    task = task.with_labels_from(train)                      # ... from train, then frozen for every other split
    get_task("classify", text_column="q", text_pair_column="a", labels=["no", "yes"])    # labels given
    get_task("classify", kind="regression", label_column="score")

A source is a file, or a folder holding `<split>.csv|.tsv|.jsonl` (validation may be called dev/valid/val).
CSV follows the csv module's usual quoting (a quoted field may span lines; a quote that never closes properly
costs only its own row: see bert_jax.tasks); TSV is read with QUOTE_NONE (GLUE style: a quote is just a
character); JSONL has one object per line. The first row of CSV/TSV is the header. A test file without the label
column is read as unlabeled; a train or validation file without it, or any file without a text column, is an
error naming the column, the file and the columns it has. Rows with the wrong number of columns, a line that is
not UTF-8, an unclosed quote, a JSONL record without the text or label field, an empty text, or a label outside
the task's labels are skipped and listed in the ReadReport with their file:line.

This module also holds what GLUE shares with it: `TextExample`, `featurize_text_pairs` and the decoding of
classification / regression logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence, Union

import numpy as np

from bert_jax.tasks import (ReadReport, Table, Task, decode_text, find_split_file, load_tfds, pad_to, read_lines,
                            stack)
from bert_jax.tasks import metrics


@dataclasses.dataclass(frozen=True)
class TextExample:
    guid: str                       # row id: the file's index/id column where it has one, else the row number
    text: str
    text_pair: Optional[str] = None
    label: Union[str, float, None] = None  # a label name (classification), a float (regression), None (unlabeled)


# ----------------------------------------------------------------------------------------------------------------------
# Features and decoding shared with GLUE
# ----------------------------------------------------------------------------------------------------------------------


def featurize_text_pairs(examples: Sequence[TextExample], tokenizer, max_seq_length: int, kind: str,
                         labels: Sequence[str] = (), truncation: str = "original") -> dict:
    """[CLS] text [SEP] (text_pair [SEP]), a long pair cut by `truncation` (tokenizer.TRUNCATION), zero-padded to
    max_seq_length."""
    if max_seq_length < 4:
        raise ValueError(f"max_seq_length must be at least 4, got {max_seq_length}")
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for example in examples:
        encoding = tokenizer.encode(example.text, example.text_pair, max_length=max_seq_length, truncation=truncation)
        rows["input_ids"].append(pad_to(encoding.input_ids, max_seq_length, tokenizer.pad_id))
        rows["attention_mask"].append(pad_to(encoding.attention_mask, max_seq_length))
        rows["token_type_ids"].append(pad_to(encoding.token_type_ids, max_seq_length))
    features = {key: stack(value, width=max_seq_length) for key, value in rows.items()}  # [N, T]
    features["example_index"] = np.arange(len(examples), dtype=np.int32)
    labeled = [e.label is not None for e in examples]
    if examples and all(labeled):
        features["labels"] = label_array([e.label for e in examples], kind, labels)
    elif any(labeled):
        n = labeled.index(False)
        raise ValueError(f"examples mix labeled and unlabeled rows (e.g. {examples[n].guid}); featurize them apart")
    return features


def label_array(values: Sequence, kind: str, labels: Sequence[str]) -> np.ndarray:
    if kind == "regression":
        return np.asarray(values, np.float32)
    if not labels:
        raise ValueError("the task has no label list: give labels=[...] or call task.with_labels_from(train_examples)")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the task's labels {list(labels)}")
    return np.asarray([index[v] for v in values], np.int32)


def decode_logits(outputs: dict, num_examples: int, kind: str) -> np.ndarray:
    """Class ids [N] (argmax of logits [N, L]) or scores [N] (logits [N] or [N, 1]) for regression."""
    logits = np.asarray(outputs["logits"])
    if logits.shape[0] != num_examples:
        raise ValueError(f"logits have {logits.shape[0]} rows for {num_examples} examples")
    if kind == "regression":
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]  # [N, 1] -> [N]
        if logits.ndim != 1:
            raise ValueError(f"regression logits must be [N] or [N, 1], got {logits.shape}")
        return logits.astype(np.float32)
    if logits.ndim != 2:
        raise ValueError(f"classification logits must be [N, num_labels], got {logits.shape}")
    return np.argmax(logits, axis=-1).astype(np.int32)


def gold_array(examples: Sequence[TextExample], kind: str, labels: Sequence[str]) -> np.ndarray:
    missing = [e.guid for e in examples if e.label is None]
    if missing:
        raise ValueError(f"cannot evaluate on unlabeled examples ({len(missing)}, e.g. {missing[0]})")
    return label_array([e.label for e in examples], kind, labels)


# ----------------------------------------------------------------------------------------------------------------------
# Reading the user's files
# ----------------------------------------------------------------------------------------------------------------------

_SPLIT_FILES = {
    split: [f"{stem}.{ext}" for stem in stems for ext in ("csv", "tsv", "jsonl")]
    for split, stems in {"train": ["train"], "validation": ["validation", "dev", "valid", "val"],
                         "test": ["test"]}.items()
}


def _format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "tsv"}
    if ext not in formats:
        raise ValueError(f"{path}: unknown file type {ext!r}; use .csv, .tsv or .jsonl")
    return formats[ext]


def _csv_table(path: str, fmt: str, report: ReadReport) -> Table:
    return Table(path, report, delimiter="\t", quoted=False) if fmt == "tsv" else Table(path, report)


def _jsonl_records(path: str, report: ReadReport):
    for line in read_lines(path):
        if not line.text.strip():
            continue
        report.record()
        location = f"{path}:{line.number}"
        if line.problem:
            report.skip(location, line.problem)
            continue
        try:
            record = json.loads(line.text)
        except json.JSONDecodeError as error:
            report.skip(location, f"invalid JSON ({error.msg})")
            continue
        if not isinstance(record, dict):
            report.skip(location, "not a JSON object")
            continue
        yield location, record


def needs_labels(split: str) -> bool:
    """Whether a split's file must carry its labels: training and validation files must; a test file may not."""
    return not split.startswith("test")


def _label_name(value) -> str:
    """JSON labels may be numbers or booleans: 1 and "1" name the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_label(value, kind: str, labels: Sequence[str]):
    """(label, None) or (None, why it is rejected)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "empty label"
    if kind == "regression":
        try:
            score = float(value)
        except (TypeError, ValueError):
            return None, f"label {value!r} is not a number"
        return (score, None) if np.isfinite(score) else (None, f"label {value!r} is not finite")
    name = _label_name(value)
    if labels and name not in labels:
        return None, f"label {name!r} not in the task's labels"
    return name, None


@dataclasses.dataclass(frozen=True)
class ClassifyTask(Task):
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = "label"

    def with_labels_from(self, examples: Sequence[TextExample]) -> "ClassifyTask":
        """This task with its label list inferred from (training) examples: sorted, numerically when all are
        integers; every later split is then checked against it."""
        if self.kind != "classification":
            return self
        names = {e.label for e in examples if e.label is not None}
        if not names:
            raise ValueError("cannot infer labels: no labeled example")
        integer = all(n.lstrip("-").isdigit() for n in names)
        ordered = sorted(names, key=(lambda n: int(n)) if integer else None)
        return dataclasses.replace(self, labels=tuple(ordered))

    def read_files(self, split, path, strict=False):
        if os.path.isdir(path):
            path = find_split_file(path, split, _SPLIT_FILES)
        report = ReadReport(path, strict)
        fmt = _format_of(path)
        text_columns = [c for c in (self.text_column, self.text_pair_column) if c]
        if fmt == "jsonl":
            records = _jsonl_records(path, report)
            # Decided per record where a test file may lack the field; a train or validation record must have it.
            has_labels = None if not needs_labels(split) else bool(self.label_column)
        else:
            table = _csv_table(path, fmt, report)
            has_labels = self._check_columns(path, split, table.header, text_columns)
            records = table.rows()
        examples = []
        for location, record in records:
            example = self._example(location, record, text_columns, has_labels, report)
            if example is not None:
                examples.append(example)
        return examples, report

    def _check_columns(self, path, split, header, text_columns) -> bool:
        """Whether the file has the label column; a missing text column, or a missing label column in a train or
        validation file, is a ValueError naming it, the file and the columns there are."""
        missing = [c for c in text_columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing} in the header {header} (the task's text_column / "
                             f"text_pair_column)")
        has_labels = bool(self.label_column) and self.label_column in header
        if self.label_column and not has_labels and needs_labels(split):
            raise ValueError(f"{path}: no label column {self.label_column!r} in the header {header}: a {split} file "
                             f"needs its labels (set the task's label_column; only a test file may have none)")
        return has_labels

    def _example(self, location, record, text_columns, has_labels, report):
        texts = []
        for column in text_columns:
            if column not in record:
                report.skip(location, f"missing field {column!r} (fields: {', '.join(map(str, record)) or 'none'})")
                return None
            text = "" if record[column] is None else str(record[column])
            if not text.strip():
                report.skip(location, f"empty text in {column!r}")
                return None
            texts.append(text)
        label = None
        if has_labels and self.label_column not in record:  # only a JSONL record can lack a field
            report.skip(location, f"missing label field {self.label_column!r} (fields: {', '.join(map(str, record))})")
            return None
        if has_labels or (has_labels is None and self.label_column and self.label_column in record):
            label, problem = parse_label(record.get(self.label_column), self.kind, self.labels)
            if problem:
                report.skip(location, problem)
                return None
        guid = str(record.get("id", record.get("idx", location.rsplit(":", 1)[-1])))
        return TextExample(guid, texts[0], texts[1] if len(texts) > 1 else None, label)

    def read_tfds(self, split, name, strict=False, data_dir=None):
        records, features = load_tfds(name, split, data_dir)
        report = ReadReport(f"tfds {name} {split}", strict)
        label_names = None
        if self.label_column and self.label_column in features and hasattr(features[self.label_column], "names"):
            label_names = list(features[self.label_column].names)
        text_columns = [c for c in (self.text_column, self.text_pair_column) if c]
        examples = []
        for n, record in enumerate(records):
            report.record()
            record = dict(record)
            for column in text_columns:
                if column in record:
                    record[column] = decode_text(record[column])
            if label_names is not None and self.label_column in record:
                value = int(record[self.label_column])  # ClassLabel id; -1 marks an unlabeled (test) record
                record[self.label_column] = label_names[value] if value >= 0 else None
            has_labels = self.label_column in record and record[self.label_column] is not None
            record.setdefault("idx", n)
            example = self._example(f"tfds {name} {split}[{n}]", record, text_columns, has_labels, report)
            if example is not None:
                examples.append(example)
        return examples, report

    def featurize(self, examples, tokenizer, max_seq_length=128, truncation="original"):
        return featurize_text_pairs(examples, tokenizer, max_seq_length, self.kind, self.labels, truncation)

    def decode(self, outputs, features, examples):
        return decode_logits(outputs, len(examples), self.kind)

    def evaluate(self, predictions, examples):
        gold = gold_array(examples, self.kind, self.labels)
        if self.kind == "regression":
            predictions = np.asarray(predictions, np.float64)
            return {"pearson": metrics.pearson(predictions, gold), "spearman": metrics.spearman(predictions, gold),
                    "mse": float(np.mean((predictions - gold) ** 2))}
        return {"accuracy": metrics.accuracy(predictions, gold),
                "f1_macro": metrics.f1_macro(predictions, gold, classes=range(len(self.labels)))}

    def write_predictions(self, predictions, examples, output_dir, split):
        """<output_dir>/<task>_<split>_predictions.tsv: id, prediction (label name or score)[, label]."""
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{self.name}_{split}_predictions.tsv")
        labeled = all(e.label is not None for e in examples)
        with open(path, "w", encoding="utf-8") as f:
            f.write("id\tprediction" + ("\tlabel" if labeled else "") + "\n")
            for example, prediction in zip(examples, predictions, strict=True):
                shown = f"{float(prediction):.6g}" if self.kind == "regression" else self.labels[int(prediction)]
                f.write(f"{example.guid}\t{shown}" + (f"\t{example.label}" if labeled else "") + "\n")
        return [path]


def classify_task(name: str = "classify", *, text_column: str = "text", text_pair_column: Optional[str] = None,
                  label_column: Optional[str] = "label", labels: Optional[Sequence] = None,
                  kind: str = "classification") -> ClassifyTask:
    if kind not in ("classification", "regression"):
        raise ValueError(f"classify: kind must be 'classification' or 'regression', got {kind!r}")
    if kind == "regression":
        if labels:
            raise ValueError("classify: a regression task takes no labels")
        names, best = ("pearson", "spearman", "mse"), "pearson"
        labels = ()
    else:
        names, best = ("accuracy", "f1_macro"), "accuracy"
        labels = tuple(_label_name(label) for label in (labels or ()))
        if len(set(labels)) != len(labels):
            raise ValueError(f"classify: labels repeat: {list(labels)}")
    # '' as None: a config (tasks.TASK_SETTINGS) says "no text pair / label column" with an empty string.
    return ClassifyTask(name=name, kind=kind, labels=labels, metric_names=names, best_metric=best,
                        text_column=text_column, text_pair_column=text_pair_column or None,
                        label_column=label_column or None)
