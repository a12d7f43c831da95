"""Settings fingerprints: what a run (or an experiment cell) is, as flat comparable settings.

Pure helpers shared by ``train`` (``MODEL_DIR/run_settings.json``) and the experiment driver:

- :func:`canonical` turns a value into JSON-able data (dataclasses by field, callables by their
  qualified name, tuples as lists, floats kept exact);
- :func:`flatten` turns nested settings into ``{"optimizer.learning_rate": 1e-05, ...}``;
- :func:`digest` is the sha256 of the canonical JSON (sorted keys);
- :func:`settings_diff` lists what changed, setting by setting, and :func:`format_diff` prints it
  as ``  key: old -> new`` lines;
- :func:`callable_settings` reads the effective parameters of a configurable (gin bindings over
  signature defaults; a ``functools.partial``'s keywords; a dataclass instance's fields);
- :func:`file_sha256` hashes a file (cached per path, size and modification time).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MISSING = "<not set>"  # a key one side does not have (printed as such in a diff)


def _name(obj: Any) -> str:
    fn = getattr(obj, "__wrapped__", obj)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def canonical(value: Any) -> Any:
    """``value`` as JSON data that compares equal exactly when the settings do."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        return canonical(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = [canonical(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, set | frozenset) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return _name(value)
    return repr(value)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (after :func:`canonical`; lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in canonical(dict(settings)).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def digest(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings``."""
    text = json.dumps(canonical(dict(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                  ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """``[(key, old value, new value)]`` of the flat settings that differ, by key; a key one
    side lacks shows :data:`MISSING`. Keys in ``ignore`` (or under ``ignore_key.``) are
    skipped."""
    skip = tuple(ignore)
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == s or key.startswith(f"{s}.") for s in skip):
            continue
        before, after = a.get(key, MISSING), b.get(key, MISSING)
        if before != after:
            out.append((key, before, after))
    return out


def _show(value: Any) -> str:
    return value if value == MISSING else json.dumps(value)


def format_diff(diffs: Iterable[tuple[str, Any, Any]], indent: str = "  ") -> str:
    """One ``key: old -> new`` line per difference."""
    return "\n".join(f"{indent}{key}: {_show(old)} -> {_show(new)}" for key, old, new in diffs)


def _gin_bindings(fn: Any) -> dict[str, Any] | None:
    """gin's bindings of ``fn`` (None when gin does not know it)."""
    try:
        import gin

        return dict(gin.get_bindings(fn))
    except Exception:  # noqa: BLE001 - not a configurable (or gin cannot resolve it)
        return None


def _defaults(fn: Any) -> dict[str, Any]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def callable_settings(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The effective parameters of a factory, optimizer or config object, by name, with its
    qualified name under ``"name"``: a dataclass instance's fields; a ``functools.partial``'s
    keywords over its function's; a function's gin bindings over its signature defaults.
    Parameters in ``skip`` (those the caller passes itself) are left out."""
    out: dict[str, Any]
    if obj is None:
        return {"name": None}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"name": _name(type(obj)), **canonical(obj)}
    elif isinstance(obj, functools.partial):
        inner = callable_settings(obj.func)
        out = {**inner, **canonical(dict(obj.keywords))}
    elif callable(obj):
        out = {"name": _name(obj), **canonical(_defaults(obj))}
        bound = _gin_bindings(obj)
        if bound:
            out.update(canonical(bound))
    else:
        return {"name": canonical(obj)}
    return {k: v for k, v in out.items() if k not in set(skip)}


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a local file, cached per (path, size, modification time)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(functools.partial(f.read, 1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def sampled(fn: Callable[[int], Any], steps: Iterable[int]) -> dict[str, float]:
    """``{str(step): float(fn(step))}``: a schedule by its values (a learning rate schedule
    built by a closure has no other readable settings)."""
    return {str(int(s)): float(fn(int(s))) for s in steps}
