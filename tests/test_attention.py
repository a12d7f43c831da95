"""Attention kernels (``XLMRConfig.attention``) against the einsum reference, fp32 on CPU.

The reference is today's einsum attention (itself checked against Hugging Face in
test_models.py). Each kernel must give the same hidden states at every position of every row
that has a real token within 1e-5, and the same parameter gradients within 1e-5 (relative to
each leaf's largest magnitude where that exceeds 1). Splash runs in Pallas
interpret mode here (its TPU compile is in test_aot.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import padded_batch

from xstilts import partitioning
from xstilts.models import attention
from xstilts.models.xlmr import XLMRConfig, XLMRModel

TOL = 1e-5
CONFIG = XLMRConfig.tiny()


def _batch(max_len: int, lengths=(11, 7, 3, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths and one all-padding row (a batch-filling example)."""
    ids, mask = padded_batch(lengths=tuple(n or 1 for n in lengths), max_len=max_len)
    for row, n in enumerate(lengths):
        if n == 0:
            ids[row], mask[row] = CONFIG.pad_token_id, 0
    return ids, mask


def _outputs_and_grads(config: XLMRConfig, params, ids, mask, weights):
    """Last hidden state, and the gradient of a fixed projection of it over the real rows."""
    real_rows = jnp.asarray(mask.sum(1) > 0, jnp.float32)[:, None, None]

    def loss(p):
        out = XLMRModel(config).apply({"params": p}, ids, mask)
        return jnp.sum(out * weights * real_rows), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads


def _max_relative_diff(ours, ref) -> float:
    """max |ours - ref| / max(1, max |ref|) per leaf: absolute for leaves of magnitude <= 1
    (the key bias's gradient is 0 up to rounding), relative for larger ones (up to ~10 here)."""
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1.0))
               for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True))


@pytest.mark.parametrize(("impl", "length"), [("xla", 12), ("splash", 128)])
def test_kernel_matches_einsum_outputs_and_gradients(impl, length):
    ids, mask = _batch(length)
    params = XLMRModel(CONFIG).init_params(jax.random.key(0))
    weights = jax.random.normal(jax.random.key(1), (*ids.shape, CONFIG.hidden_size))
    ref_out, ref_grads = _outputs_and_grads(CONFIG.replace(attention="einsum"), params, ids,
                                            mask, weights)
    out, grads = _outputs_and_grads(CONFIG.replace(attention=impl), params, ids, mask, weights)
    real = mask.sum(1) > 0
    assert float(jnp.abs(out[real] - ref_out[real]).max()) < TOL  # pad positions included
    assert bool(jnp.isfinite(out).all())  # the all-padding row stays finite
    assert _max_relative_diff(grads, ref_grads) < TOL
    # The gradients are not trivially small: the comparison has something to compare.
    assert float(jnp.abs(ref_grads["encoder"]["layer_0"]["attention"]["self"]["query"][
        "kernel"]).max()) > 1e-3


def test_cudnn_padding_lengths_equal_the_mask():
    """cuDNN gets ``key_value_seq_lengths`` instead of the mask: the same attention for
    right-padded rows (checked through XLA's implementation of the same arguments)."""
    ids, mask = _batch(12)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(4, 12, 4, 16)), jnp.float32) for _ in range(3))
    by_mask = attention.fused_attention(q, k, v, jnp.asarray(mask), "xla", platform="cpu")
    by_length = jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=attention.padding_lengths(jnp.asarray(mask)),
        implementation="xla")
    np.testing.assert_allclose(by_length[:3], by_mask[:3], atol=1e-6)
    np.testing.assert_array_equal(attention.padding_lengths(jnp.asarray(mask)), [11, 7, 3, 1])


def test_splash_under_a_mesh_runs_per_device():
    """Batch over ``data``, heads over ``tensor`` (shard_map), equal to the einsum reference."""
    part = partitioning.Partitioner(partitioning.create_mesh(data=4, tensor=2))
    ids, mask = padded_batch(lengths=(128, 100, 64, 9, 50, 128, 2, 77), max_len=128)
    params = XLMRModel(CONFIG).init_params(jax.random.key(0))

    def run(config):
        fn = jax.jit(functools.partial(XLMRModel(config).apply, deterministic=True))
        with part.context():
            return fn({"params": params}, ids, mask)

    ref = run(CONFIG.replace(attention="einsum"))
    ours = run(CONFIG.replace(attention="splash"))
    assert float(jnp.abs(ours - ref).max()) < TOL
    hlo = jax.jit(functools.partial(XLMRModel(CONFIG.replace(attention="splash")).apply))
    with part.context():
        text = hlo.lower({"params": params}, ids, mask).as_text()
    assert "shard_map" in text or "manual" in text.lower()


def test_auto_picks_per_backend_and_keeps_attention_dropout():
    pick = functools.partial(attention.resolve, "auto", dtype=jnp.bfloat16, head_dim=64)
    assert pick(platform="tpu", length=256, dropout_active=False) == "splash"
    assert pick(platform="tpu", length=200, dropout_active=False) == "xla"
    assert pick(platform="gpu", length=200, dropout_active=False) == "cudnn"
    assert attention.resolve("auto", platform="gpu", dtype=jnp.float32, head_dim=64, length=256,
                             dropout_active=False) == "xla"
    assert pick(platform="cpu", length=256, dropout_active=False) == "xla"
    # Training with attention-prob dropout: the einsum reference (the only one that has it).
    assert pick(platform="tpu", length=256, dropout_active=True) == "einsum"


def test_attention_settings_are_checked():
    with pytest.raises(ValueError, match=r"attention 'flash': expected one of \('auto'"):
        XLMRConfig.tiny(attention="flash")
    with pytest.raises(ValueError, match=r"'splash' applies no dropout .* "
                                         r"attention_probs_dropout_prob=0\.0"):
        attention.resolve("splash", platform="tpu", dtype=jnp.bfloat16, length=128,
                          head_dim=64, dropout_active=True)
    with pytest.raises(ValueError, match=r"'splash' needs a length that is a multiple of "
                                         r"128 \(its block size\), got 100"):
        attention.resolve("splash", platform="tpu", dtype=jnp.bfloat16, length=100,
                          head_dim=64, dropout_active=False)
    with pytest.raises(ValueError, match=r"'cudnn' needs a GPU, but this computation is for "
                                         r"'cpu'"):
        attention.resolve("cudnn", platform="cpu", dtype=jnp.bfloat16, length=128, head_dim=64,
                          dropout_active=False)


def test_training_with_dropout_uses_einsum_under_auto():
    """auto + active attention dropout = the einsum path (same dropout draws, same output)."""
    ids, mask = _batch(12)
    params = XLMRModel(CONFIG).init_params(jax.random.key(0))
    rngs = {"dropout": jax.random.key(3)}
    auto = XLMRModel(CONFIG).apply({"params": params}, ids, mask, deterministic=False,
                                   rngs=rngs)
    einsum = XLMRModel(CONFIG.replace(attention="einsum")).apply(
        {"params": params}, ids, mask, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(auto, einsum)
