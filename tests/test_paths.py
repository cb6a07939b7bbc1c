"""Workdirs in a bucket: bert_jax.paths on local paths and on TensorFlow's in-memory file system (ram://), then a
pretraining run and a fine-tuning run whose workdirs are URLs, with every local-file call on those URLs made to fail,
and the process-0-only writes of save_pretrained.

GCS cannot be reached offline. The end-to-end runs use a URL scheme, mock://bucket, that the test maps onto a local
folder in the one place bert_jax reaches a remote file system (paths._gfile, TensorFlow's gfile) and in the one place
it hands a directory to Orbax (paths.for_orbax); `open`, `os.makedirs`, `os.stat` (so os.path.exists), os.replace,
... on any path containing 'mock:' raise. A workdir that some code still resolves with os.path.abspath
('/cwd/mock:/bucket/run') or opens with `open` fails the run.
"""

from __future__ import annotations

import builtins
import json
import os
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

from bert_jax import paths
from tests.conftest import SHARED_DATA, load_config

SST2 = SHARED_DATA / "glue" / "SST-2"


# ----------------------------------------------------------------------------------------------------------------------
# The path module on a local directory and on ram://
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    """An empty directory: a local one, or a fresh one in TensorFlow's in-memory file system."""
    if request.param == "local":
        return str(tmp_path / "root")
    return f"ram://test-{uuid.uuid4().hex}/root"


def test_is_remote_and_absolute():
    assert paths.is_remote("gs://bucket/run") and paths.is_remote("s3://b/x") and paths.is_remote("ram://x")
    assert not paths.is_remote("run") and not paths.is_remote("/abs/run") and not paths.is_remote("./gs:/b")
    assert paths.absolute("gs://bucket/run/") == "gs://bucket/run"  # unchanged, not '<cwd>/gs:/bucket/run'
    assert paths.for_orbax("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.absolute("run") == os.path.join(os.getcwd(), "run")
    assert paths.absolute("~/run") == os.path.join(os.path.expanduser("~"), "run")


def test_files_and_directories(root):
    assert not paths.exists(root)
    paths.makedirs(f"{root}/a/b")
    paths.makedirs(f"{root}/a/b")  # again: fine
    assert paths.isdir(f"{root}/a/b") and paths.exists(root)
    paths.write_text(f"{root}/a/x.txt", "héllo\n")
    assert paths.read_text(f"{root}/a/x.txt") == "héllo\n" and not paths.isdir(f"{root}/a/x.txt")
    with paths.open(f"{root}/a/log.jsonl", "a") as f:
        f.write('{"step": 1}\n')
    with paths.open(f"{root}/a/log.jsonl", "a") as f:  # a resumed run appends
        f.write('{"step": 2}\n')
    assert paths.read_text(f"{root}/a/log.jsonl").splitlines() == ['{"step": 1}', '{"step": 2}']
    # (not 'b...': TF's ram:// rmtree of a/b also deletes a/b* siblings, a bug of that test file system only)
    with paths.open(f"{root}/a/data.bin", "wb") as f:
        f.write(bytes(range(256)))
    with paths.open(f"{root}/a/data.bin", "rb") as f:
        assert f.read() == bytes(range(256))
    assert paths.listdir(f"{root}/a") == ["b", "data.bin", "log.jsonl", "x.txt"]

    paths.copy(f"{root}/a/x.txt", f"{root}/a/b/y.txt")
    paths.copy(f"{root}/a/log.jsonl", f"{root}/a/b/y.txt")  # replaces
    assert paths.read_text(f"{root}/a/b/y.txt") == paths.read_text(f"{root}/a/log.jsonl")
    paths.remove(f"{root}/a/x.txt")
    assert not paths.exists(f"{root}/a/x.txt")
    paths.rmtree(f"{root}/a/b")
    assert paths.listdir(f"{root}/a") == ["data.bin", "log.jsonl"]


def test_errors_are_oserrors_naming_the_path(root):
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        paths.read_text(f"{root}/nothing.txt")
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        paths.open(f"{root}/nothing.txt")
    with pytest.raises(ValueError, match="mode 'r\\+'"):
        paths.open(f"{root}/x", "r+")


def test_a_scheme_without_a_file_system_is_a_clear_workdir_error():
    from bert_jax.pretrain import prepare_workdir

    with pytest.raises(OSError, match="nosuch://bucket/x"):
        paths.write_text("nosuch://bucket/x", "x")
    with pytest.raises(ValueError, match="workdir nosuch://bucket/run: cannot be written.*not implemented"):
        prepare_workdir("nosuch://bucket/run")


def test_prepare_workdir_keeps_a_url_and_leaves_no_probe():
    from bert_jax.pretrain import prepare_workdir

    url = f"ram://test-{uuid.uuid4().hex}/run/"
    assert prepare_workdir(url) == url.rstrip("/")
    assert paths.isdir(url) and paths.listdir(url) == []


def test_between_the_local_disk_and_a_url(root, tmp_path):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "vocab.txt").write_text("[PAD]\n")
    (local / "sub" / "deep.txt").write_text("deep")
    paths.upload_dir(str(local), f"{root}/up")
    assert paths.listdir(f"{root}/up") == ["sub", "vocab.txt"]
    assert paths.read_text(f"{root}/up/sub/deep.txt") == "deep"

    down = paths.download_dir(f"{root}/up")  # the files directly in it, not its subdirectories
    if paths.is_remote(root):
        assert sorted(os.listdir(down)) == ["vocab.txt"] and Path(down, "vocab.txt").read_text() == "[PAD]\n"
    else:
        assert down == f"{root}/up"

    with paths.written_locally(f"{root}/predictions") as scratch:
        assert not paths.is_remote(scratch)
        Path(scratch, "dev.tsv").write_text("index\tprediction\n")
    assert paths.read_text(f"{root}/predictions/dev.tsv") == "index\tprediction\n"

    (local / "file.txt").write_text("moved")
    paths.put(str(local / "file.txt"), f"{root}/file.txt")
    assert paths.read_text(f"{root}/file.txt") == "moved"


