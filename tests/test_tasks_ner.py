"""CoNLL-2003 NER: reader counts, first-piece label alignment vs Hugging Face word_ids, windows for long
sentences, decoding back to word tags, entity F1, CoNLL output, bad input, TFDS through mock data."""

from pathlib import Path

import numpy as np
import pytest

from bert_jax.tasks import get_task, metrics
from bert_jax.tasks.ner import IGNORE, TaggingExample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONLL = DATA / "conll2003"


@pytest.fixture(scope="module")
def valid():
    return get_task("conll2003").read("validation", str(CONLL))


def oracle_logits(features, num_labels):
    """Logits whose argmax is each labeled piece's gold label (0 elsewhere)."""
    logits = np.zeros(features["labels"].shape + (num_labels,))
    np.put_along_axis(logits, np.maximum(features["labels"], 0)[..., None], 1.0, axis=-1)
    return logits


@pytest.mark.parametrize("split, file, sentences", [("train", "train.txt", 14041), ("dev", "valid.txt", 3250),
                                                    ("test", "test.txt", 3453)])
def test_reads_the_documented_sentence_counts(split, file, sentences):
    task = get_task("conll2003")
    examples, report = task.read(split, str(CONLL))
    assert len(examples) == sentences and report.ok
    lines = (CONLL / file).read_text(encoding="utf-8").splitlines()
    word_lines = [line.split() for line in lines if line.strip() and not line.startswith("-DOCSTART-")]
    assert sum(len(e.words) for e in examples) == len(word_lines)
    assert [t for e in examples for t in e.tags] == [cols[3] for cols in word_lines]
    assert [c for e in examples for c in e.columns] == [tuple(cols[1:3]) for cols in word_lines]
    assert sum(e.doc_start for e in examples) == sum(line.startswith("-DOCSTART-") for line in lines)


def test_first_piece_labels_match_hugging_face_word_ids(valid, tokenizer, hf_tokenizer):
    task = get_task("conll2003")
    examples = valid[0][:400]
    features = task.featurize(examples, tokenizer, max_seq_length=128)
    assert len(features["example_index"]) == 400  # every one of these sentences fits one window of 128
    for n, example in enumerate(examples):
        encoded = hf_tokenizer(list(example.words), is_split_into_words=True)
        word_ids = encoded.word_ids()
        expected_labels, previous = [], None
        for w in word_ids:  # label the first piece of each word, -100 elsewhere
            expected_labels.append(IGNORE if w is None or w == previous else task.labels.index(example.tags[w]))
            previous = w
        length = len(encoded["input_ids"])
        assert features["input_ids"][n, :length].tolist() == encoded["input_ids"]
        assert features["labels"][n, :length].tolist() == expected_labels
        assert (features["labels"][n, length:] == IGNORE).all() and not features["attention_mask"][n, length:].any()
        first_pieces = [i for i, w in enumerate(features["word_index"][n]) if w >= 0]
        assert features["word_index"][n, first_pieces].tolist() == list(range(len(example.words)))


