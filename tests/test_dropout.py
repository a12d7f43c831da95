"""xstilts.models.dropout against JAX's and flax's own dropout: the same bits, the same masks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xstilts.models import dropout
from xstilts.models.xlmr import XLMRConfig, XLMRModel

SHAPES = [(3,), (7, 1, 5), (2, 4, 33, 17)]
KEYS = [jax.random.PRNGKey(3), jax.random.key(7), jax.random.fold_in(jax.random.PRNGKey(0), 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key_index", range(len(KEYS)))
def test_threefry_bits_are_jax_random_bits(shape, key_index):
    key = KEYS[key_index]
    ours = jax.jit(dropout.threefry_bits, static_argnums=1)(key, shape)
    np.testing.assert_array_equal(ours, jax.random.bits(key, shape))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1 / 3, 1e-7, 1 - 1e-7])
def test_bernoulli_is_jax_random_bernoulli(p):
    key = jax.random.PRNGKey(11)
    shape = (64, 257)
    ours = dropout.bernoulli(key, p, shape)
    np.testing.assert_array_equal(ours, jax.random.bernoulli(key, p, shape))
    if 0.01 < p < 0.99:  # and it is a Bernoulli(p) sample
        assert abs(float(ours.mean()) - p) < 5 / np.sqrt(ours.size)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(5), jax.random.key(5),
                                 jax.random.key(5, impl="rbg"),
                                 jax.random.key(5, impl="unsafe_rbg")])
def test_dropout_module_equals_flax_dropout(key):
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 9, 16)) + 2.0
    ours = dropout.Dropout(0.1).apply({}, x, False, rngs={"dropout": key})
    flax_ = nn.Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(ours, flax_)
    assert 0 < int((ours == 0).sum()) < x.size
    np.testing.assert_array_equal(dropout.Dropout(0.1).apply({}, x, True), x)


def test_dropout_gradient_equals_flax_dropout():
    key = jax.random.PRNGKey(2)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 40))

    def grad(module, **kw):
        return jax.grad(lambda v: jnp.sum(jnp.sin(
            module.apply({}, v, rngs={"dropout": key}, **kw))))(x)

    np.testing.assert_array_equal(grad(dropout.Dropout(0.3), deterministic=False),
                                  grad(nn.Dropout(0.3), deterministic=False))


def test_model_training_forward_unchanged_by_fused_masks(monkeypatch):
    """XLM-R in training mode (every dropout active) gives what it gave with flax's Dropout."""
    from xstilts.models import xlmr

    config = XLMRConfig.tiny(attention="einsum")
    model = XLMRModel(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 1000, (2, 12)), jnp.int32)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    rngs = {"dropout": jax.random.PRNGKey(4)}

    def run(deterministic=False):  # jitted afresh for each call: traced with today's Dropout
        return jax.jit(lambda p: model.apply({"params": p}, ids, jnp.ones_like(ids),
                                             deterministic=deterministic, rngs=rngs))(params)

    ours = run()
    monkeypatch.setattr(xlmr, "Dropout", nn.Dropout)
    np.testing.assert_array_equal(ours, run())
    assert not np.allclose(ours, run(deterministic=True))


def test_threefry_bits_refuses_other_keys():
    with pytest.raises(ValueError, match="threefry key"):
        dropout.threefry_bits(jax.random.key(0, impl="rbg"), (3,))
    with pytest.raises(ValueError, match="p must be in"):
        dropout.bernoulli_threshold(1.0)
