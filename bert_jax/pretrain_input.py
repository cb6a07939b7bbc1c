"""Pretraining input: which files and which reader (text or TFRecord) each phase uses, the checks made before
anything compiles, and the reader report.

    inputs = plan_inputs(config, train_files, eval_files, vocab_size)   # checks; prints the start report
    inputs.phases[i].files, .format                  # what make_input reads for phase i
    inputs.track(iterator, inputs.phases[i])         # make_input's iterators, for the end report
    inputs.write_start(writer, step)                 # the start report as a metrics.jsonl line
    inputs.finish(writer, step)                      # the end report: printed and in metrics.jsonl

The files of a phase are `config.phases[i].input_files`, or `config.data.input_files` when that is empty (the
original recipe has one set of TFRecords at 128 and one at 512). Their kind comes from their content
(tfrecord_input.input_format; `config.data.format` may force it).

Checks, before anything compiles (a ValueError naming the config key and the file):
  TFRecords: the first record of every file has the phase's seq_length and max_predictions and ids inside the
             vocabulary (tfrecord_input.check_records); data.dynamic_masking is refused (records carry masks);
  text:      every file is text (text_reader.check_is_text), and a sample of the input (the first
             SAMPLE_DOCUMENTS documents) is read: if most of it is skipped (more skipped lines and documents
             than kept sentences) the run is refused unless config.data.allow_mostly_skipped.

The report. At the start: for text, what the sample read (files, documents, sentences, skipped lines and
documents by reason with file:line examples, as prepare-pretraining-data prints); for TFRecords, the files,
their size and the records (counted by prepare-pretraining-data's pretraining_data.json when there is one).
At the end: what this run's readers read (text: documents, sentences, instances, everything skipped, also by
instance generation, counted again on every pass over the files, read-ahead included; TFRecords: the records
consumed from the start of training, and the epoch). Both are
printed (process 0) and written to metrics.jsonl as {"step": s, "reader": {"when": "start"|"end", "inputs":
[...]}}. With several processes each reads its own shard; the report is process 0's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional, Sequence

from absl import logging

from bert_jax import console
from bert_jax.data import text_reader, tfrecord_input
from bert_jax.data.instances import GenerationStats

SAMPLE_DOCUMENTS = 1000  # documents read at the start to report on (and judge) a text input
MOSTLY = 0.5  # skipped / (skipped + kept) above this is "most of the input is skipped"
# Reasons that do not count towards "most of the input": an empty file holds no input to lose.
_NOT_INPUT = ("files without any document",)


@dataclasses.dataclass
class InputSet:
    """One set of input files and the phases (or evaluation) that read it."""

    key: str  # the config key that gave the files
    files: list
    format: str  # 'text' | 'tfrecord'
    users: list = dataclasses.field(default_factory=list)
    start: dict = dataclasses.field(default_factory=dict)
    iterators: list = dataclasses.field(default_factory=list)
    keep_last: bool = False  # evaluation re-reads the same batches each time: only the last reading counts

    def label(self) -> str:
        return f"{self.key} ({', '.join(self.users)})"


class PretrainInputs:
    """The input sets of a run (see the module docstring)."""

    def __init__(self, phases: Sequence[InputSet], evaluation: Optional[InputSet], allow_mostly_skipped: bool):
        self.phases = list(phases)
        self.evaluation = evaluation
        self.allow_mostly_skipped = allow_mostly_skipped

    def sets(self) -> list[InputSet]:
        unique = []
        for s in [*self.phases, self.evaluation]:
            if s is not None and all(s is not u for u in unique):
                unique.append(s)
        return unique

    def track(self, iterator, input_set: InputSet):
        """Remembers an iterator make_input made for `input_set`; returns it."""
        if input_set.keep_last:
            input_set.iterators[:] = [iterator]
        else:
            input_set.iterators.append(iterator)
        return iterator

    # -- the report ---------------------------------------------------------------------------------

    def start_report(self) -> list[dict]:
        return [{"input": s.key, "used_by": list(s.users), "format": s.format, **s.start} for s in self.sets()]

    def end_report(self) -> list[dict]:
        return [{"input": s.key, "used_by": list(s.users), "format": s.format, **_read_by(s)}
                for s in self.sets() if s.iterators]

    def print_start(self) -> None:
        console.announce("\n".join(["reader, at the start:", *(_describe(s.label(), r) for s, r in
                                                                zip(self.sets(), self.start_report()))]))

    def write_start(self, writer, step: int) -> None:
        if self.sets():
            writer.write_record(step, {"reader": {"when": "start", "inputs": self.start_report()}})

    def finish(self, writer, step: int) -> None:
        """The end report: printed, written to metrics.jsonl, and a warning if most of the input was skipped."""
        report = self.end_report()
        if not report:
            return
        labels = {s.key: s.label() for s in self.sets()}
        console.announce("\n".join(["reader, this run:", *(_describe(labels[r["input"]], r) for r in report)]))
        writer.write_record(step, {"reader": {"when": "end", "inputs": report}})
        for r in report:
            if r["format"] == "text" and r["skipped_fraction"] > MOSTLY and not self.allow_mostly_skipped:
                logging.warning("%s: most of the input read in this run was skipped (%.0f%%): %s", r["input"],
                                100 * r["skipped_fraction"], _skips_text(r))


def plan_inputs(config, train_files: Sequence[str], eval_files: Sequence[str],
                vocab_size: Optional[int]) -> PretrainInputs:
    """The input sets of a run, checked (see the module docstring); prints the start report (process 0)."""
    data = config.data
    if data.source == "synthetic":
        return PretrainInputs([], None, data.allow_mostly_skipped)  # generated batches: nothing is read
    by_files: dict = {}
    phases = []
    default_key = "config.data.input_files" if data.source == "files" else f"the {data.source} corpus"
    for i, phase in enumerate(config.phases):
        own = phase.get("input_files", "")
        key = f"config.phases[{i}].input_files" if own else default_key
        files = text_reader.resolve_input_files(own) if own else list(train_files)
        input_set = _input_set(by_files, key, files, data.format)
        input_set.users.append(f"phase {i}: seq{phase['seq_length']}")
        phases.append(input_set)
        _check(input_set, config, i, phase, vocab_size)
    evaluation = None
    if eval_files:
        key = "config.data.eval_input_files" if data.source == "files" else f"the {data.source} corpus's held-out file"
        evaluation = _input_set({}, key, list(eval_files), data.format)
        evaluation.users.append("evaluation")
        evaluation.keep_last = True
        _check(evaluation, config, 0, config.phases[0], vocab_size)
    inputs = PretrainInputs(phases, evaluation, data.allow_mostly_skipped)
    for input_set in inputs.sets():
        if input_set.format == "text":
            input_set.start = _sample_text(input_set, data.allow_mostly_skipped)
    inputs.print_start()
    return inputs


def _input_set(by_files: dict, key: str, files: list, forced: str) -> InputSet:
    """One InputSet per distinct file list: phases that share files share their reader's counts."""
    fmt, files = tfrecord_input.input_format(files, forced, key)
    identity = tuple(files)
    if identity not in by_files:
        by_files[identity] = InputSet(key=key, files=files, format=fmt)
    return by_files[identity]


