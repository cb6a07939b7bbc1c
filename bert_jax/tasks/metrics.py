"""Evaluation metrics for the fine-tuning tasks, in plain NumPy (no JAX, no scikit-learn at run time).

    accuracy, f1_binary, f1_macro, matthews_corrcoef     classification (CoLA reports MCC)
    pearson, spearman                                     regression (STS-B); Spearman averages tied ranks
    glue_metrics(task_name, predictions, labels)          what GLUE reports per task, plus its average
    squad_normalize / squad_exact / squad_f1              the official SQuAD answer comparison
    squad_evaluate(dataset, predictions, ...)             the official v1.1 / v2.0 evaluation scripts
    entity_spans / entity_f1                              entity-level NER scores with seqeval's semantics

Undefined correlations (a constant input) are reported as 0.0, as scikit-learn does for MCC, so that a
model that predicts a constant never wins checkpoint selection through a NaN.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------------------------
# Classification and regression
# ----------------------------------------------------------------------------------------------------------------------


def _as_label_arrays(predictions, labels):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    if predictions.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    predictions, labels = _as_label_arrays(predictions, labels)
    return float(np.mean(predictions == labels))


def _f1_of_class(predictions, labels, positive) -> float:
    tp = np.sum((predictions == positive) & (labels == positive))
    fp = np.sum((predictions == positive) & (labels != positive))
    fn = np.sum((predictions != positive) & (labels == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def f1_binary(predictions, labels, positive=1) -> float:
    """F1 of the positive class (GLUE's F1 for MRPC and QQP: label 1 = paraphrase / duplicate)."""
    predictions, labels = _as_label_arrays(predictions, labels)
    return _f1_of_class(predictions, labels, positive)


def f1_macro(predictions, labels, classes: Optional[Iterable] = None) -> float:
    """Unweighted mean of per-class F1 over `classes` (default: every class seen in labels or predictions)."""
    predictions, labels = _as_label_arrays(predictions, labels)
    classes = np.union1d(labels, predictions) if classes is None else list(classes)
    return float(np.mean([_f1_of_class(predictions, labels, c) for c in classes]))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation for any number of classes (the K-class form of Gorodkin 2004)."""
    predictions, labels = _as_label_arrays(predictions, labels)
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true_codes, pred_codes = codes[: labels.size], codes[labels.size:]
    confusion = np.zeros((len(classes), len(classes)), np.float64)  # [true, predicted]
    np.add.at(confusion, (true_codes, pred_codes), 1.0)
    total, correct = confusion.sum(), np.trace(confusion)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    covariance = correct * total - true_counts @ pred_counts
    denominator = np.sqrt((total**2 - pred_counts @ pred_counts) * (total**2 - true_counts @ true_counts))
    return float(covariance / denominator) if denominator > 0 else 0.0


def pearson(x, y) -> float:
    x, y = _as_label_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


def average_ranks(values) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (what Spearman's rho needs)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # A new group of equal values starts wherever the sorted value changes.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(x, y) -> float:
    x, y = _as_label_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return pearson(average_ranks(x), average_ranks(y))


# What GLUE reports for each task; the last entry is the task's GLUE score (the mean of its metrics).
GLUE_METRICS = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1", "acc_and_f1"),
    "qqp": ("accuracy", "f1", "acc_and_f1"),
    "stsb": ("pearson", "spearman", "corr"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def glue_metrics(task_name: str, predictions, labels) -> dict:
    """GLUE's metrics for `task_name`: class ids (or scores for STS-B) against gold labels."""
    if task_name not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task_name!r}; known: {sorted(GLUE_METRICS)}")
    if task_name == "cola":
        return {"mcc": matthews_corrcoef(predictions, labels)}
    if task_name == "stsb":
        p, s = pearson(predictions, labels), spearman(predictions, labels)
        return {"pearson": p, "spearman": s, "corr": (p + s) / 2}
    acc = accuracy(predictions, labels)
    if task_name in ("mrpc", "qqp"):
        f1 = f1_binary(predictions, labels)
        return {"accuracy": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"accuracy": acc}


