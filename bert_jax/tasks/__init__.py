"""Fine-tuning tasks: what the data is, how it becomes model inputs, and how outputs become scored predictions.

One shape for every task family, so the fine-tuning trainer drives all of them the same way:

    task = get_task("sst2")                      # or squad_v2.0, conll2003, swag, classify(text_column=...)
    examples, report = task.read("train", "../shared/data/glue/SST-2")   # or source="tfds" / "tfds:glue/sst2"
    print(report.summary())                      # rows read, examples kept, every skipped row with file:line + why
    features = task.featurize(examples, tokenizer, max_seq_length=128)  # dict of NumPy arrays, first axis = feature
    outputs = ...the model on features, batch by batch...               # dict of NumPy arrays, same first axis
    predictions = task.decode(outputs, features, examples)
    metrics = task.evaluate(predictions, examples)                       # {name: float}; task.best_metric picks ckpts
    task.write_predictions(predictions, examples, output_dir, split)     # GLUE TSVs, SQuAD JSONs, CoNLL columns

`Task` fields: name, kind ('classification' | 'regression' | 'tagging' | 'span' | 'multiple_choice'; the head, loss
and outputs of each are in bert_jax/heads.py KINDS), labels (the label names; index = class id), metric_names,
best_metric (the metric to maximise when picking the best checkpoint), eval_splits / test_splits (MNLI has matched
and mismatched ones), tfds_name. A family also says which featurize and decode options it takes from a run's
settings (`featurization`, `decoding`: the fine-tuning config's data and decode sections, or a model directory's
record of them) and whether a split can be scored (`labeled`); `TASK_SETTINGS` / `task_options` give the options
`get_task` takes from a config's task section.

Features (np.int32 unless said otherwise; N examples, F features, T = max_seq_length, C choices, L labels):
  every kind      input_ids, attention_mask, token_type_ids   [F, T] ([N, C, T] for multiple choice)
                  example_index [F]: which example a feature came from (a SQuAD question or a long sentence
                  gives several features)
  classification  labels [N] class ids                        } present only when every example has a label
  regression      labels [N] float32                          }
  multiple_choice labels [N] index of the right choice        }
  tagging         labels [F, T]: the word's tag id on its first word piece, -100 on other pieces, [CLS], [SEP]
                  and padding (ignored by the loss); word_index [F, T]: the word a first piece starts, else -1
  span            start_positions, end_positions [F]: token positions of the answer, 0 ([CLS]) when there is
                  none or it is not wholly inside the window; token_char_start, token_char_end [F, T]: the
                  character span of a context token in the context, -1 elsewhere; token_is_max_context [F, T]

Model outputs expected by `decode` (the heads of bert_jax/heads.py): "logits" [N, L] (regression [N] or [N, 1]),
tagging "logits" [F, T, L], span "start_logits", "end_logits" [F, T], multiple choice "logits" [N, C].

Predictions returned by `decode`: class ids [N] / scores [N] / choice ids [N] as NumPy arrays, word-level tag
lists for tagging, and a `squad.SpanPredictions` (answer text, n-best list and null odds per question id).

Bad input never disappears silently: readers return `(examples, ReadReport)`. The report counts every record
seen and every record skipped with its location (file:line, or TFDS split:index, or question id) and reason
(wrong column count, label outside the task's set, empty text, answer not in its context, ...). With
`strict=True` the first problem raises a ValueError naming it instead.

Text files are read line by line (`read_lines`), each line decoded on its own: a line that is not UTF-8 is
skipped as "not UTF-8 (byte 0xe9)" at its file:line, and the rest of the file is read. CSV / TSV files go
through `Table`, which keeps every physical row a record of its own unless a quoted field really spans lines:

  * A quoted field may hold line breaks (CSV's own rule, as the csv module reads it).
  * A quote that runs past the end of its line is accepted only when the record it makes is well formed: its
    quote closes before the end of the file, every closing quote is followed by the delimiter or the end of the
    line (the csv module's strict reading), and the row has the header's number of columns.
  * Otherwise the quote is taken as unclosed: the row where it opened is skipped as "unclosed quote: the quoted
    field opened here would span N lines (to line M) and ...", and the lines after it are read again as rows of
    their own, so that only the bad row is lost. Strict reading raises instead, naming file:line.

A swallowed row can thus pass only when the merged text is itself a valid CSV record of the right width (e.g.
`1,"abc,x` followed by `2,def",y`); what csv cannot tell from a real multi-line field is kept as one. TSV files
(GLUE's, and classify's .tsv) are read with csv.QUOTE_NONE, as Google's run_classifier.py reads GLUE: a quote is a
character there, and a row never spans lines.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import importlib
import os
import re
from types import MappingProxyType
from typing import Any, ClassVar, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np

KINDS = ("classification", "regression", "tagging", "span", "multiple_choice")

# Task name -> (module, factory). Modules are imported on first use so that `get_task("sst2")` does not pay for
# SQuAD or TFDS imports.
_REGISTRY = {
    **{name: ("bert_jax.tasks.glue", "glue_task")
       for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")},
    "squad_v1.1": ("bert_jax.tasks.squad", "squad_task"),
    "squad_v2.0": ("bert_jax.tasks.squad", "squad_task"),
    "conll2003": ("bert_jax.tasks.ner", "conll2003_task"),
    "swag": ("bert_jax.tasks.multiple_choice", "swag_task"),
    "classify": ("bert_jax.tasks.classify", "classify_task"),
}
TASK_NAMES = tuple(_REGISTRY)

# The settings of a fine-tuning config's task section (config.task) that a task's factory takes as get_task
# options; every other task takes none of them. '' and () there mean "not given" (classify: no text pair or label
# column, labels inferred from train).
TASK_SETTINGS = {"classify": ("text_column", "text_pair_column", "label_column", "labels", "kind"),
                 "swag": ("num_choices",)}

# Accepted spellings of split names; TFDS's names are the canonical ones.
_SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation", "eval": "validation"}


def task_key(name: str) -> str:
    """The TASK_NAMES entry `name` spells (any case, '-' for '_', short SQuAD names)."""
    key = name.lower().replace("-", "_")
    key = {"squad_v1": "squad_v1.1", "squad_v2": "squad_v2.0", "squad": "squad_v1.1", "sst_2": "sst2",
           "sts_b": "stsb"}.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return key


def get_task(name: str, **options) -> "Task":
    """The task called `name` (see TASK_NAMES); `options` configure the generic ones (e.g. classify's columns)."""
    key = task_key(name)
    module_name, factory = _REGISTRY[key]
    return getattr(importlib.import_module(module_name), factory)(key, **options)


def task_options(name: str, settings: Mapping) -> dict:
    """get_task(name)'s options out of a config's task settings (TASK_SETTINGS; sequences as lists)."""
    return {key: list(settings[key]) if isinstance(settings[key], (tuple, list)) else settings[key]
            for key in TASK_SETTINGS.get(task_key(name), ())}


def canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


# ----------------------------------------------------------------------------------------------------------------------
# Read reports
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    location: str  # "path/dev.tsv:17", "tfds glue/sst2 train[12]", "dev-v2.0.json question 5733be28..."
    reason: str    # short and stable, so that problems group by reason in the summary


class ReadReport:
    """What a reader saw: records read, examples kept, and every skipped record with where and why.

    A reader calls `record()` once per input record and `skip()` for each one it rejects (or `note()` for a
    problem it repaired or tolerated); with `strict=True` the first problem raises a ValueError instead.
    """

    def __init__(self, source: str, strict: bool = False):
        self.source = source
        self.strict = strict
        self.records = 0
        self.skipped: list[Problem] = []
        self.notes: list[Problem] = []

    def record(self) -> None:
        self.records += 1

    def skip(self, location: str, reason: str) -> None:
        if self.strict:
            raise ValueError(f"{location}: {reason}")
        self.skipped.append(Problem(location, reason))

    def note(self, location: str, reason: str) -> None:
        """A problem in a record that is kept (e.g. an unplaceable answer kept for scoring only)."""
        if self.strict:
            raise ValueError(f"{location}: {reason}")
        self.notes.append(Problem(location, reason))

    @property
    def num_examples(self) -> int:
        return self.records - len(self.skipped)

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.notes

    def summary(self, max_locations: int = 3) -> str:
        """One line of totals, then one line per kind of problem with its count and first few locations."""
        lines = [f"{self.source}: {self.num_examples} examples from {self.records} records, "
                 f"{len(self.skipped)} skipped" + (f", {len(self.notes)} kept with a problem" if self.notes else "")]
        for verb, problems in (("skipped", self.skipped), ("kept", self.notes)):
            by_reason = collections.defaultdict(list)
            for problem in problems:
                by_reason[problem.reason].append(problem.location)
            for reason, locations in by_reason.items():
                shown = ", ".join(locations[:max_locations]) + (", ..." if len(locations) > max_locations else "")
                lines.append(f"  {verb} {len(locations)} x {reason}: {shown}")
        return "\n".join(lines)

    def __repr__(self):
        return f"ReadReport({self.summary(max_locations=1)!r})"


# ----------------------------------------------------------------------------------------------------------------------
# Reading text files: lines, CSV / TSV tables
# ----------------------------------------------------------------------------------------------------------------------

# What errors="surrogateescape" makes of a byte that is not UTF-8: U+DC80..U+DCFF (valid UTF-8 never decodes to these).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class Line(NamedTuple):
    number: int                    # 1-based, as editors count
    text: str                      # with its line ending; a byte that is not UTF-8 kept as a surrogate escape
    problem: Optional[str] = None  # "not UTF-8 (byte 0xe9)" for a line that does not decode


def read_lines(path: str) -> Iterator[Line]:
    """The physical lines of a UTF-8 file (a byte-order mark dropped; \\n, \\r\\n and \\r end a line, as for the
    csv module). Each line is decoded on its own, so that a byte that is not UTF-8 spoils only its own line."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for number, text in enumerate(f, start=1):
            bad = _UNDECODABLE.search(text)
            yield Line(number, text, None if bad is None else f"not UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})")


def read_utf8(path: str) -> str:
    """A whole UTF-8 file (one JSON document, say) as text; a byte that is not UTF-8 is a ValueError naming
    file:line, where the bare UnicodeDecodeError gives only a byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x})") from None