def _check(input_set: InputSet, config, index: int, phase, vocab_size: Optional[int]) -> None:
    where = f"config.phases[{index}]"
    if input_set.format == "tfrecord":
        if config.data.dynamic_masking:
            raise ValueError(f"config.data.dynamic_masking=True: {input_set.key} holds TFRecords, whose masks were "
                             f"drawn when they were written; set it to False, or give text")
        info = tfrecord_input.check_records(input_set.files, seq_length=phase["seq_length"],
                                            max_predictions=phase["max_predictions"], vocab_size=vocab_size,
                                            where=where, key=input_set.key)
        input_set.start = info.to_dict()
    else:
        for path in input_set.files:
            text_reader.check_is_text(path)


def _sample_text(input_set: InputSet, allow_mostly_skipped: bool) -> dict:
    """Reads the first SAMPLE_DOCUMENTS documents; refuses a mostly skipped input (unless allowed)."""
    stats = text_reader.ReadStats()
    for path in input_set.files:
        with contextlib.closing(text_reader.iter_file_documents(path, "auto", stats)) as documents:
            for _ in documents:
                if stats.documents >= SAMPLE_DOCUMENTS:
                    break
        if stats.documents >= SAMPLE_DOCUMENTS:
            break
    report = {"files": len(input_set.files), **_text_counts(stats, None), "files_read": stats.files,
              "sampled_documents": SAMPLE_DOCUMENTS}
    if report["skipped_fraction"] > MOSTLY and not allow_mostly_skipped:
        raise ValueError(
            f"{input_set.key}: most of the input is skipped ({report['skipped_units']} skipped lines and documents, "
            f"{report['sentences']} sentences kept, in the first {stats.files} file(s) read): "
            f"{stats.describe_skips()}; fix the input, or set config.data.allow_mostly_skipped=True to train on "
            f"what is left")
    return report


