"""Translate-train for tasks without a release layout: the English file's own records, translated.

QQP, ANLI and the multiple-choice tasks have no official translate-train release, so their
translation is written in the layout of the English file itself (GLUE's TSV, the release JSON
lines, Cosmos QA's CSV): every record keeps its keys, ids and label; only its text fields are
replaced by their translations, so the English task's reader loads the file unchanged.

A :class:`RecordTask` says which fields a record translates (``segments``) and how the
translations go back in (``rebuild``), which may drop the record with a reason. All segments of
a shard are translated in one call (one length-sorted batch stream); empty English segments are
not sent to the model and stay empty. A shard line is ``{"record": ..., "dropped": reason}``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xstilts.data import readers

Translate = Callable[[Sequence[str]], list[str]]
Record = dict[str, Any]


def read_tsv(path: Path) -> list[tuple[int, Record]]:
    """(line, row) of a headed TSV (GLUE QQP), keys in header order, split as its reader does."""
    return list(readers._read_headed_tsv(path, ()))


def read_csv(path: Path) -> list[tuple[int, Record]]:
    """(line, row) of a headed CSV (Cosmos QA), keys in header order."""
    return list(readers._csv_rows(path))


def read_jsonl(path: Path) -> list[tuple[int, Record]]:
    """(line, object) of a JSON-lines file (blank lines skipped, as the readers do)."""
    return list(readers._jsonl(path))


def write_tsv(records: Sequence[Record], header: Sequence[str]) -> str:
    """A headed TSV; a tab or line break inside a field (never in the releases) becomes a space."""
    def field(value: Any) -> str:
        return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    rows = ["\t".join(header)] + ["\t".join(field(r[k]) for k in header) for r in records]
    return "\n".join(rows) + "\n"


def write_csv(records: Sequence[Record], header: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def write_jsonl(records: Sequence[Record], header: Sequence[str]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


FORMATS: dict[str, tuple[Callable[[Path], list[tuple[int, Record]]], Callable[..., str]]] = {
    "tsv": (read_tsv, write_tsv),
    "csv": (read_csv, write_csv),
    "jsonl": (read_jsonl, write_jsonl),
}


@dataclasses.dataclass(frozen=True)
class RecordTask:
    """One English file layout: how its records are read, translated, rebuilt and written.

    ``segments(record)`` lists the texts to translate; ``rebuild(record, translations)`` returns
    the translated record, or a drop reason (one of ``reasons``) as a string.
    """

    format: str  # a key of FORMATS
    segments: Callable[[Record], list[str]]
    rebuild: Callable[[Record, list[str]], Record | str]
    reasons: tuple[str, ...] = ()

    def units(self, files: list[Path], _examples: list[dict]) -> list[Record]:
        """The file's records; one without a field to translate is an error naming its line."""
        records = FORMATS[self.format][0](files[0])
        for number, record in records:
            try:
                self.segments(record)
            except (KeyError, TypeError, AttributeError) as error:
                raise readers.DataFormatError(
                    files[0], number, f"no field {error} to translate (keys: {sorted(record)})"
                ) from None
        return [record for _, record in records]

    def translate(self, chunk: Sequence[Record], translate: Translate) -> str:
        """The shard's lines: every segment of the chunk translated in one call."""
        segments = [self.segments(r) for r in chunk]
        todo = [s for segs in segments for s in segs if s.strip()]
        done = iter(translate(todo) if todo else [])
        lines = []
        for record, segs in zip(chunk, segments, strict=True):
            out = [next(done) if s.strip() else s for s in segs]
            rebuilt = self.rebuild(record, out)
            dropped = rebuilt if isinstance(rebuilt, str) else None
            lines.append({"record": record if dropped else rebuilt, "dropped": dropped})
        return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)

    def assemble(self, lines: list[str]) -> tuple[str, dict[str, Any]]:
        """The file's text (kept records) and the counts: kept, and dropped by reason."""
        rows = [json.loads(line) for line in lines]
        header = list(rows[0]["record"]) if rows else []
        kept = [r["record"] for r in rows if r["dropped"] is None]
        dropped = Counter(r["dropped"] for r in rows if r["dropped"] is not None)
        text = FORMATS[self.format][1](kept, header)
        counts: dict[str, Any] = {"kept": len(kept)}
        if self.reasons:
            counts["dropped"] = {reason: dropped.get(reason, 0) for reason in self.reasons}
        return text, counts


def _replace(record: Record, values: dict[str, Any]) -> Record:
    return {**record, **values}


QQP = RecordTask(
    "tsv", lambda r: [r["question1"], r["question2"]],
    lambda r, t: _replace(r, {"question1": t[0], "question2": t[1]}))

# ANLI: the translated pair replaces context/hypothesis, the English stays beside it
ANLI = RecordTask(
    "jsonl", lambda r: [r["context"], r["hypothesis"]],
    lambda r, t: _replace(r, {"context": t[0], "hypothesis": t[1], "context_en": r["context"],
                              "hypothesis_en": r["hypothesis"]}))
