"""M2M100 / NLLB-200 encoder-decoder (many-to-many NMT) in flax.linen, for inference.

The architecture of Hugging Face's ``M2M100ForConditionalGeneration`` (which also runs NLLB-200's
dense checkpoints): pre-LayerNorm Transformer blocks, fairseq sinusoidal positions (position ids =
cumsum of non-pad tokens + ``pad_token_id``, the pad row zero), one embedding matrix shared by the
encoder, the decoder and the output projection, scaled by ``sqrt(d_model)`` when
``scale_embedding``, a final LayerNorm after each stack. No dropout: this model translates.

The module tree follows Hugging Face's (``shared``, ``encoder/layers_<i>/self_attn/q_proj`` ...), so
``xstilts.models.nmt_convert`` is a rename table. Every parameter carries logical axes (``vocab``,
``embed``, ``heads``, ``kv``, ``mlp``) as ``xstilts.models.xlmr`` does.

Decoding uses an explicit KV cache: ``encode`` once, ``cross_kv`` once (the encoder keys and values
of every decoder layer), then ``decode`` one step at a time with ``self_cache`` from ``init_cache``.
``xstilts.decoding`` uses ``step_cross_kv`` / ``decode_step`` / ``init_step_cache`` instead: the
same arithmetic on keys and values laid out for the step's dots (no transpose per step), the
hypotheses of a beam sharing one cache that is never reordered.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xstilts.models import cpu_gemm
from xstilts.models.xlmr import BATCH, EMBED, HEADS, KV, LENGTH, MLP, VOCAB

Array = jax.Array
KVPair = tuple[Array, Array]
CACHE_AXES = (BATCH, LENGTH, HEADS, KV)
STEP_AXES = (BATCH, HEADS, KV, LENGTH)  # ``decode_step``'s keys and values: [B, H, D, S]

_ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False),
                "gelu_new": nn.gelu, "silu": nn.silu, "swish": nn.silu}


@dataclasses.dataclass(frozen=True)
class NMTConfig:
    """Hyper-parameters; field names are Hugging Face's ``M2M100Config``."""

    vocab_size: int = 256206
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    activation_function: str = "relu"
    scale_embedding: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    init_std: float = 0.02
    # Implementation choice: the compute dtype (parameters stay float32; logits are float32).
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for heads, name in ((self.encoder_attention_heads, "encoder_attention_heads"),
                            (self.decoder_attention_heads, "decoder_attention_heads")):
            if self.d_model % heads:
                raise ValueError(f"d_model {self.d_model} is not a multiple of {name} {heads}")
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(f"activation_function {self.activation_function!r}: expected one of "
                             f"{sorted(_ACTIVATIONS)}")
        jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> NMTConfig:
        return dataclasses.replace(self, **changes)

    _HF_FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers",
                  "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                  "decoder_ffn_dim", "max_position_embeddings", "activation_function",
                  "scale_embedding", "tie_word_embeddings", "pad_token_id", "bos_token_id",
                  "eos_token_id", "decoder_start_token_id", "init_std")
    _HF_INTS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers",
                "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                "decoder_ffn_dim", "max_position_embeddings")

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], *, source: str = "config",
                     **overrides: Any) -> NMTConfig:
        """From a Hugging Face ``config.json`` of ``model_type`` ``m2m_100`` (M2M100, NLLB-200)."""
        if hf.get("model_type") != "m2m_100":
            raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not an M2M100/NLLB "
                             f"model: expected 'm2m_100'; architectures={hf.get('architectures')}")
        missing = [k for k in cls._HF_INTS if k not in hf]
        if missing:
            raise ValueError(
                f"{source}: missing field(s) {missing}; expected an M2M100 config.json")
        for key in cls._HF_INTS:
            value = hf[key]
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(
                    f"{source}: field {key!r} is {value!r}; expected a positive integer")
        kwargs = {k: hf[k] for k in cls._HF_FIELDS if k in hf and hf[k] is not None}
        try:
            return cls(**{**kwargs, **overrides})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_json_file(cls, path: str, **overrides: Any) -> NMTConfig:
        try:
            with open(path, encoding="utf-8") as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(hf, source=path, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NMTConfig:
        """The released checkpoints' shapes (their config.json), for AOT compiles and sizing."""
        if name not in PRESETS:
            raise ValueError(f"unknown NMT preset {name!r}: expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model) if self.scale_embedding else 1.0


_NLLB = dict(vocab_size=256206, max_position_embeddings=1024)
_M2M = dict(vocab_size=128112, max_position_embeddings=1024)
PRESETS: dict[str, dict[str, Any]] = {
    "nllb-200-distilled-600M": dict(_NLLB),
    "nllb-200-distilled-1.3B": dict(_NLLB, encoder_layers=24, decoder_layers=24,
                                    encoder_ffn_dim=8192, decoder_ffn_dim=8192),
    "m2m100_418M": dict(_M2M),
    "m2m100_1.2B": dict(_M2M, encoder_layers=24, decoder_layers=24, encoder_ffn_dim=8192,
                        decoder_ffn_dim=8192),
}


def position_ids(ids: Array, pad_token_id: int, offset: Array | int = 0) -> Array:
    """fairseq ``make_positions`` as Hugging Face: ``(cumsum(non-pad) + offset) * non-pad + pad``.
    """
    mask = (ids != pad_token_id).astype(jnp.int32)
    return (jnp.cumsum(mask, axis=1) + offset) * mask + pad_token_id


def sinusoidal_positions(positions: Array, dim: int, pad_token_id: int) -> Array:
    """Hugging Face's ``M2M100SinusoidalPositionalEmbedding`` rows for ``positions``, float32."""
    half = dim // 2
    freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - 1)))
    angles = positions.astype(jnp.float32)[..., None] * freq
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros(emb.shape[:-1] + (1,), emb.dtype)], axis=-1)
    return jnp.where((positions == pad_token_id)[..., None], 0.0, emb)


