"""`python -m bert_jax pretrain` end to end on real text, the loss against NumPy, the FLOPs formula against XLA's
own count, the configs, and bad configs failing before anything compiles."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bert_jax import pretrain, sharding
from bert_jax.data.features import FEATURES
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.model import BertConfig, BertForPreTraining, abstract_params
from bert_jax.train_metrics import flops_per_sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKI = os.path.join(REPO, "..", "shared", "data", "wikipedia", "wiki_00")
BERT_VOCAB = os.path.join(REPO, "..", "shared", "data", "vocab", "bert-base-uncased-vocab.txt")

# ----------------------------------------------------------------------------------------------------
# The command, on the built-in corpus (real text: CPython's documentation)
# ----------------------------------------------------------------------------------------------------


def read_events(directory):
    import tensorflow as tf

    tags = {}
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_pretrain_command_on_the_builtin_corpus(tmp_path):
    workdir = tmp_path / "run"
    phases = ("({'fraction': 0.8, 'seq_length': 64, 'batch_size': 16, 'max_predictions': 10},"
              " {'fraction': 0.2, 'seq_length': 128, 'batch_size': 8, 'max_predictions': 20})")
    command = [sys.executable, "-m", "bert_jax", "pretrain", f"--workdir={workdir}",
               "--config.train.num_steps=50", "--config.optimizer.warmup_steps=5", "--config.train.log_every=5",
               "--config.train.checkpoint_every=25", "--config.train.eval_every=50", "--config.train.eval_batches=2",
               "--config.data.builtin_max_documents=150", "--config.data.builtin_vocab_size=2000",
               f"--config.phases={phases}"]
    # XLA's backend optimisation level 0 halves compile time (three programs here); numerics are not compared.
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_backend_optimization_level=0")
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == list(range(5, 51, 5))
    losses = [r["loss"] for r in train]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses  # falling from ~ln(2000) + ln(2) = 8.3
    assert [r["step"] for r in evals] == [50] and all(np.isfinite(r["eval_loss"]) for r in evals)
    for key in ("mlm_accuracy", "nsp_accuracy", "learning_rate", "grad_norm", "seq_per_sec", "tokens_per_sec", "mfu"):
        assert key in train[-1], key
    assert train[-1]["tokens_per_sec"] == pytest.approx(train[-1]["seq_per_sec"] * 128)  # the second phase

    assert sorted(os.listdir(workdir / "checkpoints")) == ["25", "50"]
    tags = read_events(workdir / "tensorboard")
    assert tags["train/loss"] == list(range(5, 51, 5)) and tags["eval/loss"] == [50]
    assert "fill_mask" in tags

    # The exported model directory works with the inference code, and the run ends with fill-mask examples.
    assert "fill-mask with the model in" in run.stdout and "->" in run.stdout
    from bert_jax.pretrained import load_pretrained

    model = load_pretrained(workdir / "model")
    assert model.config.vocab_size == model.tokenizer.vocab_size <= 2000


# ----------------------------------------------------------------------------------------------------
# Loss and FLOPs
# ----------------------------------------------------------------------------------------------------


def test_loss_is_the_spec_formula():
    config = BertConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        max_position_embeddings=16)
    objective = pretrain.PretrainingObjective(config)
    params = jax.jit(lambda rng: nn.meta.unbox(objective.init_params(rng)))(jax.random.PRNGKey(0))
    batch = next(SyntheticPretrainingData(6, 16, 3, 50, seed=1))
    batch["masked_lm_weights"][:, -1] = 0.0  # padding predictions must not count

    @jax.jit
    def run(params, batch):
        out = objective.model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                                    batch["masked_lm_positions"])
        loss, metrics = objective.loss(params, batch, jax.random.PRNGKey(0), objective.normalizers(batch), False)
        return out, loss, metrics

    out, loss, metrics = jax.device_get(run(params, {k: jnp.asarray(v) for k, v in batch.items()}))

    def log_softmax(x):
        x = x.astype(np.float64)
        return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

    w = batch["masked_lm_weights"].astype(np.float64)
    ce = -np.take_along_axis(log_softmax(out["mlm_logits"]), batch["masked_lm_ids"][..., None], -1)[..., 0]
    mlm = np.sum(w * ce) / (np.sum(w) + 1e-5)
    nsp = np.mean(-np.take_along_axis(log_softmax(out["nsp_logits"]), batch["next_sentence_labels"][:, None], -1))
    assert float(metrics["mlm_loss"]) == pytest.approx(mlm, rel=1e-5)
    assert float(metrics["nsp_loss"]) == pytest.approx(nsp, rel=1e-5)
    assert float(loss) == pytest.approx(mlm + nsp, rel=1e-5)
    correct = np.argmax(out["mlm_logits"], -1) == batch["masked_lm_ids"]
    assert float(metrics["mlm_accuracy"]) == pytest.approx(np.sum(w * correct) / np.sum(w), rel=1e-6)


def test_flops_formula_agrees_with_xla_cost_analysis():
    """XLA counts every op; the formula counts the matmuls. They agree within a few percent, XLA above."""
    config = BertConfig.from_size("mini", vocab_size=1000, attention_impl="explicit")
    model = BertForPreTraining(config)
    params = nn.meta.unbox(abstract_params(model))
    batch, length, masked = 4, 64, 10
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    positions = jax.ShapeDtypeStruct((batch, masked), jnp.int32)

    def forward(p, i, q):
        return model.apply({"params": p}, i, None, None, q)["mlm_logits"].sum()

    train_flops = jax.jit(jax.grad(forward)).lower(params, ids, positions).cost_analysis()["flops"]
    forward_flops = jax.jit(forward).lower(params, ids, positions).cost_analysis()["flops"]
    ours = flops_per_sequence(config, length, masked) * batch
    assert ours / 3 <= forward_flops <= 1.1 * ours / 3
    assert ours <= train_flops <= 1.1 * ours


# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------


def load_config_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_configs", os.path.join(REPO, "configs", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_named_config_validates_and_the_default_is_the_builtin_run():
    configs = load_config_module()
    default = pretrain.validate_config(configs.get_config())
    assert default.data.source == "builtin" and default.model.size == "tiny" and default.fill_mask_examples
    for size in ("tiny", "mini", "small", "medium", "base", "large"):
        config = configs.get_config(size)
        config.data.input_files, config.data.vocab_file = WIKI, BERT_VOCAB
        config = pretrain.validate_config(config)
        assert config.model.size == size and config.model.dtype == "bfloat16"
        assert pretrain.phase_end_steps(config) == [900_000, 1_000_000]  # 90% at 128, then 512
        assert [p["max_predictions"] for p in config.phases] == [20, 80]
    with pytest.raises(ValueError, match="unknown argument 'huge'"):
        configs.get_config("huge")


def test_model_config_is_built_from_the_config_and_the_tokenizer():
    from bert_jax.tokenizer import load_tokenizer

    config = pretrain.default_config()
    config.model.size = "small"
    config.model.remat_policy = "dots"
    config.model.scan_layers = True
    config.data.input_files, config.data.vocab_file = WIKI, BERT_VOCAB
    bert = pretrain.model_config(pretrain.validate_config(config), load_tokenizer(BERT_VOCAB))
    assert (bert.vocab_size, bert.hidden_size, bert.num_layers, bert.num_heads) == (30522, 512, 4, 8)
    assert bert.remat_policy == "dots" and bert.scan_layers


def bad_config(change):
    config = pretrain.default_config()
    config.model.size = "tiny"
    config.data.input_files, config.data.vocab_file = WIKI, BERT_VOCAB
    config.phases = (dict(fraction=1.0, seq_length=64, batch_size=8, max_predictions=10),)
    config.train.num_steps = 10
    config.optimizer.warmup_steps = 1
    change(config)
    return config


BAD_CONFIGS = {
    "unknown key": (lambda c: c.train.__setattr__("num_step", 5), r"unknown config key 'train\.num_step' \(did you "
                                                                  r"mean 'train\.num_steps'\?\)"),
    "vocab vs tokenizer": (lambda c: c.model.__setattr__("vocab_size", 1000),
                           r"config\.model\.vocab_size=1000: smaller than the tokenizer's vocabulary \(30522"),
    "length vs positions": (lambda c: c.__setattr__("phases", (dict(fraction=1.0, seq_length=1024, batch_size=8,
                                                                    max_predictions=10),)),
                            r"config\.phases\[0\]\.seq_length=1024: beyond config\.model\.max_position_embeddings"),
    "batch vs micro-batches": (lambda c: c.train.__setattr__("micro_batches", 3),
                               r"config\.phases\[0\]\.batch_size=8: not divisible by config\.train\.micro_batches=3"),
    "model field": (lambda c: c.model.__setattr__("dtype", "float8"), r"config\.model: BertConfig\.dtype='float8'"),
    "optimizer": (lambda c: c.optimizer.__setattr__("name", "sgd"), r"config\.optimizer\.name='sgd'"),
    "missing vocabulary": (lambda c: c.data.__setattr__("vocab_file", ""), r"config\.data\.vocab_file=''"),
    "warmup": (lambda c: c.optimizer.__setattr__("warmup_steps", 20), r"config\.optimizer\.warmup_steps=20: exceeds"),
    "fractions": (lambda c: c.__setattr__("phases", (dict(fraction=0.5, seq_length=64, batch_size=8,
                                                          max_predictions=10),)), r"fractions sum to 0\.5"),
    "missing input": (lambda c: c.data.__setattr__("input_files", str(REPO) + "/no/such/dir"), r"no/such/dir"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_a_clear_error_before_anything_compiles(name, tmp_path, monkeypatch):
    change, message = BAD_CONFIGS[name]

    def no_compiling(*args, **kwargs):
        raise AssertionError("jax.jit was called before the config error")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        pretrain.train_and_evaluate(bad_config(change), str(tmp_path))


def test_unwritable_workdir_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("compiled")))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=f"workdir {blocker}/run: cannot be written"):
        pretrain.train_and_evaluate(bad_config(lambda c: None), str(blocker / "run"))


def test_global_batch_must_divide_over_the_data_parallel_devices():
    config = pretrain.validate_config(bad_config(lambda c: c.train.__setattr__("micro_batches", 2)))
    mesh = types.SimpleNamespace(shape={"data": 4, "fsdp": 2, "tensor": 1})  # 8-way data parallel
    with pytest.raises(ValueError, match=r"config\.phases\[0\]\.batch_size=8: .* 4 rows must divide over the 8 "
                                         r"data-parallel devices"):
        pretrain.check_against_mesh(config, mesh)
    pretrain.check_against_mesh(config, types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 2}))


def test_cli_rejects_an_unknown_override_before_running(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bert_jax", "pretrain", f"--workdir={tmp_path}",
                          "--config.train.num_stepz=3"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode != 0 and "num_stepz" in run.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


# ----------------------------------------------------------------------------------------------------
# Synthetic input and phases
# ----------------------------------------------------------------------------------------------------


def test_phase_steps_split_num_steps_by_fraction():
    config = ml_collections.ConfigDict({"phases": (dict(fraction=0.9), dict(fraction=0.1)),
                                        "train": {"num_steps": 1000}})
    assert pretrain.phase_end_steps(config) == [900, 1000]


def test_synthetic_batches_follow_the_feature_layout_and_split_by_process_rows():
    data = SyntheticPretrainingData(8, 32, 5, 100, seed=4)
    batch = data.global_batch(0)
    assert set(batch) == set(FEATURES)
    assert batch["input_ids"].shape == (8, 32) and batch["masked_lm_ids"].shape == (8, 5)
    for row in range(8):
        real = batch["input_mask"][row].sum()
        ids = batch["input_ids"][row]
        assert ids[0] == data.CLS and (ids[:real] == data.SEP).sum() == 2 and not ids[real:].any()
        count = int(batch["masked_lm_weights"][row].sum())
        positions = batch["masked_lm_positions"][row, :count]
        assert count == min(5, max(1, round(real * 0.15))) and (np.diff(positions) > 0).all()
        assert not np.isin(batch["masked_lm_ids"][row, :count], [data.CLS, data.SEP]).any()  # never [CLS]/[SEP]
    rows = SyntheticPretrainingData(8, 32, 5, 100, seed=4, rows=slice(4, 8))
    np.testing.assert_array_equal(next(rows)["input_ids"], batch["input_ids"][4:])
    rows.set_state({"index": 0})
    assert rows.get_state() == {"index": 0}
    np.testing.assert_array_equal(next(rows)["input_ids"], batch["input_ids"][4:])
    mesh = sharding.make_mesh({"data": -1})
    assert sharding.process_rows(mesh, 8) == slice(0, 8)