class _LineFeed:
    """The lines a csv.reader reads, one at a time: those pushed back first (to be read again), then the file's.
    It records the lines each record took, and whether the file ran out inside one (a quote left open). Unlike a
    generator it can be fed again after it has run dry, so lines pushed back at the end of the file are still read."""

    def __init__(self, lines: Iterator[Line]):
        self.lines = lines
        self.pushed_back: collections.deque = collections.deque()
        self.taken: list[Line] = []
        self.ran_out = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.pushed_back.popleft() if self.pushed_back else next(self.lines, None)
        if line is None:
            self.ran_out = True
            raise StopIteration
        self.taken.append(line)
        return line.text


class Table:
    """A CSV or TSV file as (file:line, {column: value}) rows: `Table(path, report).header`, `.rows()`.

    `columns` names the columns of a headerless file; otherwise the first (non-blank) record is the header, and
    a problem there (not UTF-8, an unclosed quote) is a ValueError. Every later non-blank record counts in
    `report`; one that is not UTF-8, has an unclosed quote (see the module's docstring) or the wrong number of
    columns is skipped there with its file:line. TSV (`quoted=False`) reads quotes as plain characters.
    """

    def __init__(self, path: str, report: ReadReport, *, delimiter: str = ",", quoted: bool = True,
                 columns: Optional[Sequence[str]] = None):
        self.path, self.report = path, report
        self._dialect = dict(delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        self._feed = _LineFeed(read_lines(path))
        self._reader = csv.reader(self._feed, **self._dialect)
        self.header: Optional[list] = list(columns) if columns is not None else None
        if self.header is None:
            self.header = self._read_header()

    def _read_header(self) -> list:
        while (record := self._next_record()) is not None:
            number, fields, problem = record
            if problem:
                raise ValueError(f"{self.path}:{number}: {problem}, in the header row")
            if fields:
                return fields
        raise ValueError(f"{self.path}: empty file, expected a header row")

    def rows(self) -> Iterator[tuple[str, dict]]:
        width = len(self.header)
        while (record := self._next_record()) is not None:
            number, fields, problem = record
            if not fields and not problem:  # a blank line holds no record
                continue
            self.report.record()
            location = f"{self.path}:{number}"
            if problem:
                self.report.skip(location, problem)
            elif len(fields) != width:
                self.report.skip(location, f"wrong column count (expected {width}, got {len(fields)})")
            else:
                yield location, dict(zip(self.header, fields))

    def _next_record(self) -> Optional[tuple[int, Optional[list], Optional[str]]]:
        """(line to report, fields, problem) of the next record; None at the end of the file."""
        self._feed.taken, self._feed.ran_out = [], False
        error = None
        try:
            fields = next(self._reader)
        except StopIteration:
            return None
        except csv.Error as e:  # the reader starts afresh on the next line after an error
            fields, error = None, str(e)
        lines = self._feed.taken
        if len(lines) > 1 or self._feed.ran_out:  # a quote ran past the end of a line
            unclosed = self._unclosed_quote(lines, fields, error)
            if unclosed:
                self._feed.pushed_back.extendleft(reversed(lines[1:]))  # read them again as rows of their own
                return lines[0].number, None, unclosed
        elif error:
            return lines[0].number, None, f"unreadable CSV ({error})"
        undecodable = next((line for line in lines if line.problem), None)
        if undecodable:
            return undecodable.number, None, undecodable.problem
        return lines[0].number, fields, None

    def _unclosed_quote(self, lines: list, fields: Optional[list], error: Optional[str]) -> Optional[str]:
        """Why a record whose quote ran past the end of its first line is not a real multi-line field, or None."""
        if self._feed.ran_out:
            return (f"unclosed quote: the quoted field opened here runs {len(lines)} line{'s' * (len(lines) > 1)} "
                    f"to the end of the file")
        if error:
            end = f"fail ({error})"
        else:
            try:  # the lenient reader accepts text after a closing quote; a real field ends at the delimiter
                next(csv.reader([line.text for line in lines], strict=True, **self._dialect))
                end = None
            except csv.Error as e:
                end = f"close badly ({e})"
            if end is None and self.header is not None and len(fields) != len(self.header):
                end = f"leave a row of {len(fields)} columns, not {len(self.header)}"
        if end is None:
            return None
        return (f"unclosed quote: the quoted field opened here would span {len(lines)} lines "
                f"(to line {lines[-1].number}) and {end}")


# ----------------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """A fine-tuning task; the family modules subclass it and implement the five methods."""

    # The featurize options a family takes from a run's data settings (fine-tuning's config.data, or a model
    # directory's record of them), with the values used where there is no record (a converted Hugging Face model).
    featurization: ClassVar[Mapping[str, Any]] = MappingProxyType({"max_seq_length": 128, "truncation": "original"})
    # The decode options a family takes from a run's decode settings (config.decode); missing ones: decode's defaults.
    decoding: ClassVar[tuple[str, ...]] = ()

    name: str
    kind: str
    labels: tuple = ()
    metric_names: tuple = ()
    best_metric: str = ""
    eval_splits: tuple = ("validation",)
    test_splits: tuple = ("test",)
    tfds_name: Optional[str] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.best_metric and self.best_metric not in self.metric_names:
            raise ValueError(f"task {self.name!r}: best_metric {self.best_metric!r} not in {self.metric_names}")

    @property
    def num_labels(self) -> int:
        """Width of the head's output: classes, tags, 1 for regression, 1 per choice for multiple choice."""
        return len(self.labels) if self.kind in ("classification", "tagging") else 1

    def featurize_options(self, data: Mapping) -> dict:
        """featurize's options (max_seq_length included) out of a run's data settings."""
        return {key: data[key] for key in self.featurization}

    def decode_options(self, settings: Mapping) -> dict:
        """decode's options out of a run's decode settings."""
        return {key: settings[key] for key in self.decoding if key in settings}

    def labeled(self, examples: Sequence, features: Mapping) -> bool:
        """Whether a split's examples can be scored: here, whether featurize gave them labels."""
        return "labels" in features

    def read(self, split: str, source: Optional[str] = None, strict: bool = False,
             tfds_data_dir: Optional[str] = None) -> tuple[list, ReadReport]:
        """Examples of `split` from `source`: a local file or folder in the task's original format, or "tfds" /
        "tfds:<name>" to load through TensorFlow Datasets (the task's `tfds_name` by default)."""
        split = canonical_split(split)
        if source is None:
            raise ValueError(f"task {self.name!r}: give a source: a local file or folder, or 'tfds'")
        source = os.fspath(source)
        if source == "tfds" or source.startswith("tfds:"):
            name = source[len("tfds:"):] if source.startswith("tfds:") else self.tfds_name
            if not name:
                raise ValueError(f"task {self.name!r} has no TFDS dataset; pass source='tfds:<name>' or a local path")
            return self.read_tfds(split, name, strict=strict, data_dir=tfds_data_dir)
        if not os.path.exists(source):
            raise FileNotFoundError(f"task {self.name!r}: no such file or folder: {source}")
        return self.read_files(split, source, strict=strict)

    def read_files(self, split: str, path: str, strict: bool = False) -> tuple[list, ReadReport]:
        raise NotImplementedError

    def read_tfds(self, split: str, name: str, strict: bool = False,
                  data_dir: Optional[str] = None) -> tuple[list, ReadReport]:
        raise ValueError(f"task {self.name!r} cannot be read from TFDS; give a local path")

    def featurize(self, examples: Sequence, tokenizer, max_seq_length: int, **options) -> dict:
        """Model inputs; `options` are the family's own (SQuAD: doc_stride, max_query_length); an unknown one is a
        TypeError, so that a misspelt option never goes unnoticed."""
        raise NotImplementedError

    def decode(self, outputs: dict, features: dict, examples: Sequence, **options) -> Any:
        """Predictions from model outputs; `options` as for featurize (SQuAD: n_best_size, max_answer_length,
        null_score_diff_threshold)."""
        raise NotImplementedError

    def evaluate(self, predictions: Any, examples: Sequence) -> dict:
        raise NotImplementedError

    def write_predictions(self, predictions: Any, examples: Sequence, output_dir: str, split: str) -> list:
        """Write the predictions in the task's customary format; returns the paths written."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------------------
# Helpers shared by the family modules
# ----------------------------------------------------------------------------------------------------------------------


def find_split_file(folder: str, split: str, candidates: dict) -> str:
    """The file of `split` in a task folder: the first of candidates[split] that exists."""
    names = candidates.get(split)
    if names is None:
        raise ValueError(f"unknown split {split!r} for {folder}; known: {sorted(candidates)}")
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {split} file in {folder}: looked for {', '.join(names)}")


def load_tfds(name: str, split: str, data_dir: Optional[str] = None) -> tuple[Iterator[dict], Any]:
    """(records as dicts of NumPy values, the builder's `features`) of a TFDS split; bytes stay bytes."""
    import tensorflow_datasets as tfds  # heavy; imported only when TFDS is asked for

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.info.splits and split not in builder.info.splits:  # empty when unprepared (or mocked in tests)
        raise ValueError(f"TFDS {name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as error:  # TFDS asserts when the data was never downloaded and prepared
        raise FileNotFoundError(f"TFDS {name} is not prepared in {data_dir or '~/tensorflow_datasets'}: run "
                                f"tfds.builder({name!r}).download_and_prepare() with network access ({error})") from None
    return tfds.as_numpy(dataset), builder.info.features


def decode_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def class_label_names(features, key: str, task_labels: Sequence[str], name: str) -> list:
    """Map a TFDS ClassLabel's ids to this task's label names: by name where they agree, else by position.

    GLUE's TFDS labels are named ('negative', 'positive') where the GLUE files use '0', '1': the position then
    carries the meaning (TFDS keeps the files' order); MNLI's names match the files' names in another order.
    """
    names = list(features[key].names)
    if all(n in task_labels for n in names):
        return names
    if all(str(i) in task_labels for i in range(len(names))):
        return [str(i) for i in range(len(names))]
    raise ValueError(f"TFDS {name} labels {names} do not match the task's labels {list(task_labels)}")


def pad_to(ids: Sequence[int], length: int, value: int = 0) -> list:
    return list(ids) + [value] * (length - len(ids))


def stack(rows: list, dtype=np.int32, width: Optional[int] = None) -> np.ndarray:
    """Rows (already padded) -> array; an empty list gives shape [0, width] so that shapes stay meaningful."""
    if not rows:
        return np.zeros((0,) if width is None else (0, width), dtype)
    return np.asarray(rows, dtype)
