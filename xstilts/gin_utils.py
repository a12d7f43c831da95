"""Gin at the edge: parsing files and bindings, the `--gin.NAME=VALUE` flags (t5x gin_utils)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin

# The aliases the package's gin files use, so that command-line bindings can use them too.
BINDING_IMPORTS = (
    "from __gin__ import dynamic_registration",
    "from xstilts import checkpoints",
    "from xstilts import partitioning",
    "from xstilts import train as train_script",
    "from xstilts import trainer",
    "from xstilts.models import xlmr",
)

_GIN_SHORTHAND = re.compile(r"^--gin\.([A-Za-z_][\w./]*)=(.*)$", re.S)


def gin_dir() -> str:
    """The package's ``gin/`` folder (``models/``, ``runs/``, ``experiments/``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin")


def configured(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its gin bindings, or plain ``fn`` when no gin file mentions it."""
    try:
        return gin.get_configurable(fn)
    except ValueError:
        return fn


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """t5x's ``--gin.NAME=VALUE`` shorthand -> ``--gin_bindings=NAME = VALUE``."""
    out = []
    for arg in argv:
        m = _GIN_SHORTHAND.match(arg)
        out.append(f"--gin_bindings={m.group(1)} = {m.group(2)}" if m else arg)
    return out


def _find_gin_file(path: str, search_paths: Sequence[str]) -> str:
    """``path`` itself if it exists, else the first of ``search_paths`` and ``gin/`` holding it."""
    if os.path.exists(path):
        return path
    for base in (*search_paths, gin_dir(), os.path.dirname(gin_dir())):
        if os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    raise FileNotFoundError(f"--gin_file {path}: no such file (searched the current "
                            f"directory, {list(search_paths)} and {gin_dir()})")


class _IncludeProbeFilter(logging.Filter):
    """Drops gin's ``Path not found: <include>`` probe record.

    gin looks for an ``include`` under each search path in turn, starting with the current
    directory, and at each one asks its Python-package reader too: that reader takes the
    include's folder for a package name (``models/xlmr_large.gin`` -> package ``models``) and
    logs ``ERROR:root:Path not found`` when there is none, even though a later search path holds
    the file. An include found nowhere still raises gin's own ``IOError``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Path not found: %s"
                    and os.path.basename(record.pathname) == "resource_reader.py")


@contextlib.contextmanager
def _quiet_include_probes() -> Iterator[None]:
    root = logging.getLogger()  # gin's resource reader logs through ``logging.error``
    probe_filter = _IncludeProbeFilter()
    root.addFilter(probe_filter)
    try:
        yield
    finally:
        root.removeFilter(probe_filter)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
    """Parse files then bindings; the package's ``gin/`` and the cwd are on the search path."""
    for path in (*search_paths, gin_dir(), os.path.dirname(gin_dir()), os.getcwd()):
        gin.add_config_file_search_path(path)
    with _quiet_include_probes():
        for path in gin_files:
            gin.parse_config_file(_find_gin_file(path, search_paths))
        if bindings:
            gin.parse_config([*BINDING_IMPORTS, *bindings])
