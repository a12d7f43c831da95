"""The run directory: where every phase writes, the tidy result rows and ``experiment.json``.

Cells and their directories under ``run_dir``::

    tokenizer/                       SentencePiece model (trained here when asked)
    phase0/                          MLM pre-training (train.train model dir)
    phase1/<config>/seed<k>/         intermediate training on a Mixture; retrieval.jsonl,
                                     budget.json (steps, examples and tokens per language)
    phase2/<config>/<train task>/seed<k>/   fine-tune from the phase-1 encoder + a fresh head:
                                     checkpoints kept by the English-dev selection metric,
                                     selection.json, results.jsonl (dev and test of every
                                     target language), example_stats.npz (per-example metric
                                     statistics for the report's bootstrap)
    chance.jsonl                     constant predictors (``config == "chance"``)
    data_manifest.json               every file read (bytes, sha256), examples, drops by reason,
                                     mixing shares; each phase directory has its own too
    results.jsonl, results.csv       the tidy table: config, task, language, split, metric,
                                     value, seed, step
    experiment.json                  what the report needs: configs, comparisons, tiers,
                                     metrics, languages seen in each intermediate mixture
    writer.lock                      while a driver runs: its pid, host and command (the chief's;
                                     each cell's train() holds one in its own directory too)
    */cell_settings.json, chance_settings.json, phase1/*/seed<k>/retrieval_settings.json
                                     each cell's effective settings and their sha256 fingerprint,
                                     written when it starts (``experiment.cells``): a rerun with
                                     other settings stops, or ``on_change`` reruns or keeps them
    <cell>.claim                     while a launch computes that cell: its pid, host and command
                                     (``experiment.workers``: launches sharing a run directory)

Multi-process runs (``jax.distributed``, one process per host) run every cell in lockstep: all
processes train and score together; only the chief (process 0) writes the tokenizer, the tidy
tables, ``experiment.json``, retrieval results and ``DONE`` markers (Orbax checkpoints coordinate
their own writes), and every skip/resume decision is the chief's, broadcast to all.

Launches sharing a run directory (``--worker``, ``--cells i/N``) take no ``writer.lock``; each
claims a cell before computing it. A cell is finished when its ``results.jsonl`` (phase 2,
written atomically after evaluation) or ``DONE`` (phases 0 and 1) exists: a finished cell is
skipped, an unfinished one resumes from its last Orbax checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from xstilts.checkpoints import is_url, run_path
from xstilts.multihost import agreed, barrier, is_chief
from xstilts.results import (  # noqa: F401  (the run directory's table, re-exported)
    CHANCE,
    FIELDS,
    STATS_FILENAME,
    read_rows,
    row,
    stats_key,
)

SPM_FILENAME = "sentencepiece.bpe.model"


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (never half-written)."""
    atomic_bytes(path, text.encode("utf-8"))


def atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` whole: locally through a renamed temporary file; on a URL
    (``gs://...``) as one object write, which is whole or absent by itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(os.fspath(path)):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The tidy table as JSONL (atomically; the chief only)."""
    if is_chief():
        atomic_text(path, "".join(json.dumps({k: r[k] for k in FIELDS}) + "\n" for r in rows))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not is_chief():
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in FIELDS})
    atomic_text(path, out.getvalue())


def write_json(path: Path, value: Any) -> None:
    if is_chief():
        atomic_text(path, json.dumps(value, indent=1) + "\n")


def write_example_stats(path: Path, stats: Mapping[str, np.ndarray]) -> None:
    """Per-example metric statistics, one array per ``task|language|split`` key (chief)."""
    if not is_chief():
        return
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, np.float64) for k, v in stats.items()})
    atomic_bytes(path, buffer.getvalue())


def run_dir_path(run_dir: str | os.PathLike) -> Path:
    """The run directory as an ``etils.epath`` path: a local path absolute, a URL
    (``gs://bucket/run``) kept a URL (``checkpoints.run_path``)."""
    return run_path(run_dir)


def local_cache_dir(run_dir: Path) -> Path | None:
    """Where features are cached: ``run_dir/cache`` (shared by the hosts of a pod), or, for a
    URL run directory, None (the data pipeline caches on local disks only; each host then
    featurizes every split itself, with the same result)."""
    return None if is_url(os.fspath(run_dir)) else run_dir / "cache"


def is_done(path: Path) -> bool:
    """Whether ``path`` exists, as the chief sees it (every process decides the same)."""
    return agreed(path.is_file())


def mark_done(path: Path) -> None:
    if is_chief():
        atomic_text(path, "done\n")
    barrier(f"done {path}")


def enable_compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache (every compile kept, however fast)."""
    if jax.config.jax_compilation_cache_dir:
        return  # the user chose one
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # applies even if something was compiled before