def test_long_sentences_are_split_into_windows_not_truncated(tokenizer):
    words = tuple(["Angela", "Merkel", "visited", "Washington", "on", "Tuesday", "."] * 30)  # 210 words
    tags = tuple(["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"] * 30)
    example = TaggingExample("x:1", words, tags)
    task = get_task("conll2003")
    features = task.featurize([example], tokenizer, max_seq_length=32)
    windows = len(features["example_index"])
    total_pieces = sum(len(tokenizer.tokenize(w)) for w in words)
    assert windows >= -(-total_pieces // 30) > 1 and (features["example_index"] == 0).all()
    labeled = features["word_index"][features["word_index"] >= 0]
    assert sorted(labeled.tolist()) == list(range(210))  # every word labeled exactly once
    assert (features["attention_mask"].sum(1) <= 32).all()
    predicted = task.decode({"logits": oracle_logits(features, 9)}, features, [example])
    assert predicted == [list(tags)]
    # windows break between words: each window's first labeled piece follows [CLS]
    assert (features["word_index"][:, 1] >= 0).all()


def test_a_word_without_pieces_still_gets_a_label(tokenizer):
    example = TaggingExample("x:1", ("Paris", "\u200b", "France"), ("B-LOC", "O", "B-LOC"))
    assert tokenizer.tokenize("\u200b") == []  # a zero-width space is dropped by BERT's cleaning
    features = get_task("conll2003").featurize([example], tokenizer, max_seq_length=16)
    assert features["word_index"][0, :4].tolist() == [-1, 0, 1, 2]
    assert features["input_ids"][0, 2] == tokenizer.unk_id


def test_decode_and_entity_f1(valid, tokenizer):
    task = get_task("conll2003")
    examples = valid[0]
    features = task.featurize(examples, tokenizer, max_seq_length=64)
    rng = np.random.default_rng(0)
    logits = oracle_logits(features, 9) + rng.normal(0, 0.45, features["labels"].shape + (9,))
    predicted = task.decode({"logits": logits}, features, examples)
    assert [len(p) for p in predicted] == [len(e.words) for e in examples]
    result = task.evaluate(predicted, examples)
    reference = metrics.entity_f1([e.tags for e in examples], predicted)
    assert result["f1"] == reference["f1"] and 0.3 < result["f1"] < 0.99
    flat_gold = [t for e in examples for t in e.tags]
    flat_predicted = [t for p in predicted for t in p]
    assert result["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(flat_gold, flat_predicted)]))
    perfect = task.evaluate(task.decode({"logits": oracle_logits(features, 9)}, features, examples), examples)
    assert perfect["f1"] == 1.0 and perfect["num_gold"] == 5942  # entities in CoNLL-2003 valid


def test_write_predictions_as_conll_columns(valid, tmp_path):
    task = get_task("conll2003")
    examples = valid[0][:5]
    predicted = [["O"] * len(e.words) for e in examples]
    [path] = task.write_predictions(predicted, examples, str(tmp_path), "validation")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    original = (CONLL / "valid.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "-DOCSTART- -X- -X- O O" and lines[1] == ""
    words = [line for line in lines[2:] if line]
    assert words[:3] == [f"{o} O" for o in original[2:5]]  # the input columns, then the prediction
    assert len(words) == sum(len(e.words) for e in examples)


def test_bad_lines_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n"
                    "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP\n\n"        # line 7: 3 columns
                    "BRUSSELS NNP B-NP B-CITY\n\n"                        # line 9: unknown tag
                    "The DT B-NP O\nEuropean NNP I-NP B-ORG", encoding="utf-8")  # no final newline
    task = get_task("conll2003")
    examples, report = task.read("train", str(path))
    assert [e.words for e in examples] == [("EU", "rejects"), ("The", "European")]
    assert {p.location: p.reason for p in report.skipped} == {
        f"{path}:7": "wrong column count (expected 4, got 3)", f"{path}:9": "tag 'B-CITY' not in the task's labels"}
    assert report.records == 4
    with pytest.raises(ValueError, match=f"{path}:7"):
        task.read("train", str(path), strict=True)


def test_unlabeled_file(tmp_path, tokenizer):
    path = tmp_path / "words.txt"
    path.write_text("Peter\nBlackburn\n\nBRUSSELS\n", encoding="utf-8")
    task = get_task("conll2003")
    examples, report = task.read("test", str(path))
    assert report.ok and [(e.words, e.tags) for e in examples] == [(("Peter", "Blackburn"), None),
                                                                   (("BRUSSELS",), None)]
    features = task.featurize(examples, tokenizer, max_seq_length=16)
    assert "labels" not in features
    logits = np.zeros(features["input_ids"].shape + (9,))
    logits[..., 1] = 1.0  # B-PER everywhere
    predicted = task.decode({"logits": logits}, features, examples)
    assert predicted == [["B-PER", "B-PER"], ["B-PER"]]
    [written] = task.write_predictions(predicted, examples, str(tmp_path / "out"), "test")
    assert Path(written).read_text().splitlines() == ["Peter B-PER", "Blackburn B-PER", "", "BRUSSELS B-PER", ""]


def test_reads_tfds_conll2003_through_mock_data():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from tensorflow_datasets.core.dataset_builders.conll import conll_dataset_builder_utils as conll_lib

    pos, chunks = list(conll_lib.POS_TAGS), list(conll_lib.CHUNK_TAGS)
    records = [{"tokens": ["EU", "rejects", "German"], "pos": [pos.index("NNP"), pos.index("VBZ"), pos.index("JJ")],
                "chunks": [chunks.index("B-NP"), chunks.index("B-VP"), chunks.index("B-NP")],
                "ner": [3, 0, 7]},                                                     # B-ORG O B-MISC
               {"tokens": ["x", "y"], "pos": [0, 0], "chunks": [0, 0], "ner": [0]}]  # lengths differ: reported
    seen_splits = []

    def as_dataset(builder, split, **kwargs):
        seen_splits.append(str(split))
        return tf.data.Dataset.from_generator(lambda: iter(records),
                                              output_signature=builder.info.features.get_tensor_spec())

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        examples, report = get_task("conll2003").read("validation", "tfds")
    assert seen_splits == ["dev"]  # TFDS calls the validation split 'dev'
    assert examples == [TaggingExample("tfds conll2003 dev[0]", ("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC"),
                                       (("NNP", "B-NP"), ("VBZ", "B-VP"), ("JJ", "B-NP")))]
    assert [p.reason for p in report.skipped] == ["tokens and tags differ in length"]
