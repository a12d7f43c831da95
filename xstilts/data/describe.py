"""What a task or mixture will feed, before any training: the manifest's facts for one name.

    python -m xstilts.data.describe NAME --data_dir DIR [--json] [--examples K] [--split S]
                                    [--tokenizer SPM_MODEL [--max_length N]] [--allow_samples]
    python -m xstilts.data.describe --languages [NAME ...] [--json]

``NAME`` is a registered task (``mnli.bg``) or mixture (``intermediate.mnli.multilingual``).
With ``--json`` one object is printed::

    {"name": ..., "type": "mixture" | "task", "split": ..., "languages": [...],
     "tasks": [{"task", "language", "source", "split", "files": [{"path", "bytes", "sha256",
                "sample"}], "examples", "kept", "features", "dropped": {reason: n},
                "flagged": {...}, "truncated": {...}, "rate", "share",
                "first": [K reader dicts]}, ...]}

(``manifest.py`` defines each field; ``source`` is ``official`` for a translate-train release,
``ours`` for ``python -m xstilts.translate``'s, else the task's source, e.g. ``native``.) Without
it, a table. ``--languages`` reads no data: for each mixture named (default: every registered
one) the languages it reaches and its tasks per language with their source.

Without ``--tokenizer`` nothing is featurized: ``dropped`` counts what needs no tokenizer
(reader drops, missing labels, empty text), ``truncated`` is empty and rates come from example
counts. An unknown name or a missing file is an error naming what was expected (every missing
file of a mixture at once).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from xstilts.data import manifest, sources
from xstilts.data.spec import TaskSpec, data_directory
from xstilts.data.tasks import MIXTURES, TASKS, get_task, mixture_tasks
from xstilts.tokenization import XLMRTokenizer

SCHEMA_KEYS = ("task", "split", "files", "examples", "dropped", "rate", "share", "first")


def kind_of(name: str) -> str:
    """``"mixture"`` or ``"task"``; an unknown name is a ``KeyError`` naming close matches."""
    if name in MIXTURES:
        return "mixture"
    if name in TASKS:
        return "task"
    close = difflib.get_close_matches(name, [*MIXTURES, *TASKS], n=5)
    raise KeyError(f"no registered task or mixture named {name!r}; similar names: {close}")


SOURCES = {"translate-train": "official", "translate-train-ours": "ours"}


def provenance(spec: TaskSpec) -> str:
    """``official`` (a translate-train release), ``ours`` (``python -m xstilts.translate``), else
    the task's own source (``native``, ``synthetic``, ``local-only``)."""
    return SOURCES.get(spec.source, spec.source)


def languages(name: str) -> dict[str, Any]:
    """What mixture (or task) ``name`` reaches, read from the registry alone: ``{"name",
    "languages": [English first, then sorted], "tasks": [{"task", "language", "source"}]}``."""
    names = mixture_tasks(name) if kind_of(name) == "mixture" else [name]
    specs = [get_task(task) for task in names]
    reached = sorted({s.language for s in specs}, key=lambda lang: (lang != "en", lang))
    return {"name": name, "languages": reached,
            "tasks": [{"task": s.name, "language": s.language, "source": provenance(s)}
                      for s in specs]}


def languages_text(reach: Mapping[str, Any]) -> str:
    """``name: N languages: en af ...`` then one line per language: its tasks (source)."""
    lines = [f"{reach['name']}: {len(reach['languages'])} languages: "
             f"{' '.join(reach['languages'])}"]
    for lang in reach["languages"]:
        here = [f"{t['task']} ({t['source']})" for t in reach["tasks"] if t["language"] == lang]
        lines.append(f"  {lang:4s} {', '.join(here)}")
    return "\n".join(lines)


def check_files(
    tasks: Sequence[str], split: str, data_dir: Any, *, allow_samples: bool = False
) -> None:
    """Every task's file for ``split`` exists, else one ``FileNotFoundError`` naming each
    missing one (the paths looked for)."""
    missing = []
    for task in tasks:
        try:
            sources.resolve(get_task(task), split, data_dir, allow_samples=allow_samples)
        except (FileNotFoundError, KeyError) as error:
            missing.append(str(error).strip("'\""))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(tasks)} task files missing:\n  " + "\n  ".join(missing)
        )


