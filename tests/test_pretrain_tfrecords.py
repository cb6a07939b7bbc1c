"""`pretrain` on TFRecords: the input's kind found from its content, records checked against the phases before
anything compiles, exact resume and held-out evaluation on records, Google's original layout training the same as
our writer's, binary files refused as text, the reader report, and the journey through the CLI
(prepare-pretraining-data at two lengths -> pretrain in two phases -> SIGTERM -> resume -> fill-mask).

The runs are tiny (L2/H128 over the ~300-token test vocabulary, 8 steps: 4 at length 32, 4 at length 64) and
share the session's persistent compilation cache, so the train and eval steps compile once for all of them,
the CLI's subprocesses included.
"""

import collections
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_config, logged, wiki_corpus
from jax._src import compilation_cache

from bert_jax import config_args, pretrain, pretrain_input, sharding
from bert_jax.data import text_reader, tfrecord_input
from bert_jax.data.features import FEATURES
from bert_jax.data.instances import InstanceConfig
from bert_jax.data.offline_writer import prepare_pretraining_data
from bert_jax.data.tfrecord import METADATA_FILE, feature_spec
from bert_jax.tokenizer import load_tokenizer
from bert_jax.train_metrics import MetricsWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {32: 5, 64: 10}  # seq_length -> max_predictions of the two record sets
SEED = 3
STEPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two WikiExtractor files: the first 150 articles of wiki_00 and wiki_01 (most of them title-only stubs)."""
    return wiki_corpus(tmp_path_factory.mktemp("corpus"), ("wiki_00", "wiki_01"), 150)


def prepare_args(corpus, vocab, output, seq_length):
    return dict(inputs=str(corpus), vocab=str(vocab), output_dir=str(output),
                config=InstanceConfig(max_seq_length=seq_length, max_predictions_per_seq=LENGTHS[seq_length]),
                dupe_factor=1, seed=SEED)


@pytest.fixture(scope="module")
def records(corpus, small_vocab_file, tmp_path_factory):
    """{seq_length: directory} of prepare-pretraining-data's TFRecords (two shards and pretraining_data.json)."""
    out = {}
    for seq_length in LENGTHS:
        out[seq_length] = tmp_path_factory.mktemp(f"records{seq_length}")
        prepare_pretraining_data(**prepare_args(corpus, small_vocab_file, out[seq_length], seq_length))
    return out


