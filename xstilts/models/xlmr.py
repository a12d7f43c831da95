"""XLM-RoBERTa encoder in flax.linen, with t5x-style logical axes on every parameter.

The module tree follows Hugging Face's ``XLMRobertaModel`` (``embeddings``, ``encoder/layer_<i>``,
``pooler``) so that weight conversion is a rename table (``xstilts.models.convert``). With
``scan_layers=True`` the layers are stacked under ``encoder/layers`` with a leading ``layers`` axis.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xstilts.models import attention as attention_lib
from xstilts.models import cpu_gemm
from xstilts.models.dropout import Dropout

Array = jax.Array
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
DropoutRng = Literal["threefry", "rbg", "unsafe_rbg"]
DROPOUT_RNGS: tuple[str, ...] = ("threefry", "rbg", "unsafe_rbg")

# Logical axis names used by the model (rules map them to mesh axes, xstilts.partitioning).
BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, LAYERS = (
    "batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")
ACTIVATION_AXES = (BATCH, LENGTH, EMBED)


@dataclasses.dataclass(frozen=True)
class XLMRConfig:
    """Hyper-parameters of an XLM-R encoder; field names are Hugging Face's ``XLMRobertaConfig``."""

    vocab_size: int = 250002
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    hidden_act: str = "gelu"
    add_pooling_layer: bool = True
    # Implementation choices (not part of the Hugging Face config).
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: RematPolicy = "none"
    scan_layers: bool = False
    # einsum | xla | cudnn | splash, or auto (per backend; xstilts.models.attention).
    attention: attention_lib.AttentionImpl = "auto"
    # PRNG of dropout masks in training: threefry (JAX's default), or rbg / unsafe_rbg (the
    # hardware RNG on TPU, much cheaper; maxtext's default is unsafe_rbg). The train state's key
    # stays threefry; each step's dropout key is derived from it (xstilts.trainer).
    # On CPU threefry is the cheap one: xstilts.models.dropout fuses its hash into one kernel
    # (an [8,12,128,128] mask: 2.3 ms CPU vs 23 ms for rbg / unsafe_rbg).
    dropout_rng: DropoutRng = "threefry"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r}: expected one of {sorted(_ACTIVATIONS)}")
        if self.remat not in ("none", "full", "dots", "dots_no_batch"):
            raise ValueError(f"remat {self.remat!r}: expected none, full, dots or dots_no_batch")
        if self.attention not in attention_lib.IMPLEMENTATIONS:
            raise ValueError(f"attention {self.attention!r}: expected one of "
                             f"{attention_lib.IMPLEMENTATIONS}")
        if self.dropout_rng not in DROPOUT_RNGS:
            raise ValueError(f"dropout_rng {self.dropout_rng!r}: expected one of {DROPOUT_RNGS}")
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mask_token_id(self) -> int:
        """``<mask>`` is the last id of the vocabulary (250001 for the official models)."""
        return self.vocab_size - 1

    @property
    def max_length(self) -> int:
        """Longest input the position table allows (fairseq offsets positions by pad_id + 1)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    def replace(self, **changes: Any) -> XLMRConfig:
        return dataclasses.replace(self, **changes)

    # Presets -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> XLMRConfig:
        """A small model for tests and the CPU demo (not a released checkpoint)."""
        base = dict(vocab_size=1002, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=258)
        return cls(**{**base, **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> XLMRConfig:
        """``FacebookAI/xlm-roberta-base``."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides: Any) -> XLMRConfig:
        """``FacebookAI/xlm-roberta-large``."""
        base = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096)
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> XLMRConfig:
        presets = {"tiny": cls.tiny, "base": cls.base, "large": cls.large}
        if name not in presets:
            raise ValueError(f"unknown XLM-R preset {name!r}: expected one of {sorted(presets)}")
        return presets[name](**overrides)

    # Hugging Face config.json --------------------------------------------------------------
    _HF_FIELDS = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "type_vocab_size", "initializer_range",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "pad_token_id", "bos_token_id",
        "eos_token_id", "hidden_act")

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], *, source: str = "config",
                     **overrides: Any) -> XLMRConfig:
        """Build from a Hugging Face ``config.json`` dict; refuses other architectures."""
        model_type = hf.get("model_type")
        if model_type not in ("xlm-roberta", "roberta"):
            raise ValueError(
                f"{source}: model_type {model_type!r} is not XLM-R: expected 'xlm-roberta' "
                f"(or 'roberta'); architectures={hf.get('architectures')}")
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type {pos_type!r}: expected 'absolute'")
        cls.check_hf_fields(hf, source)
        kwargs = {k: hf[k] for k in cls._HF_FIELDS if k in hf}
        kwargs["layer_norm_eps"] = float(hf.get("layer_norm_eps", 1e-5))
        try:
            return cls(**{**kwargs, **overrides})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    # The architecture's shape: a config.json without one of these is not a usable XLM-R config
    # (transformers would fill in BERT-base defaults, e.g. a 30522-token vocabulary).
    _HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings")
    _HF_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "max_position_embeddings", "type_vocab_size")
    _HF_INTS = ("pad_token_id", "bos_token_id", "eos_token_id")
    _HF_RATES = ("hidden_dropout_prob", "attention_probs_dropout_prob")

    @classmethod
    def check_hf_fields(cls, hf: Mapping[str, Any], source: str) -> None:
        """Field by field: present, of its type (a JSON string "12" is not a number) and in
        range; each error names ``source`` (the file), the field and what was expected."""
        def bad(key: str, expected: str) -> ValueError:
            value = hf[key]
            return ValueError(f"{source}: field {key!r} is {value!r} ({type(value).__name__}); "
                              f"expected {expected}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        missing = [k for k in cls._HF_REQUIRED if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}; expected a Hugging Face "
                             f"XLM-R config.json with {list(cls._HF_REQUIRED)}")
        for key in cls._HF_POSITIVE_INTS:
            if key in hf and not (is_int(hf[key]) and hf[key] > 0):
                raise bad(key, "a positive integer")
        for key in cls._HF_INTS:
            if key in hf and not (is_int(hf[key]) and 0 <= hf[key] < hf["vocab_size"]):
                raise bad(key, f"an integer token id in [0, vocab_size={hf['vocab_size']})")
        for key in cls._HF_RATES:
            if key in hf and not (isinstance(hf[key], int | float) and not
                                  isinstance(hf[key], bool) and 0 <= hf[key] < 1):
                raise bad(key, "a number in [0, 1)")
        for key in ("initializer_range", "layer_norm_eps"):
            if key in hf and not (isinstance(hf[key], int | float) and not
                                  isinstance(hf[key], bool) and hf[key] > 0):
                raise bad(key, "a positive number")
        if "hidden_act" in hf and not isinstance(hf["hidden_act"], str):
            raise bad("hidden_act", f"one of {sorted(_ACTIVATIONS)}")

    def to_hf_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self._HF_FIELDS}
        d.update(layer_norm_eps=self.layer_norm_eps, model_type="xlm-roberta",
                 position_embedding_type="absolute", classifier_dropout=None,
                 architectures=architectures or ["XLMRobertaModel"])
        return d

    @classmethod
    def from_json_file(cls, path: str, **overrides: Any) -> XLMRConfig:
        try:
            with open(path, encoding="utf-8") as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(hf, source=path, **overrides)


