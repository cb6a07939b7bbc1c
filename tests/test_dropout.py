"""bert_jax/dropout.py: the generator against JAX's own Threefry primitive, the counters against hand-computed
indices, and the masks against the statistics of independent Bernoulli draws.

That the mask does not depend on the mesh is checked end to end by tests/test_sharding.py (training with
dropout on 8 devices as data x fsdp x tensor gives the 1-device losses).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from bert_jax import dropout


def test_rounds_equal_jax_threefry_primitive():
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 2 ** 32, 4096, dtype=np.uint32)
    x1 = rng.integers(0, 2 ** 32, 4096, dtype=np.uint32)
    x0[:4] = [0, 1, 2 ** 32 - 1, 2 ** 31]  # the carries of the additions wrap
    for key in ([0, 0], [7, 2 ** 32 - 1], [0x13198A2E, 0x03707344]):
        k0, k1 = (np.uint32(k) for k in key)
        expected = threefry2x32_p.bind(jnp.uint32(k0), jnp.uint32(k1), jnp.asarray(x0), jnp.asarray(x1))
        ours = jax.jit(dropout.threefry2x32)(k0, k1, jnp.asarray(x0), jnp.asarray(x1))
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(expected[0]))
        np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(expected[1]))


def test_counters_number_elements_row_major():
    shape = (3, 5, 4, 2)
    high, low = dropout.element_counters(shape)  # small: everything in the low word
    np.testing.assert_array_equal(np.asarray(high), 0)
    np.testing.assert_array_equal(np.asarray(low), np.arange(120).reshape(shape))
    # With a 16-element word the trailing 4 x 2 dims (8 elements) go to the low word, the leading 3 x 5 high.
    high, low = dropout.element_counters(shape, word=16)
    np.testing.assert_array_equal(np.asarray(high) * 8 + np.asarray(low), np.arange(120).reshape(shape))
    assert np.asarray(low).max() == 7 and np.asarray(high).max() == 14
    with pytest.raises(ValueError, match=r"shape \(17, 16\)"):
        dropout.element_counters((17, 16), word=16)


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.5])
def test_mask_has_the_rate_and_no_structure(rate):
    shape = (16, 8, 64, 128)  # an attention-probability-like tensor, 1M elements
    keep = np.asarray(dropout.keep_mask(jax.random.PRNGKey(3), rate, shape))
    n = keep.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs((1 - keep.mean()) - rate) < 5 * sigma
    # Neighbours along every axis are uncorrelated (|r| of independent draws is about 1/sqrt(n)).
    k = keep.astype(np.float64)
    for axis in range(k.ndim):
        a = np.moveaxis(k, axis, 0)
        r = np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(a[1:].size), (axis, r)
    # Another key gives an independent mask: the two agree with probability (1-p)^2 + p^2.
    other = np.asarray(dropout.keep_mask(jax.random.PRNGKey(4), rate, shape))
    agree = np.mean(keep == other)
    expected = (1 - rate) ** 2 + rate ** 2
    assert abs(agree - expected) < 5 * np.sqrt(expected * (1 - expected) / n)


def test_bits_are_uniform():
    high, low = dropout.element_counters((1 << 18,))
    b0, b1 = dropout.threefry2x32(np.uint32(11), np.uint32(12), low, high)
    top = np.asarray((b0 ^ b1) >> 28)  # 16 bins
    counts = np.bincount(top, minlength=16)
    chi2 = np.sum((counts - counts.mean()) ** 2 / counts.mean())
    assert chi2 < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom


def test_module_scales_survivors_and_is_deterministic_per_key():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 64)).astype(np.float32))
    layer = dropout.Dropout(0.25)
    out = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}))
    kept = out != 0
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(np.asarray(again), out)
    other = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.array_equal(np.asarray(other), out)
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, deterministic=True)), np.asarray(x))
    np.testing.assert_array_equal(
        np.asarray(dropout.Dropout(0.0).apply({}, x, deterministic=False)), np.asarray(x))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_any_key_implementation(impl):
    key = jax.random.key(5, impl=impl)
    a = np.asarray(dropout.keep_mask(key, 0.1, (256, 256)))
    b = np.asarray(dropout.keep_mask(key, 0.1, (256, 256)))
    np.testing.assert_array_equal(a, b)
    assert abs((1 - a.mean()) - 0.1) < 5 * np.sqrt(0.09 / a.size)
    raw = jax.random.PRNGKey(5)  # a raw uint32[2] key, what flax hands out by default
    np.testing.assert_array_equal(np.asarray(dropout.keep_mask(raw, 0.1, (8, 8))),
                                  np.asarray(dropout.keep_mask(jax.random.wrap_key_data(raw), 0.1, (8, 8))))
