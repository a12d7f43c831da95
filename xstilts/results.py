"""The tidy result table (``results.jsonl``) and per-example statistics names, shared by the
experiment that writes them and the report that reads them (no JAX)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from etils import epath

FIELDS = ("config", "task", "language", "split", "metric", "value", "seed", "step")
CHANCE = "chance"  # the config of the constant-predictor rows
STATS_FILENAME = "example_stats.npz"  # per phase-2 cell: per-example metric statistics


def row(config: str, task: str, language: str, split: str, metric: str, value: float,
        seed: int, step: int) -> dict[str, Any]:
    """One line of the tidy table."""
    return {"config": config, "task": task, "language": language, "split": split,
            "metric": metric, "value": float(value), "seed": int(seed), "step": int(step)}


def stats_key(task: str, language: str, split: str) -> str:
    """The key of one task-language split in ``example_stats.npz``."""
    return f"{task}|{language}|{split}"


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/run``) rather than a local path."""
    scheme, sep, _ = os.fspath(path).partition("://")
    return bool(sep) and scheme.isidentifier()


def location(path: str | os.PathLike) -> epath.Path:
    """A run directory or one of its files as an ``etils.epath`` path: a local path
    absolute, a URL kept a URL (``checkpoints.run_path`` without JAX)."""
    text = os.fspath(path)
    return epath.Path(text if is_url(text) else os.path.abspath(text))


def read_rows(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl`` (local or a URL); a malformed line is an error
    naming it."""
    rows = []
    for number, line in enumerate(location(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e})") from None
        missing = [k for k in FIELDS if k not in item]
        if missing:
            raise ValueError(f"{path}:{number}: row lacks {missing}; expected {FIELDS}")
        rows.append(item)
    return rows