def _axes(init: nn.initializers.Initializer, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init, axes)


class Dense(nn.Module):
    """A dense layer over ``axis`` with a logically partitioned kernel and bias."""

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    config: NMTConfig
    axis: tuple[int, ...] = (-1,)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        axes = tuple(a % x.ndim for a in self.axis)
        in_shape = tuple(x.shape[a] for a in axes)
        dtype = jnp.dtype(self.config.dtype)
        kernel = self.param("kernel", _axes(nn.initializers.normal(self.config.init_std),
                                            self.kernel_axes),
                            in_shape + tuple(self.features), jnp.float32)
        bias = self.param("bias", _axes(nn.initializers.zeros_init(),
                                        self.kernel_axes[len(in_shape):]),
                          tuple(self.features), jnp.float32)
        y = cpu_gemm.dot_general(x.astype(dtype), kernel.astype(dtype),
                                 ((axes, tuple(range(len(in_shape)))), ((), ())))
        return y + bias.astype(dtype)


def _layer_norm(config: NMTConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
                        scale_init=_axes(nn.initializers.ones_init(), (EMBED,)),
                        bias_init=_axes(nn.initializers.zeros_init(), (EMBED,)), name=name)


def _constrain(x: Array, axes: tuple[str | None, ...] = (BATCH, LENGTH, EMBED)) -> Array:
    return nn.with_logical_constraint(x, axes)


