"""SQuAD v1.1 / v2.0: reading, sliding-window features, n-best decoding, exact answer substrings, evaluate-squad."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_jax.tasks import get_task, metrics
from bert_jax.tasks.squad import SquadExample, Answer, span_text
from bert_jax.tokenizer import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEV_V1, DEV_V2 = DATA / "squad" / "dev-v1.1.json", DATA / "squad" / "dev-v2.0.json"


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(str(DATA / "vocab" / "bert-base-uncased-vocab.txt"), lower_case=True)


@pytest.fixture(scope="module")
def dev_v1():
    return get_task("squad_v1.1").read("validation", str(DEV_V1))


@pytest.fixture(scope="module")
def dev_v1_features(dev_v1, tokenizer):
    return get_task("squad_v1.1").featurize(dev_v1[0], tokenizer, max_seq_length=384, doc_stride=128,
                                            max_query_length=64)


def oracle_outputs(features, high=10.0):
    """Logits that put all their mass on the features' own start/end positions."""
    start = np.full(features["input_ids"].shape, -high)
    end = start.copy()
    rows = np.arange(len(start))
    start[rows, features["start_positions"]] = high
    end[rows, features["end_positions"]] = high
    return {"start_logits": start, "end_logits": end}


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def test_reads_the_documented_numbers_of_questions(dev_v1):
    examples, report = dev_v1
    assert len(examples) == 10570 and report.records == 10570 and report.ok
    assert len({e.title for e in examples}) == 48
    assert all(e.context[a.start:a.start + len(a.text)] == a.text for e in examples for a in e.answers)

    examples, report = get_task("squad_v2.0").read("dev", str(DEV_V2))
    assert len(examples) == 11873 and report.ok
    assert sum(e.is_impossible for e in examples) == 5945
    assert all(e.answers == () for e in examples if e.is_impossible)


def _write_squad(path, qas, context="Paris is the capital of France."):
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8")
    return str(path)


