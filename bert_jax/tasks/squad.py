"""SQuAD v1.1 and v2.0 extractive question answering, from the official JSON files or TFDS `squad/v1.1|v2.0`.

Featurisation follows Google's run_squad.py with one change of means: instead of whitespace-splitting the
context and aligning word pieces back by string matching, the context is tokenized once with the tokenizer's
`tokenize_with_offsets`, and each word piece keeps its character span in the original context. Answers are
then cut straight out of the context (`span_text`: from the start piece's first character to the end piece's last,
plus any combining accents an uncased tokenizer dropped), so they are exact substrings whatever the accents,
unicode or spacing.

    [CLS] question (at most max_query_length pieces) [SEP] context window [SEP] padding
    token_type_ids 0 ... up to and including the first [SEP], 1 over the window and its [SEP]

Long contexts give several windows, `doc_stride` pieces apart. The training target of a window is the
(start, end) piece of the first answer when it lies wholly in the window, else (0, 0) = [CLS]; so is an
unanswerable (v2.0) question's. A piece seen in several windows is predicted only from the window where it has
the most context on both sides (`token_is_max_context`, as in run_squad.py).

Decoding (`decode`): per question, the n_best_size highest start and end logits of every window, kept when
both are context pieces, start <= end, the span is at most max_answer_length pieces and the start has its max
context; the best-scoring (start + end logit) distinct texts form the n-best list. v2.0 adds the null answer,
scored by the lowest [CLS] start + end logit over the windows; the prediction is "" when
null_score - best_non_null_score > null_score_diff_threshold, and that difference is the question's null odds
(the `--na-prob-file` of the official v2.0 evaluation, whose best_f1_thresh is the threshold to use).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import unicodedata
from types import MappingProxyType
from typing import Optional

import numpy as np

from bert_jax.tasks import ReadReport, Task, decode_text, load_tfds, read_utf8, stack
from bert_jax.tasks import metrics


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context; -1 when the text could not be placed (kept for scoring only)


@dataclasses.dataclass(frozen=True)
class SquadExample:
    qid: str
    question: str
    context: str
    answers: tuple = ()          # of Answer; all gold answers (the first placed one is the training target)
    is_impossible: bool = False
    title: str = ""

    @property
    def target(self) -> Optional[Answer]:
        if self.is_impossible:
            return None
        return next((a for a in self.answers if a.start >= 0), None)


@dataclasses.dataclass
class SpanPredictions:
    answers: dict                       # question id -> answer text ("" = no answer)
    nbest: dict                         # question id -> [{text, probability, start_logit, end_logit}, ...]
    null_odds: Optional[dict] = None    # v2.0: question id -> null score - best non-null score
    null_threshold: float = 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def _place_answer(context: str, text: str, start) -> tuple[int, Optional[str]]:
    """(start offset, problem or None): keeps a right answer_start, else moves to the nearest occurrence."""
    if isinstance(start, (int, np.integer)) and context[start:start + len(text)] == text:
        return int(start), None
    occurrences, at = [], context.find(text)
    while at >= 0:
        occurrences.append(at)
        at = context.find(text, at + 1)
    if not occurrences:
        return -1, "answer not found in its context"
    hint = start if isinstance(start, (int, np.integer)) else 0
    return min(occurrences, key=lambda o: abs(o - hint)), "answer_start did not point at the answer; moved"


class _SquadReader:
    """Turns raw question records into examples, reporting bad ones (shared by the JSON and TFDS paths)."""

    def __init__(self, report: ReadReport, version_2: bool, for_training: bool):
        self.report, self.version_2, self.for_training = report, version_2, for_training
        self.seen = set()
        self.examples = []

    def add(self, location, qid, question, context, answers, is_impossible, title=""):
        report = self.report
        report.record()
        if qid in self.seen:
            report.skip(location, "duplicate question id")
            return
        if not context.strip():
            report.skip(location, "empty context")
            return
        if not question.strip():
            report.skip(location, "empty question")
            return
        if is_impossible and not self.version_2:
            report.skip(location, "unanswerable question in a SQuAD v1.1 task")
            return
        placed = []
        for text, start in answers:
            if not text.strip():
                report.note(location, "empty answer text; ignored")
                continue
            offset, problem = _place_answer(context, text, start)
            if problem:
                report.note(location, problem)
            placed.append(Answer(text, offset))
        if not is_impossible:
            if not placed:
                report.skip(location, "answerable question without an answer")
                return
            if self.for_training and all(a.start < 0 for a in placed):
                report.skip(location, "no answer found in its context (training needs a position)")
                return
        self.seen.add(qid)
        self.examples.append(SquadExample(qid, question, context, () if is_impossible else tuple(placed),
                                          bool(is_impossible), title))


def read_squad_json(path: str, version_2: bool, for_training: bool = False,
                    strict: bool = False) -> tuple[list, ReadReport]:
    """Questions of a SQuAD JSON file ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]})."""
    report = ReadReport(path, strict)
    try:
        dataset = json.loads(read_utf8(path))  # a byte that is not UTF-8: a ValueError naming file:line
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file: expected an object with a 'data' list")
    reader = _SquadReader(report, version_2, for_training)
    for a, article in enumerate(dataset["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context", "")
            for q, qa in enumerate(paragraph.get("qas", [])):
                qid = str(qa.get("id", f"{a}/{p}/{q}"))
                answers = [(x.get("text", ""), x.get("answer_start")) for x in qa.get("answers", [])]
                reader.add(f"{path} question {qid}", qid, qa.get("question", ""), context, answers,
                           bool(qa.get("is_impossible", False)), article.get("title", ""))
    return reader.examples, report


# ----------------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SquadTask(Task):
    version_2: bool = False

    featurization = MappingProxyType({"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64})
    decoding = ("n_best_size", "max_answer_length", "null_score_diff_threshold")

    def labeled(self, examples, features):
        """Whether every question has gold answers or the mark 'unanswerable' (the targets of a window are always
        there: [CLS] stands for "no answer here")."""
        return bool(examples) and all(e.answers or e.is_impossible for e in examples)

    def read_files(self, split, path, strict=False):
        if os.path.isdir(path):
            version = "v2.0" if self.version_2 else "v1.1"
            stem = {"train": "train", "validation": "dev"}.get(split, split)
            path = os.path.join(path, f"{stem}-{version}.json")
            if not os.path.exists(path):
                raise FileNotFoundError(f"no {split} file {path}")
        return read_squad_json(path, self.version_2, for_training=split == "train", strict=strict)

    def read_tfds(self, split, name, strict=False, data_dir=None):
        records, _ = load_tfds(name, split, data_dir)
        report = ReadReport(f"tfds {name} {split}", strict)
        reader = _SquadReader(report, self.version_2, for_training=split == "train")
        for n, record in enumerate(records):
            answers = list(zip((decode_text(t) for t in record["answers"]["text"]),
                               (int(s) for s in record["answers"]["answer_start"])))
            qid = decode_text(record["id"])
            reader.add(f"tfds {name} {split}[{n}] question {qid}", qid, decode_text(record["question"]),
                       decode_text(record["context"]), answers, bool(record.get("is_impossible", False)),
                       decode_text(record.get("title", b"")))
        return reader.examples, report

    # --- features ----------------------------------------------------------------------------------------------

    def featurize(self, examples, tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64):
        """Sliding windows over each context; see the module doc for the layout and the targets."""
        if max_seq_length < max_query_length + 4:
            raise ValueError(f"max_seq_length ({max_seq_length}) must exceed max_query_length ({max_query_length}) "
                             "by at least 4 (for [CLS], [SEP], [SEP] and one context piece)")
        if doc_stride < 1:
            raise ValueError(f"doc_stride must be positive, got {doc_stride}")
        T = max_seq_length
        rows = collections.defaultdict(list)
        contexts = {}  # context -> (ids [n], char spans [n, 2]); SQuAD asks ~5 questions per context
        for example_index, example in enumerate(examples):
            if example.context not in contexts:
                tokens, spans = tokenizer.tokenize_with_offsets(example.context)
                contexts[example.context] = (np.asarray(tokenizer.convert_tokens_to_ids(tokens), np.int32),
                                             np.asarray(spans, np.int32).reshape(-1, 2))
            context_ids, spans = contexts[example.context]
            query_ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.question))[:max_query_length]
            answer = _answer_pieces(spans, example.target)  # (first, last) context piece, or None

            offset = len(query_ids) + 2  # position of the first context piece: after [CLS] question [SEP]
            windows = _windows(len(context_ids), T - offset - 1, doc_stride)
            owner = _max_context_owner(windows, len(context_ids))  # [n] the window each piece is predicted from
            for w, (first, length) in enumerate(windows):
                stop = first + length
                slots = slice(offset, offset + length)  # where the window's context pieces sit
                ids = np.full(T, tokenizer.pad_id, np.int32)
                ids[0], ids[1:offset - 1], ids[offset - 1] = tokenizer.cls_id, query_ids, tokenizer.sep_id
                ids[slots], ids[offset + length] = context_ids[first:stop], tokenizer.sep_id
                mask, segments = np.zeros(T, np.int32), np.zeros(T, np.int32)
                mask[:offset + length + 1] = 1
                segments[offset:offset + length + 1] = 1
                char_start, char_end = np.full(T, -1, np.int32), np.full(T, -1, np.int32)
                char_start[slots], char_end[slots] = spans[first:stop, 0], spans[first:stop, 1]
                max_context = np.zeros(T, np.int32)
                max_context[slots] = owner[first:stop] == w
                start = end = 0
                if answer and first <= answer[0] and answer[1] < stop:
                    start, end = offset + answer[0] - first, offset + answer[1] - first
                for key, value in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", segments),
                                   ("start_positions", start), ("end_positions", end),
                                   ("example_index", example_index), ("token_char_start", char_start),
                                   ("token_char_end", char_end), ("token_is_max_context", max_context)):
                    rows[key].append(value)
        per_feature = ("start_positions", "end_positions", "example_index")
        keys = ("input_ids", "attention_mask", "token_type_ids", *per_feature, "token_char_start", "token_char_end",
                "token_is_max_context")
        if not rows:
            return {k: stack([], width=None if k in per_feature else T) for k in keys}
        return {k: np.asarray(rows[k], np.int32) if k in per_feature else np.stack(rows[k]) for k in keys}  # [F(, T)]

    # --- decoding ----------------------------------------------------------------------------------------------

    def decode(self, outputs, features, examples, n_best_size=20, max_answer_length=30,
               null_score_diff_threshold=0.0) -> SpanPredictions:
        start_logits = np.asarray(outputs["start_logits"], np.float64)
        end_logits = np.asarray(outputs["end_logits"], np.float64)
        char_start, char_end = features["token_char_start"], features["token_char_end"]
        if start_logits.shape != char_start.shape or end_logits.shape != char_start.shape:
            raise ValueError(f"start/end logits {start_logits.shape}/{end_logits.shape} must match the features "
                             f"[F, T] = {char_start.shape}")
        by_example = collections.defaultdict(list)
        for f, e in enumerate(features["example_index"]):
            by_example[int(e)].append(f)
        spans_of = _window_spans(start_logits, end_logits, char_start, features["token_is_max_context"],
                                 n_best_size, max_answer_length)

        answers, nbest_json = {}, {}
        null_odds = {} if self.version_2 else None
        for e, example in enumerate(examples):
            candidates = []  # (score, start_logit, end_logit, text)
            null = None      # (score, start_logit, end_logit) of the lowest-scoring [CLS]
            for f in by_example.get(e, []):
                s, t = start_logits[f], end_logits[f]
                if null is None or s[0] + t[0] < null[0]:
                    null = (s[0] + t[0], s[0], t[0])
                for i, j in spans_of(f):
                    text = span_text(example.context, char_start[f, i], char_end[f, j])
                    candidates.append((s[i] + t[j], s[i], t[j], text))
            if null is None:
                raise ValueError(f"question {example.qid} has no feature: were the features made from these examples?")
            if self.version_2:
                candidates.append((null[0], null[1], null[2], ""))
            nbest, seen = [], set()
            for candidate in sorted(candidates, key=lambda c: c[0], reverse=True):
                if len(nbest) == n_best_size:
                    break
                if candidate[3] not in seen:
                    seen.add(candidate[3])
                    nbest.append(candidate)
            if not nbest:  # nothing valid at all (run_squad.py's "empty" guard)
                nbest.append((0.0, 0.0, 0.0, "empty"))
            scores = np.asarray([c[0] for c in nbest])
            probabilities = np.exp(scores - scores.max())
            probabilities /= probabilities.sum()
            nbest_json[example.qid] = [
                {"text": c[3], "probability": float(p), "start_logit": float(c[1]), "end_logit": float(c[2])}
                for c, p in zip(nbest, probabilities)]
            if not self.version_2:
                answers[example.qid] = nbest[0][3]
                continue
            best_non_null = next((c for c in nbest if c[3]), None)
            # With no non-null candidate the null answer wins by any margin.
            odds = float("inf") if best_non_null is None else float(null[0] - best_non_null[0])
            null_odds[example.qid] = odds
            answers[example.qid] = "" if odds > null_score_diff_threshold else best_non_null[3]
        return SpanPredictions(answers, nbest_json, null_odds, float(null_score_diff_threshold))

    # --- metrics and files -------------------------------------------------------------------------------------

    def evaluate(self, predictions: SpanPredictions, examples):
        """The official metrics of the decoded answers (v2.0: with the null odds, for best_f1 and its threshold)."""
        dataset = {"version": "2.0" if self.version_2 else "1.1", "data": [{"paragraphs": [
            {"context": e.context, "qas": [{"id": e.qid, "answers": [
                {"text": a.text, "answer_start": a.start} for a in e.answers]}]} for e in examples]}]}
        return metrics.squad_evaluate(dataset, predictions.answers, na_probs=predictions.null_odds,
                                      na_prob_thresh=predictions.null_threshold,
                                      version="2.0" if self.version_2 else "1.1")

    def write_predictions(self, predictions: SpanPredictions, examples, output_dir, split):
        """<split>_predictions.json, <split>_nbest_predictions.json and (v2.0) <split>_null_odds.json."""
        os.makedirs(output_dir, exist_ok=True)
        files = [("predictions", predictions.answers), ("nbest_predictions", predictions.nbest)]
        if predictions.null_odds is not None:
            files.append(("null_odds", predictions.null_odds))
        paths = []
        for stem, content in files:
            path = os.path.join(output_dir, f"{split}_{stem}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2 if stem == "nbest_predictions" else None, ensure_ascii=False)
            paths.append(path)
        return paths


def _window_spans(start_logits, end_logits, char_start, max_context, n_best_size, max_answer_length):
    """spans_of(f) -> the valid (start, end) pieces of window f among its top start x top end logits: both in
    the context, start <= end, at most max_answer_length pieces, start predicted from this window."""
    top_starts = np.argsort(-start_logits, axis=-1, kind="stable")[:, :n_best_size]  # [F, n]
    top_ends = np.argsort(-end_logits, axis=-1, kind="stable")[:, :n_best_size]      # [F, n]
    rows = np.arange(len(start_logits))[:, None, None]
    starts, ends = top_starts[:, :, None], top_ends[:, None, :]  # broadcast to [F, n, n]
    valid = ((char_start[rows, starts] >= 0) & (char_start[rows, ends] >= 0) & (max_context[rows, starts] > 0)
             & (ends >= starts) & (ends - starts + 1 <= max_answer_length))
    feature, i, j = np.nonzero(valid)  # sorted by feature
    pairs = np.stack([top_starts[feature, i], top_ends[feature, j]], axis=-1)  # [K, 2]
    bounds = np.searchsorted(feature, np.arange(len(start_logits) + 1))
    return lambda f: pairs[bounds[f]:bounds[f + 1]].tolist()


def span_text(context: str, start_char: int, end_char: int) -> str:
    """The context's text from a start piece to an end piece, including combining marks right after it.

    An uncased tokenizer drops combining accents ("Cafe\u0301" -> "cafe"), so no piece's span covers them;
    they still belong to the last character of the answer.
    """
    while end_char < len(context) and unicodedata.category(context[end_char]) in ("Mn", "Mc", "Me"):
        end_char += 1
    return context[start_char:end_char]


def _answer_pieces(spans: np.ndarray, answer: Optional[Answer]):
    """(first, last) context pieces that cover the answer's characters, or None."""
    if answer is None or answer.start < 0:
        return None
    begin, end = answer.start, answer.start + len(answer.text)
    covering = np.flatnonzero((spans[:, 0] < end) & (spans[:, 1] > begin))
    return (int(covering[0]), int(covering[-1])) if len(covering) else None