class Attention(nn.Module):
    """Multi-head attention (Hugging Face's eager attention: fp32 scores, additive mask)."""

    config: NMTConfig
    num_heads: int

    def setup(self) -> None:
        c, h = self.config, self.num_heads
        heads = (h, c.d_model // h)
        self.q_proj = Dense(heads, (EMBED, HEADS, KV), c)
        self.k_proj = Dense(heads, (EMBED, HEADS, KV), c)
        self.v_proj = Dense(heads, (EMBED, HEADS, KV), c)
        self.out_proj = Dense((c.d_model,), (HEADS, KV, EMBED), c, axis=(-2, -1))

    def kv(self, x: Array) -> KVPair:
        return (_constrain(self.k_proj(x), CACHE_AXES), _constrain(self.v_proj(x), CACHE_AXES))

    def __call__(self, x: Array, k: Array, v: Array, visible: Array) -> Array:
        """``x`` [B, T, E] attends to ``k``/``v`` [B, S, H, D] where ``visible`` [B, T, S]."""
        q = _constrain(self.q_proj(x), CACHE_AXES)
        scores = cpu_gemm.einsum("bqhd,bkhd->bhqk", q, k)
        probs = self._probs(scores, visible).astype(v.dtype)
        return self.out_proj(_constrain(cpu_gemm.einsum("bhqk,bkhd->bqhd", probs, v), CACHE_AXES))

    def step_kv(self, x: Array) -> KVPair:
        """Keys and values ``[B, H, D, S]`` of ``x`` [B, S, E]: the layout ``attend`` reads
        without transposing it (both dots contract or keep S last: XLA:CPU runs them as
        library matmuls; values as [B, H, S, D] went to a 3.5x slower loop)."""
        k, v = self.kv(x)
        return (_constrain(k.transpose(0, 2, 3, 1), STEP_AXES),
                _constrain(v.transpose(0, 2, 3, 1), STEP_AXES))

    def attend(self, x: Array, keys: Array, values: Array, visible: Array) -> Array:
        """``__call__`` on ``step_kv``'s layout: ``keys`` and ``values`` [B, H, D, S]."""
        q = _constrain(self.q_proj(x), CACHE_AXES)
        scores = cpu_gemm.einsum("bqhd,bhdk->bhqk", q, keys)
        probs = self._probs(scores, visible).astype(values.dtype)
        ctx = cpu_gemm.einsum("bhqk,bhdk->bqhd", probs, values)
        return self.out_proj(_constrain(ctx, CACHE_AXES))

    def _probs(self, scores: Array, visible: Array) -> Array:
        """Softmax over the visible keys of fp32 ``scores`` [B, H, T, S] scaled by 1/sqrt(D)."""
        scale = (self.config.d_model // self.num_heads) ** -0.5
        scores = scores.astype(jnp.float32) * scale
        scores = jnp.where(visible[:, None], scores, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(scores, axis=-1)


class FeedForward(nn.Module):
    config: NMTConfig
    ffn_dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        y = Dense((self.ffn_dim,), (EMBED, MLP), c, name="fc1")(x)
        y = _ACTIVATIONS[c.activation_function](_constrain(y, (BATCH, LENGTH, MLP)))
        return Dense((c.d_model,), (MLP, EMBED), c, name="fc2")(y)


class EncoderLayer(nn.Module):
    config: NMTConfig

    def setup(self) -> None:
        c = self.config
        self.self_attn = Attention(c, c.encoder_attention_heads)
        self.self_attn_layer_norm = _layer_norm(c)
        self.ffn = FeedForward(c, c.encoder_ffn_dim)
        self.final_layer_norm = _layer_norm(c)

    def __call__(self, x: Array, visible: Array) -> Array:
        y = self.self_attn_layer_norm(x)
        x = _constrain(x + self.self_attn(y, *self.self_attn.kv(y), visible))
        return _constrain(x + self.ffn(self.final_layer_norm(x)))


class DecoderLayer(nn.Module):
    config: NMTConfig

    def setup(self) -> None:
        c = self.config
        self.self_attn = Attention(c, c.decoder_attention_heads)
        self.self_attn_layer_norm = _layer_norm(c)
        self.encoder_attn = Attention(c, c.decoder_attention_heads)
        self.encoder_attn_layer_norm = _layer_norm(c)
        self.ffn = FeedForward(c, c.decoder_ffn_dim)
        self.final_layer_norm = _layer_norm(c)

    def cross_kv(self, encoded: Array) -> KVPair:
        return self.encoder_attn.kv(encoded)

    def __call__(self, x: Array, self_visible: Array, cross: KVPair, cross_visible: Array,
                 cache: KVPair | None, index: Array | int) -> tuple[Array, KVPair]:
        y = self.self_attn_layer_norm(x)
        k, v = self.self_attn.kv(y)
        if cache is not None:  # write this step's keys/values at ``index``, attend to all
            start = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
        x = _constrain(x + self.self_attn(y, k, v, self_visible))
        y = self.encoder_attn_layer_norm(x)
        x = _constrain(x + self.encoder_attn(y, *cross, cross_visible))
        return _constrain(x + self.ffn(self.final_layer_norm(x))), (k, v)

    def step_cross_kv(self, encoded: Array) -> KVPair:
        return self.encoder_attn.step_kv(encoded)

    def step(self, x: Array, self_visible: Array, cross: KVPair, cross_visible: Array,
             cache: KVPair, slot: Array | int) -> tuple[Array, KVPair]:
        """One decoding step of ``x`` [B, T, E] on ``step_kv``'s layout: the T new keys/values
        are written at cache slots ``slot..slot+T-1``; ``self_visible`` [B, T, W]: which of the
        first ``W <= slots`` slots each attends to (a beam search passes the filled prefix)."""
        y = self.self_attn_layer_norm(x)
        k, v = self.self_attn.step_kv(y)
        k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, 0, 0, slot))
        v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, 0, slot))
        width = self_visible.shape[-1]
        x = _constrain(x + self.self_attn.attend(y, k[..., :width], v[..., :width],
                                                 self_visible))
        y = self.encoder_attn_layer_norm(x)
        x = _constrain(x + self.encoder_attn.attend(y, *cross, cross_visible))
        return _constrain(x + self.ffn(self.final_layer_norm(x))), (k, v)


