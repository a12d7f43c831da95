"""What ``python -m xstilts.translate --task T`` reads and writes, one row per task.

Paths are relative to the output dir, ``{lang}`` the XTREME code. Tasks with an official
translate-train release get its layout and path (a language the release has goes under
``translate-train-ours/`` first: ``xstilts.translate.output_path``); the others the layout of their
English file under ``<dataset>/translate-train/{lang}/``:

==============  ==========================================================  =====================
task            path                                                        layout (reader)
==============  ==========================================================  =====================
mnli            ``xnli/translate-train/en-{lang}-translated.tsv``          XTREME TSV
pawsx           ``pawsx/x-final/{lang}/translated_train.tsv``              PAWS-X release TSV
squad_v1        ``squad/translate-train/squad.translate.train.en-{lang}.json``  SQuAD v1.1 JSON
qqp             ``qqp/translate-train/{lang}/train.tsv``                   GLUE QQP TSV
anli_r1..r3     ``anli/translate-train/{lang}/R{n}/train.jsonl``           ANLI release jsonl
hellaswag       ``hellaswag/translate-train/{lang}/hellaswag_train.jsonl``  HellaSwag jsonl
cosmosqa        ``cosmosqa/translate-train/{lang}/train.csv``              Cosmos QA csv
commonsenseqa   ``commonsenseqa/translate-train/{lang}/train_rand_split.jsonl``  CSQA jsonl
==============  ==========================================================  =====================

``--task anli`` is the three rounds (``GROUPS``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xstilts import translate_choice, translate_records, translate_squad

Translate = Callable[[Sequence[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """Where a task's English train split comes from and how its translation is written.

    ``units`` are what a shard holds (an example, a SQuAD paragraph); ``translate`` turns a chunk
    of them into the shard's text (one line per unit); ``assemble`` the shards' lines into the
    final file's text and the counts the manifest records.
    """

    task: str  # the registry task of the English train split
    path: str  # output file under the output dir, {lang} filled in
    units: Callable[[list[Path], list[dict]], list[Any]]  # (input files, examples) -> units
    translate: Callable[[Sequence[Any], Translate], str]
    assemble: Callable[[list[str]], tuple[str, dict[str, Any]]]


def rows_text(rows: Sequence[Sequence[str]]) -> str:
    """TSV lines; a tab or line break inside a field (never in the releases) becomes a space."""
    def field(text: str) -> str:
        return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return "".join("\t".join(field(c) for c in row) + "\n" for row in rows)


def _pair_translations(chunk: Sequence[dict], translate: Translate) -> tuple[list, list]:
    """Both sides of every pair in one call (one length-sorted batch stream)."""
    out = translate([e["text_a"] for e in chunk] + [e["text_b"] for e in chunk])
    return out[:len(chunk)], out[len(chunk):]


def _mnli_translate(chunk: Sequence[dict], translate: Translate) -> str:
    a, b = _pair_translations(chunk, translate)
    return rows_text([[e["text_a"], e["text_b"], a[i], b[i], e["label"]]
                      for i, e in enumerate(chunk)])


def _pawsx_translate(chunk: Sequence[dict], translate: Translate) -> str:
    a, b = _pair_translations(chunk, translate)
    return rows_text([[str(e["id"]), a[i], b[i], str(e["label"])] for i, e in enumerate(chunk)])


def _squad_units(files: list[Path], _: list[dict]) -> list[dict]:
    with open(files[0], encoding="utf-8") as f:
        return translate_squad.units(json.load(f))


def _squad_translate(chunk: Sequence[dict], translate: Translate) -> str:
    return translate_squad.shard_text(translate_squad.translate_paragraphs(chunk, translate))


def _squad_assemble(lines: list[str]) -> tuple[str, dict[str, Any]]:
    text, counts = translate_squad.assemble(lines)
    return text, {"answers": counts, "questions": sum(counts.values()),
                  "dropped": counts["dropped"]}


def _records(task: str, path: str, kind: translate_records.RecordTask) -> TaskLayout:
    return TaskLayout(task, path, kind.units, kind.translate, kind.assemble)


LAYOUTS = {
    "mnli": TaskLayout("mnli.en", "xnli/translate-train/en-{lang}-translated.tsv",
                       lambda _, examples: examples, _mnli_translate,
                       lambda lines: ("".join(lines), {})),
    "pawsx": TaskLayout("pawsx.en", "pawsx/x-final/{lang}/translated_train.tsv",
                        lambda _, examples: examples, _pawsx_translate,
                        lambda lines: ("id\tsentence1\tsentence2\tlabel\n" + "".join(lines), {})),
    "squad_v1": TaskLayout("squad_v1.en", "squad/translate-train/squad.translate.train.en-{lang}"
                           ".json", _squad_units, _squad_translate, _squad_assemble),
    "qqp": _records("qqp.en", "qqp/translate-train/{lang}/train.tsv", translate_records.QQP),
    **{f"anli_r{n}": _records(f"anli_r{n}.en", f"anli/translate-train/{{lang}}/R{n}/train.jsonl",
                              translate_records.ANLI) for n in (1, 2, 3)},
    "hellaswag": _records("hellaswag.en", "hellaswag/translate-train/{lang}/hellaswag_train.jsonl",
                          translate_choice.HELLASWAG),
    "cosmosqa": _records("cosmosqa.en", "cosmosqa/translate-train/{lang}/train.csv",
                         translate_choice.COSMOSQA),
    "commonsenseqa": _records("commonsenseqa.en",
                              "commonsenseqa/translate-train/{lang}/train_rand_split.jsonl",
                              translate_choice.COMMONSENSEQA),
}
GROUPS = {"anli": ("anli_r1", "anli_r2", "anli_r3")}  # ANLI+'s rounds, each a task of its own
TASKS = tuple(sorted([*LAYOUTS, *GROUPS]))
