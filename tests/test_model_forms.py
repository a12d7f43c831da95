"""The encoder's faster formulations against the plain ones they replace (fp32, CPU).

Hugging Face parity of the whole model is in test_models.py; here each rewritten piece is held
to the straightforward form it replaced: the erf form of exact GELU against
``nn.gelu(approximate=False)`` and torch's ``gelu``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xstilts.models import xlmr


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
