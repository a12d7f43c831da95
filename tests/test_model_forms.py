"""The encoder's faster formulations against the plain ones they replace (fp32, CPU).

Hugging Face parity of the whole model is in test_models.py; here each rewritten piece is held
to the straightforward form it replaced, with the same parameters: the stacked query/key/value
projection against three ``DenseGeneral`` layers (same parameter tree and initial values,
outputs and gradients), and the erf form of exact GELU against ``nn.gelu(approximate=False)``
and torch's ``gelu``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xstilts.models import xlmr

CONFIG = xlmr.XLMRConfig.tiny()


class _ThreeDense(nn.Module):
    """The projection as it was: one ``DenseGeneral`` each for query, key and value."""

    config: xlmr.XLMRConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        heads = (c.num_attention_heads, c.head_dim)
        return tuple(xlmr.DenseGeneral(heads, (xlmr.EMBED, xlmr.HEADS, xlmr.KV), c, name=n)(x)
                     for n in ("query", "key", "value"))


class _Stacked(nn.Module):
    config: xlmr.XLMRConfig

    @nn.compact
    def __call__(self, x):
        return xlmr._qkv_projection(self, x)


def test_stacked_qkv_projection_equals_three_dense_layers():
    x = jax.random.normal(jax.random.key(1), (3, 5, CONFIG.hidden_size))
    plain, stacked = _ThreeDense(CONFIG), _Stacked(CONFIG)
    variables = plain.init(jax.random.key(0), x)
    stacked_vars = stacked.init(jax.random.key(0), x)
    # Same names, shapes, logical axes and initial values: checkpoints and seeds carry over.
    assert jax.tree.structure(variables) == jax.tree.structure(stacked_vars)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(stacked_vars), strict=True):
        np.testing.assert_array_equal(a, b)
    params = nn.unbox(variables)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
                          params)  # non-zero biases
    weights = jax.random.normal(jax.random.key(3), (3, 5, CONFIG.num_attention_heads,
                                                    CONFIG.head_dim))

    def loss(module, p):
        q, k, v = module.apply({"params": p}, x)
        return jnp.sum(weights * q) + jnp.sum(weights * k ** 2) - jnp.sum(jnp.sin(v))

    for ours, ref in zip(_Stacked(CONFIG).apply({"params": params}, x),
                         _ThreeDense(CONFIG).apply({"params": params}, x), strict=True):
        assert ours.shape == (3, 5, CONFIG.num_attention_heads, CONFIG.head_dim)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    grads = jax.grad(lambda p: loss(_Stacked(CONFIG), p))(params)
    ref_grads = jax.grad(lambda p: loss(_ThreeDense(CONFIG), p))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_gelu_erf_form_equals_flax_and_torch_exact_gelu():
    torch = pytest.importorskip("torch")
    x = jnp.concatenate([jnp.linspace(-12.0, 12.0, 4001),
                         jax.random.normal(jax.random.key(0), (4000,)) * 3])
    ours = xlmr.gelu_exact(x)
    np.testing.assert_allclose(ours, nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
    theirs = torch.nn.functional.gelu(torch.tensor(np.asarray(x))).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    grad = jax.vmap(jax.grad(xlmr.gelu_exact))(x)
    ref_grad = jax.vmap(jax.grad(lambda v: nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    half = xlmr.gelu_exact(x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16  # the compute dtype is kept
