"""Attention kernels for the XLM-R encoder, chosen by ``XLMRConfig.attention``.

* ``einsum``: the reference (Hugging Face's eager attention): ``[B, H, L, L]`` fp32 scores, an
  additive padding bias, softmax, dropout on the probabilities. The only one with attention-prob
  dropout.
* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")`` with a boolean padding mask.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (cuDNN flash attention,
  GPU, bf16/fp16) with ``key_value_seq_lengths``, so rows must be right-padded (every xstilts
  batch is: the feature converters pad at the end).
* ``splash``: Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) with
  the padding mask as segment ids (queries segment 1, keys 1 = real / 0 = pad), run per
  device under ``jax.shard_map`` over the batch and heads mesh axes; Pallas interpret mode on
  any other platform (how CPU tests check it). Needs a length that is a multiple of 128.
* ``auto``: ``einsum`` while attention-prob dropout is active (training with
  ``attention_probs_dropout_prob > 0``, so the training recipe is Hugging Face's), otherwise
  ``splash`` on TPU (``xla`` when the length is not a multiple of 128), ``cudnn`` on GPU for
  bf16/fp16 with a head size cuDNN takes (``xla`` otherwise), ``xla`` on CPU. Set
  ``attention_probs_dropout_prob=0.0`` (maxtext has none) to train with the fused kernels.

Every implementation computes the same function: every query (real or pad) attends to the real
keys of its row. A row without a real token (a padding example) gives finite values.

Packed rows (``segment_ids [B, L]``: 0 on padding, 1, 2, ... per packed sequence) restrict every
real query to the keys of its own segment (block-diagonal). ``einsum``, ``xla`` and ``cudnn`` take
it as a ``[B, 1, L, L]`` mask under which a pad query still sees every real key of its row (so
``segment_ids == attention_mask`` is exactly the unpacked function); ``splash`` takes the segment
ids themselves, under which a pad query sees the pad keys. Outputs at pad positions differ between
those two, and are never read.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

Array = jax.Array
AttentionImpl = Literal["auto", "einsum", "xla", "cudnn", "splash"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "einsum", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # splash's kv compute block must be a multiple of 128 lanes
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def current_platform() -> str:
    """The platform the code is being traced for: the mesh's devices (a deviceless TPU compile
    traces on a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = getattr(device, "platform", None)
    return str(platform) if platform else jax.default_backend()


