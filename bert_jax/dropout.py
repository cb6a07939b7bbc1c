"""Dropout with its random bits from Threefry-2x32 written as plain uint32 arithmetic.

Same semantics as `flax.linen.Dropout`: each element is zeroed with probability `rate` and the survivors are
scaled by 1 / (1 - rate). Only where the bits come from differs.

`jax.random.bernoulli` draws them from the same generator (Threefry-2x32, Salmon et al. 2011), but on CPU
JAX lowers it as a rolled loop of 5 iterations that materialises every intermediate in memory. That made
mask generation 67 ms for one [32, 8, 128, 128] attention-probability tensor on the 2-core CI machine, and
about an eighth of the whole small-BERT training step. Written out as 20 rounds of uint32 add/rotate/xor,
XLA fuses it into the consumer's loop and the same mask costs about 4 ms. The rounds below are bit-for-bit
JAX's `threefry2x32` primitive (tests/test_dropout.py checks it).

The counter of each element is its coordinate in the *global* array (two uint32 words: the index within
the trailing dimensions, and within the leading ones). XLA partitions iota, so every shard computes its part
of the same mask: the dropout pattern does not depend on the mesh, which the 1-device = 8-device test relies on.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_WORD = 2 ** 32


def threefry2x32(key0, key1, x0, x1):
    """Threefry-2x32 with 20 rounds: two uint32 key words and two uint32 counter arrays -> two uint32 arrays."""
    ks = (key0, key1, key0 ^ key1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def element_counters(shape, word=_WORD):
    """(high, low) uint32 words numbering the elements of `shape` uniquely, in row-major order.

    `low` indexes the longest run of trailing dimensions holding fewer than `word` elements, `high` the
    leading rest (`word` is a parameter only so that tests can exercise the split on small shapes).
    """
    shape = tuple(shape)
    split = len(shape)
    while split > 0 and math.prod(shape[split - 1:]) < word:
        split -= 1
    if math.prod(shape[:split]) >= word:
        raise ValueError(f"dropout on shape {shape}: too many elements to number with two 32-bit words")

    def flat_index(dims):
        index = jnp.zeros(shape, jnp.uint32)
        for d in dims:
            stride = math.prod(shape[d + 1:dims[-1] + 1])
            index = index + lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(stride)
        return index

    return flat_index(range(split)), flat_index(range(split, len(shape)))


def key_words(key):
    """Two uint32 words from a PRNG key: a threefry key's own data, or two bits drawn from any other kind."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key array, as flax's make_rng returns by default
    data = jax.random.key_data(key)
    words = data if data.shape == (2,) else jax.random.bits(key, (2,), jnp.uint32)
    return words[0], words[1]


def keep_mask(key, rate: float, shape):
    """Bool mask, True with probability 1 - rate (to 2**-32), the same for a key whatever the sharding."""
    high, low = element_counters(shape)
    bits0, bits1 = threefry2x32(*key_words(key), low, high)
    threshold = np.uint32(min(round(rate * _WORD), _WORD - 1))
    return (bits0 ^ bits1) >= threshold


class Dropout(nn.Module):
    """`flax.linen.Dropout` with the fused mask above; draws from the 'dropout' RNG stream."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return lax.select(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))
