"""What a task or mixture will feed, before any training: the manifest's facts for one name.

    python -m xstilts.data.describe NAME --data_dir DIR [--json] [--examples K] [--split S]
                                    [--tokenizer SPM_MODEL [--max_length N]] [--allow_samples]

``NAME`` is a registered task (``mnli.bg``) or mixture (``intermediate.mnli.multilingual``).
With ``--json`` one object is printed::

    {"name": ..., "type": "mixture" | "task", "split": ...,
     "tasks": [{"task", "split", "files": [{"path", "bytes", "sha256", "sample"}], "examples",
                "kept", "features", "dropped": {reason: n}, "flagged": {...},
                "truncated": {...}, "rate", "share", "first": [K reader dicts]}, ...]}

(``manifest.py`` defines each field.) Without it, a table. Without ``--tokenizer`` nothing is
featurized: ``dropped`` counts what needs no tokenizer (reader drops, missing labels, empty
text), ``truncated`` is empty and rates come from example counts. An unknown name or a missing
file is an error naming what was expected (every missing file of a mixture at once).
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
from xstilts.data.spec import data_directory
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
    return {"name": name, "type": kind, "split": split, "data_dir": str(root), "tasks": records}


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
    rows = [("task", "examples", "features", "rate", "share", "dropped", "truncated", "file",
             "bytes", "sha256")]  # fmt: skip
    for r in described["tasks"]:
        for index, f in enumerate(r["files"]):
            head = (r["task"], str(r["examples"]), "-" if r["features"] is None else
                    str(r["features"]), _share(r["rate"]), _share(r["share"]),
                    _dropped(r), _counts(r["truncated"]))  # fmt: skip
            sample = " (SAMPLE)" if f["sample"] else ""
            rows.append((*(head if index == 0 else ("",) * len(head)), f["path"] + sample,
                         str(f["bytes"]), f["sha256"][:16]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{described['type']} {described['name']}, split {described['split']}, "
             f"data_dir {described['data_dir']}"]  # fmt: skip
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
    parser.add_argument("name", help="a registered task or mixture")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        described = describe(args.name, args.data_dir, split=args.split, examples=args.examples,
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
