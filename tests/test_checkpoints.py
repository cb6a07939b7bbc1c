"""Checkpoints: exact resume after SIGTERM, kill -9 during an async save, the keep policy, NaN never saved, and
faults: a damaged newest checkpoint set aside (the run resumes from the previous one), a config that does not fit
(an error, nothing moved), a full disk during a save (one error, earlier checkpoints intact), SIGTERM through the
CLI (exit status 143).

The runs are tiny pretraining runs on synthetic batches (deterministic per step), logged at every step.
JAX's persistent compilation cache is shared by the runs (and the subprocesses) of this module, so the train
step is compiled once.
"""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import logged
from conftest import synthetic_pretraining_config as tiny_config

from bert_jax import pretrain
from bert_jax.checkpoints import Checkpointer
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.trainer import NonFiniteLossError, Preempted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat_params(state):
    return {"/".join(str(k.key) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, compile_cache):
    workdir = str(tmp_path_factory.mktemp("straight"))
    state = pretrain.train_and_evaluate(tiny_config(), workdir)
    return logged(workdir), flat_params(state), workdir


def test_sigterm_saves_and_resume_reproduces_the_straight_run(straight_run, tmp_path):
    straight_losses, straight_params, _ = straight_run
    assert sorted(straight_losses) == list(range(1, 21))

    def sigterm_at_7(step, state):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path)
    with pytest.raises(Preempted, match="stopped at step 7 on SIGTERM: the checkpoint of step 7 is saved in") as stop:
        pretrain.train_and_evaluate(tiny_config(), workdir, hooks=[sigterm_at_7])
    stopped = stop.value.state
    assert stop.value.step == int(stopped.step) == 7
    assert stop.value.checkpoint_dir == os.path.join(workdir, "checkpoints")
    assert Checkpointer(os.path.join(workdir, "checkpoints"), save_every=5).all_steps() == [5, 7]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is uninstalled afterwards

    resumed = pretrain.train_and_evaluate(tiny_config(), workdir)
    assert int(resumed.step) == 20
    losses = logged(workdir)
    assert sorted(losses) == list(range(1, 21))
    np.testing.assert_allclose([losses[s] for s in range(1, 21)], [straight_losses[s] for s in range(1, 21)],
                               rtol=1e-6)
    params = flat_params(resumed)
    for name, value in straight_params.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


KILL_SCRIPT = """
import json, sys
import ml_collections
from bert_jax import pretrain
pretrain.train_and_evaluate(ml_collections.ConfigDict(json.loads(sys.argv[2])), sys.argv[1])
"""


def test_kill_9_during_an_async_save_resumes_from_the_last_complete_checkpoint(straight_run, tmp_path,
                                                                              compile_cache):
    straight_losses, straight_params, _ = straight_run
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=REPO)
    command = [sys.executable, "-c", KILL_SCRIPT, workdir, tiny_config(checkpoint_every=1).to_json()]
    ckpt_dir = os.path.join(workdir, "checkpoints")

    def complete_steps():
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        return sorted(int(n) for n in names if n.isdigit())

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught_mid_save = False
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        if len(complete_steps()) >= 2 and any("tmp" in n for n in names):
            process.send_signal(signal.SIGKILL)
            caught_mid_save = True
            break
        time.sleep(0.002)
    process.wait()
    assert caught_mid_save, f"the run ended before an async save could be interrupted: {process.stderr.read()[-2000:]}"
    last_complete = complete_steps()[-1]
    assert last_complete < 20

    restart = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"resuming from the checkpoint at step {last_complete}" in restart.stdout
    losses = logged(workdir)
    assert sorted(losses) == list(range(1, 21))
    np.testing.assert_allclose([losses[s] for s in range(1, 21)], [straight_losses[s] for s in range(1, 21)],
                               rtol=1e-6)


