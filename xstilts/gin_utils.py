"""Gin at the edge: parsing files and bindings, the `--gin.NAME=VALUE` flags (t5x gin_utils)."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
from gin import config as gin_config

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


class GinMacroError(ValueError):
    """A command-line binding of a gin macro that no gin file knows, or of the wrong type."""


_MACRO = "gin.macro"


def _macros_defined() -> dict[str, Any]:
    """``{NAME: value}`` of every unscoped macro bound so far."""
    return {scope: params.get("value") for (scope, selector), params in
            gin_config._CONFIG.items() if selector == _MACRO and "/" not in scope}  # noqa: SLF001


def _macro_uses() -> dict[str, list[tuple[str, str]]]:
    """``{NAME: [(configurable selector, parameter), ...]}``: where each macro is referenced
    (a macro referenced inside another macro's value is listed under ``('gin.macro', NAME)``)."""
    uses: dict[str, list[tuple[str, str]]] = {}
    for (scope, selector), params in list(gin_config._CONFIG.items()):  # noqa: SLF001
        for param, value in params.items():
            for ref in gin_config.iterate_references(value):
                if ref.selector == _MACRO:
                    name = ref.scoped_selector.rsplit("/", 1)[0]
                    where = (selector, scope) if selector == _MACRO else (selector, param)
                    uses.setdefault(name, []).append(where)
    return uses


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; None when the hint is not a plain one we can check."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, arg) for arg in typing.get_args(hint)]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return None


def _parameter_hint(selector: str, param: str) -> Any:
    """The type annotation of ``param`` of the configurable ``selector`` (None: unknown)."""
    try:
        configurable = gin_config._REGISTRY.get_match(selector)  # noqa: SLF001
        fn = configurable.wrapped
        if isinstance(fn, type):
            fn = fn.__init__
        while hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        return typing.get_type_hints(fn).get(param)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve is not checked
        return None


def check_command_line_macros(known: set[str], before: dict[str, Any]) -> None:
    """Bindings ``NAME = value`` parsed after the gin files: ``NAME`` must be a macro the files
    define or reference (or one another binding references), and ``value`` must fit the type
    of every parameter it is bound to; else a ``GinMacroError`` naming the macro."""
    defined = _macros_defined()
    uses = _macro_uses()
    known_now = known | set(uses)
    for name, value in defined.items():
        if name in before and before[name] is value:
            continue  # not set on the command line
        if name not in known_now:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise GinMacroError(
                f"gin binding {name} = {value!r}: no gin file defines or uses a macro {name}, "
                f"so it would change nothing; {hint}known macros: {', '.join(sorted(known))}")
        if isinstance(value, gin_config.ConfigurableReference) or value is gin.REQUIRED:
            continue
        for selector, param in uses.get(name, []):
            if selector == _MACRO:
                continue
            hint = _parameter_hint(selector, param)
            if hint is None or _matches(value, hint) is not False:
                continue
            raise GinMacroError(
                f"gin binding {name} = {value!r}: {name} is "
                f"{selector.removeprefix('xstilts.')}'s {param!r}, which expects "
                f"{_type_name(hint)}, got {type(value).__name__} {value!r}")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
    """Parse files then bindings; the package's ``gin/`` and the cwd are on the search path.

    With gin files, a binding ``NAME = value`` of a macro that none of them defines or uses is
    an error suggesting the nearest known name (``--gin.LEARNING_RAT=1e-3`` would otherwise
    train at the default), and so is a value whose type does not fit the parameters the macro
    is bound to (``--gin.TRAIN_STEPS="'ten'"``): ``check_command_line_macros``.
    """
    for path in (*search_paths, gin_dir(), os.path.dirname(gin_dir()), os.getcwd()):
        gin.add_config_file_search_path(path)
    with _quiet_include_probes():
        for path in gin_files:
            gin.parse_config_file(_find_gin_file(path, search_paths))
        if bindings:
            before = _macros_defined()
            known = set(before) | set(_macro_uses())
            gin.parse_config([*BINDING_IMPORTS, *bindings])
            if gin_files:
                check_command_line_macros(known, before)
