"""The tf.data pretraining pipeline (bert_jax.data.pipeline) on a subset of the shared Wikipedia dump.

Rules checked on the batches themselves (segment ids, masks, counts), offline vs streaming statistics,
exact resumption in a fresh process, disjoint host shards, and a real two-process jax.distributed run
that assembles a global array from the per-process batches.
"""

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import wiki_corpus

from bert_jax.data import pipeline as ip
from bert_jax.data import text_reader
from bert_jax.data.blocks import Position
from bert_jax.data.features import FEATURES
from bert_jax.data.instances import InstanceConfig, SentenceTokenizer, VocabInfo
from bert_jax.data.masking import mask_batch_tf
from bert_jax.data.offline_writer import prepare_pretraining_data
from bert_jax.data.tfrecord import read_metadata
from bert_jax.tokenizer import load_tokenizer

WIKI = "../shared/data/wikipedia"
VOCAB = "../shared/data/vocab/bert-base-uncased-vocab.txt"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three WikiExtractor files with the first 200 articles of wiki_12..14 (260 of them have text)."""
    return wiki_corpus(tmp_path_factory.mktemp("wiki"), ("wiki_12", "wiki_13", "wiki_14"), 200)


@pytest.fixture(scope="module")
def records(corpus, tmp_path_factory):
    """Offline TFRecords of the corpus (one pass), written by the faithful writer."""
    directory = tmp_path_factory.mktemp("records")
    prepare_pretraining_data(str(corpus), VOCAB, str(directory), InstanceConfig(), dupe_factor=1, seed=5)
    return directory


def _streaming(corpus, tokenizer, **overrides):
    pattern = corpus if isinstance(corpus, list) else str(corpus)
    kwargs = dict(input_pattern=pattern, mode="streaming", batch_size=32, seed=1, process_index=0, process_count=1)
    return ip.PretrainingIterator(ip.PipelineSpec(**{**kwargs, **overrides}), tokenizer=tokenizer)


def _unmask(batch):
    """The original ids: the labels put back at the masked positions."""
    ids = batch["input_ids"].copy()
    rows = np.arange(len(ids))[:, None]
    real = batch["masked_lm_weights"] > 0
    ids[np.broadcast_to(rows, real.shape)[real], batch["masked_lm_positions"][real]] = batch["masked_lm_ids"][real]
    return ids


def _check_batch(batch, tokenizer, config: InstanceConfig, batch_size, exact_counts=True):
    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    assert set(batch) == set(FEATURES)
    for name in ("input_ids", "input_mask", "segment_ids"):
        assert batch[name].shape == (batch_size, seq) and batch[name].dtype == np.int32
    for name in ("masked_lm_positions", "masked_lm_ids"):
        assert batch[name].shape == (batch_size, preds) and batch[name].dtype == np.int32
    assert batch["masked_lm_weights"].dtype == np.float32 and batch["next_sentence_labels"].shape == (batch_size,)
    original = _unmask(batch)
    lengths = batch["input_mask"].sum(1)
    for row in range(batch_size):
        n = lengths[row]
        assert batch["input_mask"][row].tolist() == [1] * n + [0] * (seq - n)
        assert (batch["input_ids"][row][n:] == tokenizer.pad_id).all()
        seps = np.nonzero(original[row][:n] == tokenizer.sep_id)[0]
        assert original[row][0] == tokenizer.cls_id and len(seps) == 2 and seps[1] == n - 1
        assert batch["segment_ids"][row].tolist() == [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1) + [0] * (seq - n)
        m = int(batch["masked_lm_weights"][row].sum())
        positions = batch["masked_lm_positions"][row][:m]
        assert (positions > 0).all() and (positions < n - 1).all() and not np.isin(positions, seps).any()
        assert (np.diff(positions) > 0).all()
        if exact_counts:
            assert m == config.num_to_predict(n)
    assert not np.isin(batch["masked_lm_ids"][batch["masked_lm_weights"] > 0],
                       [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()


# ----------------------------------------------------------------------------------------------------
# The batches
# ----------------------------------------------------------------------------------------------------


def test_streaming_batches_follow_the_rules(corpus, tokenizer):
    it = _streaming(corpus, tokenizer)
    batches = [next(it) for _ in range(12)]
    for batch in batches:
        _check_batch(batch, tokenizer, InstanceConfig(), 32)
    labels = np.concatenate([b["next_sentence_labels"] for b in batches])
    assert 0.42 < labels.mean() < 0.7
    assert it.read_stats.skipped["empty documents"] > 0  # the stub articles are counted
    assert it.generation_stats.instances >= 12 * 32


def test_whole_word_masking_in_the_stream(corpus, tokenizer):
    config = InstanceConfig(whole_word_masking=True, max_seq_length=64, max_predictions_per_seq=10)
    it = _streaming(corpus, tokenizer, whole_word_masking=True, max_seq_length=64, max_predictions_per_seq=10)
    whole_words = 0
    for _ in range(6):
        batch = next(it)
        _check_batch(batch, tokenizer, config, 32, exact_counts=False)
        original = _unmask(batch)
        continuation = VocabInfo.from_tokenizer(tokenizer).is_continuation[original]
        for row in range(32):
            picked = set(batch["masked_lm_positions"][row][batch["masked_lm_weights"][row] > 0].tolist())
            for p in picked:  # the word's next piece is masked too, and so is the piece before a '##'
                if p + 1 < 64 and continuation[row][p + 1] and original[row][p] != tokenizer.sep_id:
                    assert p + 1 in picked
                if continuation[row][p] and original[row][p - 1] not in (tokenizer.cls_id, tokenizer.sep_id):
                    assert p - 1 in picked
            whole_words += any(continuation[row][p] for p in picked)
    assert whole_words > 20


def test_static_masking_in_the_stream(corpus, tokenizer):
    """dynamic_masking=False: masks drawn once by the original Python algorithm, dupe_factor passes per
    block; a resumed stream reads the very same masks."""
    kwargs = dict(dynamic_masking=False, dupe_factor=2, shuffle_buffer=30, batch_size=16)
    it = _streaming(corpus, tokenizer, **kwargs)
    batches = [next(it) for _ in range(6)]
    for batch in batches:
        _check_batch(batch, tokenizer, InstanceConfig(), 16)
    state = it.get_state()
    expected = next(it)
    resumed = _streaming(corpus, tokenizer, **kwargs)
    resumed.set_state(state)
    got = next(resumed)
    for name in FEATURES:
        np.testing.assert_array_equal(got[name], expected[name])


def test_graph_tokenizer_gives_the_python_ids(tokenizer):
    sentences = [s for d in text_reader.iter_file_documents(os.path.join(WIKI, "wiki_15")) for s in d.sentences][:400]
    in_graph = SentenceTokenizer(tokenizer)
    assert in_graph.in_graph
    flat, splits = in_graph(sentences)
    for k, sentence in enumerate(sentences):
        assert flat[splits[k] : splits[k + 1]].tolist() == tokenizer.token_ids(sentence)


def test_dynamic_masks_are_drawn_per_read(tokenizer):
    """The same pair read again (another example key) gets another mask; the same key, the same mask."""
    vocab = VocabInfo.from_tokenizer(tokenizer)
    config = InstanceConfig()
    ids = np.full([64, 128], tokenizer.pad_id, np.int32)
    ids[:, 0], ids[:, 1:100], ids[:, 100], ids[:, 101:127], ids[:, 127] = 101, 2000, 102, 3000, 102
    lengths = np.full([64], 128, np.int32)
    first = mask_batch_tf(ids, lengths, np.arange(64), config=config, vocab=vocab, seed=3)
    again = mask_batch_tf(ids, lengths, np.arange(64), config=config, vocab=vocab, seed=3)
    later = mask_batch_tf(ids, lengths, np.arange(64) + 64, config=config, vocab=vocab, seed=3)
    np.testing.assert_array_equal(first["masked_lm_positions"], again["masked_lm_positions"])
    differ = (first["masked_lm_positions"].numpy() != later["masked_lm_positions"].numpy()).any(1)
    assert differ.mean() > 0.95


# ----------------------------------------------------------------------------------------------------
# Offline mode
# ----------------------------------------------------------------------------------------------------


def test_offline_reads_the_records_and_is_reproducible(records, tokenizer):
    files = str(records / "*.tfrecord")
    a = ip.PretrainingIterator(ip.PipelineSpec(input_pattern=files, mode="offline", batch_size=32, seed=7,
                                               process_index=0, process_count=1, shuffle_buffer=500))
    b = ip.PretrainingIterator(ip.PipelineSpec(input_pattern=files, mode="offline", batch_size=32, seed=7,
                                               process_index=0, process_count=1, shuffle_buffer=500))
    c = ip.PretrainingIterator(ip.PipelineSpec(input_pattern=files, mode="offline", batch_size=32, seed=8,
                                               process_index=0, process_count=1, shuffle_buffer=500))
    for _ in range(5):
        batch_a, batch_b, batch_c = next(a), next(b), next(c)
        _check_batch(batch_a, tokenizer, InstanceConfig(), 32)
        for name in FEATURES:
            np.testing.assert_array_equal(batch_a[name], batch_b[name])
    assert not np.array_equal(batch_a["input_ids"], batch_c["input_ids"])
    # One epoch without repeat: every record exactly once.
    total = read_metadata(str(records))["summary"]["instances"]
    once = ip.make_pretraining_dataset(ip.PipelineSpec(input_pattern=files, mode="offline", batch_size=64, seed=1,
                                                       process_index=0, process_count=1, repeat=False,
                                                       drop_remainder=False))
    rows = np.concatenate([x["input_ids"] for x in once.as_numpy_iterator()])
    assert len(rows) == total
    assert len({r.tobytes() for r in rows}) == total


def test_offline_and_streaming_agree_in_distribution(corpus, records, tokenizer):
    """Same pairing and masking rules: NSP share, lengths and mask shares agree between the two modes."""
    def statistics(batches):
        ids = np.concatenate([b["input_ids"] for b in batches])
        lengths = np.concatenate([b["input_mask"].sum(1) for b in batches])
        weights = np.concatenate([b["masked_lm_weights"] for b in batches])
        positions = np.concatenate([b["masked_lm_positions"] for b in batches])
        at_masks = ids[np.arange(len(ids))[:, None], positions][weights > 0]
        return {
            "nsp": np.concatenate([b["next_sentence_labels"] for b in batches]).mean(),
            "full": np.mean(lengths >= 120),
            "masks_per_token": weights.sum() / lengths.sum(),
            "mask_token": np.mean(at_masks == tokenizer.mask_id),
            "segment_b": np.concatenate([b["segment_ids"] for b in batches]).sum() / lengths.sum(),
        }

    offline = ip.make_pretraining_dataset(ip.PipelineSpec(
        input_pattern=str(records / "*.tfrecord"), mode="offline", batch_size=100, seed=1, process_index=0,
        process_count=1, repeat=False))
    streaming = ip.make_pretraining_dataset(ip.PipelineSpec(
        input_pattern=str(corpus), mode="streaming", batch_size=100, seed=2, process_index=0, process_count=1,
        repeat=False), tokenizer)
    a, b = statistics(list(offline.as_numpy_iterator())), statistics(list(streaming.as_numpy_iterator()))
    assert abs(a["nsp"] - b["nsp"]) < 0.04
    assert abs(a["full"] - b["full"]) < 0.05
    assert abs(a["masks_per_token"] - b["masks_per_token"]) < 0.003
    assert abs(a["mask_token"] - b["mask_token"]) < 0.03 and abs(b["mask_token"] - 0.8) < 0.02
    assert abs(a["segment_b"] - b["segment_b"]) < 0.03


def test_offline_records_of_another_length_are_refused(records):
    with pytest.raises(ValueError, match=r"pretraining_data\.json.*max_seq_length=128"):
        ip.make_pretraining_dataset(ip.PipelineSpec(
            input_pattern=str(records / "*.tfrecord"), mode="offline", batch_size=8, max_seq_length=512,
            max_predictions_per_seq=80, process_index=0, process_count=1))


# ----------------------------------------------------------------------------------------------------
# Resumption
# ----------------------------------------------------------------------------------------------------

_RESUME_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bert_jax.data import pipeline as ip
    from bert_jax.tokenizer import load_tokenizer
    kwargs, state = json.load(open(sys.argv[1]))
    tokenizer = load_tokenizer("%s") if kwargs.pop("vocab", None) else None
    it = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    it.set_state(state)
    np.savez(sys.argv[2], **next(it))
""" % VOCAB)