def test_nan_stops_the_run_naming_the_step_and_is_never_saved(tmp_path, compile_cache, monkeypatch):
    original = SyntheticPretrainingData.global_batch

    def poisoned(self, index):
        batch = original(self, index)
        if index == 7:  # the batch of step 8
            batch["masked_lm_weights"] = np.full_like(batch["masked_lm_weights"], np.nan)
        return batch

    monkeypatch.setattr(SyntheticPretrainingData, "global_batch", poisoned)
    workdir = str(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 8\b.*last good checkpoint: step 5"):
        pretrain.train_and_evaluate(tiny_config(log_every=5), workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=5)
    assert checkpointer.all_steps() == [5]  # the step-10 save came after the check and never happened
    state = pretrain.load_train_state(tiny_config(), workdir)
    assert all(np.isfinite(v).all() for v in flat_params(state).values())


def test_keep_last_k_plus_every_m():
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        with Checkpointer(directory, save_every=1, keep_last=2, keep_every=5) as checkpointer:
            for step in range(1, 13):
                checkpointer.save(step, {"w": np.full(3, step, np.float32)}, {"phase": 0})
                checkpointer.wait()
            assert checkpointer.all_steps() == [5, 10, 11, 12]
            one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            target = jax.ShapeDtypeStruct((3,), np.float32, sharding=one_device)
            restored, data = checkpointer.restore(10, {"w": target})
            np.testing.assert_array_equal(restored["w"], np.full(3, 10, np.float32))
            assert data == {"phase": 0}


def test_continued_pretraining_starts_from_a_model_directory(tmp_path, compile_cache):
    """train.init_checkpoint: the weights of a bert_jax model directory (what `convert` writes) are the start."""
    from bert_jax.model import BertForPreTraining, init_params
    from bert_jax.pretrained import save_pretrained
    from bert_jax.tokenizer import WordPieceTokenizer

    config = tiny_config(num_steps=20)
    bert = pretrain.model_config(pretrain.validate_config(config))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]) + "\n")
    params = jax.device_get(jax.jit(lambda rng: init_params(BertForPreTraining(bert), rng))(jax.random.PRNGKey(7)))
    save_pretrained(tmp_path / "model", bert, params, WordPieceTokenizer(str(vocab)))
    expected = {"/".join(str(k.key) for k in p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}

    seen = {}

    class Enough(Exception):
        pass

    def after_first_step(step, state):
        if step == 1:  # the learning rate of step 0 is 0: the weights are still exactly the loaded ones
            seen.update(flat_params(state))
            raise Enough

    config.train.init_checkpoint = str(tmp_path / "model")
    with pytest.raises(Enough):
        pretrain.train_and_evaluate(config, str(tmp_path / "run"), hooks=[after_first_step])
    assert set(seen) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(seen[name], value, err_msg=name)

    config.model.size = "mini"
    with pytest.raises(ValueError, match="init_checkpoint=.*hidden_size=128 differs from this config's 256"):
        pretrain.train_and_evaluate(config, str(tmp_path / "run2"))


# ----------------------------------------------------------------------------------------------------
# Faults: damaged checkpoints, configs that do not fit, full disks, SIGTERM through the CLI
# ----------------------------------------------------------------------------------------------------


def small_tree(step):
    """A small state whose values say which step wrote it (random, so that its array file is not tiny)."""
    return {"w": np.random.RandomState(step).rand(64, 32).astype(np.float32),
            "b": {"x": np.arange(3, dtype=np.int32) + step}}


def small_target(w_shape=(64, 32)):
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct(w_shape, np.float32, sharding=one_device),
            "b": {"x": jax.ShapeDtypeStruct((3,), np.int32, sharding=one_device)}}


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


def largest_file(directory):
    return max((os.path.join(directory, name) for name in files_under(directory)), key=os.path.getsize)