def gelu_exact(x: Array) -> Array:
    """Exact GELU as Hugging Face writes it, ``x / 2 * (1 + erf(x / sqrt(2)))``: XLA:CPU's
    ``erf`` is cheaper than the ``erfc`` of ``nn.gelu(approximate=False)`` (forward and
    backward of the base model's FFN activations: ~30% less CPU time)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))


_ACTIVATIONS = {"gelu": gelu_exact, "gelu_new": nn.gelu, "relu": nn.relu, "gelu_fast": nn.gelu}


def position_ids_from_input_ids(input_ids: Array, pad_token_id: int) -> Array:
    """fairseq ``make_positions``: cumsum over non-pad tokens, offset by the pad id."""
    mask = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_token_id


def position_ids_from_segment_ids(segment_ids: Array, pad_token_id: int) -> Array:
    """Packed rows: positions restart in every segment (``pad + 1 + offset in the segment``,
    ``pad`` on segment 0), the positions each sequence gets alone; ``[..., L]``."""
    seg = segment_ids.astype(jnp.int32)
    index = jnp.broadcast_to(jnp.arange(seg.shape[-1], dtype=jnp.int32), seg.shape)
    starts = jnp.concatenate([jnp.ones_like(seg[..., :1], bool),
                              seg[..., 1:] != seg[..., :-1]], axis=-1)
    start = jax.lax.cummax(jnp.where(starts, index, 0), axis=seg.ndim - 1)
    return jnp.where(seg > 0, index - start + pad_token_id + 1, pad_token_id)


def _dense_init(config: XLMRConfig) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=config.initializer_range)


def _param_axes(init: nn.initializers.Initializer, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init, axes)


def constrain(x: Array, axes: tuple[str | None, ...] = ACTIVATION_AXES) -> Array:
    """Sharding constraint by logical axes; a no-op outside a mesh with axis rules."""
    return nn.with_logical_constraint(x, axes)


class DenseGeneral(nn.Module):
    """A dense layer over ``axis`` whose kernel ``[in..., out...]`` and bias carry logical axes."""

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    config: XLMRConfig
    axis: int | tuple[int, ...] = -1
    # float32: the matmul accumulates and returns float32 whatever the compute dtype (logits).
    preferred_element_type: str | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(a % x.ndim for a in axes)
        in_shape = tuple(x.shape[a] for a in axes)
        dtype = jnp.dtype(self.config.dtype)
        kernel = self.param("kernel", _param_axes(_dense_init(self.config), self.kernel_axes),
                            in_shape + tuple(self.features), jnp.float32)
        bias = self.param("bias", _param_axes(nn.initializers.zeros_init(),
                                              self.kernel_axes[len(in_shape):]),
                          tuple(self.features), jnp.float32)
        out = None if self.preferred_element_type is None else \
            jnp.dtype(self.preferred_element_type)
        y = cpu_gemm.dot_general(x.astype(dtype), kernel.astype(dtype),
                                 ((axes, tuple(range(len(in_shape)))), ((), ())),
                                 preferred_element_type=out)
        return y + bias.astype(out or dtype)


def layer_norm(config: XLMRConfig, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with ``scale``/``bias`` on the ``embed`` axis; statistics in float32."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
        scale_init=_param_axes(nn.initializers.ones_init(), (EMBED,)),
        bias_init=_param_axes(nn.initializers.zeros_init(), (EMBED,)), name=name)


class Embeddings(nn.Module):
    """Word + fairseq position + token-type embeddings, LayerNorm, dropout."""

    config: XLMRConfig

    def setup(self) -> None:
        c = self.config
        self.word_embeddings = nn.Embed(
            c.vocab_size, c.hidden_size, param_dtype=jnp.float32,
            embedding_init=_param_axes(_dense_init(c), (VOCAB, EMBED)))
        self.position_embeddings = nn.Embed(
            c.max_position_embeddings, c.hidden_size, param_dtype=jnp.float32,
            embedding_init=_param_axes(_dense_init(c), (None, EMBED)))
        self.token_type_embeddings = nn.Embed(
            c.type_vocab_size, c.hidden_size, param_dtype=jnp.float32,
            embedding_init=_param_axes(_dense_init(c), (None, EMBED)))
        self.LayerNorm = layer_norm(c)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids: Array, *, deterministic: bool,
                 segment_ids: Array | None = None) -> Array:
        c = self.config
        if segment_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, c.pad_token_id)
        else:
            position_ids = position_ids_from_segment_ids(segment_ids, c.pad_token_id)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(jnp.zeros_like(input_ids)))
        x = self.LayerNorm(constrain(x))
        x = self.dropout(x, deterministic=deterministic)
        return constrain(x.astype(jnp.dtype(c.dtype)))

    def word_embedding_matrix(self) -> Array:
        return self.word_embeddings.embedding


class SelfAttention(nn.Module):
    """Multi-head self-attention; softmax in float32 whatever the compute dtype.

    ``config.attention`` picks the kernel (``xstilts.models.attention``); ``einsum`` is the
    reference and the only one with dropout on the attention probabilities. ``segment_ids``
    (packed rows) keeps attention within each segment.
    """

    config: XLMRConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, *, deterministic: bool,
                 segment_ids: Array | None = None) -> Array:
        c = self.config
        heads = (c.num_attention_heads, c.head_dim)
        qkv_axes = (EMBED, HEADS, KV)
        q = DenseGeneral(heads, qkv_axes, c, name="query")(x)
        k = DenseGeneral(heads, qkv_axes, c, name="key")(x)
        v = DenseGeneral(heads, qkv_axes, c, name="value")(x)
        q = nn.with_logical_constraint(q, (BATCH, LENGTH, HEADS, KV))
        k = nn.with_logical_constraint(k, (BATCH, LENGTH, HEADS, KV))
        v = nn.with_logical_constraint(v, (BATCH, LENGTH, HEADS, KV))
        platform = attention_lib.current_platform()
        impl = attention_lib.resolve(
            c.attention, platform=platform, dtype=jnp.dtype(c.dtype), length=x.shape[1],
            head_dim=c.head_dim,
            dropout_active=not deterministic and c.attention_probs_dropout_prob > 0)
        if impl == "einsum":
            q = q / jnp.sqrt(jnp.asarray(c.head_dim, q.dtype))
            scores = cpu_gemm.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
            bias = attention_lib.mask_bias(attention_mask, segment_ids)
            probs = jax.nn.softmax(scores + bias, axis=-1)
            probs = Dropout(c.attention_probs_dropout_prob)(
                probs, deterministic=deterministic)
            ctx = cpu_gemm.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        else:
            ctx = attention_lib.fused_attention(q, k, v, attention_mask, impl, platform=platform,
                                                segment_ids=segment_ids)
        return nn.with_logical_constraint(ctx, (BATCH, LENGTH, HEADS, KV))


class Attention(nn.Module):
    config: XLMRConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, *, deterministic: bool,
                 segment_ids: Array | None = None) -> Array:
        c = self.config
        ctx = SelfAttention(c, name="self")(x, attention_mask, deterministic=deterministic,
                                            segment_ids=segment_ids)
        out = AttentionOutput(c, name="output")(ctx, x, deterministic=deterministic)
        return out


class AttentionOutput(nn.Module):
    config: XLMRConfig

    @nn.compact
    def __call__(self, ctx: Array, residual: Array, *, deterministic: bool) -> Array:
        c = self.config
        y = DenseGeneral((c.hidden_size,), (HEADS, KV, EMBED), c, axis=(-2, -1), name="dense")(ctx)
        y = Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return constrain(layer_norm(c, name="LayerNorm")(constrain(y + residual)))


class Intermediate(nn.Module):
    config: XLMRConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        y = DenseGeneral((c.intermediate_size,), (EMBED, MLP), c, name="dense")(x)
        y = nn.with_logical_constraint(y, (BATCH, LENGTH, MLP))
        return _ACTIVATIONS[c.hidden_act](y)


class Output(nn.Module):
    config: XLMRConfig

    @nn.compact
    def __call__(self, y: Array, residual: Array, *, deterministic: bool) -> Array:
        c = self.config
        y = DenseGeneral((c.hidden_size,), (MLP, EMBED), c, name="dense")(y)
        y = Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return constrain(layer_norm(c, name="LayerNorm")(constrain(y + residual)))


class Layer(nn.Module):
    """One post-LayerNorm transformer block (attention, then the feed-forward network)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool,
                 segment_ids: Array | None = None) -> Array:
        c = self.config
        x = Attention(c, name="attention")(x, attention_mask, deterministic=deterministic,
                                           segment_ids=segment_ids)
        y = Intermediate(c, name="intermediate")(x)
        return Output(c, name="output")(y, x, deterministic=deterministic)


