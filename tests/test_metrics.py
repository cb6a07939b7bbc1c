"""bert_jax.tasks.metrics against scikit-learn / SciPy and hand-worked cases."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bert_jax.tasks import metrics

# ----------------------------------------------------------------------------------------------------------------------
# Classification and regression versus scikit-learn and SciPy
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)  # mostly right
    assert metrics.accuracy(predictions, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))
    assert metrics.f1_binary(predictions, labels) == pytest.approx(sklearn.metrics.f1_score(labels, predictions))
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions))


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_metrics_match_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 4, size=300)
    predictions = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 4, size=300))
    assert metrics.f1_macro(predictions, labels) == pytest.approx(
        sklearn.metrics.f1_score(labels, predictions, average="macro"))
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions))


def test_macro_f1_counts_a_class_never_predicted_as_zero():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1])  # class 2 never predicted
    expected = sklearn.metrics.f1_score(labels, predictions, average="macro", zero_division=0)
    assert metrics.f1_macro(predictions, labels) == pytest.approx(expected)
    # Hand: F1 per class 1, 0.8, 0 -> 0.6
    assert metrics.f1_macro(predictions, labels) == pytest.approx(0.6)


def test_mcc_of_a_constant_prediction_is_zero_like_sklearn():
    labels = np.array([0, 1, 1, 0, 1])
    predictions = np.ones(5, int)
    assert metrics.matthews_corrcoef(predictions, labels) == 0.0
    assert sklearn.metrics.matthews_corrcoef(labels, predictions) == 0.0


def test_mcc_hand_computed():
    # tp=3, tn=2, fp=1, fn=1 -> (3*2 - 1*1) / sqrt(4 * 4 * 3 * 3) = 5/12
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    predictions = np.array([1, 1, 1, 0, 1, 0, 0])
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(5 / 12)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(200 + seed)
    x = rng.integers(0, 6, size=150).astype(float)  # only 6 distinct values: many ties
    y = x + rng.normal(0, 1.5, size=150)
    y[::7] = np.round(y[::7])  # ties in y too
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    np.testing.assert_allclose(metrics.average_ranks(x), scipy.stats.rankdata(x))


def test_spearman_hand_computed_ties():
    # ranks of x = [1, 2.5, 2.5, 4], of y = [1, 2, 3, 4]: Pearson of the ranks
    x, y = [10, 20, 20, 30], [1, 2, 3, 4]
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 2, 3, 4]) - 2.5
    assert metrics.spearman(x, y) == pytest.approx(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))


def test_correlation_of_a_constant_is_zero():
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert metrics.spearman([1, 2, 3], [4, 4, 4]) == 0.0


def test_glue_combined_metrics():
    labels = np.array([1, 0, 1, 1, 0, 1])
    predictions = np.array([1, 0, 0, 1, 1, 1])
    mrpc = metrics.glue_metrics("mrpc", predictions, labels)
    acc, f1 = sklearn.metrics.accuracy_score(labels, predictions), sklearn.metrics.f1_score(labels, predictions)
    assert mrpc == pytest.approx({"accuracy": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2})
    assert metrics.glue_metrics("cola", predictions, labels) == pytest.approx(
        {"mcc": sklearn.metrics.matthews_corrcoef(labels, predictions)})
    scores, gold = np.array([0.5, 2.0, 4.5, 3.0]), np.array([1.0, 2.0, 5.0, 2.5])
    stsb = metrics.glue_metrics("stsb", scores, gold)
    p, s = scipy.stats.pearsonr(scores, gold)[0], scipy.stats.spearmanr(scores, gold)[0]
    assert stsb == pytest.approx({"pearson": p, "spearman": s, "corr": (p + s) / 2})
    assert set(metrics.glue_metrics("rte", predictions, labels)) == {"accuracy"}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        metrics.glue_metrics("squad", predictions, labels)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.accuracy([1, 0], [1, 0, 1])


# ----------------------------------------------------------------------------------------------------------------------
# SQuAD
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, normalized", [
    ("The Cat!", "cat"),
    ("  an   apple,  a day ", "apple day"),
    ("theater and anthem", "theater and anthem"),  # articles only as whole words
    ("A.B.C.", "abc"),                            # punctuation removed before articles: 'a' joins 'bc'
    ("Denver Broncos.", "denver broncos"),
    ("rock 'n' roll", "rock n roll"),
    ("Café – “quoted”", "café – “quoted”"),     # only ASCII punctuation is removed
    ("\tthe\nend ", "end"),
])
def test_squad_normalize(text, normalized):
    assert metrics.squad_normalize(text) == normalized


def test_squad_f1_hand_computed():
    # gold tokens [cat, sat], predicted [cat, sat, down]: precision 2/3, recall 1 -> F1 0.8
    assert metrics.squad_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    # tokens count with multiplicity: gold [big, big, dog], predicted [big, dog, dog]
    # common = big x1 + dog x1 = 2 -> precision 2/3, recall 2/3
    assert metrics.squad_f1("big big dog", "big dog dog") == pytest.approx(2 / 3)
    assert metrics.squad_f1("Paris", "London") == 0.0
    assert metrics.squad_f1("", "", version="2.0") == 1.0
    assert metrics.squad_f1("", "", version="1.1") == 0.0
    assert metrics.squad_f1("Paris", "", version="2.0") == 0.0
    assert metrics.squad_exact("The Eiffel Tower", "eiffel tower.") == 1.0


def _dataset(version, questions):
    """questions: (id, [gold answer texts])."""
    qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds],
            **({"is_impossible": not golds} if version == "v2.0" else {})} for qid, golds in questions]
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


def test_squad_v1_evaluate_hand_computed():
    dataset = _dataset("1.1", [("q1", ["Denver Broncos", "Broncos"]), ("q2", ["1990"]), ("q3", ["x"])])
    predictions = {"q1": "The Denver Broncos.", "q2": "in 1990 year"}  # q3 missing -> 0
    result = metrics.squad_evaluate(dataset, predictions)
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2 * (1/3 * 1) / (1/3 + 1) = 0.5; q3: 0, 0
    assert result == pytest.approx({"exact_match": 100 / 3, "f1": 50.0, "missing": 1})


def test_squad_v2_evaluate_hand_computed():
    dataset = _dataset("v2.0", [("q1", ["Paris"]), ("q2", ["the blue car", "blue car"]), ("q3", []), ("q4", [])])
    predictions = {"q1": "Paris", "q2": "a red car", "q3": "", "q4": "something"}
    # Raw: q1 EM 1 F1 1; q2 EM 0 F1 0.5 ('car' of 2 tokens each side); q3 EM 1 F1 1; q4 0, 0.
    result = metrics.squad_evaluate(dataset, predictions)
    assert result == pytest.approx({
        "exact": 50.0, "f1": 62.5, "total": 4, "exact_match": 50.0,
        "HasAns_exact": 50.0, "HasAns_f1": 75.0, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})

    na_probs = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.8}
    result = metrics.squad_evaluate(dataset, predictions, na_probs=na_probs, na_prob_thresh=0.7)
    # Above 0.7, q3 and q4 count as "no answer": both right. exact = 3/4, f1 = 3.5/4.
    assert result["exact"] == pytest.approx(75.0)
    assert result["f1"] == pytest.approx(87.5)
    # Threshold sweep from "everything no-answer" (2 of 4 right), in na_prob order q1, q2, q4, q3:
    # exact: +1 (q1) -> 3 best @0.1, +0 (q2), -1 (q4 answered wrongly), 0 (q3 predicted empty)
    # f1:    +1 -> 3 @0.1, +0.5 -> 3.5 @0.6 best, -1, 0
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == pytest.approx(0.1)
    assert result["best_f1"] == pytest.approx(87.5) and result["best_f1_thresh"] == pytest.approx(0.6)


def test_squad_v2_ignores_gold_answers_that_normalise_to_nothing():
    dataset = _dataset("v2.0", [("q1", ["The", "a"])])  # every gold answer normalises to "" -> no answer
    assert metrics.squad_evaluate(dataset, {"q1": ""})["exact"] == 100.0
    assert metrics.squad_evaluate(dataset, {"q1": "the"})["exact"] == 100.0  # normalises to "" too


def test_squad_version_detection():
    assert metrics.squad_version(_dataset("1.1", [("q", ["a b"])])) == "1.1"
    assert metrics.squad_version(_dataset("v2.0", [("q", ["a b"])])) == "2.0"
    unlabeled_version = _dataset("", [("q", [])])
    assert metrics.squad_version(unlabeled_version) == "2.0"


def test_squad_na_probs_must_cover_every_question():
    dataset = _dataset("v2.0", [("q1", ["x"]), ("q2", [])])
    with pytest.raises(ValueError, match="na_probs lacks 1"):
        metrics.squad_evaluate(dataset, {"q1": "x", "q2": ""}, na_probs={"q1": 0.2})


# ----------------------------------------------------------------------------------------------------------------------
# Entity-level NER
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),                     # an I- tag starts an entity
    (["O", "I-LOC", "B-LOC", "I-LOC"], [("LOC", 1, 1), ("LOC", 2, 3)]),
    (["B-LOC", "I-PER", "I-PER"], [("LOC", 0, 0), ("PER", 1, 2)]),  # a change of type starts a new one
    (["B-ORG", "B-ORG", "I-ORG"], [("ORG", 0, 0), ("ORG", 1, 2)]),
    (["I-MISC"], [("MISC", 0, 0)]),
    (["O", "O"], []),
    (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 2)]),  # IOBES
])
def test_entity_spans_hand_cases(tags, spans):
    assert metrics.entity_spans(tags) == spans


def test_entity_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["I-ORG", "O", "B-MISC", "B-MISC"]]
    # gold entities: PER(0,0-1) LOC(0,3) ORG(1,0) MISC(1,2-3) = 4
    # predicted: PER(0,0-1) ORG(1,0) [I- starts it] MISC(1,2) MISC(1,3) = 4; right: PER, ORG = 2
    result = metrics.entity_f1(gold, predicted)
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5)
    assert result["PER_f1"] == 1.0 and result["ORG_f1"] == 1.0
    assert result["LOC_recall"] == 0.0 and result["MISC_precision"] == 0.0
    assert (result["num_gold"], result["num_predicted"]) == (4, 4)


def test_entities_do_not_cross_sentences():
    # Flattened, I-PER after I-PER would continue; per sentence they are two entities.
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    result = metrics.entity_f1(gold, gold)
    assert result["num_gold"] == 2 and result["f1"] == 1.0


def test_entity_f1_rejects_bad_input():
    with pytest.raises(ValueError, match="invalid NER tag"):
        metrics.entity_f1([["B-PER", "X"]], [["B-PER", "O"]])
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_f1([["B-PER", "O"]], [["B-PER"]])
