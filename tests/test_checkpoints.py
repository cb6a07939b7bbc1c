"""Checkpoints: exact resume after SIGTERM, kill -9 during an async save, the keep policy, and NaN never saved.

The runs are tiny pretraining runs on synthetic batches (deterministic per step), logged at every step.
JAX's persistent compilation cache is shared by the runs (and the subprocesses) of this module, so the train
step is compiled once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax._src import compilation_cache

from bert_jax import pretrain
from bert_jax.checkpoints import Checkpointer
from bert_jax.trainer import NonFiniteLossError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
    c = pretrain.default_config()
    c.model.size = "tiny"
    c.model.vocab_size = 128
    c.model.max_position_embeddings = 64
    c.data.source = "synthetic"
    c.phases = (dict(fraction=1.0, seq_length=32, batch_size=8, max_predictions=5),)
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 4
    # The same run as tests/test_sharding.py (so one compilation serves both through the persistent cache).
    c.train.update(dict(num_steps=20, micro_batches=2, log_every=1, eval_every=0, checkpoint_every=5, keep_every=0,
                        tensorboard=False))
    c.train.update(train)
    return c


def logged(workdir, key="loss"):
    """{step: value} from metrics.jsonl; a step logged twice (before a crash and after) keeps the last."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                out[record["step"]] = record[key]
    return out


def flat_params(state):
    return {"/".join(str(k.key) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    path = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs",
                                                 "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield path
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, compile_cache):
    workdir = str(tmp_path_factory.mktemp("straight"))
    state = pretrain.train_and_evaluate(tiny_config(), workdir)
    return logged(workdir), flat_params(state)


def test_sigterm_saves_and_resume_reproduces_the_straight_run(straight_run, tmp_path):
    straight_losses, straight_params = straight_run
    assert sorted(straight_losses) == list(range(1, 21))

    def sigterm_at_7(step, state):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path)
    stopped = pretrain.train_and_evaluate(tiny_config(), workdir, hooks=[sigterm_at_7])
    assert int(stopped.step) == 7
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
    straight_losses, straight_params = straight_run
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
    original = pretrain.SyntheticPretrainingData.global_batch

    def poisoned(self, index):
        batch = original(self, index)
        if index == 7:  # the batch of step 8
            batch["masked_lm_weights"] = np.full_like(batch["masked_lm_weights"], np.nan)
        return batch

    monkeypatch.setattr(pretrain.SyntheticPretrainingData, "global_batch", poisoned)
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