class _ScannedLayer(nn.Module):
    """``Layer`` in the ``(carry, x) -> (carry, y)`` form ``nn.scan`` needs."""

    config: XLMRConfig
    collect_hidden: bool

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool,
                 segment_ids: Array | None):
        x = _layer_class(self.config)(self.config, name="layer")(x, attention_mask, deterministic,
                                                                 segment_ids)
        return x, (x if self.collect_hidden else None)


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _layer_class(config: XLMRConfig) -> type[nn.Module]:
    if config.remat == "none":
        return Layer
    # static_argnums counts `self` as 0: (x=1, attention_mask=2, deterministic=3,
    # segment_ids=4).
    return nn.remat(Layer, policy=_REMAT_POLICIES[config.remat], static_argnums=(3,),
                    prevent_cse=not config.scan_layers)


class Encoder(nn.Module):
    """The layer stack: a Python loop (``layer_<i>``) or ``nn.scan`` (``layers``, stacked)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, *, deterministic: bool,
                 output_hidden_states: bool, segment_ids: Array | None = None
                 ) -> tuple[Array, tuple[Array, ...] | None]:
        c = self.config
        if c.scan_layers:
            stack = nn.scan(
                _ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                         "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS})
            x, ys = stack(c, output_hidden_states, name="layers")(
                x, attention_mask, deterministic, segment_ids)
            hidden = None
            if output_hidden_states:
                hidden = tuple(ys[i] for i in range(c.num_hidden_layers))
            return x, hidden
        layer_cls = _layer_class(c)
        hidden: list[Array] = []
        for i in range(c.num_hidden_layers):
            x = layer_cls(c, name=f"layer_{i}")(x, attention_mask, deterministic, segment_ids)
            hidden.append(x)
        return x, (tuple(hidden) if output_hidden_states else None)


class Pooler(nn.Module):
    """RoBERTa pooler: dense + tanh on ``<s>``. Part of the encoder (transfers in STILTs)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        c = self.config
        y = DenseGeneral((c.hidden_size,), (EMBED, MLP), c, name="dense")(hidden[:, 0])
        return jnp.tanh(y)


