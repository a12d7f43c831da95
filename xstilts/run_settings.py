"""What a ``train`` run is: its effective settings, kept in ``MODEL_DIR/run_settings.json``.

A run records, before its first step, the settings that decide its results (:func:`train_settings`):
``train()``'s arguments, the parameters of the configurables it is given (gin bindings over
defaults: the optimizer, the batch factories, the model config), the learning-rate schedule
sampled at a few steps (an optimizer built by a closure has no other readable settings), the
data files' sha256 (the data manifest), the sha256 of the Hugging Face weights it starts from
(``init_pretrained_from``, a local directory) and the settings digest of the run whose encoder it
starts from (``init_encoder_from``); :func:`record` stores them. A resume compares them with
the stored ones (:func:`check`): any difference stops the run before any step and prints it
setting by setting (``old -> new``), unless ``on_change='keep'`` (gin ``ON_CHANGE``, flag
``--on_change``) accepts it; the accepted change is then recorded under ``changes``. Settings
that cannot change the results (:data:`NEUTRAL`: logging, evaluation and checkpoint frequency,
the mesh, the progress bar, ``stop_at_step``) are stored but never compared.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from xstilts import checkpoints as ckpt_lib
from xstilts import fingerprint as fp

log = logging.getLogger("xstilts.train")

SETTINGS_FILE = "run_settings.json"
ON_CHANGE = ("stop", "keep")
# Settings a resume may change: they decide when things are logged, evaluated or saved, where
# the arrays live, or when this invocation stops, not what the parameters become.
NEUTRAL = ("model_dir", "log_every_steps", "eval_every_steps", "checkpoint.save_every_steps",
           "checkpoint.keep", "checkpoint.async_save", "peak_tflops_per_device",
           "stop_at_step", "step_hook", "progress", "partitioner", "on_change",
           "model_config.remat")
_FACTORY_ARGS = ("shard_index", "num_shards", "batch_size", "start_batch")
_HF_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class SettingsChangedError(ValueError):
    """A resume whose settings differ from those the run was started with."""


def _local_file(value: Any) -> bool:
    return isinstance(value, str) and not ckpt_lib.is_url(value) and os.path.isfile(value)


def _factory(factory: Any) -> dict[str, Any]:
    """A batch factory's settings, with the sha256 of a local ``vocabulary``/``tokenizer``."""
    out = fp.callable_settings(factory, skip=_FACTORY_ARGS)
    for key in ("vocabulary", "tokenizer"):
        if _local_file(out.get(key)):
            out[f"{key}_sha256"] = fp.file_sha256(out[key])
    return out


