"""Hugging Face XLM-R checkpoints <-> xstilts Flax parameters, without torch.

``load_hf_checkpoint(path_or_hub_id)`` reads ``config.json`` and ``model.safetensors`` (also
sharded, with its index) or ``pytorch_model.bin`` and returns ``(XLMRConfig, params)``: the
encoder's parameters at the top level (``embeddings``, ``encoder``, ``pooler``: what ``XLMRModel``
applies) plus any head found in the file under Hugging Face's name (``lm_head``, ``classifier``,
``qa_outputs``). ``task_params`` nests them the way the models in ``heads.py`` expect.
``save_hf_checkpoint`` writes the way back: safetensors and a ``config.json`` that transformers
loads.

The conversion is a rename table: Linear weights are transposed (PyTorch keeps ``[out, in]``), the
attention projections are reshaped to ``[embed, heads, kv]`` / ``[heads, kv, embed]``, LayerNorm
``weight``/``gamma`` become ``scale``, embedding ``weight`` becomes ``embedding``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from xstilts.models.heads import ENCODER_KEY
from xstilts.models.torch_pickle import load_torch_state_dict
from xstilts.models.xlmr import XLMRConfig, XLMRModel

log = logging.getLogger(__name__)

Params = dict[str, Any]
PathTuple = tuple[str, ...]
HEAD_KEYS = ("lm_head", "classifier", "qa_outputs")
SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclasses.dataclass
class LoadReport:
    """What a checkpoint held that we did not use, and what we expected but did not find."""

    source: str
    missing: list[str]
    unexpected: list[str]
    heads: list[str]


# --- per-kind transforms: (to ours, to Hugging Face) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
    ours: PathTuple
    hf: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def _linear(ours: PathTuple, hf: str) -> list[_Rule]:
    return [_Rule(ours + ("kernel",), f"{hf}.weight", _transpose, _transpose),
            _Rule(ours + ("bias",), f"{hf}.bias", _same, _same)]


def _layer_norm(ours: PathTuple, hf: str) -> list[_Rule]:
    return [_Rule(ours + ("scale",), f"{hf}.weight", _same, _same),
            _Rule(ours + ("bias",), f"{hf}.bias", _same, _same)]


def _encoder_rules(config: XLMRConfig) -> list[_Rule]:
    h, nh, hd = config.hidden_size, config.num_attention_heads, config.head_dim
    rules = [
        _Rule(("embeddings", name, "embedding"), f"embeddings.{name}.weight", _same, _same)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    rules += _layer_norm(("embeddings", "LayerNorm"), "embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        ours, hf = ("encoder", f"layer_{i}"), f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            path, key = ours + ("attention", "self", proj), f"{hf}.attention.self.{proj}"
            rules.append(_Rule(path + ("kernel",), f"{key}.weight",
                               lambda w: np.ascontiguousarray(w.T.reshape(h, nh, hd)),
                               lambda k: np.ascontiguousarray(k.reshape(h, h).T)))
            rules.append(_Rule(path + ("bias",), f"{key}.bias",
                               lambda b: b.reshape(nh, hd), lambda b: b.reshape(h)))
        out, key = ours + ("attention", "output"), f"{hf}.attention.output"
        rules.append(_Rule(out + ("dense", "kernel"), f"{key}.dense.weight",
                           lambda w: np.ascontiguousarray(w.T.reshape(nh, hd, h)),
                           lambda k: np.ascontiguousarray(k.reshape(h, h).T)))
        rules.append(_Rule(out + ("dense", "bias"), f"{key}.dense.bias", _same, _same))
        rules += _layer_norm(out + ("LayerNorm",), f"{key}.LayerNorm")
        rules += _linear(ours + ("intermediate", "dense"), f"{hf}.intermediate.dense")
        rules += _linear(ours + ("output", "dense"), f"{hf}.output.dense")
        rules += _layer_norm(ours + ("output", "LayerNorm"), f"{hf}.output.LayerNorm")
    return rules


_POOLER_RULES = _linear(("pooler", "dense"), "pooler.dense")
_HEAD_RULES = {
    "lm_head": (_linear(("lm_head", "dense"), "lm_head.dense")
                + _layer_norm(("lm_head", "layer_norm"), "lm_head.layer_norm")
                + [_Rule(("lm_head", "bias"), "lm_head.bias", _same, _same)]),
    "sequence_classifier": (_linear(("classifier", "dense"), "classifier.dense")
                            + _linear(("classifier", "out_proj"), "classifier.out_proj")),
    "linear_classifier": _linear(("classifier",), "classifier"),
    "qa_outputs": _linear(("qa_outputs",), "qa_outputs"),
}
# Tied or derived tensors that Hugging Face files may carry; never an error.
_IGNORED = re.compile(r"^(lm_head\.decoder\.(weight|bias)|embeddings\.position_ids)$")


# --- reading -------------------------------------------------------------------------------------


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+|[\w.-]+", name)) and not os.path.exists(name)


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike) -> str:
    """A local folder as is; a hub id through ``huggingface_hub`` (its cache first, then online)."""
    path = os.fspath(path_or_hub_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(
            f"{path}: expected a folder with config.json and model weights, got a file")
    if not _looks_like_hub_id(path):
        raise FileNotFoundError(f"{path}: no such folder (and not a Hugging Face hub id)")
    try:
        import huggingface_hub
    except ImportError as e:
        raise FileNotFoundError(
            f"{path}: no such folder; to fetch it from the Hugging Face hub install "
            "huggingface_hub (pip install 'xstilts[test]')") from e
    patterns = ["config.json", "*.safetensors", SAFETENSORS_INDEX, "sentencepiece.bpe.model"]
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        folder = huggingface_hub.snapshot_download(path, allow_patterns=patterns,
                                                   local_files_only=offline)
        if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
            folder = huggingface_hub.snapshot_download(
                path, allow_patterns=patterns + [TORCH_BIN], local_files_only=offline)
    except Exception as e:  # the hub raises many types (offline, 404, gated repo)
        raise FileNotFoundError(
            f"{path}: not a local folder, and the Hugging Face hub could not provide it "
            f"({type(e).__name__}: {e})") from e
    return folder


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors = {}
    try:
        # The flax backend understands bfloat16, which numpy's does not.
        with safe_open(path, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(jax.device_get(f.get_tensor(key)))
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors


def read_state_dict(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of the checkpoint in ``folder`` and the file(s) they came from."""
    single, index, binary = (os.path.join(folder, n)
                             for n in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))
    if os.path.exists(single):
        return _read_safetensors(single), single
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(_read_safetensors(os.path.join(folder, shard)))
        return tensors, index
    if os.path.exists(binary):
        return load_torch_state_dict(binary), binary
    raise FileNotFoundError(
        f"{folder}: no model weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN} "
        "next to config.json")