def resolve(impl: str, *, platform: str, dtype: jnp.dtype, length: int, head_dim: int,
            dropout_active: bool) -> str:
    """The implementation ``impl`` means for this call; errors name what was expected."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention {impl!r}: expected one of {IMPLEMENTATIONS}")
    if impl == "auto":
        if dropout_active:
            return "einsum"
        if platform == "tpu" and length % SPLASH_BLOCK == 0:
            return "splash"
        if platform == "gpu" and jnp.dtype(dtype) in _CUDNN_DTYPES and head_dim % 8 == 0 \
                and head_dim <= 128:
            return "cudnn"
        return "xla"
    if dropout_active and impl != "einsum":
        raise ValueError(
            f"attention {impl!r} applies no dropout to attention probabilities: set "
            "attention_probs_dropout_prob=0.0, or use attention='einsum' (or 'auto', which "
            "uses einsum while that dropout is active)")
    if impl == "splash" and length % SPLASH_BLOCK:
        raise ValueError(f"attention 'splash' needs a length that is a multiple of "
                         f"{SPLASH_BLOCK} (its block size), got {length}")
    if impl == "cudnn" and platform != "gpu":
        raise ValueError(f"attention 'cudnn' needs a GPU, but this computation is for "
                         f"{platform!r}: use 'auto' or 'xla'")
    return impl


def padding_lengths(attention_mask: Array) -> Array:
    """Real tokens per row, at least 1 (``[B]`` int32): cuDNN's key lengths. A row without a
    real token attends to its first key, so a padding example stays finite."""
    return jnp.maximum(jnp.sum(attention_mask.astype(jnp.int32), axis=-1), 1)


def segment_mask(segment_ids: Array) -> Array:
    """``[B, L]`` segment ids -> boolean ``[B, 1, L, L]`` (query, key): a real query sees the keys
    of its own segment, a pad query (segment 0) every real key of its row (as unpacked)."""
    seg = segment_ids.astype(jnp.int32)
    q, k = seg[:, None, :, None], seg[:, None, None, :]
    return (k != 0) & ((q == k) | (q == 0))


def fused_attention(q: Array, k: Array, v: Array, attention_mask: Array, impl: str, *,
                    platform: str, segment_ids: Array | None = None) -> Array:
    """``softmax(q k^T / sqrt(d) + pad) v`` for ``[B, L, H, D]`` inputs with a fused kernel;
    with ``segment_ids`` attention stays within each packed segment."""
    if impl == "xla":
        mask = attention_mask.astype(bool)[:, None, None, :] if segment_ids is None \
            else segment_mask(segment_ids)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    if impl == "cudnn":
        if segment_ids is not None:  # a [B, 1, L, L] bias (cuDNN refuses only [B, 1, 1, L])
            return jax.nn.dot_product_attention(q, k, v, mask=segment_mask(segment_ids),
                                                implementation="cudnn")
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=padding_lengths(attention_mask),
            implementation="cudnn")
    if impl == "splash":
        return splash_attention(q, k, v, attention_mask, interpret=platform != "tpu",
                                segment_ids=segment_ids)
    raise ValueError(f"fused attention {impl!r}: expected 'xla', 'cudnn' or 'splash'")


def _splash_kernel(heads: int, length: int, interpret: bool):
    """A splash kernel for full (unmasked) ``length x length`` attention per head; built per
    trace (caching it would leak the mask-info arrays it creates across traces)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    block = SPLASH_BLOCK
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    mask = sa.MultiHeadMask([sa.FullMask((length, length))] * heads)
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q: Array, k: Array, v: Array, attention_mask: Array, *,
                  interpret: bool, packed: bool) -> Array:
    """``attention_mask`` holds the segment ids when ``packed``."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    _, length, heads, head_dim = q.shape
    kernel = _splash_kernel(heads, length, interpret)
    keys = attention_mask.astype(jnp.int32)
    if packed:  # every query sees its own segment (pad queries the pad keys): no empty row
        segments = SegmentIds(q=keys, kv=keys)
    else:
        # No all-zero rows (splash's softmax would divide by 0): a row without real tokens
        # sees all.
        keys = jnp.where(jnp.any(keys > 0, axis=-1, keepdims=True), keys, 1)
        segments = SegmentIds(q=jnp.ones_like(keys), kv=keys)
    q = q / jnp.sqrt(jnp.asarray(head_dim, q.dtype))  # splash does not scale

    def one(qi, ki, vi, si):  # [L, H, D] -> [H, L, D] for the kernel and back
        out = kernel(qi.swapaxes(0, 1), ki.swapaxes(0, 1), vi.swapaxes(0, 1), segment_ids=si)
        return out.swapaxes(0, 1)

    return jax.vmap(one)(q, k, v, segments).astype(v.dtype)


def splash_attention(q: Array, k: Array, v: Array, attention_mask: Array, *,
                     interpret: bool = False, segment_ids: Array | None = None) -> Array:
    """Splash attention for ``[B, L, H, D]`` (packed rows by ``segment_ids``); under a mesh, per
    device over batch and heads (the pallas kernel is opaque to the SPMD partitioner, which
    would otherwise gather it)."""
    packed = segment_ids is not None
    local = functools.partial(_splash_local, interpret=interpret, packed=packed)
    if packed:
        attention_mask = segment_ids
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, attention_mask)
    batch, _, heads, _ = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))

    def whole(axes, size: int):  # shard a dimension only where the mesh axes divide it
        names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        return axes if size % int(np.prod([mesh.shape[a] for a in names])) == 0 else None

    batch, heads = whole(batch, q.shape[0]), whole(heads, q.shape[2])
    qkv = P(batch, None, heads, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch, None)),
                         out_specs=qkv, check_vma=False)(q, k, v, attention_mask)


def mask_bias(attention_mask: Array, segment_ids: Array | None = None) -> Array:
    """``[B, L]`` 0/1 mask -> additive float32 bias ``[B, 1, 1, L]`` (finfo.min on padding);
    with ``segment_ids`` the ``[B, 1, L, L]`` bias of ``segment_mask``."""
    keep = attention_mask[:, None, None, :].astype(bool) if segment_ids is None \
        else segment_mask(segment_ids)
    return jnp.where(keep, 0.0, np.finfo(np.float32).min).astype(jnp.float32)