def truncate_largest_array_file(step_dir):
    path = largest_file(os.path.join(step_dir, "state"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def remove_largest_array_file(step_dir):
    os.remove(largest_file(os.path.join(step_dir, "state")))


def remove_data_metadata(step_dir):
    os.remove(os.path.join(step_dir, "data", "metadata"))


def corrupt_tree_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {"w": ')


@pytest.mark.parametrize("damage", [truncate_largest_array_file, remove_largest_array_file, remove_data_metadata,
                                    corrupt_tree_metadata])
def test_a_damaged_newest_checkpoint_is_reported_set_aside_and_the_previous_one_restored(tmp_path, damage):
    directory = str(tmp_path / "checkpoints")
    with Checkpointer(directory, save_every=1, async_save=False) as checkpointer:
        for step in (1, 2, 3):
            checkpointer.save(step, small_tree(step), {"phase": 0, "step": step})
    damage(os.path.join(directory, "3"))
    left = files_under(os.path.join(directory, "3"))

    with Checkpointer(directory, save_every=1) as checkpointer:
        assert checkpointer.all_steps() == [1, 2, 3]
        step, state, data = checkpointer.restore_latest(small_target())
        assert step == 2 and data == {"phase": 0, "step": 2}
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), small_tree(2))
        [report] = checkpointer.set_aside
        assert checkpointer.all_steps() == [1, 2]
    assert report.startswith(f"{directory}/3: cannot be read (")
    if damage is remove_data_metadata:
        assert "data/metadata" in report
    # Kept aside, every remaining file of it; Orbax no longer lists it.
    [aside] = os.listdir(os.path.join(directory, "damaged"))
    assert aside.startswith("3-") and report.endswith(f"moved aside to {directory}/damaged/{aside} (kept, not deleted)")
    assert files_under(os.path.join(directory, "damaged", aside)) == left
    assert sorted(os.listdir(directory)) == ["1", "2", "damaged"]
    with Checkpointer(directory, save_every=1) as checkpointer:
        assert checkpointer.all_steps() == [1, 2]


def test_a_checkpoint_that_does_not_fit_the_target_is_an_error_and_nothing_is_moved(tmp_path):
    from bert_jax.checkpoints import CheckpointMismatchError

    directory = str(tmp_path / "checkpoints")
    with Checkpointer(directory, save_every=1, async_save=False) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, small_tree(step), {"phase": 0, "step": step})
    before = files_under(directory)
    with Checkpointer(directory, save_every=1) as checkpointer:
        with pytest.raises(CheckpointMismatchError,
                           match=rf"^{directory}/2 holds other tensors than this config's: 1 tensors differ in shape, "
                                 r"e\.g\. w: \(64, 32\) in the checkpoint, \(64, 16\) in this config$"):
            checkpointer.restore_latest(small_target(w_shape=(64, 16)))
        assert checkpointer.set_aside == [] and checkpointer.all_steps() == [1, 2]
    assert files_under(directory) == before


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path):
    from bert_jax.checkpoints import DamagedCheckpointError

    directory = str(tmp_path / "checkpoints")
    with Checkpointer(directory, save_every=1, async_save=False) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, small_tree(step), {"phase": 0, "step": step})
    for step in (1, 2):
        corrupt_tree_metadata(os.path.join(directory, str(step)))
    with Checkpointer(directory, save_every=1) as checkpointer:
        with pytest.raises(DamagedCheckpointError,
                           match=rf"^{directory}: none of the checkpoints restores \(steps 1, 2"):
            checkpointer.restore_latest(small_target())
    assert os.listdir(directory) == ["damaged"] and len(os.listdir(os.path.join(directory, "damaged"))) == 2


def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside_there():
    """paths.move_dir on an object store (TensorFlow's in-memory ram:// file system): no rename there, so every
    file is copied, then the source deleted."""
    from bert_jax import paths

    source, target = "ram://move-test/checkpoints/3", "ram://move-test/checkpoints/damaged/3-x"
    for name, text in {"commit_success.txt": "ok", "state/_METADATA": "{", "state/d/abc": "data"}.items():
        paths.makedirs(os.path.dirname(f"{source}/{name}"))
        paths.write_text(f"{source}/{name}", text)
    paths.move_dir(source, target)
    assert not paths.exists(source)
    assert paths.read_text(f"{target}/state/d/abc") == "data"
    assert paths.read_text(f"{target}/commit_success.txt") == "ok"
    assert paths.listdir("ram://move-test/checkpoints") == ["damaged"]


