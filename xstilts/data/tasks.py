"""Registers every task of the tables and every mixture recipe; re-exports the registry's API."""

from __future__ import annotations

from xstilts.benchmark import TASK2LANGS as LANGUAGES
from xstilts.benchmark import UDPOS_TEST_ONLY
from xstilts.data import mixtures
from xstilts.data.mixtures import ALL9_CAP, MLM_SHARE, MULTILINGUAL_TEMPERATURE
from xstilts.data.registry import (
    MIXTURES,
    TASKS,
    get_mixture,
    get_task,
    languages_of,
    mixture_epoch_size,
    mixture_rates,
    mixture_tasks,
    register_mixture,
    register_task,
    summary,
    tasks_for,
)
from xstilts.data.sources import load_retrieval
from xstilts.data.spec import KINDS, ROLES, MixtureSpec, TaskRow, TaskSpec, data_directory
from xstilts.data.tables import intermediate, synthetic, xtreme
from xstilts.data.tables.intermediate import (
    INTERMEDIATE_TASKS,
    MLM_LANGUAGES,
    SQUAD_TRANSLATE_TRAIN,
    XNLI_TRANSLATE_TRAIN,
)
from xstilts.data.tables.xtreme import TATOEBA_ISO3

__all__ = [
    "ALL9_CAP",
    "INTERMEDIATE_TASKS",
    "KINDS",
    "LANGUAGES",
    "MIXTURES",
    "MLM_LANGUAGES",
    "MLM_SHARE",
    "MULTILINGUAL_TEMPERATURE",
    "ROLES",
    "SQUAD_TRANSLATE_TRAIN",
    "TASKS",
    "TATOEBA_ISO3",
    "UDPOS_TEST_ONLY",
    "XNLI_TRANSLATE_TRAIN",
    "MixtureSpec",
    "TaskRow",
    "TaskSpec",
    "data_directory",
    "get_mixture",
    "get_task",
    "languages_of",
    "load_retrieval",
    "mixture_epoch_size",
    "mixture_rates",
    "mixture_tasks",
    "register_mixture",
    "register_task",
    "summary",
    "tasks_for",
]

ROWS: tuple[TaskRow, ...] = (*xtreme.ROWS, *intermediate.ROWS, *synthetic.ROWS)


def _register_all() -> None:
    """Every table row (one task per language), then every mixture recipe."""
    for row in ROWS:
        for spec in row.specs():
            register_task(spec)
    for mixture in mixtures.all_mixtures():
        register_mixture(mixture)


_register_all()