def _set(tree: Params, path: PathTuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping[str, Any], path: PathTuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _leaf_paths(tree: Mapping[str, Any], prefix: PathTuple = ()) -> Iterator[PathTuple]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _expected_encoder_shapes(config: XLMRConfig) -> dict[PathTuple, tuple[int, ...]]:
    model = XLMRModel(config.replace(scan_layers=False))
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0)))
    return {p: tuple(_get(shapes, p).shape) for p in _leaf_paths(shapes)}


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = f"{ENCODER_KEY}."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    return state


def _legacy_layer_norm_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old BERT-era files call LayerNorm parameters ``gamma``/``beta``."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"(LayerNorm|layer_norm)\.gamma$", r"\1.weight", key)
        key = re.sub(r"(LayerNorm|layer_norm)\.beta$", r"\1.bias", key)
        renamed[key] = value
    return renamed


def _head_rules(state: Mapping[str, np.ndarray]) -> dict[str, list[_Rule]]:
    found = {}
    if "lm_head.dense.weight" in state:
        found["lm_head"] = _HEAD_RULES["lm_head"]
    if "classifier.out_proj.weight" in state:
        found["classifier"] = _HEAD_RULES["sequence_classifier"]
    elif "classifier.weight" in state:
        found["classifier"] = _HEAD_RULES["linear_classifier"]
    if "qa_outputs.weight" in state:
        found["qa_outputs"] = _HEAD_RULES["qa_outputs"]
    return found


_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")


def _layers_in_weights(state: Mapping[str, np.ndarray]) -> int:
    """How many encoder layers the weights hold (1 + the highest ``encoder.layer.N``; 0: none)."""
    numbers = [int(m.group(1)) for m in map(_LAYER_KEY.match, state) if m]
    return max(numbers) + 1 if numbers else 0