# ----------------------------------------------------------------------------------------------------------------------
# SQuAD (semantics of the official evaluate-v1.1.py and evaluate-v2.0.py)
# ----------------------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(gold: str, prediction: str) -> float:
    return float(squad_normalize(gold) == squad_normalize(prediction))


def squad_f1(gold: str, prediction: str, version: str = "2.0") -> float:
    """Token-overlap F1 of the normalised strings.

    v2.0 scores an empty-vs-empty pair as 1 (a correct "no answer"); v1.1 has no such rule (always 0 there).
    """
    gold_tokens, pred_tokens = squad_normalize(gold).split(), squad_normalize(prediction).split()
    if version == "2.0" and (not gold_tokens or not pred_tokens):
        return float(gold_tokens == pred_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_version(dataset: Mapping) -> str:
    """'2.0' when the file says so or holds an unanswerable question, else '1.1'."""
    if str(dataset.get("version", "")).lstrip("v").startswith("2"):
        return "2.0"
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    return "2.0"
    return "1.1"


def squad_evaluate(dataset: Mapping, predictions: Mapping[str, str], na_probs: Optional[Mapping[str, float]] = None,
                   na_prob_thresh: float = 1.0, version: Optional[str] = None) -> dict:
    """The official SQuAD metrics of `predictions` (question id -> answer text) on a dataset in the JSON layout.

    v1.1 returns {exact_match, f1}. v2.0 returns exact/f1/total overall and for the HasAns_/NoAns_ subsets
    (plus `exact_match` = `exact`), and, when `na_probs` is given, best_exact/best_f1 with their thresholds.
    A question with a probability of no answer above `na_prob_thresh` counts as answered with "".
    Questions without a prediction score 0 (v1.1 does this; v2.0's script would crash on them) and are listed in
    `missing` (their number) so that a truncated predictions file is visible.
    """
    version = version or squad_version(dataset)
    if version not in ("1.1", "2.0"):
        raise ValueError(f"SQuAD version must be '1.1' or '2.0', got {version!r}")
    exact, f1, has_answer, missing = {}, {}, {}, []
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                golds = [a["text"] for a in qa.get("answers", [])]
                has_answer[qid] = bool(golds)
                if version == "2.0":
                    # v2.0 ignores gold answers that normalise to nothing; none left means "no answer".
                    golds = [g for g in golds if squad_normalize(g)] or [""]
                if qid not in predictions:
                    missing.append(qid)
                    exact[qid] = f1[qid] = 0.0
                    continue
                prediction = predictions[qid]
                exact[qid] = max(squad_exact(g, prediction) for g in golds)
                f1[qid] = max(squad_f1(g, prediction, version) for g in golds)
    if not exact:
        raise ValueError("the SQuAD dataset holds no question")

    if version == "1.1":
        result = {"exact_match": 100.0 * np.mean(list(exact.values())), "f1": 100.0 * np.mean(list(f1.values()))}
    else:
        probs = {qid: 0.0 for qid in exact} if na_probs is None else na_probs
        unknown = [qid for qid in exact if qid not in probs]
        if unknown:
            raise ValueError(f"na_probs lacks {len(unknown)} question id(s), e.g. {unknown[0]!r}")

        def thresholded(scores):  # predicted "no answer" is right exactly when there is none
            return {q: (float(not has_answer[q]) if probs[q] > na_prob_thresh else s) for q, s in scores.items()}

        exact_t, f1_t = thresholded(exact), thresholded(f1)
        result = _squad_subset(exact_t, f1_t, list(exact), "")
        result["exact_match"] = result["exact"]
        for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
            subset = [q for q in exact if has_answer[q] == wanted]
            if subset:
                result.update(_squad_subset(exact_t, f1_t, subset, prefix))
        if na_probs is not None:
            for name, raw in (("exact", exact), ("f1", f1)):
                best, thresh = _best_no_answer_threshold(raw, predictions, probs, has_answer)
                result[f"best_{name}"], result[f"best_{name}_thresh"] = best, thresh
    result = {k: (float(v) if not isinstance(v, int) else v) for k, v in result.items()}
    if missing:
        result["missing"] = len(missing)
    return result


def _squad_subset(exact, f1, qids, prefix):
    return {f"{prefix}exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            f"{prefix}f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
            f"{prefix}total": len(qids)}


def _best_no_answer_threshold(scores, predictions, na_probs, has_answer):
    """Sweep the no-answer threshold over the sorted na_probs (evaluate-v2.0.py's find_best_thresh)."""
    score = best = sum(1 for q in scores if not has_answer[q])  # everything predicted "no answer"
    best_thresh = 0.0
    for qid in sorted(scores, key=lambda q: na_probs[q]):
        if has_answer[qid]:
            score += scores[qid]
        elif predictions.get(qid):
            score -= 1  # an answer where there is none
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), float(best_thresh)


