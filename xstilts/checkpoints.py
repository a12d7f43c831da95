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
import errno
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization

from xstilts import gcs_objects
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


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole: a local file through a renamed temporary, a URL
    (an object store write is atomic by itself) through ``etils.epath``."""
    target = run_path(path)
    if is_url(str(target)):
        target.write_text(text)
        return
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)


# One writer per run directory -------------------------------------------------------------------
LOCK_NAME = "writer.lock"
_HELD: set[str] = set()  # lock files this process holds


class RunLockedError(RuntimeError):
    """Another process writes into this run directory."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists (another user's)
    return True


class RunLock:
    """``<directory>/writer.lock``: one writing run per run directory.

    The lock file holds the holder's pid, host, boot id, start time and command line. It is
    created atomically (a complete temporary file hard-linked to the lock name, which fails if
    the name exists) and removed on release. A lock left by a process that died (``kill -9``,
    an OOM kill, a reboot) is stale when its host is this host and its pid no longer runs (or
    the machine rebooted since): it is taken over with a warning. A lock held from another host
    cannot be checked from here, so it is an error that says so and how to clear it.

    On ``gs://`` with ``google-cloud-storage`` installed the lock is one object created with a
    does-not-exist precondition (``if_generation_match=0``: atomic on the server) and deleted
    only while it is still the generation this run (or the stale holder taken over) wrote
    (``gcs_objects.GcsObject``; ``gcs_client``: a ``storage.Client``, default one from the
    environment's credentials). Without that package, and on other URLs (``s3://``...), the
    check-then-create through ``etils.epath`` is NOT atomic (a warning says so): it catches a
    second run started later, not two started within the same instant. Multi-process jobs:
    only process 0 takes it (``train``), the others share it.
    """

    def __init__(self, directory: str | os.PathLike[str], *, gcs_client: Any = None) -> None:
        self.directory = run_path(directory)
        self.path = self.directory / LOCK_NAME
        self._created_dir = False
        self._held = False
        self._gcs_client = gcs_client
        self._gcs: gcs_objects.GcsObject | None = None
        self._seen_generation: int | None = None  # of the holder read last (gs://)

    def _object(self) -> gcs_objects.GcsObject | None:
        """The lock's GCS object on ``gs://`` where ``google-cloud-storage`` is installed."""
        url = str(self.path)
        if self._gcs is None and url.startswith("gs://") and (
                self._gcs_client is not None or gcs_objects.available()):
            self._gcs = gcs_objects.GcsObject(url, self._gcs_client)
        return self._gcs

    def holder(self) -> dict[str, Any] | None:
        gcs = self._object()
        try:
            if gcs is not None:
                found = gcs.read()
                if found is None:
                    return None
                text, self._seen_generation = found
                return json.loads(text)
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}

    def _describe(self, holder: Mapping[str, Any]) -> str:
        since = holder.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {when}: "
                f"{holder.get('command', '?')})")

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
            return True
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return False
        if pid == os.getpid():
            return str(self.path) not in _HELD  # a recycled pid, not this process's lock
        return not _pid_alive(pid)

    def acquire(self) -> RunLock:
        if str(self.path) in _HELD:
            raise RunLockedError(f"{self.directory}: this process already writes into it "
                                 f"({self.path}); one train() per run directory at a time")
        if is_url(str(self.path)) and self._object() is None:
            log.warning("%s: a lock on this URL is not atomic (check, then write): install "
                        "google-cloud-storage for a create-if-absent lock on gs://", self.path)
        if self._object() is None and not self.directory.exists():
            self.directory.mkdir(parents=True, exist_ok=True)  # (gs:// has no directories)
            self._created_dir = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
              "started": time.time(), "command": " ".join(sys.argv)[:500]}
        for attempt in range(2):
            if self._create(json.dumps(me)):
                self._held = True
                _HELD.add(str(self.path))
                return self
            holder = self.holder()
            if holder is None:
                continue  # released between our create and our read: try again
            if attempt == 0 and holder and self._stale(holder):
                log.warning("%s: taking over a stale lock of %s (that process no longer runs)",
                            self.path, self._describe(holder))
                self._remove(self._seen_generation)
                continue
            if holder and holder.get("host") not in (None, socket.gethostname()):
                fix = (f"this host ({socket.gethostname()}) cannot tell whether that process "
                       f"still runs: if it does not, delete {self.path} and rerun")
            else:
                fix = "wait for it to finish, stop it, or use another MODEL_DIR"
            raise RunLockedError(
                f"{self.directory} is in use: {self.path} is held by "
                f"{self._describe(holder or {})}. Two runs writing one directory destroy each "
                f"other's checkpoints; {fix}")
        raise RunLockedError(f"{self.path}: could not take the lock (another run raced for it)")

    def _remove(self, generation: int | None) -> bool:
        """Delete the lock; on gs:// only while it is still ``generation`` (not a lock another
        run wrote since)."""
        gcs = self._object()
        if gcs is None:
            self.path.unlink(missing_ok=True)
            return True
        return generation is not None and gcs.delete(generation)

    def _create(self, text: str) -> bool:
        gcs = self._object()
        if gcs is not None:
            return gcs.create(text)
        if is_url(str(self.path)):
            if self.path.exists():
                return False
            self.path.write_text(text)
            return True
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        _HELD.discard(str(self.path))
        if not self._remove(None if self._gcs is None else self._gcs.generation):
            log.warning("%s: not removed: it is no longer the lock this run created (another "
                        "run took it over or deleted it)", self.path)
        if self._created_dir and not any(self.directory.iterdir()):
            self.directory.rmdir()  # a run that failed before writing anything leaves nothing

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


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


