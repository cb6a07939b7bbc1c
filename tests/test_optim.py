"""The optimizers against NumPy implementations of SPEC §3 written here, and gradient accumulation against the
whole batch in one piece."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax import optim
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.model import BertConfig, BertForPreTraining, abstract_params
from bert_jax.pretrain import PretrainingObjective

# ----------------------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------------------


def numpy_bert_lr(step, peak, warmup, total):
    """optimization.py: polynomial_decay(power=1) from step 0, replaced by step/warmup * peak in warmup."""
    decayed = peak * (1.0 - min(step, total) / total)
    return peak * step / warmup if step < warmup else decayed


def numpy_bert_adamw(params, grads_per_step, *, peak, warmup, total, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """The original AdamWeightDecayOptimizer + clip_by_global_norm(1.0), on a flat {name: array} dict."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    history = []
    for step, grads in enumerate(grads_per_step):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        scale = 1.0 / max(norm, 1.0)  # tf.clip_by_global_norm: g * clip / max(norm, clip), clip = 1
        lr = numpy_bert_lr(step, peak, warmup, total)
        for name in params:
            g = grads[name] * scale
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            update = m[name] / (np.sqrt(v[name]) + eps)
            if not any(re.search(p, name) for p in ("LayerNorm", "layer_norm", "bias")):
                update = update + wd * params[name]
            params[name] = params[name] - lr * update
        history.append(dict(params))
    return history


def numpy_lamb_step(params, grads, *, lr, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """One LAMB step from zero moments (Adam with bias correction, decay, layer-wise trust ratio)."""
    out = {}
    for name, p in params.items():
        g = grads[name]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        update = m_hat / (np.sqrt(v_hat) + eps)
        if not any(re.search(pat, name) for pat in ("LayerNorm", "layer_norm", "bias")):
            update = update + wd * p
        p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
        ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
        out[name] = p - lr * ratio * update
    return out


def nested(flat):
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def flat(tree):
    return {optim.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


PARAM_SHAPES = {
    "bert/embeddings/word_embeddings": (11, 4),
    "bert/embeddings/LayerNorm/scale": (4,),
    "bert/embeddings/LayerNorm/bias": (4,),
    "bert/encoder/layer_0/attention/self/query/kernel": (4, 4),
    "bert/encoder/layer_0/attention/self/query/bias": (4,),
    "cls/predictions/output_bias": (11,),
    "cls/seq_relationship/output_weights": (2, 4),
}

# ----------------------------------------------------------------------------------------------------
# Schedule, mask, AdamW, LAMB
# ----------------------------------------------------------------------------------------------------


def test_learning_rate_at_the_points_the_spec_names():
    peak, warmup, total = 1e-4, 10, 100
    schedule = optim.bert_learning_rate(peak, warmup, total)
    expected = {0: 0.0, 5: 0.5e-4, 9: 0.9e-4, 10: 1e-4 * (1 - 10 / 100), 55: 1e-4 * 0.45, 99: 1e-6, 100: 0.0,
                150: 0.0}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=peak * 1e-6), step  # float32
        assert numpy_bert_lr(step, peak, warmup, total) == pytest.approx(value, abs=1e-12)


def test_weight_decay_mask_spares_layernorm_and_biases_of_the_real_model():
    config = BertConfig.from_size("tiny", vocab_size=64)
    mask = flat(optim.weight_decay_mask(abstract_params(BertForPreTraining(config))))
    decayed = sorted(k for k, v in mask.items() if v)
    spared = sorted(k for k, v in mask.items() if not v)
    assert all("LayerNorm" in k or k.endswith("bias") for k in spared)
    assert all("LayerNorm" not in k and not k.endswith("bias") for k in decayed)
    assert "cls/predictions/output_bias" in spared and "cls/seq_relationship/output_bias" in spared
    assert "bert/embeddings/word_embeddings" in decayed and "cls/seq_relationship/output_weights" in decayed
    # Every Dense has a kernel (decayed) and a bias (spared); every LayerNorm a scale and a bias (spared).
    assert len(decayed) == sum(k.endswith("kernel") for k in mask) + 4  # + 3 embedding tables + NSP weights
    assert len(spared) == len(mask) - len(decayed)


def test_bert_adamw_matches_numpy_over_several_steps_including_clipping():
    rng = np.random.default_rng(0)
    params = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}
    # Steps 0-2 have a global norm far above 1 (clipped), steps 3-5 below it (untouched).
    grads = [{k: (rng.normal(0, 3.0 if step < 3 else 0.05, s)).astype(np.float32) for k, s in PARAM_SHAPES.items()}
             for step in range(6)]
    peak, warmup, total = 0.1, 2, 6
    expected = numpy_bert_adamw(params, grads, peak=peak, warmup=warmup, total=total)

    tx, schedule = optim.make_optimizer("adamw", learning_rate=peak, warmup_steps=warmup, total_steps=total)
    state_params = nested({k: jnp.asarray(v) for k, v in params.items()})
    opt_state = tx.init(state_params)
    update = jax.jit(tx.update)
    for step, g in enumerate(grads):
        updates, opt_state = update(nested({k: jnp.asarray(v) for k, v in g.items()}), opt_state, state_params)
        state_params = optax.apply_updates(state_params, updates)
        got = flat(state_params)
        for name in PARAM_SHAPES:
            np.testing.assert_allclose(got[name], expected[step][name], rtol=2e-5, atol=1e-6,
                                       err_msg=f"step {step} {name}")
    # Step 0 has learning rate 0: the parameters must not have moved at all after the first update.
    first = numpy_bert_adamw(params, grads[:1], peak=peak, warmup=warmup, total=total)[0]
    for name in PARAM_SHAPES:
        np.testing.assert_array_equal(first[name].astype(np.float32), params[name])


