"""Hugging Face M2M100 / NLLB-200 checkpoints -> ``xstilts.models.nmt`` parameters, without torch.

``load_nmt_checkpoint(path_or_hub_id)`` reads ``config.json`` and ``model.safetensors`` (also
sharded) or ``pytorch_model.bin`` (through ``xstilts.models.torch_pickle``) and returns
``(NMTConfig, params)``. Linear weights are transposed, attention projections reshaped to
``[embed, heads, kv]`` / ``[heads, kv, embed]``. The shared embedding may be stored under any of
the names Hugging Face ties (``model.shared``, ``model.encoder.embed_tokens``,
``model.decoder.embed_tokens``, ``lm_head``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from xstilts.models.convert import read_state_dict, resolve_checkpoint_dir
from xstilts.models.nmt import NMTConfig, init_params

log = logging.getLogger(__name__)

Params = dict[str, Any]
_SHARED = ("model.shared.weight", "model.encoder.embed_tokens.weight",
           "model.decoder.embed_tokens.weight", "lm_head.weight")
# Buffers older files carry (recomputed here); never an error.
_IGNORED = re.compile(r"^model\.(encoder|decoder)\.embed_positions\.weights?$")


def _rules(config: NMTConfig) -> list[tuple[tuple[str, ...], str, Callable[[np.ndarray],
                                                                            np.ndarray]]]:
    """``(our path, Hugging Face key, transform)`` for every weight but the shared embedding."""
    rules = []

    def linear(ours: tuple[str, ...], hf: str, reshape: Callable | None = None) -> None:
        rules.append((ours + ("kernel",), f"{hf}.weight",
                      reshape or (lambda w: np.ascontiguousarray(w.T))))
        rules.append((ours + ("bias",), f"{hf}.bias", lambda b: b))

    def norm(ours: tuple[str, ...], hf: str) -> None:
        rules.append((ours + ("scale",), f"{hf}.weight", lambda w: w))
        rules.append((ours + ("bias",), f"{hf}.bias", lambda b: b))

    def attention(ours: tuple[str, ...], hf: str, heads: int) -> None:
        e, d = config.d_model, config.d_model // heads
        for proj in ("q_proj", "k_proj", "v_proj"):
            rules.append((ours + (proj, "kernel"), f"{hf}.{proj}.weight",
                          lambda w: np.ascontiguousarray(w.T.reshape(e, heads, d))))
            rules.append((ours + (proj, "bias"), f"{hf}.{proj}.bias",
                          lambda b: b.reshape(heads, d)))
        linear(ours + ("out_proj",), f"{hf}.out_proj",
               lambda w: np.ascontiguousarray(w.T.reshape(heads, d, e)))

    for stack, n, heads in (("encoder", config.encoder_layers, config.encoder_attention_heads),
                            ("decoder", config.decoder_layers, config.decoder_attention_heads)):
        for i in range(n):
            ours, hf = (stack, f"layers_{i}"), f"model.{stack}.layers.{i}"
            attention(ours + ("self_attn",), f"{hf}.self_attn", heads)
            norm(ours + ("self_attn_layer_norm",), f"{hf}.self_attn_layer_norm")
            if stack == "decoder":
                attention(ours + ("encoder_attn",), f"{hf}.encoder_attn", heads)
                norm(ours + ("encoder_attn_layer_norm",), f"{hf}.encoder_attn_layer_norm")
            linear(ours + ("ffn", "fc1"), f"{hf}.fc1")
            linear(ours + ("ffn", "fc2"), f"{hf}.fc2")
            norm(ours + ("final_layer_norm",), f"{hf}.final_layer_norm")
        norm((stack, "layer_norm"), f"model.{stack}.layer_norm")
    if not config.tie_word_embeddings:
        rules.append((("lm_head",), "lm_head.weight", lambda w: np.ascontiguousarray(w.T)))
    return rules


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_nmt_checkpoint(path_or_hub_id: str | os.PathLike,
                        **config_overrides: Any) -> tuple[NMTConfig, Params]:
    """``(NMTConfig, params)`` of a Hugging Face M2M100/NLLB checkpoint folder (or hub id).

    A missing weight or a weight of the wrong shape is an error naming the file and the key;
    unexpected keys are logged. ``config_overrides`` set implementation fields (``dtype``).
    """
    folder = resolve_checkpoint_dir(path_or_hub_id)
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: missing (expected a Hugging Face config.json)")
    config = NMTConfig.from_json_file(config_path, **config_overrides)
    state, source = read_state_dict(folder)
    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))

    params: Params = {}
    used: set[str] = set()

    def put(path: tuple[str, ...], key: str, value: np.ndarray,
            transform: Callable[[np.ndarray], np.ndarray]) -> None:
        want = tuple(_get(expected, path).shape)
        value = np.asarray(value, dtype=np.float32)
        try:
            converted = transform(value)
        except ValueError:
            converted = None
        if converted is None or converted.shape != want:
            raise ValueError(
                f"{source}: weight {key} has shape {tuple(value.shape)}, which does not fit "
                f"{'/'.join(path)} of shape {want} for {config_path} (d_model={config.d_model}, "
                f"vocab_size={config.vocab_size})")
        _set(params, path, converted)
        used.add(key)

    shared_key = next((k for k in _SHARED if k in state), None)
    if shared_key is None:
        raise ValueError(f"{source}: no shared embedding: expected one of {list(_SHARED)}")
    put(("shared", "embedding"), shared_key, state[shared_key], lambda w: w)
    for key in _SHARED:  # tied copies: must equal the one used
        if key in state and key != shared_key and not (
                key == "lm_head.weight" and not config.tie_word_embeddings):
            if not np.array_equal(np.asarray(state[key], np.float32),
                                  params["shared"]["embedding"]):
                raise ValueError(f"{source}: {key} differs from {shared_key}, but {config_path} "
                                 "ties them (tie_word_embeddings)")
            used.add(key)
    missing = []
    for path, key, transform in _rules(config):
        if key not in state:
            missing.append(key)
            continue
        put(path, key, state[key], transform)
    if missing:
        raise ValueError(f"{source}: {len(missing)} weight(s) missing, e.g. {missing[:5]}; "
                         f"expected an M2M100/NLLB checkpoint with {config.encoder_layers} "
                         f"encoder and {config.decoder_layers} decoder layers as {config_path} "
                         "says")
    unexpected = sorted(k for k in state if k not in used and not _IGNORED.match(k))
    if unexpected:
        log.warning("%s: unused weights: %s", source, unexpected)
    return config, params