class Stack(nn.Module):
    """The layers of the encoder or the decoder and their final ``layer_norm``."""

    config: NMTConfig
    decoder: bool

    def setup(self) -> None:
        c = self.config
        if self.decoder:
            self.layers = [DecoderLayer(c) for _ in range(c.decoder_layers)]
        else:
            self.layers = [EncoderLayer(c) for _ in range(c.encoder_layers)]
        self.layer_norm = _layer_norm(c)


class NMTModel(nn.Module):
    """``M2M100ForConditionalGeneration`` (M2M100, NLLB-200): ``__call__`` gives the logits."""

    config: NMTConfig

    def setup(self) -> None:
        c = self.config
        self.shared = nn.Embed(c.vocab_size, c.d_model, param_dtype=jnp.float32,
                               embedding_init=_axes(nn.initializers.normal(c.init_std),
                                                    (VOCAB, EMBED)))
        self.encoder = Stack(c, decoder=False)
        self.decoder = Stack(c, decoder=True)
        if not c.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _axes(nn.initializers.normal(c.init_std),
                                                       (EMBED, VOCAB)),
                                      (c.d_model, c.vocab_size), jnp.float32)

    def _embed(self, ids: Array, offset: Array | int) -> Array:
        return self._embed_at(ids, position_ids(ids, self.config.pad_token_id, offset))

    def _embed_at(self, ids: Array, positions: Array) -> Array:
        c = self.config
        x = self.shared(ids) * c.embed_scale
        x = x + sinusoidal_positions(positions, c.d_model, c.pad_token_id)
        return _constrain(x.astype(jnp.dtype(c.dtype)))

    def encode(self, input_ids: Array, attention_mask: Array) -> Array:
        """Encoder output ``[B, S, E]`` (after the final LayerNorm)."""
        x = self._embed(input_ids, 0)
        visible = jnp.broadcast_to(attention_mask[:, None, :].astype(bool),
                                   (x.shape[0], x.shape[1], x.shape[1]))
        for layer in self.encoder.layers:
            x = layer(x, visible)
        return self.encoder.layer_norm(x)

    def cross_kv(self, encoded: Array) -> list[KVPair]:
        """Keys and values of the encoder output for every decoder layer's cross-attention."""
        return [layer.cross_kv(encoded) for layer in self.decoder.layers]

    def decode(self, decoder_input_ids: Array, cross: list[KVPair], attention_mask: Array,
               cache: list[KVPair] | None = None,
               index: Array | int = 0) -> tuple[Array, list[KVPair]]:
        """Logits ``[B, T, V]`` (float32) of ``decoder_input_ids`` at positions ``index..``.

        Without ``cache`` the T tokens attend causally to each other (teacher forcing, index 0).
        With ``cache`` (``init_cache``'s layout) they are written at ``index`` and attend to every
        cached position up to their own; the updated cache is returned.
        """
        batch, length = decoder_input_ids.shape
        x = self._embed(decoder_input_ids, index)
        query_pos = index + jnp.arange(length)
        key_len = length if cache is None else cache[0][0].shape[1]
        self_visible = jnp.broadcast_to(jnp.arange(key_len)[None, :] <= query_pos[:, None],
                                        (batch, length, key_len))
        cross_visible = jnp.broadcast_to(attention_mask[:, None, :].astype(bool),
                                         (batch, length, attention_mask.shape[1]))
        new_cache = []
        for i, layer in enumerate(self.decoder.layers):
            x, kv = layer(x, self_visible, cross[i], cross_visible,
                          None if cache is None else cache[i], index)
            new_cache.append(kv)
        return self._logits(x), new_cache

    def _logits(self, x: Array) -> Array:
        """The output projection of the last decoder layer's ``x`` [B, T, E]: float32 logits."""
        c = self.config
        x = self.decoder.layer_norm(x)
        # The tied embedding is [V, E]: contracted on its last axis, never transposed in memory.
        kernel, axis = (self.shared.embedding, 1) if c.tie_word_embeddings else (self.lm_head, 0)
        dtype = jnp.dtype(c.dtype)
        logits = cpu_gemm.dot_general(x.astype(dtype), kernel.astype(dtype),
                                      (((2,), (axis,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        return _constrain(logits, (BATCH, LENGTH, VOCAB))

    def step_cross_kv(self, encoded: Array) -> list[KVPair]:
        """``cross_kv`` in ``decode_step``'s layout (keys and values [B, H, D, S])."""
        return [layer.step_cross_kv(encoded) for layer in self.decoder.layers]

    def decode_step(self, tokens: Array, cross: list[KVPair], attention_mask: Array,
                    cache: list[KVPair], index: Array | int,
                    visible: Array) -> tuple[Array, list[KVPair]]:
        """Logits ``[B, T, V]`` (float32) of T hypotheses of each source row, one token each, all
        at decoder position ``index``, and the updated cache (``init_step_cache``).

        The hypotheses of a row share its cache: ``slots = max_length * T`` keys/values, the
        token of hypothesis ``j`` written at slot ``index * T + j``. ``visible`` [B, T, W] says
        which of the first ``W <= slots`` slots each hypothesis attends to (its own ancestors': see
        ``xstilts.decoding``), so a beam search reorders no cache. ``cross``: ``step_cross_kv``
        of the encoder output, one row per source row.
        """
        c = self.config
        positions = (index + 1) * (tokens != c.pad_token_id) + c.pad_token_id
        x = self._embed_at(tokens, positions)
        cross_visible = jnp.broadcast_to(attention_mask[:, None, :].astype(bool),
                                         (x.shape[0], x.shape[1], attention_mask.shape[1]))
        slot = index * tokens.shape[1]
        new_cache = []
        for i, layer in enumerate(self.decoder.layers):
            x, kv = layer.step(x, visible, cross[i], cross_visible, cache[i], slot)
            new_cache.append(kv)
        return self._logits(x), new_cache

    def __call__(self, input_ids: Array, attention_mask: Array,
                 decoder_input_ids: Array) -> Array:
        encoded = self.encode(input_ids, attention_mask)
        logits, _ = self.decode(decoder_input_ids, self.cross_kv(encoded), attention_mask)
        return logits


def init_cache(config: NMTConfig, batch: int, max_length: int) -> list[KVPair]:
    """Zeroed self-attention keys/values ``[B, max_length, H, D]`` per decoder layer."""
    h = config.decoder_attention_heads
    shape = (batch, max_length, h, config.d_model // h)
    dtype = jnp.dtype(config.dtype)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
            for _ in range(config.decoder_layers)]


def init_step_cache(config: NMTConfig, batch: int, slots: int) -> list[KVPair]:
    """Zeroed keys and values ``[B, H, D, slots]`` per decoder layer, the layout of
    ``NMTModel.decode_step``."""
    h = config.decoder_attention_heads
    shape, dtype = (batch, h, config.d_model // h, slots), jnp.dtype(config.dtype)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
            for _ in range(config.decoder_layers)]


def init_params(config: NMTConfig, rng: Array) -> dict[str, Any]:
    """Random parameters (unboxed) for ``config``."""
    ids = jnp.ones((1, 4), jnp.int32)
    variables = NMTModel(config).init(rng, ids, jnp.ones_like(ids), ids)
    return nn.meta.unbox(variables["params"])