def test_publish_dir_replaces_a_directory(root):
    for version in ("old", "new"):
        staging = f"{root}/staging-{version}"  # not model.tmp-*: see the ram:// rmtree note above
        paths.makedirs(f"{staging}/params")
        paths.write_text(f"{staging}/params/array", version)
        paths.write_text(f"{staging}/manifest.json", version)
        if version == "old":
            paths.write_text(f"{staging}/only_in_old.txt", version)
        paths.publish_dir(staging, f"{root}/model", last="manifest.json")
        assert not paths.exists(staging)
        assert paths.read_text(f"{root}/model/params/array") == paths.read_text(f"{root}/model/manifest.json") \
            == version
    assert paths.listdir(f"{root}/model") == ["manifest.json", "params"]  # nothing left of the old one


def test_publish_dir_in_a_bucket_removes_the_manifest_first_and_copies_it_last(monkeypatch):
    root = f"ram://test-{uuid.uuid4().hex}"
    for name in ("model", "staging"):
        paths.makedirs(f"{root}/{name}/params")
        for file in ("params/a", "params/b", "config.json", "manifest.json"):
            paths.write_text(f"{root}/{name}/{file}", name)
    events = []
    copy, remove = paths.copy, paths.remove

    def recording_copy(source, target):
        events.append(("copy", os.path.relpath(target, f"{root}/model")))
        if len(events) == 3:
            raise OSError("connection reset")
        copy(source, target)

    monkeypatch.setattr(paths, "copy", recording_copy)
    monkeypatch.setattr(paths, "remove", lambda path: (events.append(("remove", path)), remove(path)))
    with pytest.raises(OSError, match="connection reset"):  # cut short after two files
        paths.publish_dir(f"{root}/staging", f"{root}/model", last="manifest.json")
    assert events[0] == ("remove", f"{root}/model/manifest.json")
    assert [e for e in events[1:] if e[0] == "copy"][:2] == [("copy", "config.json"), ("copy", "params/a")]
    # What is left has no manifest: a reader rejects it instead of mixing the two versions.
    assert not paths.exists(f"{root}/model/manifest.json") and paths.exists(f"{root}/model/config.json")

    events.clear()
    monkeypatch.setattr(paths, "copy", lambda s, t: (events.append(("copy", os.path.relpath(t, f"{root}/model"))),
                                                     copy(s, t)))
    paths.publish_dir(f"{root}/staging", f"{root}/model", last="manifest.json")
    assert [e[1] for e in events if e[0] == "copy"][-1] == "manifest.json"
    assert paths.read_text(f"{root}/model/manifest.json") == "staging" and not paths.exists(f"{root}/staging")


# ----------------------------------------------------------------------------------------------------------------------
# MetricsWriter in a bucket: metrics.jsonl and TensorBoard events on ram://
# ----------------------------------------------------------------------------------------------------------------------