def load_hf_checkpoint(path_or_hub_id: str | os.PathLike, *, return_report: bool = False,
                       **config_overrides: Any):
    """Load a Hugging Face XLM-R checkpoint as ``(XLMRConfig, params)`` (see module docstring).

    A missing encoder weight or a weight of the wrong shape is an error naming the file and key;
    a missing pooler (Hugging Face's task models drop it) and unexpected keys are logged and
    returned in the ``LoadReport`` when ``return_report=True``. ``config_overrides`` set our
    implementation fields (``dtype``, ``remat``, ``scan_layers``, dropout rates).
    """
    folder = resolve_checkpoint_dir(path_or_hub_id)
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: missing (expected a Hugging Face config.json)")
    config = XLMRConfig.from_json_file(config_path, **config_overrides)
    raw_state, source = read_state_dict(folder)
    state = _legacy_layer_norm_names(_strip_prefix(raw_state))
    expected = _expected_encoder_shapes(config)

    params: Params = {}
    used: set[str] = set()
    missing: list[str] = []

    def convert(rule: _Rule, expected_shape: tuple[int, ...] | None) -> None:
        if rule.hf not in state:
            missing.append(rule.hf)
            return
        value = np.asarray(state[rule.hf], dtype=np.float32)
        try:
            converted = rule.to_ours(value)
        except ValueError:
            converted = None
        if converted is None or (expected_shape and converted.shape != expected_shape):
            raise ValueError(
                f"{source}: weight {rule.hf} has shape {tuple(value.shape)}, which does not fit "
                f"{'/'.join(rule.ours)} of shape {expected_shape} for {config_path} "
                f"(hidden_size={config.hidden_size}, vocab_size={config.vocab_size}, "
                f"max_position_embeddings={config.max_position_embeddings})")
        _set(params, rule.ours, converted)
        used.add(rule.hf)

    weight_layers = _layers_in_weights(state)
    if weight_layers and weight_layers != config.num_hidden_layers:
        raise ValueError(
            f"{config_path}: field 'num_hidden_layers' is {config.num_hidden_layers}, but "
            f"{source} holds {weight_layers} encoder layers (encoder.layer.0 .. "
            f"encoder.layer.{weight_layers - 1}); expected them to agree (loading "
            f"{min(weight_layers, config.num_hidden_layers)} of them would be another model)")
    for rule in _encoder_rules(config):
        convert(rule, expected[rule.ours])
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} encoder weight(s) missing, e.g. {missing[:5]}; expected an "
            f"XLM-R checkpoint with {config.num_hidden_layers} layers as {config_path} says")
    for rule in _POOLER_RULES:
        convert(rule, expected.get(rule.ours))
    heads = _head_rules(state)
    for rules in heads.values():
        for rule in rules:
            convert(rule, None)
    unexpected = sorted(k for k in state if k not in used and not _IGNORED.match(k))
    if missing:
        log.warning("%s: not in the checkpoint, initialise them fresh: %s", source, missing)
    if unexpected:
        log.warning("%s: unused weights: %s", source, unexpected)
    if "lm_head" in heads and "lm_head.decoder.weight" in state and not np.allclose(
            state["lm_head.decoder.weight"], params["embeddings"]["word_embeddings"]["embedding"]):
        raise ValueError(f"{source}: lm_head.decoder.weight differs from the word embeddings; "
                         "xstilts ties the MLM decoder to them")
    if config.scan_layers:
        params = scan_layer_params(params, config.num_hidden_layers)
    report = LoadReport(source=source, missing=missing, unexpected=unexpected, heads=list(heads))
    return (config, params, report) if return_report else (config, params)


# --- layout helpers ------------------------------------------------------------------------------


def split_encoder(params: Mapping[str, Any]) -> tuple[Params, Params]:
    """``(encoder params, head params)`` from either layout (top-level or under ``roberta``)."""
    if ENCODER_KEY in params:
        encoder = dict(params[ENCODER_KEY])
        heads = {k: v for k, v in params.items() if k != ENCODER_KEY}
    else:
        encoder = {k: v for k, v in params.items() if k not in HEAD_KEYS}
        heads = {k: v for k, v in params.items() if k in HEAD_KEYS}
    return encoder, heads