def _text_counts(stats: text_reader.ReadStats, generation: Optional[GenerationStats]) -> dict:
    skipped = dict(sorted(stats.skipped.items()))
    examples = {k: list(v) for k, v in sorted(stats.examples.items())}
    if generation is not None:
        for reason, count in (("sentences without tokens", generation.skipped_sentences_without_tokens),
                              ("documents without tokens", generation.skipped_documents_without_tokens)):
            if count:
                skipped[reason] = skipped.get(reason, 0) + count
    units = sum(count for reason, count in skipped.items() if reason not in _NOT_INPUT)
    out = {"documents": stats.documents, "sentences": stats.sentences, "skipped": skipped,
           "skipped_examples": examples, "skipped_units": units,
           "skipped_fraction": units / max(1, units + stats.sentences)}
    if generation is not None:
        out.update(instances=generation.instances, one_sentence_documents=generation.one_sentence_documents,
                   long_sentences=generation.long_sentences)
    return out


def _read_by(input_set: InputSet) -> dict:
    """What the set's tracked iterators read in this run."""
    if input_set.format == "tfrecord":
        states = [it.get_state() for it in input_set.iterators]
        last = max(states, key=lambda state: state["example"])  # positions only grow along a stream
        return {"files": len(input_set.files), "records_consumed": int(last["example"]), "epoch": int(last["epoch"])}
    stats, generation = text_reader.ReadStats(), GenerationStats()
    for iterator in input_set.iterators:
        stats.merge(iterator.read_stats)
        generation.merge(iterator.generation_stats)
    # Every pass over the files counts again (the pipeline also reads a little ahead of training): the epoch says
    # how many passes training itself has begun.
    epoch = max(int(it.get_state()["epoch"]) for it in input_set.iterators)
    return {"files": len(input_set.files), "files_read": stats.files, **_text_counts(stats, generation),
            "epoch": epoch}


def _skips_text(report: dict) -> str:
    if not report["skipped"]:
        return "nothing"
    parts = []
    for reason, count in report["skipped"].items():
        examples = report["skipped_examples"].get(reason, [])
        parts.append(f"{count:,} {reason}" + (f" (e.g. {', '.join(examples)})" if examples else ""))
    return "; ".join(parts)


def _describe(label: str, report: dict) -> str:
    """Two lines per input set, in the manner of prepare-pretraining-data's summary."""
    if report["format"] == "tfrecord":
        if "records_consumed" in report:
            since = "by the last evaluation" if report["used_by"] == ["evaluation"] else "since training began"
            return (f"  {label}: TFRecords, {report['files']:,} files; {report['records_consumed']:,} records "
                    f"consumed {since} (epoch {report['epoch']})")
        records = "records not counted (no pretraining_data.json lists these files)" if report["records"] is None \
            else f"{report['records']:,} records (pretraining_data.json)"
        return (f"  {label}: TFRecords, {report['files']:,} files, {report['bytes'] / 1e6:,.1f} MB, {records}; "
                f"first records checked: {report['seq_length']} tokens, {report['max_predictions']} masked positions")
    read = f"{report['files_read']:,} of {report['files']:,} files read"
    if "sampled_documents" in report:
        read += f" (a sample: up to the first {report['sampled_documents']:,} documents)"
    else:
        read = (f"{report['files_read']:,} reads of its {report['files']:,} files (every pass over a file counts; "
                f"training reached epoch {report['epoch']})")
    line = f"  {label}: text, {read}, {report['documents']:,} documents, {report['sentences']:,} sentences"
    if "instances" in report:
        line += (f", {report['instances']:,} instances ({report['one_sentence_documents']:,} one-sentence documents,"
                 f" {report['long_sentences']:,} sentences longer than the sequence, truncated)")
    return line + f"\n    skipped: {_skips_text(report)}"