def describe(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    examples: int = 1,
    tokenizer: Any = None,
    max_length: int | Mapping[str, int] | None = None,
    allow_samples: bool = False,
) -> dict[str, Any]:
    """The ``--json`` object of task or mixture ``name`` (see the module docstring)."""
    kind = kind_of(name)
    root = data_directory(data_dir)
    tasks = mixture_tasks(name) if kind == "mixture" else [name]
    check_files(tasks, split, root, allow_samples=allow_samples)
    options = dict(cache_dir=None, allow_samples=allow_samples, first=examples)
    if kind == "mixture":
        records = manifest.records_for_mixture(name, root, tokenizer, max_length, split=split,
                                               **options)  # fmt: skip
    else:
        (record,) = manifest.records_for_tasks([(name, split)], root, tokenizer, max_length,
                                               **options)  # fmt: skip
        records = [{**record, "rate": 1.0, "share": 1.0}]
    for record in records:
        record.setdefault("first", [])
        spec = get_task(record["task"])
        record.update(language=spec.language, source=provenance(spec))
    return {"name": name, "type": kind, "split": split, "data_dir": str(root),
            "languages": languages(name)["languages"], "tasks": records}


def _counts(counts: Mapping[str, int]) -> str:
    return " ".join(f"{reason}={n}" for reason, n in counts.items()) or "-"


def _dropped(record: Mapping[str, Any]) -> str:
    """Dropped counts, and the flagged ones (kept on a non-training split) marked as such."""
    flagged = record["flagged"]
    dropped = _counts(record["dropped"])
    return f"{dropped} flagged: {_counts(flagged)}" if flagged else dropped


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(described: Mapping[str, Any]) -> str:
    """A readable table of ``describe``'s object."""
    rows = [("task", "source", "examples", "features", "rate", "share", "dropped", "truncated",
             "file", "bytes", "sha256")]  # fmt: skip
    for r in described["tasks"]:
        for index, f in enumerate(r["files"]):
            head = (r["task"], r["source"], str(r["examples"]), "-" if r["features"] is None else
                    str(r["features"]), _share(r["rate"]), _share(r["share"]),
                    _dropped(r), _counts(r["truncated"]))  # fmt: skip
            sample = " (SAMPLE)" if f["sample"] else ""
            rows.append((*(head if index == 0 else ("",) * len(head)), f["path"] + sample,
                         str(f["bytes"]), f["sha256"][:16]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{described['type']} {described['name']}, split {described['split']}, "
             f"data_dir {described['data_dir']}",
             f"languages ({len(described['languages'])}): {' '.join(described['languages'])}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]  # fmt: skip
    for r in described["tasks"]:
        for number, example in enumerate(r["first"]):
            lines.append(f"{r['task']} [{number}]: {json.dumps(example, ensure_ascii=False)}")
    return "\n".join(lines)


def _tokenizer(path: str | None) -> XLMRTokenizer | None:
    if path is None:
        return None
    if os.path.isdir(path):
        return XLMRTokenizer.from_pretrained(path)
    return XLMRTokenizer(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xstilts.data.describe",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="a registered task or mixture (--languages: any number)")
    parser.add_argument("--languages", action="store_true",
                        help="no data read: the languages each mixture (default: every "
                             "registered one) reaches, its tasks and their source")
    parser.add_argument("--data_dir", default=None,
                        help="data directory (default $XSTILTS_DATA_DIR, else ./data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--examples", type=int, default=1, metavar="K",
                        help="first K examples of each task, as the reader yields them")
    parser.add_argument("--split", default="train")
    parser.add_argument("--tokenizer", default=None,
                        help="SentencePiece model (or checkpoint dir): featurize and count cuts")
    parser.add_argument("--max_length", type=int, default=None,
                        help="featurization length (default: each task's own)")
    parser.add_argument("--allow_samples", action="store_true",
                        help="read a sample file where the prepared file is missing")
    return parser.parse_args(argv)


def _print_languages(names: Sequence[str], *, as_json: bool) -> int:
    try:
        reached = [languages(name) for name in names if not name.endswith("#own")]
    except KeyError as error:
        print(f"describe: error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(reached, ensure_ascii=False, sort_keys=True))
    else:
        print("\n".join(languages_text(reach) for reach in reached))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.languages:
        return _print_languages(args.names or list(MIXTURES), as_json=args.json)
    if len(args.names) != 1:
        print(f"describe: error: expected one task or mixture name, got {len(args.names)} "
              f"(several only with --languages)", file=sys.stderr)
        return 2
    try:
        described = describe(args.names[0], args.data_dir, split=args.split,
                             examples=args.examples,
                             tokenizer=_tokenizer(args.tokenizer), max_length=args.max_length,
                             allow_samples=args.allow_samples)  # fmt: skip
    except (KeyError, FileNotFoundError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"describe: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(described, ensure_ascii=False, sort_keys=True))
    else:
        print(table(described))
    return 0


if __name__ == "__main__":
    sys.exit(main())