# ----------------------------------------------------------------------------------------------------------------------
# Entity-level NER (seqeval's default mode: IOB1/IOB2/IOE/IOBES tags, lenient about an I- that starts an entity)
# ----------------------------------------------------------------------------------------------------------------------


def _split_tag(tag: str):
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O":
        return "O", ""
    prefix, _, entity_type = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not entity_type:
        raise ValueError(f"invalid NER tag {tag!r}: expected O or B-/I-/E-/S-<type>")
    return prefix, entity_type


def entity_spans(tags: Sequence[str]) -> list:
    """Entities of one sentence as (type, first, last) word positions, inclusive.

    An entity ends before a B-/S- tag, an O, or a change of type, and after an E-/S- tag; it starts at a B-/S-
    tag, at any tag whose type differs from the previous one, and at an I-/E- tag after O, E- or S-.
    """
    spans, start = [], None
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel O closes a final entity
        prefix, entity_type = _split_tag(tag)
        ends = prev_prefix in ("E", "S") or (
            prev_prefix in ("B", "I") and (prefix in ("B", "S", "O") or entity_type != prev_type))
        if ends and start is not None:
            spans.append((prev_type, start, i - 1))
            start = None
        starts = prefix in ("B", "S") or (prefix in ("I", "E") and (
            prev_prefix in ("O", "E", "S") or entity_type != prev_type))
        if starts:
            start = i
        prev_prefix, prev_type = prefix, entity_type
    return spans


def entity_f1(gold_sequences: Sequence[Sequence[str]], predicted_sequences: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over exact entity matches, plus per-type scores ({type}_f1 etc.)."""
    if len(gold_sequences) != len(predicted_sequences):
        raise ValueError(f"{len(gold_sequences)} gold sentences but {len(predicted_sequences)} predicted")
    gold, predicted = set(), set()
    for n, (gold_tags, predicted_tags) in enumerate(zip(gold_sequences, predicted_sequences)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {n}: {len(gold_tags)} gold tags but {len(predicted_tags)} predicted")
        gold.update((n, *span) for span in entity_spans(gold_tags))
        predicted.update((n, *span) for span in entity_spans(predicted_tags))

    def scores(g, p):
        tp = len(g & p)
        precision = tp / len(p) if p else 0.0
        recall = tp / len(g) if g else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    precision, recall, f1 = scores(gold, predicted)
    result = {"precision": precision, "recall": recall, "f1": f1,
              "num_gold": len(gold), "num_predicted": len(predicted)}
    for entity_type in sorted({e[1] for e in gold | predicted}):
        p, r, f = scores({e for e in gold if e[1] == entity_type}, {e for e in predicted if e[1] == entity_type})
        result.update({f"{entity_type}_precision": p, f"{entity_type}_recall": r, f"{entity_type}_f1": f})
    return result