def test_resume_in_a_fresh_process(corpus, tokenizer, tmp_path):
    """Read N batches, save the state, restore it in a new process: the next batch is the one the
    uninterrupted run reads. Small blocks, so the position is mid-stream after several blocks."""
    kwargs = dict(input_pattern=os.path.join(corpus, "wiki_12"), mode="streaming", batch_size=24, seed=3,
                  process_index=0, process_count=1, shuffle_buffer=15)
    it = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    for _ in range(9):
        next(it)
    state = it.get_state()
    assert state["block"] >= 2 and 0 < state["skip"]
    json.dump([{**kwargs, "vocab": VOCAB}, state], open(tmp_path / "state.json", "w"))
    expected = next(it)
    child = tmp_path / "child.py"
    child.write_text(_RESUME_CHILD)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, str(child), str(tmp_path / "state.json"), str(tmp_path / "next.npz")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = np.load(tmp_path / "next.npz")
    for name in FEATURES:
        np.testing.assert_array_equal(resumed[name], expected[name])


@pytest.mark.parametrize("mode", ["streaming", "offline"])
def test_resume_across_epochs_in_process(corpus, records, tokenizer, mode):
    """Positions taken anywhere, including past an epoch boundary, resume to the same examples."""
    if mode == "streaming":
        kwargs = dict(input_pattern=os.path.join(corpus, "wiki_12"), mode="streaming", shuffle_buffer=30)
    else:
        kwargs = dict(input_pattern=str(records / "part-00000-*"), mode="offline", shuffle_buffer=100)
    kwargs.update(batch_size=50, seed=11, process_index=0, process_count=1)
    reference = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    batches, states = [], []
    for _ in range(45):  # more than one epoch of a file
        batches.append(next(reference))
        states.append(reference.get_state())
    assert states[-1]["epoch"] >= 1
    resumed = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    for k in (0, 17, len(states) - 3):
        resumed.set_state(states[k])
        for j in (1, 2):
            got = next(resumed)
            for name in FEATURES:
                np.testing.assert_array_equal(got[name], batches[k + j][name])
    with pytest.raises(ValueError, match="another input"):
        ip.PretrainingIterator(ip.PipelineSpec(**{**kwargs, "seed": 12}), tokenizer=tokenizer).set_state(states[0])
    json.dumps(states[-1])  # what the trainer stores