def _data(records: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """Per ``task/split``: its files' sha256, its example count and mixing rate."""
    if records is None:
        return None
    return {f"{r['task']}/{r['split']}": {
        "files": {f["path"]: f.get("sha256") for f in r.get("files", [])},
        "examples": r.get("examples"), "rate": r.get("rate")} for r in records}


def _pretrained(path_or_id: str | None) -> Any:
    if not path_or_id:
        return None
    if not os.path.isdir(path_or_id):
        return {"path": path_or_id}  # a hub id: its revision is not known here
    return {"path": os.path.abspath(path_or_id),
            **{f"{name}_sha256": fp.file_sha256(os.path.join(path_or_id, name))
               for name in _HF_FILES if os.path.isfile(os.path.join(path_or_id, name))}}


def finished_steps(checkpoint_dir: str | os.PathLike[str]) -> list[int]:
    """The finished (renamed) checkpoint steps of an Orbax directory, without opening it."""
    path = ckpt_lib.run_path(checkpoint_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _encoder_source(checkpoint_dir: str | None) -> Any:
    """The source run of ``init_encoder_from``: its latest step and settings digest."""
    if not checkpoint_dir:
        return None
    steps = finished_steps(checkpoint_dir)
    record = read_settings(ckpt_lib.run_path(checkpoint_dir).parent)
    return {"path": str(ckpt_lib.run_path(checkpoint_dir)), "step": steps[-1] if steps else None,
            "run_settings_digest": record.get("digest") if record else None}


def _optimizer(optimizer: Any, schedule: Callable[[int], Any], total: int) -> dict[str, Any]:
    """The optimizer's parameters; one built by a closure (the experiment driver's) shows
    none, so its learning-rate schedule is recorded by value instead, at steps 0, 10%, 50% and
    the last (7 significant digits)."""
    out = fp.callable_settings(optimizer, skip=["total_steps"])
    if set(out) <= {"name"}:
        steps = (0, total // 10, total // 2, max(total - 1, 0))
        out["schedule"] = [float(f"{v:.7g}") for v in fp.sampled(schedule, steps).values()]
    return out


def train_settings(args: Mapping[str, Any], *, schedule: Callable[[int], Any],
                   data_records: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Flat settings of one ``train`` call (``args``: its keyword arguments, resolved)."""
    total = int(args["total_steps"])
    checkpoint = args.get("checkpoint")
    settings = {
        **{k: args.get(k) for k in (
            "model_dir", "total_steps", "batch_size", "task_type", "num_labels", "use_pooler",
            "num_microbatches", "seed", "patience", "heads", "task_heads", "log_every_steps",
            "eval_every_steps", "peak_tflops_per_device", "stop_at_step", "progress",
            "on_change")},
        "model_config": args.get("model_config"),
        "optimizer": _optimizer(args.get("optimizer"), schedule, total),
        "train_batches": _factory(args.get("train_batches")),
        "eval_batches": None if args.get("eval_batches") is None else
        _factory(args["eval_batches"]),
        "evaluator": args.get("evaluator"),
        "checkpoint": None if checkpoint is None else checkpoint,
        "init_encoder_from": _encoder_source(args.get("init_encoder_from")),
        "init_pretrained_from": _pretrained(args.get("init_pretrained_from")),
        "data": _data(data_records),
        "partitioner": type(args.get("partitioner")).__name__,
        "step_hook": args.get("step_hook"),
    }
    return fp.flatten(settings)


def read_settings(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stored record (``settings``, ``digest``, ``changes``), None when there is none; a
    record that is not such JSON is an error naming the file."""
    path = ckpt_lib.run_path(model_dir) / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise SettingsChangedError(f"{path}: not valid JSON ({error}); it records the settings "
                                   f"the run was started with") from error
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise SettingsChangedError(f"{path}: expected a JSON object with a 'settings' object")
    return record


def compared(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without the :data:`NEUTRAL` ones."""
    return {k: v for k, v in settings.items()
            if not any(k == n or k.startswith(f"{n}.") for n in NEUTRAL)}


def check(model_dir: str | os.PathLike[str], settings: Mapping[str, Any], *,
          resume_step: int | None, on_change: str) -> list[tuple[str, Any, Any]]:
    """Compare ``settings`` with those stored in ``model_dir`` when the run resumes from
    ``resume_step``: a difference stops it (``SettingsChangedError``, setting by setting)
    unless ``on_change`` is ``'keep'``; returns the accepted differences."""
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change {on_change!r}: expected one of {list(ON_CHANGE)} "
                         f"(gin ON_CHANGE, flag --on_change)")
    if resume_step is None:
        return []
    run_dir = ckpt_lib.run_path(model_dir)
    old = read_settings(model_dir)
    if old is None:
        log.warning("%s: no %s (a run from before settings were recorded): resuming from step "
                    "%d without comparing settings; recording them now", run_dir,
                    SETTINGS_FILE, resume_step)
        return []
    diffs = fp.settings_diff(compared(old["settings"]), compared(settings))
    if diffs and on_change == "stop":
        raise SettingsChangedError(
            f"{run_dir}: the settings differ from those the run was started with "
            f"({run_dir / SETTINGS_FILE}), and its checkpoint of step {resume_step} was trained "
            f"with the old ones; resuming would mix them:\n{fp.format_diff(diffs)}\n"
            f"Rerun with the old settings, use another MODEL_DIR, or accept the change with "
            f"--on_change=keep (gin: ON_CHANGE = 'keep').")
    if diffs:
        log.warning("%s: resuming with changed settings (on_change='keep'; latest checkpoint: "
                    "step %d):\n%s", run_dir, resume_step, fp.format_diff(diffs))
    return diffs


def record(model_dir: str | os.PathLike[str], settings: Mapping[str, Any], *,
           accepted: Sequence[tuple[str, Any, Any]] = (), resume_step: int | None = None
           ) -> None:
    """Store ``settings`` (with their digest) in ``model_dir/run_settings.json``; differences
    accepted on a resume (``on_change='keep'``) join the record's ``changes``."""
    old = read_settings(model_dir) if resume_step is not None else None
    changes = list(old.get("changes", [])) if old else []
    if accepted:
        changes.append({"at_step": resume_step, "diff": [list(d) for d in accepted]})
    body = {"digest": fp.digest(compared(settings)), "settings": dict(settings),
            "neutral": list(NEUTRAL), "changes": changes}
    ckpt_lib.write_atomic(ckpt_lib.run_path(model_dir) / SETTINGS_FILE,
                          json.dumps(body, indent=1, sort_keys=True) + "\n")