def test_bad_questions_are_reported_not_dropped_silently(tmp_path):
    path = _write_squad(tmp_path / "bad.json", [
        {"id": "ok", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "moved", "question": "Country?", "answers": [{"text": "France", "answer_start": 3}]},
        {"id": "lost", "question": "Who?", "answers": [{"text": "Berlin", "answer_start": 0}]},
        {"id": "ok", "question": "Again?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "blank", "question": "  ", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "none", "question": "Why?", "is_impossible": True, "answers": []},
    ])
    task = get_task("squad_v1.1")
    examples, report = task.read("validation", path)
    # Evaluation keeps a question whose answer is not in the context (it is still scored), flagged in the report.
    assert [e.qid for e in examples] == ["ok", "moved", "lost"]
    assert examples[1].answers[0].start == len("Paris is the capital of ")
    assert examples[2].answers[0].start == -1 and examples[2].target is None
    assert report.records == 6 and len(report.skipped) == 3 and len(report.notes) == 2
    summary = report.summary()
    assert "duplicate question id" in summary and "empty question" in summary
    assert "unanswerable question in a SQuAD v1.1 task" in summary
    assert "answer not found in its context" in summary and f"{path} question lost" in summary

    # Training needs positions: the unplaceable question is skipped there.
    examples, report = task.read("train", path)
    assert [e.qid for e in examples] == ["ok", "moved"]
    assert "no answer found in its context" in report.summary()

    with pytest.raises(ValueError, match="question moved: answer_start did not point"):
        task.read("validation", path, strict=True)


def test_not_a_squad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a SQuAD file"):
        get_task("squad_v1.1").read("validation", str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        get_task("squad_v1.1").read("validation", str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------------


def test_feature_layout_matches_hugging_face_on_single_window_questions(dev_v1, dev_v1_features, tmp_path):
    from transformers import BertTokenizerFast

    shutil.copy(DATA / "vocab" / "bert-base-uncased-vocab.txt", tmp_path / "vocab.txt")
    hf = BertTokenizerFast.from_pretrained(tmp_path, do_lower_case=True)
    examples, _ = dev_v1
    f = dev_v1_features
    checked = 0
    for n in range(0, 2000, 37):
        rows = np.flatnonzero(f["example_index"] == n)
        if len(rows) != 1:
            continue
        row = rows[0]
        reference = hf(examples[n].question, examples[n].context)
        length = len(reference["input_ids"])
        if length > 384 or len(hf.tokenize(examples[n].question)) > 64:
            continue
        assert f["input_ids"][row, :length].tolist() == reference["input_ids"]
        assert f["token_type_ids"][row, :length].tolist() == reference["token_type_ids"]
        assert f["attention_mask"][row].sum() == length and not f["input_ids"][row, length:].any()
        checked += 1
    assert checked > 30


def test_windows_cover_the_context_and_each_piece_has_one_max_context(dev_v1, dev_v1_features, tokenizer):
    examples, _ = dev_v1
    f = dev_v1_features
    assert f["input_ids"].shape == (len(f["example_index"]), 384) and f["input_ids"].dtype == np.int32
    assert (f["input_ids"][:, 0] == 101).all()
    multi = [n for n in np.unique(f["example_index"]) if (f["example_index"] == n).sum() > 1]
    assert len(multi) > 50  # dev-v1.1 has contexts longer than one window of 384
    for n in multi[:40]:
        rows = np.flatnonzero(f["example_index"] == n)
        # Consecutive windows start doc_stride = 128 context pieces apart.
        _, spans = tokenizer.tokenize_with_offsets(examples[n].context)
        piece_of_char = {start: i for i, (start, _) in enumerate(spans)}
        first_pieces = [piece_of_char[f["token_char_start"][r][f["token_char_start"][r] >= 0][0]] for r in rows]
        assert first_pieces == [128 * k for k in range(len(rows))]
        # Every context character span appears as "max context" in exactly one window.
        owned = [tuple(x) for r in rows for x, m in zip(zip(f["token_char_start"][r], f["token_char_end"][r]),
                                                        f["token_is_max_context"][r]) if m]
        seen = {tuple(x) for r in rows for x in zip(f["token_char_start"][r], f["token_char_end"][r]) if x[0] >= 0}
        assert len(owned) == len(set(owned)) and set(owned) == seen
        # The last window reaches the end of the context.
        assert f["token_char_end"][rows[-1]].max() == len(examples[n].context.rstrip())


def test_gold_positions_decode_back_to_the_gold_answers(dev_v1, dev_v1_features):
    """For every answerable question whose answer fits in a window, the gold start/end pieces cut from the
    context a string that normalises to the gold answer (a few fail where the answer is part of a piece)."""
    examples, _ = dev_v1
    f = dev_v1_features
    matched = total = 0
    answered = set()
    for row in range(len(f["example_index"])):
        start, end = f["start_positions"][row], f["end_positions"][row]
        if start == 0:
            continue
        example = examples[f["example_index"][row]]
        assert f["token_type_ids"][row, start] == 1 and start <= end
        text = span_text(example.context, f["token_char_start"][row, start], f["token_char_end"][row, end])
        total += 1
        matched += metrics.squad_normalize(text) == metrics.squad_normalize(example.target.text)
        answered.add(f["example_index"][row])
    assert len(answered) > 0.99 * len(examples)  # nearly every answer fits in some window of 384
    assert matched / total > 0.99


def test_oracle_logits_score_near_perfect_through_decode_and_evaluate(dev_v1, dev_v1_features):
    task = get_task("squad_v1.1")
    examples, _ = dev_v1
    predictions = task.decode(oracle_outputs(dev_v1_features), dev_v1_features, examples)
    result = task.evaluate(predictions, examples)
    assert set(result) == {"exact_match", "f1"}
    assert result["exact_match"] > 99.0 and result["f1"] > 99.0
    f = dev_v1_features
    # Answers that no window holds, or longer than max_answer_length (30), cannot be predicted.
    decodable = (f["start_positions"] > 0) & (f["end_positions"] - f["start_positions"] < 30)
    placed = set(f["example_index"][decodable])
    assert all(predictions.answers[e.qid] in e.context for n, e in enumerate(examples) if n in placed)


@pytest.mark.parametrize("context, answer", [
    ("Der Zürcher  Künstler   Jean-Luc Godard drehte 1960 «À bout de souffle» in Paris.", "À bout de souffle"),
    ("Der Zürcher  Künstler   Jean-Luc Godard drehte 1960 in Paris.", "Zürcher  Künstler"),
    ("Der Zürcher  Künstler   Jean-Luc Godard drehte 1960 in Paris.", "Künstler   Jean-Luc Godard"),
    ("The café is called Cafe\u0301 Noir, near 東京駅 station.", "Cafe\u0301 Noir"),
    ("The café is called Cafe\u0301 Noir, near 東京駅 station.", "東京駅"),
    ("The café is called Cafe\u0301, near 東京駅 station.", "Cafe\u0301"),  # ends with a stripped accent
    ("Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and naïve Ωmega\u00a0test\tok", "naïve Ωmega\u00a0test"),
    ("Price:\u2003$1,000.50 (approx.)", "$1,000.50"),
])
def test_answers_are_exact_substrings_of_the_context(tokenizer, context, answer):
    start = context.index(answer)
    example = SquadExample("q", "What is it?", context, (Answer(answer, start),))
    task = get_task("squad_v1.1")
    features = task.featurize([example], tokenizer, max_seq_length=64, doc_stride=16, max_query_length=16)
    assert features["start_positions"][0] > 0
    predictions = task.decode(oracle_outputs(features), features, [example])
    assert predictions.answers["q"] == answer  # exact, not just equal after normalisation


def test_long_context_sliding_windows_and_max_context(tokenizer):
    words = [f"w{i}" for i in range(60)]  # 'w12' is two pieces or more: count pieces, not words
    context = " ".join(words)
    pieces = tokenizer.tokenize(context)
    answer = "w40 w41"
    example = SquadExample("q", "which?", context, (Answer(answer, context.index(answer)),))
    task = get_task("squad_v1.1")
    features = task.featurize([example], tokenizer, max_seq_length=32, doc_stride=10, max_query_length=8)
    query_len = len(tokenizer.tokenize("which?"))
    room = 32 - query_len - 3
    expected_starts, start = [], 0  # run_squad.py's loop; every window but the last is full here (room > stride)
    while True:
        expected_starts.append(start)
        if start + room >= len(pieces):
            break
        start += 10
    assert len(expected_starts) > 3
    assert len(features["example_index"]) == len(expected_starts)
    windows_with_answer = np.flatnonzero(features["start_positions"] > 0)
    assert len(windows_with_answer) >= 1
    for row in windows_with_answer:
        s, e = features["start_positions"][row], features["end_positions"][row]
        assert context[features["token_char_start"][row, s]:features["token_char_end"][row, e]] == answer
    # Windows without the whole answer point at [CLS].
    others = np.setdiff1d(np.arange(len(features["example_index"])), windows_with_answer)
    assert (features["start_positions"][others] == 0).all() and (features["end_positions"][others] == 0).all()
    predictions = task.decode(oracle_outputs(features), features, [example])
    assert predictions.answers["q"] == answer


# ----------------------------------------------------------------------------------------------------------------------
# Decoding details
# ----------------------------------------------------------------------------------------------------------------------


def _one_window(tokenizer, version="squad_v2.0", context="alpha beta gamma delta epsilon"):
    task = get_task(version)
    example = SquadExample("q", "which one?", context, ())
    features = task.featurize([example], tokenizer, max_seq_length=32, doc_stride=8, max_query_length=8)
    first = int(np.flatnonzero(features["token_char_start"][0] >= 0)[0])  # 'alpha'
    return task, example, features, first


def test_decode_respects_max_answer_length_and_order(tokenizer):
    task, example, features, c = _one_window(tokenizer, "squad_v1.1")
    start = np.full((1, 32), -5.0)
    end = np.full((1, 32), -5.0)
    start[0, c], end[0, c + 4] = 3.0, 3.0      # alpha..epsilon: 5 pieces, score 6
    start[0, c + 1], end[0, c + 1] = 2.0, 1.5  # beta, score 3.5
    end[0, c - 1] = 9.0                        # an end on the [SEP] before the context: never valid
    predictions = task.decode({"start_logits": start, "end_logits": end}, features, [example], max_answer_length=30)
    assert predictions.answers["q"] == "alpha beta gamma delta epsilon"
    texts = [n["text"] for n in predictions.nbest["q"]]
    assert texts[0] == "alpha beta gamma delta epsilon" and "beta" in texts
    assert sum(n["probability"] for n in predictions.nbest["q"]) == pytest.approx(1.0)
    short = task.decode({"start_logits": start, "end_logits": end}, features, [example], max_answer_length=4)
    # The 5-piece span is too long now; left: beta..epsilon 2 + 3, alpha..beta 3 + 1.5, beta 2 + 1.5.
    assert short.answers["q"] == "beta gamma delta epsilon"
    assert [n["text"] for n in short.nbest["q"]][:3] == ["beta gamma delta epsilon", "alpha beta", "beta"]
    assert all(len(n["text"].split()) <= 4 for n in short.nbest["q"])


def test_v2_null_odds_and_threshold(tokenizer):
    task, example, features, c = _one_window(tokenizer)
    start = np.full((1, 32), -5.0)
    end = np.full((1, 32), -5.0)
    start[0, 0], end[0, 0] = 2.0, 1.0          # null score 3
    start[0, c + 2], end[0, c + 2] = 1.5, 1.0  # 'gamma', score 2.5
    outputs = {"start_logits": start, "end_logits": end}
    predictions = task.decode(outputs, features, [example])
    assert predictions.null_odds["q"] == pytest.approx(0.5)  # 3 - 2.5
    assert predictions.answers["q"] == ""                    # 0.5 > threshold 0
    assert {n["text"] for n in predictions.nbest["q"]} >= {"", "gamma"}
    lenient = task.decode(outputs, features, [example], null_score_diff_threshold=1.0)
    assert lenient.answers["q"] == "gamma"


def test_write_predictions_and_evaluate_squad_cli(tmp_path, tokenizer):
    """decode -> files -> `python -m bert_jax evaluate-squad` agrees with task.evaluate on SQuAD v2.0 dev."""
    task = get_task("squad_v2.0")
    examples, _ = task.read("validation", str(DEV_V2))
    examples = examples[:300]
    features = task.featurize(examples, tokenizer, max_seq_length=256, doc_stride=128, max_query_length=64)
    rng = np.random.default_rng(0)
    outputs = oracle_outputs(features)
    outputs = {k: v + rng.normal(0, 8.0, v.shape) for k, v in outputs.items()}  # noisy: some right, some wrong
    predictions = task.decode(outputs, features, examples)
    paths = task.write_predictions(predictions, examples, str(tmp_path), "validation")
    assert [Path(p).name for p in paths] == ["validation_predictions.json", "validation_nbest_predictions.json",
                                             "validation_null_odds.json"]
    subset = json.loads(DEV_V2.read_text())
    wanted = {e.qid for e in examples}
    for article in subset["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["id"] in wanted]
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    cli = subprocess.run([sys.executable, "-m", "bert_jax", "evaluate-squad", "--data", str(tmp_path / "subset.json"),
                          "--predictions", paths[0], "--na-probs", paths[2], "--na-prob-thresh", "0.0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    expected = task.evaluate(predictions, examples)
    assert printed == pytest.approx(expected)
    assert 5 < printed["exact"] < 95  # the noise makes the check meaningful
    assert printed["HasAns_total"] + printed["NoAns_total"] == 300


def test_evaluate_squad_cli_hand_computed(tmp_path):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [{"text": "1990", "answer_start": 0}]}]}]}]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps({"q1": "the Denver Broncos!", "q2": "in 1990 year"}))
    run = subprocess.run([sys.executable, "-m", "bert_jax", "evaluate-squad", "--data", str(tmp_path / "data.json"),
                          "--predictions", str(tmp_path / "pred.json")], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    # q1 exact; q2 F1 = 2 * (1/3) * 1 / (1/3 + 1) = 0.5
    assert json.loads(run.stdout) == pytest.approx({"exact_match": 50.0, "f1": 75.0})

    bad = subprocess.run([sys.executable, "-m", "bert_jax", "evaluate-squad", "--data", str(tmp_path / "data.json"),
                          "--predictions", str(tmp_path / "nope.json")], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "predictions file not found" in bad.stderr


def test_evaluate_squad_cli_all_empty_on_v2_dev(tmp_path):
    """Answering "" everywhere gets exactly the unanswerable questions right: 5945 of 11873."""
    dataset = json.loads(DEV_V2.read_text())
    qids = [qa["id"] for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    (tmp_path / "pred.json").write_text(json.dumps({q: "" for q in qids}))
    run = subprocess.run([sys.executable, "-m", "bert_jax", "evaluate-squad", "--data", str(DEV_V2),
                          "--predictions", str(tmp_path / "pred.json")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["exact"] == pytest.approx(100 * 5945 / 11873) and result["f1"] == pytest.approx(100 * 5945 / 11873)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (0.0, 100.0)
    assert (result["HasAns_total"], result["NoAns_total"], result["total"]) == (5928, 5945, 11873)


# ----------------------------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------------------------


def test_reads_tfds_squad_through_mock_data():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    context = "Paris is the capital of France."
    rows = {
        "v1.1": [{"id": "a", "title": "T", "context": context, "question": "Capital?",
                  "answers": {"text": ["Paris", "France"], "answer_start": [0, 24]}}],
        "v2.0": [{"id": "b", "title": "T", "context": context, "question": "Moon?", "is_impossible": True,
                  "answers": {"text": [], "answer_start": []},
                  "plausible_answers": {"text": ["Paris"], "answer_start": [0]}},
                 {"id": "c", "title": "T", "context": context, "question": "Capital?", "is_impossible": False,
                  "answers": {"text": ["Paris"], "answer_start": [0]},
                  "plausible_answers": {"text": [], "answer_start": []}}],
    }

    def as_dataset(builder, split, **kwargs):
        records = rows[builder.builder_config.name]
        return tf.data.Dataset.from_generator(lambda: iter(records),
                                              output_signature=builder.info.features.get_tensor_spec())

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        examples, report = get_task("squad_v1.1").read("validation", "tfds")
        assert report.ok and examples == [SquadExample("a", "Capital?", context,
                                                       (Answer("Paris", 0), Answer("France", 24)), False, "T")]
        examples, report = get_task("squad_v2.0").read("validation", "tfds")
        assert report.ok and [(e.qid, e.is_impossible, e.answers) for e in examples] == [
            ("b", True, ()), ("c", False, (Answer("Paris", 0),))]


def test_a_split_is_labeled_when_every_question_has_answers_or_is_unanswerable():
    task = get_task("squad_v2.0")
    answered = SquadExample("q1", "Who?", "Ann ran.", (Answer("Ann", 0),))
    impossible = SquadExample("q2", "Why?", "Ann ran.", is_impossible=True)
    unknown = SquadExample("q3", "Where?", "Ann ran.")
    features = {"start_positions": None}  # a window's targets are always there: they say nothing
    assert task.labeled([answered, impossible], features)
    assert not task.labeled([answered, unknown], features) and not task.labeled([], features)
