"""One run per workdir (bert_jax/workdir.py): a second run is refused at once and the first goes on; a lock left by a
dead process is taken over with a warning; a restart the checkpoints cannot take is refused in a few lines and
changes nothing in the workdir; a harmless change resumes."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

import ml_collections
import pytest
from conftest import load_config

from bert_jax import paths, pretrain
from bert_jax import workdir as workdirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's backend optimisation level 0 halves compile time; numerics are not compared here.
ENV = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_backend_optimization_level=0")
SENTENCES = ["the cat sat on the mat .", "a dog was in the house .", "paris is the capital of france .",
             "the man went to the city .", "she played music with the actors .", "it was a long and dull film ."]


def tiny_config(text_file, vocab_file, **overrides) -> dict:
    """A tiny pretraining run (configs/pretrain.py:base,tiny) on a few sentences: 2 steps, checkpoint and model at
    the end (dotted overrides)."""
    config = load_config("configs/pretrain.py:base,tiny")
    config.model.dtype = "float32"
    config.data.update(dict(input_files=str(text_file), vocab_file=str(vocab_file), dupe_factor=2))
    config.phases = (dict(fraction=1.0, seq_length=32, batch_size=4, max_predictions=4),)
    config.optimizer.warmup_steps = 1
    config.train.update(dict(num_steps=2, checkpoint_every=2, eval_every=0, tensorboard=False, async_checkpoints=False))
    config = config.to_dict()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_vocab_file):
    directory = tmp_path_factory.mktemp("corpus")
    text = directory / "text.txt"
    documents = ["\n".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))]
    text.write_text("\n\n".join(documents * 3) + "\n", encoding="utf-8")
    vocab = directory / "vocab.txt"  # a copy a test may change (and restores)
    shutil.copy(small_vocab_file, vocab)
    return text, vocab


def snapshot(directory) -> dict:
    """{relative path: bytes} of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def lock_record(host, pid, heartbeat_age=0.0) -> str:
    now = time.time()
    return workdirs.Holder(host=host, pid=pid, started=now - 3600, heartbeat=now - heartbeat_age,
                           token=uuid.uuid4().hex, command="python -m bert_jax pretrain").to_json()


# ----------------------------------------------------------------------------------------------------
# Two runs, one workdir
# ----------------------------------------------------------------------------------------------------

FIRST_RUN = """
import json, os, sys, time
import ml_collections
from bert_jax import pretrain
config, workdir, signal_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

def wait_at_step_1(step, state):  # holds the run (and its lock) until the test has run the second one
    if step == 1:
        open(os.path.join(signal_dir, "at_step_1"), "w").close()
        while not os.path.exists(os.path.join(signal_dir, "go")):
            time.sleep(0.1)

state = pretrain.train_and_evaluate(ml_collections.ConfigDict(config), workdir, hooks=[wait_at_step_1])
print("first run: step", int(state.step))
"""


