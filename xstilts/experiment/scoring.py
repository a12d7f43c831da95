"""Model outputs -> predictions per task kind -> XTREME scores and per-example statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xstilts.data import tasks
from xstilts.evals import metrics


class MissingGoldError(ValueError):
    """A split to be scored has examples without their gold label (never scored as 0)."""


def _files(spec: tasks.TaskSpec, split: str, data_dir: str | None) -> str:
    """The file(s) the split was read from, for error messages."""
    try:
        return ", ".join(str(p) for p in spec.path(split, data_dir))
    except (KeyError, FileNotFoundError):
        return f"data_dir {data_dir} (read from TFDS or not found)"


def check_gold(spec: tasks.TaskSpec, split: str, examples: Sequence[Mapping[str, Any]],
               data_dir: str | None = None) -> None:
    """Every example of a scored split carries its gold; else an error naming the task, split,
    file and example."""
    if not examples:
        raise MissingGoldError(f"{spec.name} {split} ({_files(spec, split, data_dir)}): no "
                               f"examples to score")
    for number, e in enumerate(examples):
        if spec.kind == "classification":
            missing = e.get("label") in (None, "", -1) or (
                spec.labels is not None and e["label"] not in spec.labels)
        elif spec.kind == "tagging":
            missing = not e.get("tags") or any(t in (None, "") for t in e["tags"])
        elif spec.kind == "qa":
            missing = not e.get("answers")
        else:
            missing = False
        if missing:
            raise MissingGoldError(
                f"{spec.name} {split} ({_files(spec, split, data_dir)}): example {number} "
                f"(id {e.get('id')!r}) has no gold label; XTREME's scripts strip test labels "
                f"(XNLI, PAWS-X, UDPOS): point the task at the labelled release")


def qa_scores(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
              answers: Mapping[str, str]) -> tuple[dict[str, float], np.ndarray]:
    dataset = metrics.squad_data(examples)
    if spec.metric == "mlqa_em_f1":
        return (metrics.mlqa_evaluate(dataset, answers, spec.language),
                metrics.qa_stats(dataset, answers, spec.language, mlqa=True))
    return metrics.squad_evaluate(dataset, answers), metrics.qa_stats(dataset, answers)


def score_outputs(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
                  features: Sequence[Mapping[str, Any]], outputs: Sequence[Any]
                  ) -> tuple[dict[str, float], np.ndarray]:
    """XTREME's scores (x100) of one task-language split and its per-example statistics."""
    if spec.kind == "classification":
        gold = [e["label"] for e in examples]
        predicted = [spec.labels[int(np.argmax(o))] for o in outputs]
        return metrics.accuracy(gold, predicted), metrics.accuracy_stats(gold, predicted)
    if spec.kind == "tagging":
        gold, predicted = metrics.word_tags(features, [np.argmax(o, -1) for o in outputs],
                                            spec.labels, examples)
        return metrics.tagging_f1(gold, predicted), metrics.tagging_stats(gold, predicted)
    if spec.kind == "qa":
        start = np.stack([o[0] for o in outputs])
        end = np.stack([o[1] for o in outputs])
        offsets = [[None if a < 0 else (int(a), int(b)) for a, b in f["offsets"]]
                   for f in features]
        contexts = {e["id"]: e["context"] for e in examples}
        answers = metrics.qa_postprocess(start, end, offsets,
                                         [f["example_id"] for f in features], contexts)
        return qa_scores(spec, examples, answers)
    raise ValueError(f"task {spec.name}: cannot score kind {spec.kind!r}")


def chance_scores(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
                  train_examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Scores of a predictor that ignores its input: the English-train majority label (pair
    classification), the majority tag for every word (tagging), a random context word (QA,
    seeded)."""
    if spec.kind == "classification":
        return metrics.chance_classification([e["label"] for e in examples],
                                             [e["label"] for e in train_examples])
    if spec.kind == "tagging":
        return metrics.chance_tagging([list(e["tags"]) for e in examples],
                                      [t for e in train_examples for t in e["tags"]])
    if spec.kind == "qa":
        answers = metrics.chance_answers({e["id"]: e["context"] for e in examples})
        return qa_scores(spec, examples, answers)[0]
    raise ValueError(f"task {spec.name}: no chance level for kind {spec.kind!r}")