def test_sequence_length_phase_continues_the_stream(corpus, tokenizer):
    """A new phase (bert_jax.pretrain.make_input): an iterator on a variant of the spec, given the old state."""
    it = _streaming(corpus, tokenizer, shuffle_buffer=100)
    for _ in range(3):
        next(it)
    block = it.get_state()["block"]
    phase = dataclasses.replace(it.spec, max_seq_length=256, max_predictions_per_seq=40, batch_size=8)
    longer = ip.PretrainingIterator(phase, tokenizer=tokenizer)
    longer.set_state(it.get_state())
    batch = next(longer)
    _check_batch(batch, tokenizer, InstanceConfig(max_seq_length=256, max_predictions_per_seq=40), 8)
    assert batch["input_mask"].sum(1).max() > 128
    assert longer.get_state()["block"] == block  # continues from the block it was in
    # A state taken at another batch size restarts its block: the first rows are that block's first.
    other = _streaming(corpus, tokenizer, shuffle_buffer=100, batch_size=16)
    other.set_state(it.get_state())
    restarted = _streaming(corpus, tokenizer, shuffle_buffer=100, batch_size=16)
    restarted.set_state({**it.get_state(), "skip": 0, "shape": restarted.spec.shape_key()})
    np.testing.assert_array_equal(next(other)["segment_ids"], next(restarted)["segment_ids"])
    with pytest.raises(ValueError, match="this pipeline has"):
        other.set_state(it.get_state(), allow_shape_change=False)