def test_a_second_run_is_refused_at_once_naming_the_first_which_completes(corpus, tmp_path):
    workdir, signals = tmp_path / "run", tmp_path / "signals"
    signals.mkdir()
    config = tiny_config(*corpus, **{"train.num_steps": 3})
    first = subprocess.Popen([sys.executable, "-c", FIRST_RUN, json.dumps(config), str(workdir), str(signals)],
                             cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (signals / "at_step_1").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run did not reach step 1"
            time.sleep(0.2)
        before = snapshot(workdir)
        assert json.loads(before[".lock"])["pid"] == first.pid

        # The second run would wait forever for a first run that waits for it: it must be refused at once.
        second = subprocess.run([sys.executable, "-m", "bert_jax", "pretrain", f"--workdir={workdir}",
                                 "--config.data.source=synthetic", "--config.model.vocab_size=64"],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
        assert second.returncode == 1, second.stderr[-3000:]
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith(f"pretrain: error: workdir {workdir} is in use by another run: pid {first.pid} "
                                  f"on host {socket.gethostname()}, running since "), message
        assert f"--workdir={workdir}-2" in message  # the command to run it elsewhere
        assert snapshot(workdir) == before  # the refused run wrote nothing, not even into the lock file
    finally:
        (signals / "go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert "first run: step 3" in out
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if "loss" in line]
    assert steps == [1, 2, 3]  # every step logged once: by the first run alone
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]
    assert not (workdir / ".lock").exists()  # released at the end


# ----------------------------------------------------------------------------------------------------
# Locks left behind
# ----------------------------------------------------------------------------------------------------


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(lock_record(socket.gethostname(), pid))
    held = workdirs.lock(str(tmp_path))
    try:
        warning = capsys.readouterr().err
        assert f"taking over the lock left by pid {pid} on host {socket.gethostname()}" in warning
        assert "that process is no longer running" in warning
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        # While it is held, another acquirer (a second file description, as another process has) is refused.
        with pytest.raises(workdirs.WorkdirError, match=f"in use by another run: pid {os.getpid()} on host"):
            workdirs.WorkdirLock(str(tmp_path)).acquire()
    finally:
        workdirs.release(str(tmp_path))
    assert held.holder.pid == os.getpid() and not (tmp_path / ".lock").exists()


def test_a_lock_left_by_another_host_needs_a_stale_heartbeat_or_the_override(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(workdirs.TAKE_OVER_ENV, raising=False)
    (tmp_path / ".lock").write_text(lock_record("elsewhere", 4242, heartbeat_age=10))
    with pytest.raises(workdirs.WorkdirError, match=r"pid 4242 on host elsewhere.*last heartbeat 10 s ago.*"
                                                    + workdirs.TAKE_OVER_ENV):
        workdirs.WorkdirLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == 4242  # left as it was
    monkeypatch.setenv(workdirs.TAKE_OVER_ENV, "1")
    workdirs.WorkdirLock(str(tmp_path)).acquire().release()
    assert f"{workdirs.TAKE_OVER_ENV} is set" in capsys.readouterr().err
    monkeypatch.delenv(workdirs.TAKE_OVER_ENV)
    (tmp_path / ".lock").write_text(lock_record("elsewhere", 4242, heartbeat_age=workdirs.STALE_SECONDS + 5))
    workdirs.WorkdirLock(str(tmp_path)).acquire().release()
    assert "its heartbeat is older than" in capsys.readouterr().err


def test_a_bucket_workdir_is_locked_by_the_lock_object(capsys):
    """No flock in a bucket: the record is the lock (ram:// is tf.io.gfile's in-memory file system)."""
    url = f"ram://test-{uuid.uuid4().hex}/run"
    paths.makedirs(url)
    first = workdirs.WorkdirLock(url).acquire()
    try:
        with pytest.raises(workdirs.WorkdirError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            workdirs.WorkdirLock(url).acquire()
    finally:
        first.release()
    assert not paths.exists(f"{url}/.lock")
    pid = dead_pid()
    paths.write_text(f"{url}/.lock", lock_record(socket.gethostname(), pid))
    workdirs.WorkdirLock(url).acquire().release()
    assert f"taking over the lock left by pid {pid}" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Restarts: refused without a change, or resumed
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_once(corpus, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    pretrain.train_and_evaluate(ml_collections.ConfigDict(tiny_config(*corpus)), workdir)
    return workdir


@pytest.fixture
def trained(trained_once, corpus, tmp_path):
    """A workdir after a finished 2-step run (config.json, checkpoints/2, model/): a copy for this test."""
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_once, workdir)
    return workdir, corpus


def kept_files(workdir) -> dict:
    files = snapshot(workdir)
    assert "config.json" in files and any(k.startswith("checkpoints/2/") for k in files) and "model/bert_jax.json" \
        in files, sorted(files)
    return {k: v for k, v in files.items() if k == "config.json" or k.startswith(("checkpoints/", "model/"))}


def test_a_restart_with_another_model_size_is_refused_in_a_few_lines_and_changes_nothing(trained):
    workdir, corpus = trained
    before = kept_files(workdir)
    with pytest.raises(ValueError) as error:
        pretrain.train_and_evaluate(ml_collections.ConfigDict(tiny_config(*corpus, **{"model.size": "mini"})), workdir)
    message = str(error.value)
    assert message.startswith(f"workdir {workdir}: cannot restore onto this config's model and optimizer: its "
                              f"checkpoints (latest step 2) were written with other settings"), message
    assert "\n  model.size: 'tiny' -> 'mini'\n" in message
    assert len(message.splitlines()) <= 4 and len(message) < 1000, message
    assert kept_files(workdir) == before and not os.path.exists(os.path.join(workdir, ".lock"))


def test_a_checkpoint_of_other_shapes_is_refused_naming_the_tensors(trained):
    """A change the config cannot show (the vocabulary file grew in place): the first differing tensors, a count."""
    workdir, (text, vocab) = trained
    before = kept_files(workdir)
    original = vocab.read_text(encoding="utf-8")
    vocab.write_text(original + "".join(f"extra{i}\n" for i in range(7)), encoding="utf-8")
    try:
        with pytest.raises(ValueError) as error:
            pretrain.train_and_evaluate(ml_collections.ConfigDict(tiny_config(text, vocab)), workdir)
    finally:
        vocab.write_text(original, encoding="utf-8")
    message = str(error.value)
    words = len(original.split()) + 7
    # The word embeddings and the output bias, and their two Adam moments each.
    assert re.match(rf"{re.escape(workdir)}/checkpoints/2: cannot restore onto this config's model and optimizer: "
                    r"6 of \d+ tensors differ:\n", message), message
    assert (f"  params/bert/embeddings/word_embeddings: checkpoint ({words - 7}, 128), this config ({words}, 128)"
            in message)
    assert len(message.splitlines()) <= 8 and len(message) < 1500, message
    assert kept_files(workdir) == before


def test_a_harmless_change_resumes_and_is_reported(trained, capsys):
    workdir, corpus = trained
    capsys.readouterr()
    config = tiny_config(*corpus, **{"train.num_steps": 4, "train.log_every": 2})
    state = pretrain.train_and_evaluate(ml_collections.ConfigDict(config), workdir)
    out = capsys.readouterr().out
    header = f"resuming {workdir} with settings changed from its config.json:\n"
    assert header in out, out
    changed = out.split(header)[1].split("\n")
    assert changed[:2] == ["  train.log_every: 1 -> 2", "  train.num_steps: 2 -> 4"], out
    assert not changed[2].startswith("  ")  # nothing else
    assert "resuming from the checkpoint at step 2" in out and int(state.step) == 4
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 4


def test_config_json_holds_absolute_paths_so_another_directory_finds_the_files(tmp_path, monkeypatch):
    """finetune reads a pretraining workdir's config.json from wherever it runs: a relative vocab_file or input
    path written as given would name another file there."""
    from bert_jax import pretrain
    from bert_jax import workdir as workdirs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    config = pretrain.default_config()
    config.data.vocab_file = "vocab/vocab.txt"
    config.data.input_files = "corpus/a.txt, corpus/b*.txt"
    workdirs.write_config(str(tmp_path / "run"), config, path_keys=("data.vocab_file", "data.input_files",
                                                                   "data.eval_input_files"))
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["data"]["vocab_file"] == str(tmp_path / "vocab" / "vocab.txt")
    assert written["data"]["input_files"] == f"{tmp_path}/corpus/a.txt,{tmp_path}/corpus/b*.txt"
    assert written["data"]["eval_input_files"] == ""
    assert config.data.vocab_file == "vocab/vocab.txt"  # the run's own config is unchanged