def test_resume_after_a_truncated_newest_checkpoint_reproduces_the_straight_run(straight_run, tmp_path, capsys):
    import shutil

    straight_losses, straight_params, straight_workdir = straight_run
    workdir = str(tmp_path / "run")
    shutil.copytree(straight_workdir, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert sorted(map(int, os.listdir(checkpoints))) == [10, 15, 20]
    truncate_largest_array_file(os.path.join(checkpoints, "20"))
    with open(os.path.join(workdir, "metrics.jsonl"), "w"):
        pass  # only what the resumed run logs

    resumed = pretrain.train_and_evaluate(tiny_config(), workdir)
    out = capsys.readouterr().out
    assert f"damaged checkpoint: {checkpoints}/20: cannot be read (" in out
    assert f"resuming from the checkpoint at step 15 in {checkpoints}" in out
    assert int(resumed.step) == 20
    losses = logged(workdir)
    assert sorted(losses) == [16, 17, 18, 19, 20]
    np.testing.assert_allclose([losses[s] for s in range(16, 21)], [straight_losses[s] for s in range(16, 21)],
                               rtol=1e-6)
    params = flat_params(resumed)
    for name, value in straight_params.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    [aside] = os.listdir(os.path.join(checkpoints, "damaged"))
    assert aside.startswith("20-")
    assert sorted(os.listdir(checkpoints)) == ["10", "15", "20", "damaged"]  # 20 written again by the resumed run


def test_a_config_of_another_model_size_is_an_error_and_moves_nothing(straight_run, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(straight_run[2], workdir)
    before = files_under(workdir)
    config = tiny_config()
    config.model.size = "mini"
    with pytest.raises(ValueError, match="cannot restore onto this config's model") as error:
        pretrain.train_and_evaluate(config, workdir)
    assert len(str(error.value)) < 2000  # the differing settings or tensors, not a dump of the parameter tree
    assert files_under(workdir) == before


@contextlib.contextmanager
def full_disk(directory, size_mb, failing_step, monkeypatch):
    """`directory` on a file system that is full once about `size_mb` MB are written: a tmpfs of that size where
    the test may mount one (root), else a directory where writing a file of the checkpoint of `failing_step` fails
    with ENOSPC (Orbax's own Python writes; TensorStore's cannot be patched)."""
    os.makedirs(directory, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        from etils import epath

        path_class = type(epath.Path(str(directory)))
        write_text = path_class.write_text

        def disk_full(self, *args, **kwargs):
            if f"/{failing_step}.orbax-checkpoint-tmp" in os.fspath(self):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
            return write_text(self, *args, **kwargs)

        monkeypatch.setattr(path_class, "write_text", disk_full)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=True)


def test_an_asynchronous_save_that_fails_is_raised_by_the_next_check(tmp_path, monkeypatch):
    """Checkpoints of ~0.8 MB (random values do not compress) into 2 MB: the third save fails in the background;
    `check` (called by the trainer after every step) raises it without waiting for a save still writing, once."""
    from bert_jax.checkpoints import CheckpointSaveError

    directory = str(tmp_path / "checkpoints")
    with full_disk(directory, 2, 3, monkeypatch):
        checkpointer = Checkpointer(directory, save_every=1, async_save=True)
        try:
            for step in (1, 2, 3):
                checkpointer.save(step, {"w": np.random.RandomState(step).rand(256, 1024).astype(np.float32)},
                                  {"phase": 0, "step": step})
            with pytest.raises(CheckpointSaveError) as error:
                deadline = time.time() + 120
                while time.time() < deadline:
                    checkpointer.check()
                    time.sleep(0.01)
            assert str(error.value) == (f"{directory}: saving the checkpoint of step 3 failed: No space left on "
                                        f"device (ENOSPC); the run is stopped, the checkpoints of steps 1, 2 are "
                                        f"intact")
            checkpointer.check()  # raised once; the next save would start afresh
            assert checkpointer.all_steps() == [1, 2]
        finally:
            checkpointer.close()
        with Checkpointer(directory, save_every=1) as again:
            one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            restored, _ = again.restore(2, {"w": jax.ShapeDtypeStruct((256, 1024), np.float32, sharding=one_device)})
            np.testing.assert_array_equal(restored["w"], np.random.RandomState(2).rand(256, 1024).astype(np.float32))


def test_a_full_disk_stops_the_run_at_once_with_one_error_and_earlier_checkpoints_restore(
        tmp_path, compile_cache, monkeypatch, caplog):
    """Checkpoints of 5 MB each into 12 MB: those of steps 5 and 10 fit, the save of step 15 fails. The run stops
    there, with one error naming the directory and the OS error; Orbax's own tracebacks of it are not logged."""
    import logging as py_logging

    from bert_jax.checkpoints import CheckpointSaveError

    workdir = str(tmp_path / "run")
    checkpoints = os.path.join(workdir, "checkpoints")
    with full_disk(checkpoints, 12, 15, monkeypatch):
        with pytest.raises(CheckpointSaveError) as error:
            pretrain.train_and_evaluate(tiny_config(async_checkpoints=False), workdir)
        assert str(error.value) == (f"{checkpoints}: saving the checkpoint of step 15 failed: No space left on device "
                                    f"(ENOSPC); the run is stopped, the checkpoints of steps 5, 10 are intact")
        assert error.value.errno == errno.ENOSPC
        assert max(logged(workdir)) == 15  # no step trained past the failed save
        assert not [r for r in caplog.records if r.levelno >= py_logging.ERROR]

        assert Checkpointer(checkpoints, save_every=5).all_steps() == [5, 10]
        state = pretrain.load_train_state(tiny_config(), workdir, step=10)
        assert int(state.step) == 10 and all(np.isfinite(v).all() for v in flat_params(state).values())


# The tiny_config() run, through the command line (the same programs: the compilation cache serves them).
CLI_FLAGS = ["--config=configs/pretrain.py:base,tiny", "--config.model.dtype=float32", "--config.model.vocab_size=128",
             "--config.model.max_position_embeddings=64", "--config.data.source=synthetic",
             "--config.phases=({'fraction': 1.0, 'seq_length': 32, 'batch_size': 8, 'max_predictions': 5},)",
             "--config.optimizer.learning_rate=1e-3", "--config.optimizer.warmup_steps=4",
             "--config.train.num_steps=20", "--config.train.micro_batches=2", "--config.train.log_every=1",
             "--config.train.eval_every=0", "--config.train.checkpoint_every=5", "--config.train.keep_every=0",
             "--config.train.tensorboard=False"]


def test_sigterm_through_the_cli_saves_and_exits_with_status_143(tmp_path, compile_cache):
    """143 = 128 + SIGTERM: "saved, requeue me" for schedulers (docs/launching.md); 0 would read as finished."""
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=REPO)
    process = subprocess.Popen([sys.executable, "-m", "bert_jax", "pretrain", f"--workdir={workdir}", *CLI_FLAGS],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while process.poll() is None and not (os.path.exists(metrics) and logged(workdir)):
        assert time.time() < deadline, "the run did not log a step"
        time.sleep(0.005)
    # Paused while the signal is sent, so that it lands mid-run however fast the steps are.
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    steps = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=5).all_steps()
    stopped = max(logged(workdir))
    assert stopped < 20 and steps[-1] == stopped
    assert (f"pretrain: stopped at step {stopped} on SIGTERM: the checkpoint of step {stopped} is saved in "
            f"{workdir}/checkpoints; run again with the same workdir to resume; exit status 143") in out
    assert "Traceback" not in err


FINETUNE_PREEMPTED = """
import sys
from bert_jax import __main__, finetune, trainer

def preempted(config, workdir, **kwargs):
    raise trainer.Preempted(12, None, workdir + "/checkpoints")

finetune.train_and_evaluate = preempted
sys.exit(__main__.main(["finetune", "--config=configs/classify.py", "--workdir=" + sys.argv[1]]))
"""


def test_finetune_cli_exits_with_status_143_when_preempted(tmp_path):
    """The library's Preempted (what finetune.train_and_evaluate raises after SIGTERM, see
    tests/test_finetune.py) becomes exit status 143 in the finetune command too."""
    run = subprocess.run([sys.executable, "-c", FINETUNE_PREEMPTED, str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 143, run.stderr[-3000:]
    assert (f"finetune: stopped at step 12 on SIGTERM: the checkpoint of step 12 is saved in {tmp_path}/checkpoints;"
            f" run again with the same workdir to resume; exit status 143") in run.stdout
