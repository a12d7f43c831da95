"""Orbax checkpoints: periodic async saves, keep last N + best, exact resume, encoder-only restore.

A checkpoint step directory holds two items: ``state`` (the train state as a state dict: params,
optimizer state, step, RNG) and ``meta`` (JSON: step, data position, parameter shapes, user
metadata). Orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it only when
every item is committed, so a process killed mid-write leaves a tmp directory that no reader
lists (and ``cleanup_tmp_directories`` removes on the next start).

Restores take an abstract target (``ShapeDtypeStruct`` with shardings), so a checkpoint written
on one mesh loads onto any other. ``restore_encoder`` loads only the ``'roberta'`` subtree (the
STILTs transfer: intermediate-task encoder, fresh target-task head).

Directories may be local paths or URLs that ``etils.epath`` (Orbax's path library) opens:
``gs://`` (through ``tf.io.gfile`` when TensorFlow is installed, else fsspec's ``gcsfs``),
``s3://``, ``az://``, ``hf://``. :func:`run_path` is the one normalisation: a local path becomes
absolute, a URL stays the URL (``os.path.abspath('gs://b/x')`` would be a local ``./gs:/b/x``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization

from xstilts.trainer import TrainState

log = logging.getLogger(__name__)


class _ReadOnlyNotices(logging.Filter):
    """Drops Orbax's per-open warnings about read-only managers: we open checkpoints read-only
    on purpose (evaluation, encoder restore) and a grid run would print them dozens of times."""

    NOTICES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


logging.getLogger("absl").addFilter(_ReadOnlyNotices())

ENCODER_KEY = "roberta"  # xstilts.models.heads.ENCODER_KEY
STEP_KEY = "_step"  # saved with the metrics of a step so ties rank the earlier step best
PyTree = Any


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and what to keep (t5x's ``SaveCheckpointConfig``)."""

    save_every_steps: int = 1000
    keep: int = 2  # the last N checkpoints ...
    best_metric: str | None = None  # ... plus the best by this metric (e.g. "eval/accuracy")
    best_mode: str = "max"
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode {self.best_mode!r}: expected 'max' or 'min'")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/x``, ``s3://...``) rather than a local path."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier()


def run_path(path: str | os.PathLike[str]) -> epath.Path:
    """A run, model or checkpoint directory as an ``epath.Path``: local paths absolute, URLs
    (``gs://bucket/run``) untouched, so Orbax, the metrics writers and the gin files all write
    to the same remote directory."""
    text = os.fspath(path)
    return epath.Path(text if is_url(text) else os.path.abspath(text))