def _windows(num_pieces: int, room: int, doc_stride: int):
    """(start, length) of the context windows: run_squad.py's sliding windows."""
    windows, start = [], 0
    while True:
        length = min(num_pieces - start, room)
        windows.append((start, length))
        if start + length >= num_pieces:
            return windows
        start += min(length, doc_stride)


def _max_context_owner(windows, num_pieces: int) -> np.ndarray:
    """For each context piece, the window where it has its most balanced context (run_squad.py's
    _check_is_max_context: score min(left, right) + 0.01 * window length; ties go to the first window)."""
    best = np.full(num_pieces, -np.inf)
    owner = np.zeros(num_pieces, np.int32)
    for w, (first, length) in enumerate(windows):
        position = np.arange(first, first + length)
        score = np.minimum(position - first, first + length - 1 - position) + 0.01 * length
        better = score > best[first:first + length]
        best[first:first + length][better] = score[better]
        owner[first:first + length][better] = w
    return owner


def squad_task(name: str) -> SquadTask:
    version_2 = name == "squad_v2.0"
    if version_2:
        names = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1")
    else:
        names = ("exact_match", "f1")
    return SquadTask(name=name, kind="span", metric_names=names, best_metric="f1",
                     tfds_name="squad/v2.0" if version_2 else "squad/v1.1", version_2=version_2)