class CheckpointReadError(ValueError):
    """A finished checkpoint that cannot be read back (arrays corrupt, an item missing)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message  # what is wrong, without the advice


class CheckpointSaveError(OSError):
    """A checkpoint save (in the background or not) that failed: disk full, no permission."""


VALIDATED = "validated.json"  # in a step directory: a later step's loss and grad norm were finite
_TMP = ".orbax-checkpoint-tmp"
_OS_ERROR = re.compile(r"os_error_code='?(\d+)")
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def save_failure_cause(error: BaseException) -> str:
    """What a failed save's error says, shortened to its cause (``No space left on device
    (errno 28)``) where the OS error is known, else its first line."""
    text = str(error)
    for pattern in (_OS_ERROR, _ERRNO_TEXT):
        found = pattern.search(text)
        if found:
            code = int(found.group(1))
            return f"{os.strerror(code)} (errno {code}, {errno.errorcode.get(code, '?')})"
    if isinstance(error, OSError) and error.errno:
        return f"{os.strerror(error.errno)} (errno {error.errno})"
    return _first_line(error)


class _SaveFailureEchoes(logging.Filter):
    """Drops Orbax's own log records of a failed background save (each with its traceback,
    hundreds of lines): ``Checkpointer.wait`` raises one ``CheckpointSaveError`` naming the
    step, the path and the cause instead."""

    ECHOES = ("_SignalingThread.run() raised", "Failed to run", "Save Finalize thread",
              "Checkpointer failed")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = str(record.msg)
        return not any(echo in text for echo in self.ECHOES)


logging.getLogger("absl").addFilter(_SaveFailureEchoes())


class _UnretrievedSaveWrites(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records of the other array writes of a
    failed save (TensorStore futures left behind once the first write failed): the same
    failure, already raised as one ``CheckpointSaveError``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += str(record.exc_info[1])
        except Exception:  # noqa: BLE001 - a record we cannot read is not ours to drop
            return True
        return not ("never retrieved" in text and _TMP in text)


logging.getLogger("asyncio").addFilter(_UnretrievedSaveWrites())


def _quiet_closed_loop_callbacks() -> None:
    """After a failed save, the other array writes TensorStore still had in flight complete
    into the event loop Orbax already closed (sometimes before the failure reaches
    ``Checkpointer``, so the hook goes in when one is made), and each prints ``RuntimeError:
    Event loop is closed`` with its traceback (through ``sys.excepthook`` or, from
    TensorStore's callbacks, ``sys.unraisablehook``): the same failure, raised once as a
    ``CheckpointSaveError``. Only that error, raised in asyncio's ``call_soon_threadsafe``, is
    dropped."""
    previous, previous_unraisable = sys.excepthook, sys.unraisablehook
    if getattr(previous, "_xstilts_closed_loop", False):
        return

    def closed_loop(kind: Any, value: Any, tb: Any) -> bool:
        frames = traceback.extract_tb(tb)
        return (kind is RuntimeError and str(value) == "Event loop is closed" and bool(frames)
                and frames[0].name == "call_soon_threadsafe")

    def hook(kind: Any, value: Any, tb: Any) -> None:
        if not closed_loop(kind, value, tb):
            previous(kind, value, tb)

    def unraisable(args: Any) -> None:  # TensorStore's callbacks report through this one
        if not closed_loop(args.exc_type, args.exc_value, args.exc_traceback):
            previous_unraisable(args)

    hook._xstilts_closed_loop = True  # type: ignore[attr-defined]
    sys.excepthook, sys.unraisablehook = hook, unraisable


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _restore_args(target: PyTree) -> PyTree:
    return ocp.checkpoint_utils.construct_restore_args(target)


class Checkpointer:
    """A ``CheckpointManager`` for train states in one directory."""

    def __init__(self, directory: str | os.PathLike[str],
                 config: CheckpointConfig | None = None, *, read_only: bool = False) -> None:
        self.path = run_path(directory)
        self.directory = str(self.path)  # the URL itself for gs://..., else an absolute path
        self.config = config or CheckpointConfig()
        # Before any save: a failed background write can close Orbax's loop while other writes
        # are still in flight, and their callbacks fire before the failure reaches us.
        _quiet_closed_loop_callbacks()
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
        self._saving: int | None = None  # the step of a background save not yet known finished
        self._marks: dict[int, int] = {}  # validated steps whose marker is not yet written
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
        """Start saving ``state`` at its step (async where enabled); returns whether it saved.

        A failure of the previous background save is raised first (``CheckpointSaveError``), so
        is a failure of this one when it is synchronous."""
        if self._saving is not None:
            self.wait()  # Orbax would wait for it anyway; its failure is named as its own
        step = int(jax.device_get(state.step))
        meta = {"step": step, "data_position": dict(data_position or {}),
                "param_shapes": param_shapes(state.params), **dict(extra_meta or {})}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta))
        clean = None if metrics is None else {**{k: float(v) for k, v in metrics.items()},
                                              STEP_KEY: float(step)}
        self._saving = step
        try:
            saved = self.manager.save(step, args=args, metrics=clean, force=True)
        except Exception as error:  # Orbax and TensorStore raise many kinds
            self._save_failed(step, error)
        if not self.config.async_save:
            self.wait()
        return saved

    def _save_failed(self, step: int, error: BaseException) -> None:
        """Remove the step's partial ``.orbax-checkpoint-tmp`` directory and raise a
        ``CheckpointSaveError`` naming the step, the path and the cause."""
        self._saving = None
        _quiet_closed_loop_callbacks()
        removed, left = self._remove_partial(step)
        kept = [s for s in self.all_steps() if s != step]
        note = (f"; could not remove the partial {left[0]}" if left else
                f"; removed the partial {removed[0]}" if removed else "")
        raise CheckpointSaveError(
            f"saving the checkpoint of step {step} to {self.directory}/{step} failed: "
            f"{save_failure_cause(error)}{note}. Finished checkpoints "
            f"in {self.directory}: {kept or 'none'}; free space there (or fix its permissions) "
            f"and rerun the same command to resume from the latest. Orbax said: "
            f"{_first_line(error)}") from error

    def _remove_partial(self, step: int, settle: float = 0.3, limit: float = 10.0
                        ) -> tuple[list[str], list[str]]:
        """Remove ``<step>.orbax-checkpoint-tmp*`` until it stays gone for ``settle`` seconds
        (TensorStore may still finish writes of the failed save, re-creating folders in it);
        returns the names removed and those left after ``limit`` seconds."""
        removed: set[str] = set()
        quiet_since = time.monotonic()
        deadline = quiet_since + limit
        found: list[Any] = []
        while time.monotonic() < deadline:
            found = [e for e in self.path.iterdir() if e.name.startswith(f"{step}{_TMP}")] \
                if self.path.is_dir() else []
            for entry in found:
                try:
                    entry.rmtree(missing_ok=True) if entry.is_dir() else entry.unlink()
                except OSError:
                    pass  # still being written: the next round removes it
                removed.add(entry.name)
            if found:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return sorted(removed), []
            time.sleep(0.05)
        return sorted(removed), sorted(e.name for e in found)

    def poll(self) -> None:
        """Raise the failure of a background save that has ended, without waiting for one
        that is still running (called before every train step)."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Wait for the background save; its failure raises ``CheckpointSaveError``."""
        step = self._saving
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
            self._save_failed(-1 if step is None else step, error)
        self._saving = None
        self._write_marks()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    # Validated steps ----------------------------------------------------------------------
    def mark_validated(self, step: int, by_step: int) -> None:
        """Record that the parameters saved at ``step`` passed ``by_step`` (a later step whose
        loss and gradient norm were finite): ``<step>/validated.json``, written once the save
        has finished (this call or a later ``poll``/``wait``)."""
        self._marks[step] = by_step
        if self._saving != step:
            self._write_marks()

    def _write_marks(self) -> None:
        for step, by_step in list(self._marks.items()):
            if self._saving == step:
                continue
            target = self.path / str(step)
            if target.is_dir():
                write_atomic(target / VALIDATED, json.dumps({"step": step, "by_step": by_step}))
            del self._marks[step]

    def validated_steps(self) -> list[int]:
        """The kept steps whose parameters a later finite step validated."""
        return [s for s in self.all_steps() if (self.path / str(s) / VALIDATED).exists()]

    def latest_validated(self) -> int | None:
        steps = self.validated_steps()
        return steps[-1] if steps else None

    # Restore ------------------------------------------------------------------------------
    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}: "
                                    f"available {self.all_steps()}")
        return step

    def _read_meta(self, step: int) -> dict[str, Any]:
        try:
            return dict(self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except KeyError as error:
            raise CheckpointReadError(
                f"checkpoint {self.directory}/{step} (step {step}) has no 'meta' item (expected "
                f"{self.directory}/{step}/meta beside 'state': the step, data position and "
                f"parameter shapes); it is incomplete. "
                f"{self._resume_hint(step)}", reason="it has no 'meta' item") from error

    def _read_state(self, step: int, args: Any) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        except Exception as error:  # Orbax and TensorStore raise many kinds
            raise CheckpointReadError(
                f"checkpoint {self.directory}/{step} (step {step}): its arrays cannot be read "
                f"({_first_line(error)}). {self._resume_hint(step, args)}",
                reason=f"its arrays cannot be read ({_first_line(error)})") from error

    def _resume_hint(self, bad_step: int, state_args: Any = None) -> str:
        """Which earlier step reads back whole (its meta, and the arrays of ``state_args``),
        and how to resume from it; or that none does."""
        for step in sorted((s for s in self.all_steps() if s < bad_step), reverse=True):
            try:
                self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore(),
                    **({} if state_args is None else {"state": state_args})))
            except Exception:  # noqa: BLE001 - any failure means "not intact"
                continue
            return (f"Step {step} in {self.directory} is intact: move the bad step out of the "
                    f"checkpoint directory (mv {self.directory}/{bad_step} "
                    f"{self.directory}.bad-step-{bad_step}) and rerun the same command to "
                    f"resume from step {step}.")
        return "No earlier checkpoint in it is intact: start the run again in a new directory."

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        step = self._step_or_latest(step)
        return self._read_meta(step)

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The exact saved state, laid out as ``abstract_state``'s shardings (any mesh)."""
        step = self._step_or_latest(step)
        meta = self.metadata(step)
        check_same_shapes(meta["param_shapes"], param_shapes(abstract_state.params),
                        where=f"checkpoint {self.directory}/{step}")
        target = serialization.to_state_dict(abstract_state)
        restored = self._read_state(step, ocp.args.PyTreeRestore(
            item=target, restore_args=_restore_args(target)))
        state = serialization.from_state_dict(abstract_state, restored)
        return state, meta

    def restore_latest_intact(self, abstract_state: TrainState
                              ) -> tuple[TrainState, dict[str, Any]] | None:
        """``restore`` of the latest step that reads back whole (None: no checkpoint). A later
        step that does not (arrays corrupt, an item missing) is moved out of the directory to
        ``<directory>.bad-step-<step>`` (``set_aside``: a rename, or on a URL a copy and then
        the removal) with a warning naming its path and the error, so the run resumes from the
        intact one and later saves do not meet it again; with no intact step left the
        ``CheckpointReadError`` is raised."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(abstract_state, step)
            except CheckpointReadError as error:
                earlier = [s for s in self.all_steps() if s < step]
                if not earlier:
                    raise
                aside = set_aside(self.path / str(step), f"{self.directory}.bad-step-{step}")
                self.manager.reload()
                log.warning("checkpoint %s/%d (step %d) cannot be read: %s; moved it to %s "
                            "and resuming from the previous step", self.directory, step, step,
                            error.reason, aside)
        return None

    def restore_params(self, abstract_params: PyTree, step: int | None = None) -> PyTree:
        """Only the parameters (evaluation), laid out as ``abstract_params``' shardings."""
        step = self._step_or_latest(step)
        check_same_shapes(self.metadata(step)["param_shapes"], param_shapes(abstract_params),
                          where=f"checkpoint {self.directory}/{step}")
        target = {"params": abstract_params}
        restored = self._read_state(step, ocp.args.PyTreeRestore(
            item=target, restore_args=_restore_args(target), partial_restore=True))
        return restored["params"]

    def restore_encoder(self, abstract_encoder: PyTree, step: int | None = None,
                        key: str = ENCODER_KEY) -> PyTree:
        """Only ``params[key]`` (the encoder) of a saved state, onto ``abstract_encoder``."""
        step = self._step_or_latest(step)
        meta = self.metadata(step)
        check_same_shapes(meta["param_shapes"], param_shapes(abstract_encoder),
                        where=f"encoder {key!r} of checkpoint {self.directory}/{step}",
                        prefix=f"{key}/")
        target = {"params": {key: abstract_encoder}}
        restored = self._read_state(step, ocp.args.PyTreeRestore(
            item=target, restore_args=_restore_args(target), partial_restore=True))
        return restored["params"][key]


def set_aside(source: epath.Path, target: str, *, by_copy: bool | None = None) -> epath.Path:
    """Move the directory ``source`` to ``target`` (``-<unix time>`` added when taken) and
    return where it went. A rename on a local file system; on a URL (``by_copy`` None: as
    ``is_url`` says; object stores such as gs:// have no directory rename) every file is copied
    first, then the source removed, Orbax's ``commit_success.txt`` (what makes a step finished
    on gs://) first: an interruption leaves a whole copy and at most an unfinished step, which
    Orbax does not list."""
    aside = epath.Path(target)
    if aside.exists():
        aside = epath.Path(f"{aside}-{int(time.time())}")
    if not (is_url(str(source)) if by_copy is None else by_copy):
        return source.rename(aside)
    for root, _, files in source.walk():
        into = aside / root.relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            (root / name).copy(into / name)
    (source / "commit_success.txt").unlink(missing_ok=True)
    source.rmtree()
    return aside


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
