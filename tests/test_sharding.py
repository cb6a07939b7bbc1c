"""Meshes and logical-axis rules; the same training on 1 device, on 8 (fake CPU) devices as data 2 x fsdp 2 x
tensor 2, and on two processes; checkpoints moving between 8 devices and 1.

The reference is a 1-device run in this process (20 steps, synthetic batches, dropout on, gradient accumulation
over 2 micro-batches). The 8-device run needs XLA_FLAGS set before JAX starts, so it runs in a subprocess, as do
the two processes that train together over gloo.
"""

import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import synthetic_pretraining_config
from jax.sharding import PartitionSpec as P

from bert_jax import pretrain, sharding
from bert_jax.model import BertConfig, BertForPreTraining, abstract_params, dummy_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**mesh):
    c = synthetic_pretraining_config()  # the same run as tests/test_checkpoints.py's
    c.mesh.update(mesh or dict(data=-1, fsdp=1, tensor=1))
    return c


def logged_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def flat(params):
    return {"/".join(str(k.key) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


def subprocess_env(compile_cache, **extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compile_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
    return env


# ----------------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------------


def test_mesh_shape_fills_the_minus_one_and_rejects_what_does_not_fit():
    assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 16) == (2, 4, 2)
    with pytest.raises(ValueError, match="needs 8 devices, but 4"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 4)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 4)
    with pytest.raises(ValueError, match="unknown axes \\['model'\\]"):
        sharding.mesh_shape({"model": 2}, 2)
    mesh = sharding.make_mesh({"data": -1})
    assert mesh.axis_names == sharding.MESH_AXES
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logical_rules_give_the_intended_parameter_layout(scan_layers):
    config = BertConfig.from_size("tiny", vocab_size=128, scan_layers=scan_layers)
    mesh = sharding.make_mesh({"data": -1})
    shardings = sharding.logical_shardings(abstract_params(BertForPreTraining(config)), mesh)
    specs = {"/".join(str(k.key) for k in p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    layer = "bert/encoder/layer" if scan_layers else "bert/encoder/layer_0"
    stack = (None,) if scan_layers else ()  # the scanned `layers` axis stays whole
    expected = {
        "bert/embeddings/word_embeddings": P("tensor", "fsdp"),
        "bert/embeddings/position_embeddings": P(None, "fsdp"),
        f"{layer}/attention/self/query/kernel": P(*stack, "fsdp", "tensor"),
        f"{layer}/attention/self/query/bias": P(*stack, "tensor"),
        f"{layer}/attention/output/dense/kernel": P(*stack, "tensor", "fsdp"),
        f"{layer}/intermediate/dense/kernel": P(*stack, "fsdp", "tensor"),
        f"{layer}/output/dense/kernel": P(*stack, "tensor", "fsdp"),
        f"{layer}/output/LayerNorm/scale": P(*stack, "fsdp"),
        "cls/predictions/output_bias": P("tensor"),
        "cls/seq_relationship/output_weights": P(None, "fsdp"),
    }
    for name, spec in expected.items():
        assert specs[name] == spec, name


def test_activation_constraints_reach_the_compiled_program():
    """nn.with_logical_constraint under the Auto-typed mesh emits sharding constraints (not a silent no-op)."""
    config = BertConfig.from_size("tiny", vocab_size=128, num_layers=1)
    model = BertForPreTraining(config)
    params = nn.meta.unbox(abstract_params(model))
    mesh = sharding.make_mesh({"data": -1})
    forward = jax.jit(lambda p, x: model.apply({"params": p}, **x)["mlm_logits"])
    lower = sharding.with_mesh(lambda: forward.lower(params, dummy_inputs(4, 8)).as_text(), mesh)
    assert lower().count("sharding_constraint") >= 2  # embeddings output + each layer's output
    assert forward.lower(params, dummy_inputs(4, 8)).as_text().count("sharding_constraint") == 0  # no mesh


def test_global_batch_and_process_rows_on_one_process():
    mesh = sharding.make_mesh({"data": -1})
    assert sharding.process_rows(mesh, 8) == slice(0, 8)
    batch = sharding.global_batch({"input_ids": np.arange(16).reshape(8, 2)}, mesh, 8)
    assert batch["input_ids"].shape == (8, 2)
    assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))


# ----------------------------------------------------------------------------------------------------
# 1 device vs 8 devices vs 2 processes, and checkpoints across them
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, compile_cache):
    workdir = str(tmp_path_factory.mktemp("one_device"))
    state = pretrain.train_and_evaluate(tiny_config(), workdir)
    return workdir, logged_losses(workdir), flat(state.params)