def param_shapes(params: PyTree) -> dict[str, list[int]]:
    """``{'roberta/encoder/layer_0/...': shape}``: the fingerprint that says which model it is."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): list(np.shape(leaf))
            for path, leaf in flat}


def check_same_shapes(found: Mapping[str, Any], expected: Mapping[str, Any], *, where: str,
                    prefix: str = "") -> None:
    found = {k: v for k, v in found.items() if k.startswith(prefix)}
    expected = {prefix + k: v for k, v in expected.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if list(found[k]) != list(expected[k]))
    if missing or extra or wrong:
        lines = [f"{where} holds another model's parameters:"]
        if wrong:
            lines += [f"  {k}: checkpoint shape {found[k]} but the model expects {expected[k]}"
                      for k in wrong[:10]]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): {missing[:5]}")
        if extra:
            lines.append(f"  not in the model ({len(extra)}): {extra[:5]}")
        raise ValueError("\n".join(lines))


def _restore_args(target: PyTree) -> PyTree:
    return ocp.checkpoint_utils.construct_restore_args(target)


class Checkpointer:
    """A ``CheckpointManager`` for train states in one directory."""

    def __init__(self, directory: str | os.PathLike[str],
                 config: CheckpointConfig | None = None, *, read_only: bool = False) -> None:
        self.path = run_path(directory)
        self.directory = str(self.path)  # the URL itself for gs://..., else an absolute path
        self.config = config or CheckpointConfig()
        c = self.config
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(c.keep)]
        best_fn = None
        if c.best_metric:
            metric = c.best_metric

            def best_fn(m: Mapping[str, Any]) -> float:
                return float(m[metric])

            def rank(m: Mapping[str, Any]) -> tuple[float, float]:
                # BestN keeps the last of an ascending sort: on a tie the earlier step must
                # sort last (jiant keeps the first best, not a later equal one).
                step = float(m.get(STEP_KEY, 0))
                return (float(m[metric]), -step if c.best_mode == "max" else step)

            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=rank, reverse=c.best_mode == "min", n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax write the metrics next to the step (read back by best_step);
            # which steps survive is the preservation policy's call: last N OR the best.
            best_fn=best_fn, best_mode=c.best_mode,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=c.async_save, cleanup_tmp_directories=not read_only,
            create=not read_only, read_only=read_only)
        if read_only and not self.path.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        self.manager = ocp.CheckpointManager(self.path, options=options)

    # Queries ------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with ``step`` (None: saved without any)."""
        saved = self.manager.metrics(step)
        return None if saved is None else {k: v for k, v in saved.items() if k != STEP_KEY}

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None without metrics)."""
        metric = self.config.best_metric
        if not metric:
            return None
        scored = []
        for step in self.manager.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and metric in metrics:
                scored.append((float(metrics[metric]), step))
        if not scored:
            return None
        sign = 1.0 if self.config.best_mode == "max" else -1.0
        # The best value; among equal values the earliest step (jiant's early stopping).
        return max(scored, key=lambda vs: (sign * vs[0], -vs[1]))[1]

    # Save ---------------------------------------------------------------------------------
    def save(self, state: TrainState, *, data_position: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None,
             extra_meta: Mapping[str, Any] | None = None) -> bool:
        """Start saving ``state`` at its step (async where enabled); returns whether it saved."""
        step = int(jax.device_get(state.step))
        meta = {"step": step, "data_position": dict(data_position or {}),
                "param_shapes": param_shapes(state.params), **dict(extra_meta or {})}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta))
        clean = None if metrics is None else {**{k: float(v) for k, v in metrics.items()},
                                              STEP_KEY: float(step)}
        return self.manager.save(step, args=args, metrics=clean, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # Restore ------------------------------------------------------------------------------
    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}: "
                                    f"available {self.all_steps()}")
        return step

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        step = self._step_or_latest(step)
        return dict(self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The exact saved state, laid out as ``abstract_state``'s shardings (any mesh)."""
        step = self._step_or_latest(step)
        meta = self.metadata(step)
        check_same_shapes(meta["param_shapes"], param_shapes(abstract_state.params),
                        where=f"checkpoint {self.directory}/{step}")
        target = serialization.to_state_dict(abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target))))
        state = serialization.from_state_dict(abstract_state, restored["state"])
        return state, meta

    def restore_params(self, abstract_params: PyTree, step: int | None = None) -> PyTree:
        """Only the parameters (evaluation), laid out as ``abstract_params``' shardings."""
        step = self._step_or_latest(step)
        check_same_shapes(self.metadata(step)["param_shapes"], param_shapes(abstract_params),
                          where=f"checkpoint {self.directory}/{step}")
        target = {"params": abstract_params}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target),
                                         partial_restore=True)))
        return restored["state"]["params"]

    def restore_encoder(self, abstract_encoder: PyTree, step: int | None = None,
                        key: str = ENCODER_KEY) -> PyTree:
        """Only ``params[key]`` (the encoder) of a saved state, onto ``abstract_encoder``."""
        step = self._step_or_latest(step)
        meta = self.metadata(step)
        check_same_shapes(meta["param_shapes"], param_shapes(abstract_encoder),
                        where=f"encoder {key!r} of checkpoint {self.directory}/{step}",
                        prefix=f"{key}/")
        target = {"params": {key: abstract_encoder}}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target),
                                         partial_restore=True)))
        return restored["state"]["params"][key]


def restore_encoder_into(params: PyTree, source_dir: str, *, step: int | None = None,
                         key: str = ENCODER_KEY) -> PyTree:
    """``params`` with its ``key`` subtree replaced by the encoder saved in ``source_dir``.

    ``params`` (a freshly initialised task model, sharded) supplies shapes and shardings; its
    head keeps its fresh values.
    """
    if key not in params:
        raise ValueError(f"the model has no {key!r} subtree to restore into: top-level keys "
                         f"{sorted(params)}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params[key])
    source = Checkpointer(source_dir, read_only=True)
    try:
        encoder = source.restore_encoder(abstract, step=step, key=key)
    finally:
        source.manager.close()
    return {**params, key: encoder}