@pytest.fixture(scope="module")
def compile_cache(compilation_cache_for_commands):
    """In-process runs use the cache the CLI subprocesses of this session use (conftest)."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in names}
    for name, value in zip(names, (compilation_cache_for_commands, 0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield compilation_cache_for_commands
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


# The run: a real config file and its overrides, as flags in the CLI journey (exactly the in-process reference).
CONFIG = "configs/pretrain.py:base,tiny"


def overrides(vocab, phase0_files, phase1_files, eval_files):
    phases = (dict(fraction=0.5, seq_length=32, batch_size=8, max_predictions=LENGTHS[32]),
              dict(fraction=0.5, seq_length=64, batch_size=4, max_predictions=LENGTHS[64],
                   input_files=str(phase1_files)))
    return {"model.dtype": "float32", "data.input_files": str(phase0_files), "data.vocab_file": str(vocab),
            "data.eval_input_files": str(eval_files), "phases": phases, "optimizer.learning_rate": 1e-3,
            "train.num_steps": STEPS, "train.checkpoint_every": 4, "train.eval_every": STEPS,
            "train.eval_batches": 1, "train.tensorboard": False, "train.async_checkpoints": False}


def tiny_config(vocab, phase0_files, phase1_files, eval_files="", **changes):
    """CONFIG (configs/pretrain.py:base,tiny) with the overrides above and `changes` (dotted keys)."""
    config = load_config(CONFIG)
    config_args.override(config, {**overrides(vocab, phase0_files, phase1_files, eval_files), **changes})
    return config


def reader_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "reader" in r]


def shards(directory):
    return sorted(str(p) for p in directory.glob("*.tfrecord"))


@pytest.fixture(scope="module")
def reference(records, small_vocab_file, compile_cache, tmp_path_factory):
    """The uninterrupted run: phase 0 on the 32-token records (data.input_files), phase 1 on the 64-token ones
    (phases[1].input_files), held-out evaluation on the 32-token records."""
    workdir = tmp_path_factory.mktemp("reference")
    pretrain.train_and_evaluate(tiny_config(small_vocab_file, records[32], records[64], records[32]), str(workdir))
    losses, evals = logged(workdir), logged(workdir, "eval_loss")
    assert sorted(losses) == list(range(1, STEPS + 1)) and sorted(evals) == [STEPS]
    return workdir, losses, evals


# ----------------------------------------------------------------------------------------------------
# The kind of input, from its content
# ----------------------------------------------------------------------------------------------------


def test_the_kind_of_input_is_found_from_content_not_names(records, corpus, tmp_path):
    shard = shards(records[32])[0]
    disguised = tmp_path / "notes.txt"
    shutil.copy(shard, disguised)
    text = tmp_path / "data.tfrecord"
    shutil.copy(corpus / "wiki_00", text)
    (tmp_path / "empty").write_bytes(b"")
    assert tfrecord_input.file_kind(str(disguised)) == "tfrecord"
    assert tfrecord_input.file_kind(str(text)) == "text"
    assert tfrecord_input.file_kind(str(tmp_path / "empty")) == "empty"

    # The writer's directory as it is: its pretraining_data.json beside the shards is not input.
    listed = text_reader.resolve_input_files(str(records[32]))
    assert any(p.endswith(METADATA_FILE) for p in listed)
    assert tfrecord_input.input_format(listed) == ("tfrecord", shards(records[32]))
    assert tfrecord_input.input_format([str(corpus / "wiki_00")]) == ("text", [str(corpus / "wiki_00")])

    with pytest.raises(ValueError, match=rf"config\.phases\[1\]\.input_files: mixes TFRecord files \(1, e\.g\. "
                                         rf"{disguised}\) and text files \(1, e\.g\. {text}\)"):
        tfrecord_input.input_format([str(disguised), str(text)], key="config.phases[1].input_files")
    # Forcing: 'tfrecord' refuses text; 'text' takes the files as they are (the text reader refuses binary).
    with pytest.raises(ValueError, match=rf"{text} is not a TFRecord file \(config\.data\.format='tfrecord'"):
        tfrecord_input.input_format([str(text)], "tfrecord")
    assert tfrecord_input.input_format([str(disguised)], "text") == ("text", [str(disguised)])

    # A record whose length CRC matches but whose data was damaged; gzip-compressed records.
    data = bytearray(open(shard, "rb").read())
    data[20] ^= 0xFF
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{damaged}: a TFRecord file whose first record is damaged"):
        tfrecord_input.file_kind(str(damaged))
    compressed = tmp_path / "records.gz"
    compressed.write_bytes(gzip.compress(open(shard, "rb").read()))
    with pytest.raises(ValueError, match=rf"{compressed}: gzip-compressed TFRecords"):
        tfrecord_input.file_kind(str(compressed))


def test_tfrecord_batches_are_the_records_with_the_text_pipelines_keys_dtypes_and_shapes(
        records, corpus, small_vocab_file):
    config = pretrain.validate_config(tiny_config(small_vocab_file, records[32], records[64]))
    mesh = sharding.make_mesh({"data": -1})
    files = text_reader.resolve_input_files(str(records[32]))
    batch = next(pretrain.make_input(config, config.phases[0], tokenizer=None, files=files, mesh=mesh, seed=0,
                                     train=False))
    # Unshuffled, the batch is the first 8 records of the first shard, as TensorFlow parses them.
    spec = feature_spec(InstanceConfig(32, LENGTHS[32]))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(shards(records[32])[0]).take(8)]
    expected = tf.io.parse_example(serialized, spec)
    for name in FEATURES:
        want = expected[name].numpy().reshape(batch[name].shape)
        np.testing.assert_array_equal(batch[name], want, err_msg=name)

    tokenizer = load_tokenizer(str(small_vocab_file))
    text = next(pretrain.make_input(config, config.phases[0], tokenizer=tokenizer, files=[str(corpus / "wiki_00")],
                                    mesh=mesh, seed=0, train=False))
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {k: (v.dtype, v.shape) for k, v in text.items()}
    assert batch["input_ids"].shape == (8, 32) and batch["masked_lm_weights"].dtype == np.float32


def test_packing_works_on_tfrecords_and_keeps_every_instance(records, small_vocab_file):
    """data.packing on TFRecords: each step's instances are the unpacked reader's, carried in packed rows."""
    from bert_jax.data import packing

    config = pretrain.validate_config(tiny_config(small_vocab_file, records[32], records[64], **{"data.packing": True}))
    mesh = sharding.make_mesh({"data": -1})
    files = text_reader.resolve_input_files(str(records[32]))
    packed = pretrain.make_input(config, config.phases[0], tokenizer=None, files=files, mesh=mesh, seed=0, train=True)
    assert isinstance(packed, packing.PackedBatches)
    config.unlock()
    config.data.packing = False
    unpacked = pretrain.make_input(config, config.phases[0], tokenizer=None, files=files, mesh=mesh, seed=0,
                                   train=True)
    for _ in range(3):
        rows, instances = next(packed), next(unpacked)
        assert rows["nsp_weights"].sum() == len(instances["input_ids"]) == 8
        # The same tokens and masked labels, only rearranged.
        assert rows["input_mask"].sum() == instances["input_mask"].sum()
        np.testing.assert_array_equal(np.sort(rows["input_ids"][rows["input_mask"] == 1]),
                                      np.sort(instances["input_ids"][instances["input_mask"] == 1]))
        np.testing.assert_array_equal(np.sort(rows["masked_lm_ids"][rows["masked_lm_weights"] > 0]),
                                      np.sort(instances["masked_lm_ids"][instances["masked_lm_weights"] > 0]))
        np.testing.assert_array_equal(np.sort(rows["next_sentence_labels"][rows["nsp_weights"] > 0]),
                                      np.sort(instances["next_sentence_labels"]))
    assert packed.get_state()["packing_rows"] == rows["input_ids"].shape[0]


def test_each_host_reads_a_disjoint_share_of_the_records(records):
    files = shards(records[32])
    every = [r.numpy() for f in files for r in tf.data.TFRecordDataset(f)]
    per_host = []
    for index in range(2):
        it = tfrecord_input.make_iterator(files, batch_size=16, seq_length=32, max_predictions=LENGTHS[32], seed=0,
                                          process_index=index, process_count=2, shuffle=True)
        rows = np.concatenate([next(it)["input_ids"] for _ in range(4)])
        per_host.append({tuple(row) for row in rows})
    assert len(per_host[0]) == len(per_host[1]) == 64 and not per_host[0] & per_host[1]
    ids = tf.io.parse_example(every, feature_spec(InstanceConfig(32, LENGTHS[32])))["input_ids"].numpy()
    # Two shards, two hosts: host i reads shard i only (file i to process i % count, as for text).
    first_shard = {tuple(row) for row in ids[:sum(1 for _ in tf.data.TFRecordDataset(files[0]))]}
    assert per_host[0] <= first_shard and not per_host[1] & first_shard


def test_new_config_keys_are_validated(records, small_vocab_file):
    config = tiny_config(small_vocab_file, records[32], records[64])
    config.data.format = "csv"
    with pytest.raises(ValueError, match=r"config\.data\.format='csv': must be one of \('auto', 'text', 'tfrecord'\)"):
        pretrain.validate_config(config)
    config = tiny_config(small_vocab_file, records[32], records[64], **{"data.source": "builtin"})
    with pytest.raises(ValueError, match=r"config\.phases\[1\]\.input_files: only for data\.source='files'"):
        pretrain.validate_config(config)
    # Every phase with its own files: data.input_files may stay empty; a phase without the key reads it.
    config = tiny_config(small_vocab_file, "", records[64])
    config.phases = (dict(config.phases[0], input_files=str(records[32])), config.phases[1])
    assert [p["input_files"] for p in pretrain.validate_config(config).phases] == [str(records[32]), str(records[64])]
    config.phases = (dict(fraction=0.5, seq_length=32, batch_size=8, max_predictions=5), config.phases[1])
    with pytest.raises(ValueError, match=r"config\.data\.input_files='': data\.source='files' needs input files"):
        pretrain.validate_config(config)


# ----------------------------------------------------------------------------------------------------
# Errors before anything compiles
# ----------------------------------------------------------------------------------------------------


def binary_in_text(tmp_path, corpus):
    directory = tmp_path / "text"
    directory.mkdir()
    shutil.copy(corpus / "wiki_00", directory / "wiki_00")
    (directory / "wiki_zz").write_bytes(bytes(range(256)) * 4)
    return directory


BAD_INPUT = {
    "seq_length vs records": (
        lambda c, r, t: c.__setattr__("phases", (c.phases[0], dict(c.phases[1], seq_length=48))),
        r"config\.phases\[1\]\.seq_length=48: the records in .*records64\d*/part-\d+-of-\d+\.tfrecord "
        r"\(config\.phases\[1\]\.input_files\) hold 64 tokens"),
    "max_predictions vs records": (
        lambda c, r, t: c.__setattr__("phases", (dict(c.phases[0], max_predictions=6), c.phases[1])),
        r"config\.phases\[0\]\.max_predictions=6: the records in .*records32\d*/part-\d+-of-\d+\.tfrecord "
        r"\(config\.data\.input_files\) hold 5 masked positions"),
    "eval records vs the first phase": (
        lambda c, r, t: c.data.__setattr__("eval_input_files", str(r[64])),
        r"config\.phases\[0\]\.seq_length=32: the records in .*records64.* \(config\.data\.eval_input_files\) "
        r"hold 64 tokens"),
    "TFRecords forced to text": (
        lambda c, r, t: c.data.__setattr__("format", "text"),
        r"records32\d*/part-\d+-of-\d+\.tfrecord: not text \(a NUL byte at byte \d+\)"),
    "text forced to TFRecords": (
        lambda c, r, t: (c.data.__setattr__("format", "tfrecord"), c.data.__setattr__("input_files", str(t))),
        r"config\.data\.input_files: .*wiki_00 is not a TFRecord file"),
    "a binary file among text": (
        lambda c, r, t: c.data.__setattr__("input_files", str(t)),
        r"text/wiki_zz: not text \(a NUL byte at byte 0\)"),
    "dynamic masking on records": (
        lambda c, r, t: c.data.__setattr__("dynamic_masking", True),
        r"config\.data\.dynamic_masking=True: config\.data\.input_files holds TFRecords"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input_is_an_error_naming_key_and_file_before_anything_compiles(name, records, corpus,
                                                                            small_vocab_file, tmp_path, monkeypatch):
    change, message = BAD_INPUT[name]
    config = tiny_config(small_vocab_file, records[32], records[64])
    change(config, records, binary_in_text(tmp_path, corpus))

    def no_compiling(*args, **kwargs):
        raise AssertionError("jax.jit was called before the input error")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(ValueError, match=message):
        pretrain.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_binary_text_input_is_an_error_naming_the_file(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café crème à la française.\nDéjà vu, señor.\n\nÉté.\n".encode("latin-1"))
    nul = tmp_path / "utf16.txt"
    nul.write_bytes("A sentence in UTF-16.\n".encode("utf-16"))
    packed = tmp_path / "blob.txt.gz"
    packed.write_bytes(gzip.compress(bytes(range(256)) * 8))
    for path, reason in ((latin1, r"3 of the 3 lines in its first \d+ bytes are not UTF-8"),
                         (nul, r"a NUL byte at byte \d+"), (packed, r"a NUL byte at byte 0")):
        with pytest.raises(ValueError, match=rf"{path}: not text \({reason}\)"):
            list(text_reader.iter_file_documents(str(path)))
    # One bad line among good ones is text with a skipped line, not a binary file.
    mostly_fine = tmp_path / "fine.txt"
    mostly_fine.write_bytes(b"Good one.\nAnother good one.\n\xff\xfe broken\nStill good.\n")
    stats = text_reader.ReadStats()
    assert [d.sentences for d in text_reader.iter_file_documents(str(mostly_fine), "sentences", stats)] == [
        ["Good one.", "Another good one.", "Still good."]]
    assert stats.skipped == {"non-UTF-8 lines": 1}


def test_mostly_skipped_text_is_refused_unless_allowed(tmp_path, small_vocab_file):
    path = tmp_path / "odd.txt"  # WikiExtractor format (it starts with <doc), but most lines are outside documents
    path.write_text('<doc id="1" url="u" title="T">\nT\n\nThe cat sat on the mat.\n</doc>\n'
                    + "".join(f"stray line {i}.\n" for i in range(30)), encoding="utf-8")
    config = tiny_config(small_vocab_file, path, path)
    config.phases = (dict(fraction=1.0, seq_length=32, batch_size=8, max_predictions=5),)
    with pytest.raises(ValueError, match=rf"config\.data\.input_files: most of the input is skipped \(30 skipped lines "
                                         rf"and documents, 1 sentences kept.*30 lines outside <doc> elements \(e\.g\. "
                                         rf"{path}:6, {path}:7, {path}:8\).*config\.data\.allow_mostly_skipped=True"):
        pretrain_input.plan_inputs(pretrain.validate_config(config), [str(path)], [], 300)
    config.data.allow_mostly_skipped = True
    inputs = pretrain_input.plan_inputs(pretrain.validate_config(config), [str(path)], [], 300)
    [start] = inputs.start_report()
    assert start["skipped"] == {"lines outside <doc> elements": 30} and start["sentences"] == 1


# ----------------------------------------------------------------------------------------------------
# Training on records: resume, Google's layout, the report
# ----------------------------------------------------------------------------------------------------


def google_create_int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def google_create_float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def write_google_layout(source_shard, output_file, max_seq_length, max_predictions_per_seq):
    """The records of `source_shard` rewritten as google-research/bert's create_pretraining_data.py writes
    instances (write_instance_to_example_files): tf.train.Example built feature by feature, int64 lists, a float
    masked_lm_weights, zero padding to the lengths, through tf.io.TFRecordWriter."""
    writer = tf.io.TFRecordWriter(str(output_file))
    for record in tf.data.TFRecordDataset(source_shard):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        length = sum(feature["input_mask"].int64_list.value)
        input_ids = list(feature["input_ids"].int64_list.value)[:length]
        segment_ids = list(feature["segment_ids"].int64_list.value)[:length]
        count = int(sum(feature["masked_lm_weights"].float_list.value))
        masked_lm_positions = list(feature["masked_lm_positions"].int64_list.value)[:count]
        masked_lm_ids = list(feature["masked_lm_ids"].int64_list.value)[:count]
        input_mask = [1] * len(input_ids)
        while len(input_ids) < max_seq_length:
            input_ids.append(0)
            input_mask.append(0)
            segment_ids.append(0)
        masked_lm_weights = [1.0] * len(masked_lm_ids)
        while len(masked_lm_positions) < max_predictions_per_seq:
            masked_lm_positions.append(0)
            masked_lm_ids.append(0)
            masked_lm_weights.append(0.0)
        next_sentence_label = feature["next_sentence_labels"].int64_list.value[0]
        features = collections.OrderedDict()
        features["input_ids"] = google_create_int_feature(input_ids)
        features["input_mask"] = google_create_int_feature(input_mask)
        features["segment_ids"] = google_create_int_feature(segment_ids)
        features["masked_lm_positions"] = google_create_int_feature(masked_lm_positions)
        features["masked_lm_ids"] = google_create_int_feature(masked_lm_ids)
        features["masked_lm_weights"] = google_create_float_feature(masked_lm_weights)
        features["next_sentence_labels"] = google_create_int_feature([next_sentence_label])
        writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    writer.close()


def test_records_in_googles_original_layout_train_the_same_as_ours(reference, records, small_vocab_file,
                                                                  tmp_path, capsys):
    _, losses, evals = reference
    google = {}
    for seq_length, directory in records.items():
        google[seq_length] = tmp_path / f"google{seq_length}"
        google[seq_length].mkdir()
        for i, shard in enumerate(shards(directory)):  # Google's script names its output as the user says
            write_google_layout(shard, google[seq_length] / f"tf_examples.{i}", seq_length, LENGTHS[seq_length])
    workdir = tmp_path / "run"
    pretrain.train_and_evaluate(tiny_config(small_vocab_file, google[32], google[64], google[32]), str(workdir))
    np.testing.assert_allclose([logged(workdir)[s] for s in range(1, STEPS + 1)],
                               [losses[s] for s in range(1, STEPS + 1)], rtol=1e-6)
    assert logged(workdir, "eval_loss") == pytest.approx(evals, rel=1e-6)  # held-out evaluation on TFRecords
    assert "records not counted (no pretraining_data.json lists these files)" in capsys.readouterr().out


def count_records(directory):
    return sum(1 for shard in shards(directory) for _ in tf.data.TFRecordDataset(shard))


def test_the_reader_report_of_tfrecords_is_printed_and_in_metrics(reference, records):
    workdir, _, _ = reference
    start, end = reader_records(workdir)
    assert (start["step"], start["reader"]["when"], end["step"], end["reader"]["when"]) == (0, "start", STEPS, "end")
    phase0, phase1, evaluation = start["reader"]["inputs"]
    assert phase0 == {"input": "config.data.input_files", "used_by": ["phase 0: seq32"], "format": "tfrecord",
                      "files": 2, "bytes": sum(os.path.getsize(p) for p in shards(records[32])),
                      "records": count_records(records[32]), "seq_length": 32, "max_predictions": 5}
    assert phase1["input"] == "config.phases[1].input_files" and phase1["records"] == count_records(records[64])
    assert evaluation["input"] == "config.data.eval_input_files" and evaluation["used_by"] == ["evaluation"]
    consumed = {i["input"]: i["records_consumed"] for i in end["reader"]["inputs"]}
    # 4 steps of 8 at length 32, 4 of 4 at length 64, and the last evaluation's one batch of 8.
    assert consumed == {"config.data.input_files": 32, "config.phases[1].input_files": 16,
                        "config.data.eval_input_files": 8}


def test_the_reader_report_of_text_is_printed_and_in_metrics(corpus, small_vocab_file, tmp_path, capsys):
    """The text side of the report, with pretrain's own pieces (plan_inputs, make_input, the MetricsWriter) but
    without compiling: the TFRecord test above shows train_and_evaluate printing and writing it."""
    text = tmp_path / "wiki_00"
    lines = (corpus / "wiki_00").read_bytes().splitlines(keepends=True)
    lines.insert(8, b"A line in Latin-1: caf\xe9.\n")  # inside the second article
    text.write_bytes(b"".join(lines))
    # Independent counts: articles whose body (after the title line) has no text are empty documents.
    articles = b"".join(lines).decode("utf-8", "replace").split("</doc>")[:-1]
    empty = sum(1 for a in articles if not any(line.strip() for line in a.strip().splitlines()[2:]))
    config = tiny_config(small_vocab_file, text, text)
    config.phases = (dict(fraction=1.0, seq_length=32, batch_size=8, max_predictions=5),)
    config = pretrain.validate_config(config)
    inputs = pretrain_input.plan_inputs(config, [str(text)], [], 300)
    writer = MetricsWriter(str(tmp_path / "run"), STEPS, tensorboard=False)
    inputs.write_start(writer, 0)
    batches = pretrain.make_input(config, config.phases[0], tokenizer=load_tokenizer(str(small_vocab_file)),
                                  files=inputs.phases[0].files, mesh=sharding.make_mesh({"data": -1}), seed=0,
                                  train=True, input_format=inputs.phases[0].format)
    inputs.track(batches, inputs.phases[0])
    next(batches)
    inputs.finish(writer, 1)
    writer.close()
    out = capsys.readouterr().out

    start, end = (r["reader"]["inputs"][0] for r in reader_records(tmp_path / "run"))
    assert start["format"] == "text" and start["files"] == start["files_read"] == 1
    assert start["documents"] == len(articles) - empty
    assert start["skipped"] == {"empty documents": empty, "non-UTF-8 lines": 1}
    assert start["skipped_examples"]["non-UTF-8 lines"][0].startswith(f"{text}:9 ")
    # The pipeline read the whole file, a few times over (it reads ahead, repeating): the sample's counts per pass.
    passes = end["files_read"]
    assert passes >= 1 and end["epoch"] == 0
    assert (end["documents"], end["skipped"]) == (passes * start["documents"],
                                                  {k: passes * v for k, v in start["skipped"].items()})
    assert end["instances"] >= 8
    assert "reader, at the start:" in out and "reader, this run:" in out
    assert f"{empty} empty documents (e.g. {text}:1" in out and f"1 non-UTF-8 lines (e.g. {text}:9 " in out


# ----------------------------------------------------------------------------------------------------
# The journey through the CLI
# ----------------------------------------------------------------------------------------------------


def cli_flags(settings):
    flags = []
    for key, value in settings.items():
        if isinstance(value, bool):
            value = str(value)
        elif isinstance(value, tuple):
            value = repr(value)
        flags.append(f"--config.{key}={value}")
    return flags


def test_journey_prepare_at_two_lengths_pretrain_sigterm_resume_fill_mask(reference, records, corpus,
                                                                        small_vocab_file, tmp_path):
    """Through the CLI: prepare-pretraining-data at 32 and 64 -> pretrain with a phase on each -> SIGTERM mid-run ->
    resume -> the losses of the uninterrupted run (exact resume on TFRecords) -> fill-mask on the exported model."""
    env = dict(os.environ, PYTHONPATH=REPO)
    made = {}
    for seq_length in LENGTHS:
        made[seq_length] = tmp_path / f"records{seq_length}"
        run = subprocess.run([sys.executable, "-m", "bert_jax", "prepare-pretraining-data", f"--input={corpus}",
                              f"--vocab={small_vocab_file}", f"--output={made[seq_length]}",
                              f"--max-seq-length={seq_length}", f"--max-predictions-per-seq={LENGTHS[seq_length]}",
                              "--dupe-factor=1", f"--seed={SEED}", "--num-workers=1"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        # The same records as the in-process writer's: the reference run is this journey's uninterrupted run.
        assert [open(p, "rb").read() for p in shards(made[seq_length])] == [
            open(p, "rb").read() for p in shards(records[seq_length])]

    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "bert_jax", "pretrain", f"--config={CONFIG}",
               f"--workdir={workdir}",
               *cli_flags(overrides(small_vocab_file, made[32], made[64], made[32]))]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 400
    for line in process.stdout:
        seen.append(line)
        if line.startswith("step 2/") or time.time() > deadline:
            process.send_signal(signal.SIGTERM)
            break
    rest, errors = process.communicate(timeout=300)
    output = "".join(seen) + rest
    # SIGTERM saves and stops with 143, the status schedulers requeue on (0 before that change: either is taken).
    assert process.returncode in (0, 143), errors[-3000:]
    stopped = logged(workdir)
    assert 2 <= max(stopped) < STEPS, output[-3000:]
    assert "reader, at the start:" in output and "TFRecords, 2 files" in output and "reader, this run:" in output

    assert [r["step"] for r in reader_records(workdir)] == [0, max(stopped)]  # start, and end after SIGTERM

    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # The uninterrupted reference run's losses: the records' position was restored from the checkpoint (and phase 1
    # started its own files from their beginning, as in the reference).
    assert [r["step"] for r in reader_records(workdir)] == [0, max(stopped), max(stopped), STEPS]
    _, losses, evals = reference
    resumed = logged(workdir)
    np.testing.assert_allclose([resumed[s] for s in range(1, STEPS + 1)], [losses[s] for s in range(1, STEPS + 1)],
                               rtol=1e-6)
    assert logged(workdir, "eval_loss") == pytest.approx(evals, rel=1e-6)  # held-out evaluation on TFRecords

    text = "the [MASK] of the river."
    fill = subprocess.run([sys.executable, "-m", "bert_jax", "fill-mask", f"--checkpoint={workdir / 'model'}", text],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert fill.returncode == 0, fill.stderr[-3000:]
    predictions = json.loads(fill.stdout.strip().splitlines()[-1])
    from bert_jax.inference import fill_mask
    from bert_jax.pretrained import load_pretrained

    expected = fill_mask(load_pretrained(reference[0] / "model"), [text])[0]
    assert [p["token_str"] for p in predictions] == [p["token_str"] for p in expected]
    np.testing.assert_allclose([p["score"] for p in predictions], [p["score"] for p in expected], rtol=1e-4)
