"""XTREME scores: per language, per task, the XTREME score, its groups, and resource tiers.

Aggregation is google-research/xtreme ``evaluate.py``'s:
the unweighted mean over a task's languages; the task score is (EM + F1) / 2 for QA, else F1
if the task has it, else accuracy; the XTREME score is the unweighted mean of the nine task
scores; group scores (classification, tagging, qa, retrieval) are means within each group and
are not used for the XTREME score.

Resource tiers come from the per-language size of CC-100, XLM-R's pre-training corpus:
Conneau et al. 2020, "Unsupervised Cross-lingual Representation Learning at Scale" (ACL 2020),
Appendix A, Table 6 ("Languages and statistics of the CC-100 corpus", uncompressed GiB and
millions of tokens). The numbers below were transcribed from that table as reproduced in
mayhewsw/multilingual-data-stats ``cc-100/cc-100.csv`` (commit 7397902); the repository's author
notes that the table's Ukrainian and Swedish rows are wrong (confirmed by the XLM-R authors);
neither is an XTREME language. zh adds Chinese Simplified (46.9 GiB) and Traditional (16.6 GiB);
my adds the two Burmese rows (1.6 + 0.4 GiB). Yoruba is not in CC-100.

Tiers are cut on CC-100 GiB at roughly one order of magnitude apart:
``high`` >= 20 GiB (23 languages), ``medium`` 5-20 GiB (8), ``low`` < 5 GiB (8),
``unseen`` = not in CC-100 (yo).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import fmean

from xstilts import benchmark
from xstilts.evals import metrics, xtreme_io

# The benchmark's tables live in xstilts/benchmark.py (one copy for data/ and evals/)
TASK2LANGS = benchmark.TASK2LANGS
TASKS = benchmark.TASKS
GROUP2TASK = benchmark.GROUP2TASK
QA_TASKS = benchmark.QA_TASKS
TIERS = ("high", "medium", "low", "unseen")
HIGH_GIB, MEDIUM_GIB = 20.0, 5.0


@dataclasses.dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, as XTREME names its files
    name: str
    tatoeba_code: str  # ISO 639-3 as in LASER's Tatoeba file names
    cc100_gib: float  # 0.0: not in CC-100
    cc100_tokens_m: int

    @property
    def tier(self) -> str:
        if self.cc100_gib <= 0:
            return "unseen"
        if self.cc100_gib >= HIGH_GIB:
            return "high"
        return "medium" if self.cc100_gib >= MEDIUM_GIB else "low"


_LANGUAGE_ROWS = """
af Afrikaans afr 1.3 242
ar Arabic ara 28.0 2869
bg Bulgarian bul 57.5 5487
bn Bengali ben 8.4 525
de German deu 66.6 10297
el Greek ell 46.9 4285
en English eng 300.8 55608
es Spanish spa 53.3 9374
et Estonian est 6.1 843
eu Basque eus 2.0 270
fa Persian pes 111.6 13259
fi Finnish fin 54.3 6730
fr French fra 56.8 9780
he Hebrew heb 31.6 3399
hi Hindi hin 20.2 1715
hu Hungarian hun 58.4 7807
id Indonesian ind 148.3 22704
it Italian ita 30.2 4983
ja Japanese jpn 69.3 530
jv Javanese jav 0.2 24
ka Georgian kat 9.1 469
kk Kazakh kaz 6.4 476
ko Korean kor 54.2 5644
ml Malayalam mal 7.6 313
mr Marathi mar 2.8 175
ms Malay zsm 8.5 1318
my Burmese mya 2.0 71
nl Dutch nld 29.3 5025
pt Portuguese por 49.1 8405
ru Russian rus 278.0 23408
sw Swahili swh 1.6 275
ta Tamil tam 12.2 595
te Telugu tel 4.7 249
th Thai tha 71.7 1834
tl Tagalog tgl 3.1 556
tr Turkish tur 20.9 2736
ur Urdu urd 5.7 730
vi Vietnamese vie 137.3 24757
yo Yoruba yor 0.0 0
zh Chinese cmn 63.5 435
"""
LANGUAGES: dict[str, Language] = {
    row[0]: Language(row[0], row[1], row[2], float(row[3]), int(row[4]))
    for row in (line.split() for line in _LANGUAGE_ROWS.strip().splitlines())
}


def language(code: str) -> Language:
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {code!r}: expected one of {sorted(LANGUAGES)}")
    return LANGUAGES[code]


def _check_task_language(task: str, lang: str) -> None:
    if task not in TASK2LANGS:
        raise ValueError(f"unknown task {task!r}: expected one of {list(TASKS)}")
    if lang not in TASK2LANGS[task]:
        raise ValueError(f"unknown language {lang!r} for task {task}: expected one of "
                         f"{list(TASK2LANGS[task])}")


# -- one language -------------------------------------------------------------------------


def score_language(task: str, lang: str, predictions: str | os.PathLike,
                   labels: str | os.PathLike) -> dict[str, float]:
    """XTREME's ``evaluate_one_task`` for one prediction file against its label file."""
    _check_task_language(task, lang)
    metric = benchmark.METRIC[task]
    if metric in ("squad_em_f1", "mlqa_em_f1"):
        pred, gold = xtreme_io.read_qa_predictions(predictions), xtreme_io.read_squad(labels)
    elif metric == "f1_seqeval":
        pred, gold = xtreme_io.read_tags(predictions), xtreme_io.read_tags(labels)
    else:
        pred, gold = xtreme_io.read_lines(predictions), xtreme_io.read_lines(labels)
    try:
        if metric == "mlqa_em_f1":
            return metrics.mlqa_evaluate(gold, pred, lang)
        if metric == "squad_em_f1":
            return metrics.squad_evaluate(gold, pred)
        if metric == "f1_seqeval":
            return metrics.tagging_f1(gold, pred)
        if metric == "bucc_f1":
            return metrics.bucc_f1(gold, pred)
        return metrics.accuracy(gold, pred)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{task}/{lang}: {predictions} against {labels}: {e}") from None


