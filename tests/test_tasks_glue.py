"""GLUE: readers on the real distribution files and on hand-made quirky ones, features vs Hugging Face,
metrics vs scikit-learn / SciPy, submission files, TFDS through mock data, and the task registry."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bert_jax.tasks import TASK_NAMES, get_task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GLUE = DATA / "glue"


def split_lines(path):
    """An independent reading of a GLUE file: plain line and tab splitting."""
    text = path.read_text(encoding="utf-8-sig")
    return [line.split("\t") for line in text.split("\n") if line]


# ----------------------------------------------------------------------------------------------------------------------
# The real files
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, folder, split, count, labeled", [
    ("sst2", "SST-2", "train", 67349, True), ("sst2", "SST-2", "dev", 872, True),
    ("sst2", "SST-2", "test", 1821, False),
    ("cola", "CoLA", "train", 8551, True), ("cola", "CoLA", "dev", 1043, True),
    ("stsb", "STS-B", "train", 5749, True), ("stsb", "STS-B", "dev", 1500, True),
    ("rte", "RTE", "train", 2490, True), ("rte", "RTE", "dev", 277, True),
])
def test_reads_the_documented_row_counts(task, folder, split, count, labeled):
    examples, report = get_task(task).read(split, str(GLUE / folder))
    assert len(examples) == count and report.records == count and report.ok, report.summary()
    assert all((e.label is not None) == labeled for e in examples)
    assert f"{count} examples from {count} records, 0 skipped" in report.summary()


def test_cola_headerless_rows_and_missing_final_newline():
    path = GLUE / "CoLA" / "dev.tsv"
    assert not path.read_bytes().endswith(b"\n")  # the quirk is really there
    examples, _ = get_task("cola").read("dev", str(path))
    reference = split_lines(path)
    assert [(e.text, e.label) for e in examples] == [(cols[3], cols[1]) for cols in reference]
    assert examples[-1].text == reference[-1][3] and examples[-1].text.endswith(".")


def test_stsb_scores_and_pairs():
    examples, _ = get_task("stsb").read("dev", str(GLUE / "STS-B"))
    reference = split_lines(GLUE / "STS-B" / "dev.tsv")[1:]
    assert len(reference[0]) == 10
    assert [(e.text, e.text_pair, e.label) for e in examples] == [(c[7], c[8], float(c[9])) for c in reference]
    assert all(0.0 <= e.label <= 5.0 for e in examples)


def test_rte_and_sst2_labels():
    rte, _ = get_task("rte").read("dev", str(GLUE / "RTE"))
    assert {e.label for e in rte} == {"entailment", "not_entailment"}
    assert [e.guid for e in rte] == [str(i) for i in range(277)]
    sst2_test, _ = get_task("sst2").read("test", str(GLUE / "SST-2"))
    assert [e.guid for e in sst2_test] == [str(i) for i in range(1821)]  # the file's index column


# ----------------------------------------------------------------------------------------------------------------------
# Hand-made files with every quirk and every kind of bad row
# ----------------------------------------------------------------------------------------------------------------------


def write(path, text, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_mrpc_byte_order_mark_and_column_names(tmp_path):
    write(tmp_path / "MRPC" / "train.tsv",
          "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
          "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him as only \" the witness \" .\n"
          "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n", bom=True)
    write(tmp_path / "MRPC" / "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
          "0\t1089874\t1089925\tPCCW 's chief .\tCurrent Chief .\n", bom=True)
    task = get_task("mrpc")
    examples, report = task.read("train", str(tmp_path / "MRPC"))
    assert report.ok and [(e.label, e.text) for e in examples] == [("1", "Amrozi accused his brother ."),
                                                                    ("0", "Yucaipa owned Dominick 's .")]
    assert examples[0].text_pair == 'Referring to him as only " the witness " .'  # QUOTE_NONE: quotes are text
    test, report = task.read("test", str(tmp_path / "MRPC"))
    assert report.ok and test[0].label is None and test[0].guid == "0"


def test_mnli_matched_and_mismatched_files(tmp_path):
    header_dev = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                  "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n")
    row = ("0\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sat.\tA cat rested.\t"
           "{0}\t{0}\t{0}\t{0}\t{0}\t{0}\n")
    write(tmp_path / "dev_matched.tsv", header_dev + row.format("entailment") + row.format("neutral"))
    write(tmp_path / "dev_mismatched.tsv", header_dev + row.format("contradiction"))
    header_test = header_dev.rsplit("\tlabel1", 1)[0] + "\n"
    write(tmp_path / "test_mismatched.tsv", header_test + "7\t1\t1n\tfiction\t( a )\t( b )\t(R a)\t(R b)\tX.\tY.\n")
    task = get_task("mnli")
    assert task.eval_splits == ("validation_matched", "validation_mismatched")
    assert task.labels == ("contradiction", "entailment", "neutral")  # run_classifier.py's order
    matched, _ = task.read("validation_matched", str(tmp_path))
    mismatched, _ = task.read("validation_mismatched", str(tmp_path))
    assert [e.label for e in matched] == ["entailment", "neutral"]
    assert [e.label for e in mismatched] == ["contradiction"]
    assert (matched[0].text, matched[0].text_pair) == ("The cat sat.", "A cat rested.")
    test, report = task.read("test_mismatched", str(tmp_path))
    assert report.ok and test[0].guid == "7" and test[0].label is None


@pytest.mark.parametrize("task, split, content, expected", [
    ("cola", "test", "index\tsentence\n0\tBill whistled past the house.\n",
     ("0", "Bill whistled past the house.", None, None)),
    ("qnli", "dev", "index\tquestion\tsentence\tlabel\n3\tWhat?\tThis.\tnot_entailment\n",
     ("3", "What?", "This.", "not_entailment")),
    ("qnli", "test", "index\tquestion\tsentence\n0\tWhat?\tThis.\n", ("0", "What?", "This.", None)),
    ("wnli", "dev", "index\tsentence1\tsentence2\tlabel\n0\tA b.\tC d.\t1\n", ("0", "A b.", "C d.", "1")),
    ("qqp", "dev", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n9\t1\t2\tQ1?\tQ2?\t0\n",
     ("9", "Q1?", "Q2?", "0")),
    ("qqp", "test", "id\tquestion1\tquestion2\n0\tQ1?\tQ2?\n", ("0", "Q1?", "Q2?", None)),
    ("stsb", "test", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
     "0\tmain-news\theadlines\t2015\t0001\tnone\tnone\tA.\tB.\n", ("0", "A.", "B.", None)),
])
def test_column_layouts_of_every_task(tmp_path, task, split, content, expected):
    path = write(tmp_path / "file.tsv", content)
    examples, report = get_task(task).read(split, str(path))
    assert report.ok and [(e.guid, e.text, e.text_pair, e.label) for e in examples] == [expected]


def test_bad_rows_are_counted_with_file_and_line(tmp_path):
    path = write(tmp_path / "dev.tsv",
                 "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                 "1\t1\t2\tHow old?\tWhat age?\t1\n"
                 "2\t3\t4\tA broken row\t0\n"                      # line 3: 5 columns
                 "3\t5\t6\tWhy?\tHow come?\t2\n"                   # line 4: label 2
                 "4\t7\t8\t  \tEmpty first?\t0\n"                  # line 5: empty text
                 "5\t9\t10\tIs it \"quoted?\tYes\t0\n")           # line 6: a lone quote is fine
    task = get_task("qqp")
    examples, report = task.read("dev", str(path))
    assert [e.guid for e in examples] == ["1", "5"] and examples[1].text == 'Is it "quoted?'
    assert report.records == 5 and len(report.skipped) == 3
    reasons = {p.location: p.reason for p in report.skipped}
    assert reasons == {f"{path}:3": "wrong column count (expected 6, got 5)",
                       f"{path}:4": "label '2' not in the task's labels",
                       f"{path}:5": "empty text in 'question1'"}
    assert "skipped 1 x wrong column count (expected 6, got 5)" in report.summary()
    with pytest.raises(ValueError, match=f"{path}:3: wrong column count"):
        task.read("dev", str(path), strict=True)


def test_wrong_file_or_folder_is_a_clear_error(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match=r"no column \['sentence1', 'sentence2'\] in the header"):
        get_task("rte").read("train", str(tmp_path / "train.tsv"))
    with pytest.raises(FileNotFoundError, match="no validation file"):
        get_task("sst2").read("dev", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        get_task("sst2").read("dev", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown split"):
        get_task("sst2").read("validation_matched2", str(tmp_path))


def test_rows_that_are_not_utf8_or_start_with_a_quote_stay_rows_of_their_own(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\n"
                     b'"an opening quote that never closes\t1\n'   # line 2: QUOTE_NONE, a quote is a character
                     b"a caf\xe9 in Latin-1\t0\n"                    # line 3: not UTF-8
                     b"fine .\t1\n")
    task = get_task("sst2")
    examples, report = task.read("dev", str(path))
    assert [(e.text, e.label) for e in examples] == [('"an opening quote that never closes', "1"), ("fine .", "1")]
    assert report.records == 3 and [(p.location, p.reason) for p in report.skipped] == [
        (f"{path}:3", "not UTF-8 (byte 0xe9)")]
    with pytest.raises(ValueError, match=f"^{path}:3: not UTF-8"):
        task.read("dev", str(path), strict=True)


def test_a_labeled_split_without_its_label_column_is_named(tmp_path):
    path = write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\n0\tA b.\tC d.\n")
    with pytest.raises(ValueError, match=(f"{path}: no label column 'label' in the header "
                                          r"\['index', 'sentence1', 'sentence2'\]: RTE's validation file needs")):
        get_task("rte").read("dev", str(path))
    test, report = get_task("rte").read("test", str(path))
    assert report.ok and test[0].label is None


# ----------------------------------------------------------------------------------------------------------------------
# Features, decoding, metrics
# ----------------------------------------------------------------------------------------------------------------------


def test_sst2_features_match_hugging_face(tokenizer, hf_tokenizer):
    task = get_task("sst2")
    examples, _ = task.read("dev", str(GLUE / "SST-2"))
    features = task.featurize(examples, tokenizer, max_seq_length=64)
    reference = hf_tokenizer([e.text for e in examples], truncation=True, max_length=64, padding="max_length")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert features[key].shape == (872, 64) and features[key].dtype == np.int32
        np.testing.assert_array_equal(features[key], np.asarray(reference[key]))
    np.testing.assert_array_equal(features["labels"], [int(e.label) for e in examples])
    np.testing.assert_array_equal(features["example_index"], np.arange(872))


def test_rte_pair_features_with_truncation_match_hugging_face(tokenizer, hf_tokenizer):
    task = get_task("rte")
    examples, _ = task.read("dev", str(GLUE / "RTE"))
    # most RTE pairs are longer than 48 tokens: truncated
    features = task.featurize(examples, tokenizer, max_seq_length=48, truncation="longest_first")
    reference = hf_tokenizer([e.text for e in examples], [e.text_pair for e in examples], truncation="longest_first",
                             max_length=48, padding="max_length")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(features[key], np.asarray(reference[key]))
    assert (features["attention_mask"].sum(1) == 48).mean() > 0.5
    # The default is Google's truncation (tests/test_tokenizer.py). It differs from Hugging Face's only where both
    # sides are cut to an odd budget and the second is not the shorter: Google's gives the odd token to the first
    # text. Hypothesis first, premise second, 16 tokens (a budget of 13) make such rows; the token types show it.
    swapped = [dataclasses.replace(e, text=e.text_pair, text_pair=e.text) for e in examples]
    ours = task.featurize(swapped, tokenizer, max_seq_length=16)
    theirs = hf_tokenizer([e.text for e in swapped], [e.text_pair for e in swapped], truncation="longest_first",
                          max_length=16)
    both_cut_differently = 0
    for row, example in enumerate(swapped):
        la, lb = len(tokenizer.token_ids(example.text)), len(tokenizer.token_ids(example.text_pair))
        if la + lb <= 13:
            google = hugging_face = la
        elif min(la, lb) <= 6:  # only the longer side is cut
            google = hugging_face = la if la <= lb else 13 - lb
        else:  # both cut to 6 + 7
            google, hugging_face = 7, (7 if la > lb else 6)
            both_cut_differently += google != hugging_face
        assert (ours["token_type_ids"][row] == 0).sum() == 2 + google, row
        assert theirs["token_type_ids"][row].count(0) == 2 + hugging_face, row
    assert both_cut_differently > 100
    np.testing.assert_array_equal(features["labels"], [task.labels.index(e.label) for e in examples])


def test_cola_decode_and_mcc_match_sklearn(tokenizer):
    task = get_task("cola")
    examples, _ = task.read("dev", str(GLUE / "CoLA"))
    gold = np.array([int(cols[1]) for cols in split_lines(GLUE / "CoLA" / "dev.tsv")])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(examples), 2))
    logits[np.arange(len(examples)), gold] += 0.8  # better than chance
    predictions = task.decode({"logits": logits}, None, examples)
    np.testing.assert_array_equal(predictions, logits.argmax(1))
    result = task.evaluate(predictions, examples)
    assert task.best_metric == "mcc" and set(result) == {"mcc"}
    assert result["mcc"] == pytest.approx(sklearn.metrics.matthews_corrcoef(gold, predictions))
    assert result["mcc"] > 0.2


def test_stsb_regression_metrics_match_scipy():
    task = get_task("stsb")
    examples, _ = task.read("dev", str(GLUE / "STS-B"))
    gold = np.array([float(c[9]) for c in split_lines(GLUE / "STS-B" / "dev.tsv")[1:]])
    rng = np.random.default_rng(1)
    scores = gold + rng.normal(0, 1.0, size=gold.shape)
    predictions = task.decode({"logits": scores[:, None]}, None, examples)  # [N, 1] head output
    result = task.evaluate(predictions, examples)
    pearson, spearman = scipy.stats.pearsonr(scores, gold)[0], scipy.stats.spearmanr(scores, gold)[0]
    assert result == pytest.approx({"pearson": pearson, "spearman": spearman, "corr": (pearson + spearman) / 2},
                                   rel=1e-5)
    assert task.kind == "regression" and task.num_labels == 1 and task.best_metric == "corr"


def test_mrpc_metrics_are_accuracy_and_f1():
    task = get_task("mrpc")
    from bert_jax.tasks.classify import TextExample

    examples = [TextExample(str(i), "a", "b", label) for i, label in enumerate("1101001")]
    predictions = np.array([1, 0, 0, 1, 1, 0, 1])
    gold = np.array([1, 1, 0, 1, 0, 0, 1])
    result = task.evaluate(predictions, examples)
    accuracy, f1 = sklearn.metrics.accuracy_score(gold, predictions), sklearn.metrics.f1_score(gold, predictions)
    assert result == pytest.approx({"accuracy": accuracy, "f1": f1, "acc_and_f1": (accuracy + f1) / 2})


def test_unlabeled_test_set_has_no_labels_feature(tokenizer):
    task = get_task("sst2")
    examples, _ = task.read("test", str(GLUE / "SST-2"))
    features = task.featurize(examples[:10], tokenizer, max_seq_length=32)
    assert "labels" not in features and features["input_ids"].shape == (10, 32)
    with pytest.raises(ValueError, match="unlabeled"):
        task.evaluate(np.zeros(10, int), examples[:10])


# ----------------------------------------------------------------------------------------------------------------------
# Submission files
# ----------------------------------------------------------------------------------------------------------------------


def test_sst2_test_submission_file(tmp_path):
    task = get_task("sst2")
    examples, _ = task.read("test", str(GLUE / "SST-2"))
    predictions = np.arange(len(examples)) % 2
    [path] = task.write_predictions(predictions, examples, str(tmp_path), "test")
    lines = Path(path).read_text().splitlines()
    assert Path(path).name == "SST-2.tsv" and lines[0] == "index\tprediction"
    assert lines[1:] == [f"{i}\t{i % 2}" for i in range(1821)]


def test_mnli_submission_files_use_label_names(tmp_path):
    from bert_jax.tasks.classify import TextExample

    task = get_task("mnli")
    examples = [TextExample(str(i), "p", "h") for i in range(3)]
    [matched] = task.write_predictions(np.array([0, 1, 2]), examples, str(tmp_path), "test_matched")
    [mismatched] = task.write_predictions(np.array([2, 2, 1]), examples, str(tmp_path), "test_mismatched")
    assert Path(matched).name == "MNLI-m.tsv" and Path(mismatched).name == "MNLI-mm.tsv"
    assert Path(matched).read_text().splitlines() == ["index\tprediction", "0\tcontradiction", "1\tentailment",
                                                      "2\tneutral"]
    stsb = get_task("stsb")
    [path] = stsb.write_predictions(np.array([-0.4, 2.25, 5.7]), examples, str(tmp_path), "test")
    assert Path(path).read_text().splitlines()[1:] == ["0\t0.000", "1\t2.250", "2\t5.000"]  # clipped to [0, 5]


# ----------------------------------------------------------------------------------------------------------------------
# TFDS (mocked: no network) and the registry
# ----------------------------------------------------------------------------------------------------------------------


def test_reads_tfds_glue_through_mock_data():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rows = {
        ("sst2", "validation"): [{"sentence": "a fine film", "label": 1, "idx": 0},
                                 {"sentence": "dull", "label": 0, "idx": 1}],
        ("sst2", "test"): [{"sentence": "unseen", "label": -1, "idx": 0}],
        ("mnli", "validation_mismatched"): [{"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0},  # entailment
                                            {"premise": "P2.", "hypothesis": "H2.", "label": 2, "idx": 1}],
        ("stsb", "validation"): [{"sentence1": "x", "sentence2": "y", "label": 3.5, "idx": 4}],
    }

    def as_dataset(builder, split, **kwargs):
        records = rows[(builder.builder_config.name, str(split))]
        return tf.data.Dataset.from_generator(lambda: iter(records),
                                              output_signature=builder.info.features.get_tensor_spec())

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        sst2, report = get_task("sst2").read("validation", "tfds")
        assert report.ok and [(e.text, e.label) for e in sst2] == [("a fine film", "1"), ("dull", "0")]
        test, _ = get_task("sst2").read("test", "tfds:glue/sst2")
        assert test[0].label is None
        mnli, _ = get_task("mnli").read("validation_mismatched", "tfds")
        assert [(e.text, e.text_pair, e.label) for e in mnli] == [("P.", "H.", "entailment"),
                                                                  ("P2.", "H2.", "contradiction")]
        stsb, _ = get_task("stsb").read("validation", "tfds")
        assert stsb[0].label == 3.5 and stsb[0].guid == "4"


def test_registry():
    for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "squad_v1.1", "squad_v2.0",
                 "conll2003", "swag", "classify"):
        assert name in TASK_NAMES
        task = get_task(name)
        assert task.name == name and task.best_metric in task.metric_names
    assert get_task("SST-2").name == "sst2"
    assert get_task("wnli").labels == ("0", "1") and get_task("qnli").num_labels == 2
    with pytest.raises(ValueError, match="unknown task 'glue'"):
        get_task("glue")