EIGHT_DEVICES = """
import json, sys
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from bert_jax import pretrain
sys.path.insert(0, sys.argv[4])
from test_sharding import tiny_config, flat
one_device_workdir, workdir, out = sys.argv[1:4]
assert jax.device_count() == 8
mesh_axes = dict(data=2, fsdp=2, tensor=2)
state = pretrain.train_and_evaluate(tiny_config(**mesh_axes), workdir)
embeddings = state.params["bert"]["embeddings"]["word_embeddings"]
ffn = state.params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
layout = {"embeddings": [str(embeddings.sharding.spec), list(embeddings.addressable_shards[0].data.shape)],
          "ffn": [str(ffn.sharding.spec), list(ffn.addressable_shards[0].data.shape)]}
np.savez(out + "/eight_device_params.npz", **flat(state.params))
restored = pretrain.load_train_state(tiny_config(**mesh_axes), one_device_workdir)
np.savez(out + "/one_device_restored_on_eight.npz", **flat(restored.params))
json.dump({"layout": layout, "step": int(restored.step),
           "restored_spec": str(restored.params["bert"]["embeddings"]["word_embeddings"].sharding.spec)},
          open(out + "/result.json", "w"))
"""


def test_eight_devices_match_one_device_and_checkpoints_move_between_them(one_device_run, tmp_path, compile_cache):
    one_workdir, one_losses, one_params = one_device_run
    workdir = str(tmp_path / "eight")
    env = subprocess_env(compile_cache, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, one_workdir, workdir, str(tmp_path),
                          os.path.dirname(os.path.abspath(__file__))],
                         env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.load(open(tmp_path / "result.json"))

    # The parameters really are split: vocab over tensor, hidden over fsdp; FFN width over tensor.
    assert result["layout"]["embeddings"] == ["P('tensor', 'fsdp')", [64, 64]]
    assert result["layout"]["ffn"] == ["P('fsdp', 'tensor')", [64, 256]]
    # Same losses as one device at every step (float32).
    eight_losses = logged_losses(workdir)
    assert len(eight_losses) == 20
    np.testing.assert_allclose(eight_losses, one_losses, rtol=0, atol=1e-5)

    # 1 device -> 8 devices: the restored state is the one-device run's final state, now sharded.
    assert result["step"] == 20 and result["restored_spec"] == "P('tensor', 'fsdp')"
    restored_on_eight = np.load(tmp_path / "one_device_restored_on_eight.npz")
    for name, value in one_params.items():
        np.testing.assert_array_equal(restored_on_eight[name], value, err_msg=name)

    # 8 devices -> 1 device (this process has one).
    eight_params = np.load(tmp_path / "eight_device_params.npz")
    restored = pretrain.load_train_state(tiny_config(), workdir)
    assert jax.device_count() == 1 and int(restored.step) == 20
    for name, value in flat(restored.params).items():
        np.testing.assert_array_equal(value, eight_params[name], err_msg=name)
        np.testing.assert_allclose(value, one_params[name], rtol=1e-4, atol=1e-5, err_msg=name)


TWO_PROCESSES = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, index, workdir, tests = sys.argv[1:5]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, int(index))
sys.path.insert(0, tests)
from bert_jax import pretrain
from test_sharding import tiny_config
assert jax.process_count() == 2 and jax.device_count() == 2
state = pretrain.train_and_evaluate(tiny_config(), workdir)
assert int(state.step) == 20
jax.distributed.shutdown()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together_like_one(one_device_run, tmp_path, compile_cache):
    _, one_losses, _ = one_device_run
    workdir = str(tmp_path / "two")
    port = free_port()
    env = subprocess_env(compile_cache)
    tests = os.path.dirname(os.path.abspath(__file__))
    processes = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(port), str(i), workdir, tests], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    for p in processes:
        try:
            outputs.append(p.communicate(timeout=400))
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "step 20/20" in outputs[0][0] and "step 20/20" not in outputs[1][0]  # only process 0 writes
    np.testing.assert_allclose(logged_losses(workdir), one_losses, rtol=0, atol=1e-5)
    assert "20" in os.listdir(os.path.join(workdir, "checkpoints"))
