"""Dropout whose threefry masks are JAX's own, computed in one fused pass on every backend.

On CPU, JAX lowers the threefry hash as a rolled loop (``fori_loop`` over five groups of
rounds, to keep compile times down): XLA:CPU then runs a ``while`` whose every iteration reads
and writes the whole ``uint32`` counter arrays, plus their loop-carried copies. For dropout that
is most of a mask's cost (the tiny model's packed step: ~30% of its time in the hash).
``threefry_bits`` writes the same hash unrolled in ``jnp`` ops, so XLA fuses counter, hash,
compare and select into one elementwise kernel. The bits are ``jax.random.bits(key, shape)``'s
exactly (threefry2x32 under ``jax_threefry_partitionable``, JAX's default), and ``Dropout``'s
masks are ``flax.linen.Dropout``'s (``jax.random.bernoulli``), bit for bit.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: Array, d: int) -> Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def _threefry2x32(k1: Array, k2: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds, unrolled (JAX's ``_threefry2x32_lowering``)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, r)
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def is_threefry_key(key: Array) -> bool:
    """A typed threefry key, or a raw ``uint32[2]`` key under JAX's default (threefry) impl."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return "threefry" in str(jax.random.key_impl(key))
    return key.dtype == jnp.uint32 and key.shape == (2,) and \
        "threefry" in str(jax.config.jax_default_prng_impl)


def threefry_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """``jax.random.bits(key, shape)`` (``uint32``) for a threefry key, hash unrolled.

    The counters are JAX's partitionable ones: the row-major flat index as the low word, 0 as
    the high word (arrays of fewer than 2**32 elements); the bits are the two output words
    xor-ed.
    """
    if not is_threefry_key(key):
        raise ValueError(f"threefry_bits needs a threefry key, got {key.dtype}{key.shape}")
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"threefry_bits: {size} elements, at most 2**32 - 1 supported")
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    index = jnp.zeros(shape, jnp.uint32)
    for d, stride in enumerate(strides):
        if shape[d] > 1:
            index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(stride)
    bits0, bits1 = _threefry2x32(data[0], data[1], jnp.zeros(shape, jnp.uint32), index)
    return bits0 ^ bits1


def bernoulli_threshold(p: float) -> np.uint32:
    """``bits < threshold`` is ``jax.random.bernoulli(key, p)`` on the same 32 random bits.

    ``bernoulli`` compares ``uniform = (bits >> 9) * 2**-23`` with ``float32(p)``, so the mask
    is ``bits >> 9 < ceil(float32(p) * 2**23)`` (exact in float64), i.e. ``bits <
    ceil(...) * 2**9``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"bernoulli_threshold: p must be in (0, 1), got {p}")
    return np.uint32(math.ceil(float(np.float32(p)) * 2**23) << 9)


def bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """``jax.random.bernoulli(key, p, shape)`` in one fused pass for a threefry key."""
    return threefry_bits(key, shape) < bernoulli_threshold(p)


class Dropout(nn.Module):
    """``flax.linen.Dropout`` (same masks, same ``dropout`` rng stream), with threefry masks
    from ``bernoulli``; other key implementations (rbg, unsafe_rbg) take
    ``jax.random.bernoulli`` as flax does."""

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        key = self.make_rng(self.rng_collection)
        if is_threefry_key(key):
            mask = bernoulli(key, keep, inputs.shape)
        else:
            mask = jax.random.bernoulli(key, p=keep, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))