# ----------------------------------------------------------------------------------------------------
# Hosts
# ----------------------------------------------------------------------------------------------------


def _documents_of(source):
    return [(doc.source, doc.line) for doc, _ in source.shard.iterate(source._read(), Position())]


@pytest.mark.parametrize("num_files, count", [(3, 2), (1, 2), (3, 3)])
def test_host_shards_are_disjoint_and_cover(corpus, tokenizer, num_files, count):
    files = sorted(str(corpus / n) for n in os.listdir(corpus))[:num_files]
    everything = sorted(_documents_of(_streaming(files, tokenizer)._source))
    shards = [_documents_of(_streaming(files, tokenizer, process_index=i, process_count=count)._source)
              for i in range(count)]
    assert all(shards)
    assert sorted(d for shard in shards for d in shard) == everything  # disjoint, and together everything


def test_offline_record_shards(records):
    def rows(index, count):
        ds = ip.make_pretraining_dataset(ip.PipelineSpec(
            input_pattern=str(records / "*.tfrecord"), mode="offline", batch_size=16, seed=1, process_index=index,
            process_count=count, repeat=False, drop_remainder=False))
        return [r.tobytes() for b in ds.as_numpy_iterator() for r in b["input_ids"]]

    everything = rows(0, 1)
    for count in (2, 4):  # 3 files: whole files for 2 hosts, records dealt by ordinal for 4
        shards = [rows(i, count) for i in range(count)]
        assert sorted(r for s in shards for r in s) == sorted(everything)