def test_metrics_writer_writes_jsonl_and_events_to_a_url():
    import io

    import tensorflow as tf

    from bert_jax.train_metrics import MetricsWriter

    workdir = f"ram://test-{uuid.uuid4().hex}/run"
    writer = MetricsWriter(workdir, 4, console=io.StringIO())
    writer.write_train(1, {"loss": 3.0})
    writer.write_eval(2, {"loss": 2.5})
    writer.close()
    writer = MetricsWriter(workdir, 4, console=io.StringIO())  # resumed: appends
    writer.write_train(3, {"loss": 2.0})
    writer.close()
    lines = [json.loads(line) for line in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert lines == [{"step": 1, "loss": 3.0}, {"step": 2, "eval_loss": 2.5}, {"step": 3, "loss": 2.0}]
    scalars = []
    for name in paths.listdir(f"{workdir}/tensorboard"):
        for event in tf.compat.v1.train.summary_iterator(f"{workdir}/tensorboard/{name}"):
            scalars += [(v.tag, event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value]
    assert sorted(scalars) == [("eval/loss", 2, 2.5), ("train/loss", 1, 3.0), ("train/loss", 3, 2.0)]


# ----------------------------------------------------------------------------------------------------------------------
# Process 0 writes the files; everyone takes part in Orbax saves
# ----------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_small_files_on_process_0_only(small_vocab_file, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from bert_jax.model import BertConfig
    from bert_jax.pretrained import save_pretrained
    from bert_jax.tokenizer import load_tokenizer
    from bert_jax.train_metrics import MetricsWriter
    from tests.test_pretrained import random_params

    saves = []

    class RecordingCheckpointer:  # stands in for the collective Orbax save (no other process to meet here)
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def save(self, directory, params):
            saves.append((jax.process_index(), directory))

        def wait_until_finished(self):
            pass

    monkeypatch.setattr(ocp, "StandardCheckpointer", RecordingCheckpointer)
    tokenizer = load_tokenizer(str(small_vocab_file))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position_embeddings=40)
    params = random_params(config)
    for process in (1, 0):
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        save_pretrained(tmp_path / f"process{process}", config, params, tokenizer)
        MetricsWriter(str(tmp_path / f"metrics{process}"), 10, tensorboard=False).close()
    assert saves == [(1, str(tmp_path / "process1" / "params")), (0, str(tmp_path / "process0" / "params"))]
    assert not (tmp_path / "process1").exists() and not (tmp_path / "metrics1").exists()
    assert sorted(p.name for p in (tmp_path / "process0").iterdir()) == [
        "bert_jax.json", "model_config.json", "tokenizer_config.json", "vocab.txt"]
    assert (tmp_path / "metrics0" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Pretraining, then fine-tuning, with workdirs in a (mock) bucket
# ----------------------------------------------------------------------------------------------------------------------

MOCK = "mock://bucket"


class _MappedGFile:
    """tf.io.gfile with mock://bucket/... mapped onto a local folder (real gfile semantics, local storage)."""

    def __init__(self, to_local):
        import tensorflow as tf

        self._gfile, self._to_local = tf.io.gfile, to_local

    def __getattr__(self, name):
        function = getattr(self._gfile, name)

        def mapped(*args, **kwargs):
            return function(*(self._to_local(a) if isinstance(a, str) else a for a in args), **kwargs)

        return mapped


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The local folder behind mock://bucket; local-file calls on 'mock:' paths raise while the fixture is active."""
    storage = tmp_path / "bucket"
    storage.mkdir()

    def to_local(path):
        path = os.fspath(path)
        return str(storage) + path[len(MOCK):] if path.startswith(MOCK + "/") or path == MOCK else path

    gfile = _MappedGFile(to_local)
    monkeypatch.setattr(paths, "_gfile", lambda: gfile)
    for_orbax = paths.for_orbax
    monkeypatch.setattr(paths, "for_orbax", lambda path: to_local(for_orbax(path)))

    def guarded(module, name):
        real = getattr(module, name)

        def check(*args, **kwargs):
            for value in (*args, *kwargs.values()):
                if isinstance(value, (str, bytes, os.PathLike)) and "mock:" in str(os.fsdecode(value)):
                    raise AssertionError(f"local {module.__name__}.{name} on a bucket path: {value!r}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, check)

    import shutil

    guarded(builtins, "open")
    for name in ("open", "makedirs", "mkdir", "stat", "lstat", "listdir", "scandir", "replace", "rename", "remove",
                 "unlink", "rmdir"):
        guarded(os, name)
    for name in ("copyfile", "copytree", "rmtree", "move"):
        guarded(shutil, name)
    return storage


def test_pretrain_then_finetune_with_workdirs_in_a_bucket(bucket, tmp_path, monkeypatch):
    import tempfile

    from bert_jax import finetune, predict, pretrain
    from bert_jax.pretrained import load_pretrained

    (tmp_path / "local").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "local"))  # the host's local files for the bucket

    # -- pretraining on the built-in corpus (its vocabulary trained here): 4 steps, checkpoint and export every 2 --
    config = load_config("configs/pretrain.py:builtin,tiny")  # 20 documents, 8 sequences of 32 tokens
    config.optimizer.warmup_steps = 1
    config.train.update(num_steps=4, checkpoint_every=2, eval_every=0, tensorboard=False, async_checkpoints=False,
                        export_every_checkpoint=True)
    config.fill_mask_examples = ()
    state = pretrain.train_and_evaluate(config, f"{MOCK}/pretrain")

    run = bucket / "pretrain"
    assert json.loads((run / "config.json").read_text())["train"]["num_steps"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "reader" in r] == [0, 4]  # the input reader's report, start and end
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
    # The corpus stays on the host (the input pipeline reads local files); the trained vocabulary is uploaded.
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "metrics.jsonl", "model", "vocab"]
    assert sorted(os.listdir(run / "vocab")) == ["tokenizer_config.json", "vocab.txt"]
    assert sorted(os.listdir(run / "model")) == ["bert_jax.json", "model_config.json", "params",
                                                 "tokenizer_config.json", "vocab.txt"]
    assert (run / "model" / "vocab.txt").read_text() == (run / "vocab" / "vocab.txt").read_text()
    model = load_pretrained(f"{MOCK}/pretrain/model")  # through the bucket: Orbax, the manifest, the vocabulary
    assert json.loads((run / "model" / "bert_jax.json").read_text())["source"]["pretrained_steps"] == 4
    assert model.tokenizer.vocab_size == len((run / "vocab" / "vocab.txt").read_text().splitlines()) <= 400
    jax.tree.map(np.testing.assert_array_equal, model.params, jax.device_get(state.params))

    # -- fine-tuning SST-2 from that model: 4 steps, evaluation every 2, test predictions --
    data = tmp_path / "sst2"
    data.mkdir()
    for split, rows in (("train", 16), ("dev", 8), ("test", 5)):
        lines = (SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines(True)
        (data / f"{split}.tsv").write_text("".join(lines[:rows + 1]), encoding="utf-8")
    ft = load_config("configs/glue.py:sst2,tiny")
    ft.init_checkpoint = f"{MOCK}/pretrain/model"
    ft.data.source = str(data)
    ft.data.max_seq_length = 32
    ft.optimizer.learning_rate = 1e-3
    ft.train.update(batch_size=8, num_steps=4, eval_every=2, log_every=1, eval_batch_size=8, tensorboard=False,
                    async_checkpoints=False)
    result = finetune.train_and_evaluate(ft, f"{MOCK}/finetune")

    run = bucket / "finetune"
    assert result["model_dir"] == f"{MOCK}/finetune/model"
    record = json.loads((run / "model" / "finetune.json").read_text())
    assert record["init_checkpoint"] == f"{MOCK}/pretrain/model" and record["step"] == result["best"]["step"]
    assert json.loads((run / "best.json").read_text())["step"] == result["best"]["step"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in logged if "eval_accuracy" in r] == [2, 4]
    assert json.loads((run / "config.json").read_text())["init_checkpoint"] == f"{MOCK}/pretrain/model"
    assert json.loads((run / "eval_results.json").read_text())["accuracy"] == result["metrics"]["accuracy"]
    assert sorted(result["predictions"]) == [f"{MOCK}/finetune/predictions/SST-2.tsv",
                                             f"{MOCK}/finetune/predictions/sst2_validation.tsv"]
    submission = (run / "predictions" / "SST-2.tsv").read_text().splitlines()
    assert submission[0] == "index\tprediction" and len(submission) == 1 + 5

    # -- predict: the model in the bucket on a local file, the output file in the bucket --
    out = predict.predict(f"{MOCK}/finetune/model", str(data / "dev.tsv"), f"{MOCK}/out/dev.tsv",
                             split="validation", batch_size=8)
    assert out["paths"] == [f"{MOCK}/out/dev.tsv"]
    written = (bucket / "out" / "dev.tsv").read_text().splitlines()
    assert len(written) == 1 + 8
    assert out["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
