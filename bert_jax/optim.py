"""The optimizers BERT is trained with (../shared/docs/SPEC.md §3) and gradient accumulation.

The default is the original `AdamWeightDecayOptimizer` of google-research/bert optimization.py, exactly:

    g      <- clip_by_global_norm(g, 1.0)
    m      <- b1 m + (1 - b1) g
    v      <- b2 v + (1 - b2) g^2                     (no bias correction of m or v)
    update <- m / (sqrt(v) + eps) + wd * param        (eps outside the sqrt; wd not on LayerNorm or biases)
    param  <- param - lr(step) * update               (decay is scaled by the learning rate too)

with lr(step) = peak * step / warmup while step < warmup, else peak * (1 - step / total): the linear decay
counts from step 0, so right after warmup the rate is peak * (1 - warmup / total), and step 0 has rate 0.

LAMB (optax.lamb, same clipping, schedule and decay mask) is the large-batch alternative.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "lamb")

# The original excludes every variable whose name contains one of these (exclude_from_weight_decay).
NO_DECAY_PATTERNS = ("LayerNorm", "layer_norm", "bias")


# ----------------------------------------------------------------------------------------------------
# Schedule and decay mask
# ----------------------------------------------------------------------------------------------------


def bert_learning_rate(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then linear decay to 0 at `total_steps`, the decay counted from step 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decayed = peak * (1.0 - jnp.minimum(step, total_steps) / total_steps)
        warming = peak * step / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warming, decayed)

    return schedule


def path_name(path) -> str:
    """A tree path as the slash-joined variable name the original regexes were written against."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def weight_decay_mask(params) -> Any:
    """True for parameters that get weight decay: everything except LayerNorm parameters and biases."""
    def decays(path, _):
        name = path_name(path)
        return not any(re.search(pattern, name) for pattern in NO_DECAY_PATTERNS)

    return jax.tree_util.tree_map_with_path(decays, nn.meta.unbox(params))


# ----------------------------------------------------------------------------------------------------
# The original AdamW
# ----------------------------------------------------------------------------------------------------


class BertAdamState(NamedTuple):
    mu: Any  # first moment, float32, same tree as the params
    nu: Any  # second moment


def scale_by_bert_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
    """Adam's direction m / (sqrt(v) + eps) without bias correction, as in the original BERT."""

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, jnp.float32)  # noqa: E731
        return BertAdamState(mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, grads)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, BertAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(name: str = "adamw", *, learning_rate: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                   clip_norm: float = 1.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule (the trainer logs the rate at each step)."""
    schedule = bert_learning_rate(learning_rate, warmup_steps, total_steps)
    clip = optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()
    if name == "adamw":
        tx = optax.chain(clip, scale_by_bert_adam(b1, b2, eps),
                         optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                         optax.scale_by_learning_rate(schedule))
    elif name == "lamb":
        tx = optax.chain(clip, optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                          mask=weight_decay_mask))
    else:
        raise ValueError(f"optimizer.name={name!r}: must be one of {OPTIMIZERS}")
    return tx, schedule


# ----------------------------------------------------------------------------------------------------
# Gradient accumulation
# ----------------------------------------------------------------------------------------------------


def split_micro_batches(batch, num_micro_batches: int):
    """[B, ...] -> [K, B/K, ...], micro-batch k = rows k, k+K, k+2K, ...

    Interleaved rather than contiguous rows: the batch is sharded in contiguous blocks over the
    data-parallel devices, so with this split every device holds its share of every micro-batch and the
    scan needs no data movement.
    """
    def split(x):
        rows = x.shape[0]
        if rows % num_micro_batches:
            raise ValueError(f"batch of {rows} rows does not split into {num_micro_batches} micro-batches")
        x = x.reshape(rows // num_micro_batches, num_micro_batches, *x.shape[1:]).swapaxes(0, 1)  # [K, B/K, ...]
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: Callable, params, batch, num_micro_batches: int):
    """((loss, metrics), grads) of `loss_fn(params, micro_batch, index)` summed over micro-batches.

    `loss_fn` must be additive over micro-batches (normalised by whole-batch counts, see
    trainer.Objective), so the sum equals the loss and gradient of the whole batch in one piece. The
    micro-batches run one after the other in a lax.scan: activation memory is that of one micro-batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro_batches == 1:
        return grad_fn(params, batch, 0)
    micro_batches = split_micro_batches(batch, num_micro_batches)

    def body(total, inputs):
        micro_batch, index = inputs
        result = grad_fn(params, micro_batch, index)
        return jax.tree.map(jnp.add, total, result), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first, 0))
    total, _ = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(num_micro_batches)))
    return total