_DISTRIBUTED_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from jax.experimental import multihost_utils
    from bert_jax import sharding
    from bert_jax.data import pipeline as ip
    it = ip.PretrainingIterator(ip.PipelineSpec(input_pattern=sys.argv[3], mode="offline", batch_size=4, seed=0))
    local = next(it)
    mesh = sharding.make_mesh({"data": -1})
    batch = sharding.global_batch(local, mesh)
    total = int(jax.jit(lambda x: x.sum())(batch["input_ids"]))
    gathered = multihost_utils.process_allgather(batch["input_ids"], tiled=True)
    print("RESULT " + json.dumps({"index": jax.process_index(), "count": jax.process_count(),
                                  "shape": list(batch["input_ids"].shape), "local": local["input_ids"].tolist(),
                                  "total": total, "gathered": np.asarray(gathered).tolist()}))
""")


def test_two_processes_build_one_global_batch(records, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = tmp_path / "child.py"
    child.write_text(_DISTRIBUTED_CHILD)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    procs = [subprocess.Popen([sys.executable, str(child), f"127.0.0.1:{port}", str(i), str(records / "*.tfrecord")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:]))
    results.sort(key=lambda r: r["index"])
    assert [r["count"] for r in results] == [2, 2]
    local0, local1 = (np.array(r["local"]) for r in results)
    # Each process read its own files: no row in common.
    assert not {r.tobytes() for r in local0} & {r.tobytes() for r in local1}
    expected = np.concatenate([local0, local1])
    for r in results:
        assert r["shape"] == [8, 128]
        np.testing.assert_array_equal(np.array(r["gathered"]), expected)
        assert r["total"] == int(expected.sum())


# ----------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------


class TinyWikiCorpus(tfds.core.GeneratorBasedBuilder):
    """A local TFDS text dataset: the first articles of wiki_16 (no download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        docs = text_reader.iter_file_documents(os.path.join(WIKI, "wiki_16"), fmt="wikiextractor",
                                               splitter=lambda line: [line])
        for i, doc in zip(range(90), docs):
            yield i, {"text": "\n".join(doc.sentences)}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    TinyWikiCorpus(data_dir=directory).download_and_prepare()
    return directory


def test_tfds_slices_are_disjoint_and_cover(tfds_dir):
    def texts(index, count, start=0):
        return [tuple(d.sentences) for d in text_reader.iter_tfds_documents(
            "tiny_wiki_corpus", data_dir=tfds_dir, process_index=index, process_count=count, start=start)]

    everything = texts(0, 1)
    assert len(everything) == 90
    shards = [texts(i, 3) for i in range(3)]
    assert [len(s) for s in shards] == [30, 30, 30] and sum(shards, []) == everything
    assert texts(1, 3, start=7) == shards[1][7:]  # resuming inside a slice reads only what is left


def test_streaming_from_tfds_resumes(tfds_dir, tokenizer):
    kwargs = dict(tfds_name="tiny_wiki_corpus", tfds_data_dir=tfds_dir, batch_size=16, seed=4, process_index=1,
                  process_count=2, shuffle_buffer=10)
    it = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    batches = [next(it) for _ in range(4)]
    _check_batch(batches[0], tokenizer, InstanceConfig(), 16)
    state = it.get_state()
    expected = next(it)
    resumed = ip.PretrainingIterator(ip.PipelineSpec(**kwargs), tokenizer=tokenizer)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])


