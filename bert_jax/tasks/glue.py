"""GLUE: the nine tasks, read from the original distribution TSVs or from TFDS (`glue/<task>`).

    name   folder  kind            text columns (header names)      label column  labels (id order)
    cola   CoLA    classification  sentence (no header: column 3)  column 1      0, 1
    sst2   SST-2   classification  sentence                         label         0, 1
    mrpc   MRPC    classification  #1 String, #2 String             Quality       0, 1
    stsb   STS-B   regression      sentence1, sentence2             score         float in [0, 5]
    qqp    QQP     classification  question1, question2             is_duplicate  0, 1
    mnli   MNLI    classification  sentence1, sentence2             gold_label    contradiction, entailment, neutral
    qnli   QNLI    classification  question, sentence               label         entailment, not_entailment
    rte    RTE     classification  sentence1, sentence2             label         entailment, not_entailment
    wnli   WNLI    classification  sentence1, sentence2             label         0, 1

Label ids follow Google's run_classifier.py (so MNLI heads of converted checkpoints keep their meaning).
File quirks handled: a UTF-8 byte-order mark (MRPC), CoLA's headerless train/dev with 4 columns and no final
newline, STS-B's 10 columns, MNLI's dev_matched / dev_mismatched / test_matched / test_mismatched files, test
files without a label column (their `index`/`id` column is kept as the example id). Fields are split on tabs with
csv.QUOTE_NONE, as GLUE's files are not quoted ("a "quote" stays") and as Google's run_classifier.py reads them
(csv.reader(delimiter="\t", quotechar=None)): a row is a line, so no quote can swallow the rows after it. A line
that is not UTF-8 is skipped with its file:line; a train or dev file without its label column is an error.

Test-set predictions are written as GLUE submission files: `<Task>.tsv` with `index<TAB>prediction`, label names
as GLUE expects them (MNLI-m.tsv and MNLI-mm.tsv for the two MNLI test sets; STS-B scores clipped to [0, 5]).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from bert_jax.tasks import ReadReport, Table, Task, class_label_names, decode_text, find_split_file, load_tfds
from bert_jax.tasks import metrics
from bert_jax.tasks.classify import (TextExample, decode_logits, featurize_text_pairs, gold_array, needs_labels,
                                     parse_label)


@dataclasses.dataclass(frozen=True)
class GlueFormat:
    folder: str                         # the task's folder name in GLUE's distribution
    submission: str                     # submission file stem
    text_columns: tuple                 # header names of text (and text pair)
    label_column: str
    tfds_text: tuple                    # the same texts' feature names in TFDS
    headerless_columns: tuple = ()      # CoLA train/dev: names of the 4 columns, read positionally


_BINARY = ("0", "1")
_NLI = ("entailment", "not_entailment")
_FORMATS = {
    "cola": GlueFormat("CoLA", "CoLA", ("sentence",), "label", ("sentence",),
                       headerless_columns=("source", "label", "original_label", "sentence")),
    "sst2": GlueFormat("SST-2", "SST-2", ("sentence",), "label", ("sentence",)),
    "mrpc": GlueFormat("MRPC", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2")),
    "stsb": GlueFormat("STS-B", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2")),
    "qqp": GlueFormat("QQP", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2")),
    "mnli": GlueFormat("MNLI", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis")),
    "qnli": GlueFormat("QNLI", "QNLI", ("question", "sentence"), "label", ("question", "sentence")),
    "rte": GlueFormat("RTE", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2")),
    "wnli": GlueFormat("WNLI", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2")),
}
_LABELS = {"cola": _BINARY, "sst2": _BINARY, "mrpc": _BINARY, "stsb": (), "qqp": _BINARY,
           "mnli": ("contradiction", "entailment", "neutral"), "qnli": _NLI, "rte": _NLI, "wnli": _BINARY}
_BEST_METRIC = {"cola": "mcc", "mrpc": "acc_and_f1", "qqp": "acc_and_f1", "stsb": "corr"}

_SPLIT_FILES = {
    "train": ["train.tsv"], "validation": ["dev.tsv"], "test": ["test.tsv"],
    "validation_matched": ["dev_matched.tsv"], "validation_mismatched": ["dev_mismatched.tsv"],
    "test_matched": ["test_matched.tsv"], "test_mismatched": ["test_mismatched.tsv"],
}


@dataclasses.dataclass(frozen=True)
class GlueTask(Task):
    file_format: Optional[GlueFormat] = None

    # --- reading ------------------------------------------------------------------------------------------------

    def read_files(self, split, path, strict=False):
        """Examples of one GLUE TSV: `path` is the task folder (e.g. glue/SST-2) or the file itself."""
        if os.path.isdir(path):
            path = find_split_file(path, split, _SPLIT_FILES)
        report = ReadReport(path, strict)
        examples = [e for e in self._read_tsv(path, split, report) if e is not None]
        return examples, report

    def _read_tsv(self, path, split, report):
        fmt = self.file_format
        # read_lines drops MRPC's byte-order mark, which would otherwise glue itself to the first column's name.
        headerless = fmt.headerless_columns and not split.startswith("test")
        table = Table(path, report, delimiter="\t", quoted=False,
                      columns=fmt.headerless_columns if headerless else None)
        header = table.header
        missing = [c for c in fmt.text_columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing} in the header {header}; is this a {fmt.folder} file?")
        has_labels = fmt.label_column in header
        if not has_labels and needs_labels(split):
            raise ValueError(f"{path}: no label column {fmt.label_column!r} in the header {header}: {fmt.folder}'s "
                             f"{split} file needs its labels (only a test file may have none)")
        id_column = next((c for c in ("index", "id") if c in header), None)
        for location, record in table.rows():
            yield self._example(location, record, has_labels, id_column, report, fmt.text_columns)

    def _example(self, location, record, has_labels, id_column, report, text_columns):
        texts = [record[c] for c in text_columns]
        empty = [c for c, t in zip(text_columns, texts) if not t.strip()]
        if empty:
            report.skip(location, f"empty text in {empty[0]!r}")
            return None
        label = None
        if has_labels:
            label, problem = parse_label(record[self.file_format.label_column], self.kind, self.labels)
            if problem:
                report.skip(location, problem)
                return None
        guid = record[id_column] if id_column else location.rsplit(":", 1)[-1]
        return TextExample(str(guid), texts[0], texts[1] if len(texts) > 1 else None, label)

    def read_tfds(self, split, name, strict=False, data_dir=None):
        records, features = load_tfds(name, split, data_dir)
        report = ReadReport(f"tfds {name} {split}", strict)
        label_names = None if self.kind == "regression" else class_label_names(features, "label", self.labels, name)
        text_columns = self.file_format.tfds_text
        examples = []
        for n, record in enumerate(records):
            report.record()
            fields = {c: decode_text(record[c]) for c in text_columns}
            value = record["label"]
            # TFDS marks the unlabeled test records with label -1.
            if self.kind == "regression":
                label = None if float(value) == -1 else float(value)
            else:
                label = None if int(value) < 0 else label_names[int(value)]
            fields[self.file_format.label_column], fields["idx"] = label, int(record.get("idx", n))
            example = self._example(f"tfds {name} {split}[{n}]", fields, label is not None, "idx", report,
                                    text_columns)
            if example is not None:
                examples.append(example)
        return examples, report

    # --- features, decoding, metrics ---------------------------------------------------------------------------

    def featurize(self, examples, tokenizer, max_seq_length=128, truncation="original"):
        return featurize_text_pairs(examples, tokenizer, max_seq_length, self.kind, self.labels, truncation)

    def decode(self, outputs, features, examples):
        return decode_logits(outputs, len(examples), self.kind)

    def evaluate(self, predictions, examples):
        gold = gold_array(examples, self.kind, self.labels)
        return metrics.glue_metrics(self.name, np.asarray(predictions), gold)

    def write_predictions(self, predictions, examples, output_dir, split):
        """A GLUE submission file for test splits, `<task>_<split>.tsv` (with the gold label) otherwise."""
        os.makedirs(output_dir, exist_ok=True)
        if split.startswith("test"):
            stem = {"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}.get(split, self.file_format.submission)
        else:
            stem = f"{self.name}_{split}"
        path = os.path.join(output_dir, f"{stem}.tsv")
        with_gold = not split.startswith("test") and all(e.label is not None for e in examples)
        with open(path, "w", encoding="utf-8") as f:
            f.write("index\tprediction" + ("\tlabel" if with_gold else "") + "\n")
            for example, prediction in zip(examples, predictions, strict=True):
                if self.kind == "regression":
                    shown = f"{float(np.clip(prediction, 0.0, 5.0)):.3f}"  # GLUE's STS-B scores lie in [0, 5]
                else:
                    shown = self.labels[int(prediction)]
                f.write(f"{example.guid}\t{shown}" + (f"\t{example.label}" if with_gold else "") + "\n")
        return [path]


def glue_task(name: str) -> GlueTask:
    if name not in _FORMATS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {sorted(_FORMATS)}")
    kind = "regression" if name == "stsb" else "classification"
    metric_names = metrics.GLUE_METRICS[name]
    eval_splits, test_splits = ("validation",), ("test",)
    if name == "mnli":
        eval_splits, test_splits = ("validation_matched", "validation_mismatched"), ("test_matched", "test_mismatched")
    return GlueTask(name=name, kind=kind, labels=_LABELS[name], metric_names=metric_names,
                    best_metric=_BEST_METRIC.get(name, metric_names[-1]), eval_splits=eval_splits,
                    test_splits=test_splits, tfds_name=f"glue/{name}", file_format=_FORMATS[name])
