"""Multiple choice in the SWAG layout: a context and N candidate endings, one right.

SWAG's CSV files (train.csv, val.csv, test.csv) carry a header with at least
`video-id, fold-ind, startphrase, sent1, sent2, gold-source, ending0 .. ending3, label` (the release adds an
unnamed index column first; the test file has no label). As in the SWAG paper's BERT baseline, choice i is
encoded as the pair `[CLS] sent1 [SEP] sent2 + " " + ending_i [SEP]`, giving features [N, choices, T].
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Optional

import numpy as np

from bert_jax.tasks import ReadReport, Table, Task, find_split_file, pad_to, stack
from bert_jax.tasks import metrics

_SPLIT_FILES = {"train": ["train.csv"], "validation": ["val.csv", "dev.csv", "validation.csv"], "test": ["test.csv"]}


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    guid: str
    context: str
    endings: tuple                # each choice's full second segment (SWAG: sent2 + " " + ending_i)
    label: Optional[int] = None   # index of the right ending; None when unlabeled


def read_swag_csv(path: str, num_choices: int = 4, strict: bool = False) -> tuple[list, ReadReport]:
    report = ReadReport(path, strict)
    ending_columns = [f"ending{i}" for i in range(num_choices)]
    table = Table(path, report)  # not UTF-8, unclosed quotes, wrong column counts: skipped there with file:line
    header = table.header
    missing = [c for c in ("sent1", "sent2", *ending_columns) if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing} in the header {header}")
    has_labels = "label" in header
    examples = []
    for location, record in table.rows():
        if not record["sent1"].strip():
            report.skip(location, "empty text in 'sent1'")
            continue
        empty = [c for c in ending_columns if not record[c].strip()]
        if empty:
            report.skip(location, f"empty text in {empty[0]!r}")
            continue
        label = None
        if has_labels:
            value = record["label"].strip()
            if value not in {str(i) for i in range(num_choices)}:
                report.skip(location, f"label {value!r} not in 0..{num_choices - 1}")
                continue
            label = int(value)
        guid = record.get("fold-ind") or location.rsplit(":", 1)[-1]
        endings = tuple(" ".join(p for p in (record["sent2"].strip(), record[c].strip()) if p)
                        for c in ending_columns)
        examples.append(ChoiceExample(guid, record["sent1"], endings, label))
    return examples, report


@dataclasses.dataclass(frozen=True)
class MultipleChoiceTask(Task):
    num_choices: int = 4

    def read_files(self, split, path, strict=False):
        if os.path.isdir(path):
            path = find_split_file(path, split, _SPLIT_FILES)
        return read_swag_csv(path, self.num_choices, strict)

    def featurize(self, examples, tokenizer, max_seq_length=128, truncation="original"):
        """input_ids, attention_mask, token_type_ids [N, choices, T]; labels [N] when every example has one."""
        if max_seq_length < 4:
            raise ValueError(f"max_seq_length must be at least 4, got {max_seq_length}")
        rows = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for example in examples:
            if len(example.endings) != self.num_choices:
                raise ValueError(f"example {example.guid} has {len(example.endings)} endings, "
                                 f"the task expects {self.num_choices}")
            per_choice = [tokenizer.encode(example.context, ending, max_length=max_seq_length, truncation=truncation)
                          for ending in example.endings]
            rows["input_ids"].append([pad_to(e.input_ids, max_seq_length, tokenizer.pad_id) for e in per_choice])
            rows["attention_mask"].append([pad_to(e.attention_mask, max_seq_length) for e in per_choice])
            rows["token_type_ids"].append([pad_to(e.token_type_ids, max_seq_length) for e in per_choice])
        features = {}
        for key, value in rows.items():
            array = stack(value)  # [N, C, T]
            features[key] = array if len(examples) else np.zeros((0, self.num_choices, max_seq_length), np.int32)
        features["example_index"] = np.arange(len(examples), dtype=np.int32)
        if examples and all(e.label is not None for e in examples):
            features["labels"] = np.asarray([e.label for e in examples], np.int32)
        return features

    def decode(self, outputs, features, examples):
        logits = np.asarray(outputs["logits"])
        if logits.shape != (len(examples), self.num_choices):
            raise ValueError(f"logits must be [{len(examples)}, {self.num_choices}], got {logits.shape}")
        return np.argmax(logits, axis=-1).astype(np.int32)

    def evaluate(self, predictions, examples):
        if any(e.label is None for e in examples):
            raise ValueError("cannot evaluate on unlabeled examples")
        return {"accuracy": metrics.accuracy(np.asarray(predictions), np.asarray([e.label for e in examples]))}

    def write_predictions(self, predictions, examples, output_dir, split):
        """<output_dir>/<task>_<split>_predictions.csv: `fold-ind,label` (the index of the chosen ending)."""
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{self.name}_{split}_predictions.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["fold-ind", "label"])
            for example, prediction in zip(examples, predictions, strict=True):
                writer.writerow([example.guid, int(prediction)])
        return [path]


def swag_task(name: str = "swag", num_choices: int = 4) -> MultipleChoiceTask:
    return MultipleChoiceTask(name=name, kind="multiple_choice", labels=tuple(str(i) for i in range(num_choices)),
                              metric_names=("accuracy",), best_metric="accuracy", num_choices=num_choices)