def test_tfds_mock_data(tokenizer):
    """The dataset named in the issue, mocked (random text; the mock ignores split slices, so host
    slicing is tested on the local dataset above)."""
    with tfds.testing.mock_data(num_examples=20):
        docs = list(text_reader.iter_tfds_documents("wikipedia/20230601.en"))
        batch = next(iter(ip.make_pretraining_dataset(ip.PipelineSpec(
            tfds_name="wikipedia/20230601.en", batch_size=4, max_seq_length=32, max_predictions_per_seq=5,
            process_index=0, process_count=1), tokenizer)))
    assert len(docs) == 20 and all(d.sentences for d in docs)
    assert batch["input_ids"].shape == (4, 32)


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def test_bad_input_fails_early_naming_the_file(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        _streaming(tmp_path / "missing_dir", tokenizer)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.txt.*files without any document"):
        _streaming(str(tmp_path / "*.txt"), tokenizer)
    (tmp_path / "notrecords.tfrecord").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00abcdhello1234")
    with pytest.raises(ValueError, match="notrecords.tfrecord"):
        ip.PretrainingIterator(ip.PipelineSpec(input_pattern=str(tmp_path / "notrecords.tfrecord"), mode="offline",
                                               batch_size=2, process_index=0, process_count=1))
    with pytest.raises(ValueError, match="process_index=2"):
        _streaming(str(tmp_path), tokenizer, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="mode="):
        _streaming(str(tmp_path), tokenizer, mode="online")


def test_a_damaged_record_is_an_error_naming_the_file_and_offset(records, tmp_path):
    """Offline mode checks both CRCs of every record: a flipped byte stops the stream, naming where."""
    shard = sorted(records.glob("*.tfrecord"))[0].read_bytes()
    damaged = bytearray(shard)
    damaged[len(damaged) // 2] ^= 0x04
    (tmp_path / "mid.tfrecord").write_bytes(bytes(damaged))
    it = ip.PretrainingIterator(ip.PipelineSpec(input_pattern=str(tmp_path / "mid.tfrecord"), mode="offline",
                                                batch_size=16, process_index=0, process_count=1, repeat=False))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mid\.tfrecord: damaged TFRecord at byte \d+"):
        for _ in it:
            pass
    damaged = bytearray(shard)
    damaged[20] ^= 0x04  # inside the first record: found before anything is built
    (tmp_path / "first.tfrecord").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"first\.tfrecord: damaged TFRecord at byte 0: the data CRC"):
        ip.PretrainingIterator(ip.PipelineSpec(input_pattern=str(tmp_path / "first.tfrecord"), mode="offline",
                                               batch_size=16, process_index=0, process_count=1))


def test_odd_documents_are_counted_not_lost(tmp_path, tokenizer):
    path = tmp_path / "odd.txt"
    path.write_bytes(b"One sentence only.\n\nword\n\n\xff\xfe bad bytes\nThe rest is fine.\n\n"
                     + b" ".join([b"long"] * 300) + b"\nEnd.\n")
    it = _streaming(str(path), tokenizer, batch_size=8, max_seq_length=32, max_predictions_per_seq=5, repeat=False,
                    drop_remainder=False)
    batch = next(it)  # one pass over the file: each problem counted once
    _check_batch(batch, tokenizer, InstanceConfig(max_seq_length=32, max_predictions_per_seq=5), len(batch["input_ids"]))
    assert it.read_stats.skipped == {"non-UTF-8 lines": 1}
    stats = it.generation_stats
    assert stats.one_token_documents >= 1 and stats.long_sentences >= 1 and stats.one_sentence_documents >= 2