def test_lamb_matches_numpy_on_one_step():
    rng = np.random.default_rng(1)
    params = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}
    grads = {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}  # norm < 1: no clip
    tx, _ = optim.make_optimizer("lamb", learning_rate=0.1, warmup_steps=0, total_steps=4)
    tree = nested({k: jnp.asarray(v) for k, v in params.items()})
    updates, _ = jax.jit(tx.update)(nested({k: jnp.asarray(v) for k, v in grads.items()}), tx.init(tree), tree)
    got = flat(optax.apply_updates(tree, updates))
    expected = numpy_lamb_step(params, grads, lr=0.1)  # step 0 of warmup 0: the full rate
    for name in PARAM_SHAPES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        optim.make_optimizer("sgd", learning_rate=1e-4, warmup_steps=1, total_steps=10)


# ----------------------------------------------------------------------------------------------------
# Gradient accumulation
# ----------------------------------------------------------------------------------------------------


def test_accumulating_4_micro_batches_of_8_equals_one_batch_of_32():
    config = BertConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        max_position_embeddings=32, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    objective = PretrainingObjective(config)
    params = jax.jit(lambda rng: flax_unbox(objective.init_params(rng)))(jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in next(SyntheticPretrainingData(32, 24, 4, 64, seed=3)).items()}
    # Rows have different numbers of masked positions, so per-micro-batch normalisation would be wrong.
    assert len(set(np.asarray(batch["masked_lm_weights"]).sum(1).tolist())) > 1

    def loss_and_grads(params, batch, k):
        normalizers = objective.normalizers(batch)

        def loss_fn(p, micro_batch, index):
            return objective.loss(p, micro_batch, jax.random.PRNGKey(0), normalizers, True)

        return optim.accumulate_gradients(loss_fn, params, batch, k)

    (loss1, metrics1), grads1 = jax.jit(loss_and_grads, static_argnums=2)(params, batch, 1)
    (loss4, metrics4), grads4 = jax.jit(loss_and_grads, static_argnums=2)(params, batch, 4)
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-6)
    for key in metrics1:
        assert float(metrics4[key]) == pytest.approx(float(metrics1[key]), rel=1e-5, abs=1e-7), key
    g1, g4 = flat(grads1), flat(grads4)
    largest = max(np.max(np.abs(g)) for g in g1.values())
    assert largest > 1e-3  # gradients are not trivially zero
    for name in g1:  # (some are zero up to rounding, e.g. the key bias: softmax ignores it)
        np.testing.assert_allclose(g4[name], g1[name], rtol=1e-4, atol=1e-6 * largest, err_msg=name)


def test_micro_batches_that_do_not_divide_the_batch_are_a_clear_error():
    with pytest.raises(ValueError, match="does not split into 4 micro-batches"):
        optim.split_micro_batches({"input_ids": jnp.zeros((6, 3))}, 4)


def flax_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)