def check_length(config: XLMRConfig, length: int) -> None:
    """A ``ValueError`` (at trace time, before compiling) for inputs longer than the positions.

    Position ids run up to ``length + pad_token_id``; past ``max_position_embeddings`` the
    lookup would read out of range and turn every hidden state into NaN without an error.
    """
    if length > config.max_length:
        raise ValueError(
            f"input length {length} exceeds the model's {config.max_length} positions "
            f"(max_position_embeddings {config.max_position_embeddings} minus the padding "
            f"offset {config.pad_token_id + 1}): truncate inputs to at most "
            f"{config.max_length} tokens")


class XLMRModel(nn.Module):
    """The XLM-R encoder (Hugging Face ``XLMRobertaModel``).

    ``__call__`` returns the last hidden state ``[B, L, H]``; with ``output_hidden_states=True``
    it returns ``(last_hidden_state, hidden_states)`` where ``hidden_states`` has
    ``num_hidden_layers + 1`` entries, index 0 being the embedding output. ``pool`` gives the
    pooler output for a last hidden state.

    ``segment_ids [B, L]`` (0 on padding, 1, 2, ... per sequence) packs several sequences into a
    row: attention stays within each segment and positions restart in each, so every
    sequence gets the hidden states it would get alone in its own row.
    """

    config: XLMRConfig

    def setup(self) -> None:
        c = self.config
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        if c.add_pooling_layer:
            self.pooler = Pooler(c)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 segment_ids: Array | None = None, deterministic: bool = True,
                 output_hidden_states: bool = False):
        check_length(self.config, input_ids.shape[-1])
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).astype(jnp.int32)
        if segment_ids is not None:
            if segment_ids.shape != input_ids.shape:
                raise ValueError(f"segment_ids: expected the shape of input_ids "
                                 f"{input_ids.shape}, got {segment_ids.shape}")
            segment_ids = nn.with_logical_constraint(segment_ids, (BATCH, LENGTH))
        input_ids = nn.with_logical_constraint(input_ids, (BATCH, LENGTH))
        x = self.embeddings(input_ids, deterministic=deterministic, segment_ids=segment_ids)
        last, hidden = self.encoder(x, attention_mask,
                                    deterministic=deterministic,
                                    output_hidden_states=output_hidden_states,
                                    segment_ids=segment_ids)
        if self.config.add_pooling_layer and self.is_initializing():
            self.pooler(last)  # create the pooler's parameters at init
        if output_hidden_states:
            return last, (x, *hidden)
        return last

    def pool(self, last_hidden_state: Array) -> Array:
        if not self.config.add_pooling_layer:
            raise ValueError("this XLMRConfig has add_pooling_layer=False: no pooler to apply")
        return self.pooler(last_hidden_state)

    def word_embedding_matrix(self) -> Array:
        """The ``[vocab, embed]`` word embeddings (the tied MLM decoder uses them)."""
        return self.embeddings.word_embedding_matrix()

    def init_params(self, rng: Array, batch: int = 1, length: int = 8) -> dict[str, Any]:
        ids = jnp.full((batch, length), self.config.bos_token_id, jnp.int32)
        return nn.unbox(self.init(rng, ids, jnp.ones_like(ids)))["params"]


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
