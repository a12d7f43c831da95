"""A record of the dry run's TPU compiles, so that a cut-short paper-scale dry run resumes.

Compiling one XLM-R Large train step for a TPU slice takes about ten minutes on a 2-core
machine, and a paper grid has some twenty distinct steps: a dry run that is stopped (a session
limit, a pre-empted VM) would otherwise start again from nothing. ``CompiledSteps`` keeps one
JSON line per compiled step, appended (and fsynced) as soon as the step has compiled, and keyed
by what the compile depends on: the lowered module's text (StableHLO, without source
locations: the model, the step, the shapes and the shardings, whatever code produced them),
the topology, the mesh's device layout, and the jax and libtpu versions. A change to any of
them is another key, so a stale figure is never reused; a recorded figure is marked as such.

A last line cut short by a kill (no final newline) is dropped with a warning and recompiled;
any other line that is not a record is an error naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from xstilts import fingerprint

log = logging.getLogger(__name__)

def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def step_key(lowered: Any, *, topology: str, mesh: Any) -> str:
    """sha256 of everything one step's TPU compile depends on (``lowered``: ``jit(...).lower``
    of the step, whose text holds its computation, shapes and shardings)."""
    return fingerprint.digest({
        "module": hashlib.sha256(lowered.as_text().encode("utf-8")).hexdigest(),
        "topology": topology, "mesh": dict(mesh.shape),
        "devices": [str(d) for d in mesh.devices.flat], "jax": jax.__version__,
        "libtpu": _version("libtpu")})


class CompiledSteps:
    """The JSON-lines record at ``path``: ``{"key", "step", "info"}`` per compiled step."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, info = record["key"], record["info"]
                if not isinstance(key, str) or not isinstance(info, dict):
                    raise TypeError("'key' must be a string and 'info' an object")
            except (ValueError, KeyError, TypeError) as e:
                if number == len(lines):  # no final newline: a write cut short by a kill
                    log.warning("%s:%d: dropping a record cut short (%s); that step compiles "
                                "again", self.path, number, e)
                    self._drop_partial_tail(text)
                    break
                raise ValueError(f"{self.path}:{number}: not a compiled-step record ({e}); "
                                 f"expected one JSON object with 'key' and 'info' per line") \
                    from None
            info["loss_shape"] = tuple(info.get("loss_shape", ()))
            self._records[key] = info

    def _drop_partial_tail(self, text: str) -> None:
        keep = text[:text.rfind("\n") + 1]
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(keep, encoding="utf-8")
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded figures of the step with this key (``recorded`` set), or None."""
        info = self._records.get(key)
        return None if info is None else {**info, "recorded": str(self.path)}

    def put(self, key: str, step: str, info: dict[str, Any]) -> None:
        """Record a step's figures (one appended, fsynced line)."""
        info = {k: v for k, v in info.items() if k != "recorded"}
        line = json.dumps({"key": key, "step": step, "info": fingerprint.canonical(info)},
                          sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[key] = {**info, "loss_shape": tuple(info.get("loss_shape", ()))}

