"""Training summaries: TensorBoard scalars (tensorboardX) and ``train_metrics.jsonl``, written
on the chief through ``etils.epath`` (a run directory may be a ``gs://`` URL), and the cut-back of
``train_metrics.jsonl`` to the step a resumed run starts from."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from xstilts import checkpoints as ckpt_lib

log = logging.getLogger("xstilts.train")


class _EpathRecordWriterFactory:
    """tensorboardX writes event files of a URL run directory through ``etils.epath`` (its own
    ``gs://`` writer needs google-cloud-storage, which the stack does not carry)."""

    def open(self, path: str) -> Any:
        return epath.Path(path).open("wb")

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_tensorboard_scheme(run_dir: epath.Path) -> None:
    text = str(run_dir)
    if ckpt_lib.is_url(text):
        from tensorboardX import record_writer

        scheme = text.split("://", 1)[0]
        existing = record_writer.REGISTERED_FACTORIES.get(scheme)
        if scheme != "gs" or not getattr(record_writer, "GCS_ENABLED", False) or existing is None:
            record_writer.register_writer_factory(scheme, _EpathRecordWriterFactory())


def cut_metrics(path: str | os.PathLike[str], start_step: int) -> int:
    """Drop the lines of steps after ``start_step`` from a ``train_metrics.jsonl`` (and a last
    line cut short by a kill); returns how many were dropped. A line that is not JSON before
    the last is an error naming the file and line."""
    path = ckpt_lib.run_path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # the last line, cut short by a kill mid-write
            raise ValueError(f"{path}:{number}: not a JSON line ({line[:80]!r})") from None
        if int(record.get("step", 0)) <= start_step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        log.info("%s: dropped %d line(s) after step %d (the run resumes there)", path, dropped,
                 start_step)
        ckpt_lib.write_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


class SummaryWriter:
    """TensorBoard scalars (tensorboardX) plus ``train_metrics.jsonl``; no-ops off the chief.

    ``model_dir`` may be a URL (``gs://bucket/run``): both files are written through
    ``etils.epath``. Lines are buffered and flushed at each logging step (``flush``), not per
    step (on ``gs://`` every flush uploads the object again).

    ``start_step``: the step the run starts from (0, or the restored checkpoint's): lines of
    later steps, written before the run was stopped or killed, are cut from
    ``train_metrics.jsonl`` first, so a resumed run never repeats a step (``cut_metrics``)."""

    def __init__(self, model_dir: str | os.PathLike[str], *, enabled: bool,
                 start_step: int = 0) -> None:
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            import tensorboardX

            run_dir = ckpt_lib.run_path(model_dir)
            cut_metrics(run_dir / "train_metrics.jsonl", start_step)
            _register_tensorboard_scheme(run_dir)
            self._tb = tensorboardX.SummaryWriter(str(run_dir / "tensorboard"))
            self._jsonl = (run_dir / "train_metrics.jsonl").open("a")

    def step_record(self, record: Mapping[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(dict(record)) + "\n")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, float(value), step)

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