def language_metric(task: str, scores: Mapping[str, float]) -> float:
    """The one number per language that the task score averages: (EM+F1)/2, F1 or accuracy."""
    if task in QA_TASKS:
        return (scores["exact_match"] + scores["f1"]) / 2
    return scores["f1"] if "f1" in scores else scores["accuracy"]


# -- aggregation --------------------------------------------------------------------------


def task_summary(task: str, per_language: Mapping[str, Mapping[str, float]]) -> dict:
    """``{"languages": ..., "avg_<metric>": ..., "score": avg_metric}`` as XTREME averages."""
    if not per_language:
        raise ValueError(f"{task}: no languages scored")
    summary: dict = {"languages": {lang: dict(s) for lang, s in per_language.items()}}
    for metric in next(iter(per_language.values())):
        # sum / len in XTREME's language order, so the floats are XTREME's to the last bit
        values = [s[metric] for s in per_language.values()]
        summary[f"avg_{metric}"] = sum(values) / len(values)
    if task in QA_TASKS:
        summary["score"] = (summary["avg_exact_match"] + summary["avg_f1"]) / 2
    else:
        summary["score"] = summary.get("avg_f1", summary.get("avg_accuracy"))
    return summary


def tier_averages(detailed: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Per tier: each task's mean language metric over its languages in the tier, and the mean
    of those task means (tasks without a language in the tier are left out)."""
    out: dict = {}
    for tier in TIERS:
        per_task = {}
        for task, per_language in detailed.items():
            values = [language_metric(task, s) for lang, s in per_language.items()
                      if language(lang).tier == tier]
            if values:
                per_task[task] = fmean(values)
        if per_task:
            out[tier] = {"tasks": per_task, "mean": fmean(per_task.values()),
                         "languages": sorted({lang for per_language in detailed.values()
                                              for lang in per_language
                                              if language(lang).tier == tier})}
    return out


def summarize(detailed: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Task summaries, group scores, the XTREME score (all nine tasks only) and tier averages."""
    tasks = {task: task_summary(task, per_language) for task, per_language in detailed.items()}
    groups = {group: fmean(tasks[t]["score"] for t in members)
              for group, members in GROUP2TASK.items() if all(t in tasks for t in members)}
    xtreme = fmean(tasks[t]["score"] for t in TASKS) if all(t in tasks for t in TASKS) else None
    return {"tasks": tasks, "groups": groups, "xtreme_score": xtreme,
            "tiers": tier_averages(detailed)}


# -- folders ------------------------------------------------------------------------------

_FILE_RE = re.compile(r"^test-(?P<lang>[^.]+)\.(?P<ext>tsv|json)$")


def _suffix(task: str) -> str:
    return "json" if task in QA_TASKS else "tsv"


def evaluate_folders(predictions: str | os.PathLike, labels: str | os.PathLike,
                     tasks: Iterable[str] | None = None) -> dict:
    """Score every task folder present in both directories (``<task>/test-<lang>.<ext>``).

    Every language of a scored task must have both files (XTREME's rule); a file for a language
    outside the task's list, or a task folder XTREME does not know, is an error.
    """
    pred_root, label_root = Path(predictions), Path(labels)
    for root in (pred_root, label_root):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
    for folder in sorted(p for p in pred_root.iterdir() if p.is_dir()):
        if folder.name not in TASK2LANGS:
            raise ValueError(f"{folder}: unknown task {folder.name!r}; expected one of "
                             f"{list(TASKS)}")
        for file in sorted(folder.iterdir()):
            match = _FILE_RE.match(file.name)
            if not match or match["ext"] != _suffix(folder.name):
                raise ValueError(f"{file}: expected test-<lang>.{_suffix(folder.name)}")
            _check_task_language(folder.name, match["lang"])
    selected = TASKS if tasks is None else tuple(tasks)
    detailed: dict[str, dict[str, dict[str, float]]] = {}
    for task in selected:
        if task not in TASK2LANGS:
            raise ValueError(f"unknown task {task!r}: expected one of {list(TASKS)}")
        if not (pred_root / task).is_dir() or not (label_root / task).is_dir():
            continue
        detailed[task] = {}
        for lang in TASK2LANGS[task]:
            name = f"test-{lang}.{_suffix(task)}"
            pred_file, label_file = pred_root / task / name, label_root / task / name
            for f in (pred_file, label_file):
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: missing ({task} is scored on all of "
                                            f"{','.join(TASK2LANGS[task])})")
            detailed[task][lang] = score_language(task, lang, pred_file, label_file)
    if not detailed:
        raise ValueError(f"no task folder is present in both {pred_root} and {label_root}")
    return {"detailed": detailed, **summarize(detailed)}