def task_params(params: Mapping[str, Any], fresh: Mapping[str, Any] | None = None) -> Params:
    """Nest loaded params for a ``heads.py`` model; ``fresh`` (that model's init) fills the gaps.

    Weights absent from ``params`` (a pooler dropped by Hugging Face, a new head) come from
    ``fresh``; weights of ``params`` that ``fresh`` does not have are dropped.
    """
    encoder, heads = split_encoder(params)
    loaded = {ENCODER_KEY: encoder, **heads}
    if fresh is None:
        return loaded
    merged: Params = {}
    for path in _leaf_paths(fresh):
        try:
            value = _get(loaded, path)
            if tuple(value.shape) != tuple(_get(fresh, path).shape):
                value = _get(fresh, path)
        except (KeyError, TypeError):
            value = _get(fresh, path)
        _set(merged, path, value)
    return merged


def scan_layer_params(params: Params, num_layers: int) -> Params:
    """``encoder/layer_<i>/...`` -> ``encoder/layers/layer/...`` stacked on a leading axis."""
    out = dict(params)
    layers = [params["encoder"][f"layer_{i}"] for i in range(num_layers)]
    out["encoder"] = {"layers": {"layer": jax.tree.map(lambda *xs: np.stack(xs), *layers)}}
    return out


def unscan_layer_params(params: Params) -> Params:
    """Inverse of ``scan_layer_params``."""
    if "layers" not in params.get("encoder", {}):
        return params
    stacked = params["encoder"]["layers"]["layer"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = dict(params)
    out["encoder"] = {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}
    return out


# --- writing -------------------------------------------------------------------------------------


def _architecture(heads: Mapping[str, Any]) -> str:
    if "lm_head" in heads:
        return "XLMRobertaForMaskedLM"
    if "qa_outputs" in heads:
        return "XLMRobertaForQuestionAnswering"
    if "classifier" in heads:
        if "out_proj" in heads["classifier"]:
            return "XLMRobertaForSequenceClassification"
        kernel = np.asarray(heads["classifier"]["kernel"])
        return "XLMRobertaForMultipleChoice" if kernel.shape[-1] == 1 else (
            "XLMRobertaForTokenClassification")
    return "XLMRobertaModel"


def save_hf_checkpoint(config: XLMRConfig, params: Mapping[str, Any], directory: str | os.PathLike,
                       *, architecture: str | None = None) -> str:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads.

    ``params`` may be in either layout (``load_hf_checkpoint``'s or a ``heads.py`` model's, the
    latter possibly scanned or boxed). Files appear atomically (written aside, then renamed).
    Returns the directory.
    """
    import flax.linen as nn
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    params = nn.unbox(jax.device_get(params))
    encoder, heads = split_encoder(params)
    encoder = unscan_layer_params(encoder)
    architecture = architecture or _architecture(heads)
    prefix = f"{ENCODER_KEY}." if heads else ""
    rules = _encoder_rules(config) + (_POOLER_RULES if "pooler" in encoder else [])
    head_rules = []
    if "lm_head" in heads:
        head_rules += _HEAD_RULES["lm_head"]
    if "qa_outputs" in heads:
        head_rules += _HEAD_RULES["qa_outputs"]
    if "classifier" in heads:
        kind = "sequence_classifier" if "out_proj" in heads["classifier"] else "linear_classifier"
        head_rules += _HEAD_RULES[kind]
    tensors = {prefix + r.hf: r.to_hf(np.asarray(_get(encoder, r.ours), np.float32))
               for r in rules}
    tensors.update({r.hf: r.to_hf(np.asarray(_get(heads, r.ours), np.float32))
                    for r in head_rules})
    hf_config = config.to_hf_dict([architecture])
    if "classifier" in heads and architecture in ("XLMRobertaForSequenceClassification",
                                                   "XLMRobertaForTokenClassification"):
        n = np.asarray(_get(heads, head_rules[-1].ours)).shape[-1]
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    os.makedirs(directory, exist_ok=True)
    for name, write in (
            (SAFETENSORS, lambda p: save_file(tensors, p, metadata={"format": "pt"})),
            ("config.json", lambda p: _write_json(hf_config, p))):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, os.path.join(directory, name))
        except BaseException:
            os.unlink(tmp)
            raise
    return directory


def _write_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
