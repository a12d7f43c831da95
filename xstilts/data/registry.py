"""The task and mixture registries: register, look up, and flatten mixtures into task rates."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from xstilts.data.feature_converters import proportional_rates, temperature_rates
from xstilts.data.spec import MixtureSpec, TaskSpec

Sizes = Mapping[str, int] | Callable[[str], int]

TASKS: dict[str, TaskSpec] = {}
MIXTURES: dict[str, MixtureSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    if spec.name in TASKS and not replace:
        raise ValueError(f"task {spec.name} is already registered (pass replace=True)")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task; an unknown task or language names what exists."""
    if name in TASKS:
        return TASKS[name]
    dataset, _, language = name.rpartition(".")
    languages = sorted(t.language for t in TASKS.values() if t.name.rpartition(".")[0] == dataset)
    if languages:
        raise KeyError(
            f"unknown task {name!r}: no language {language!r} for {dataset}; "
            f"languages: {' '.join(languages)}"
        )
    close = difflib.get_close_matches(name, list(TASKS), n=5)
    raise KeyError(f"unknown task {name!r}; similar registered tasks: {close}")


def tasks_for(dataset: str) -> list[TaskSpec]:
    return [t for t in TASKS.values() if t.dataset == dataset]


def languages_of(dataset: str) -> list[str]:
    return [t.language for t in tasks_for(dataset)]


def summary(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Metadata rows of the registered tasks (for docs and the CLI)."""
    return [
        {"name": t.name, **t.metadata} for t in TASKS.values() if names is None or t.name in names
    ]


def register_mixture(spec: MixtureSpec, *, replace: bool = False) -> MixtureSpec:
    if spec.name in MIXTURES and not replace:
        raise ValueError(f"mixture {spec.name} is already registered (pass replace=True)")
    for task in spec.tasks:
        get_task(task)  # unknown task -> KeyError naming it
    for sub in (*(s for s, _ in spec.submixtures), *(m for pair in spec.families for m in pair),
                *([spec.match] if spec.match else [])):
        get_mixture(sub)
    MIXTURES[spec.name] = spec
    return spec


def get_mixture(name: str) -> MixtureSpec:
    if name not in MIXTURES:
        close = difflib.get_close_matches(name, list(MIXTURES), n=5)
        raise KeyError(f"unknown mixture {name!r}; similar registered mixtures: {close}")
    return MIXTURES[name]


def mixture_tasks(name: str) -> list[str]:
    """Every task of mixture ``name``, its sub-mixtures' included, in first-seen order."""
    spec = get_mixture(name)
    tasks = list(spec.tasks)
    for sub in (*(s for s, _ in spec.submixtures), *(f for f, _ in spec.families)):
        tasks.extend(t for t in mixture_tasks(sub) if t not in tasks)
    return tasks


def _size_of(sizes: Sizes) -> Callable[[str], int]:
    return sizes if callable(sizes) else sizes.__getitem__


def _own_rates(spec: MixtureSpec, size_of: Callable[[str], int]) -> dict[str, float]:
    """Rates of the mixture's own tasks by its rate rule (summing to one)."""
    if spec.english_share is not None:
        english = [t for t in spec.tasks if get_task(t).language == "en"]
        others = [t for t in spec.tasks if t not in english]
        if english and others:
            rates = {t: spec.english_share * p for t, p in _own_rates(dataclasses.replace(
                spec, tasks=tuple(english), english_share=None), size_of).items()}
            return rates | {t: (1 - spec.english_share) * p for t, p in _own_rates(
                dataclasses.replace(spec, tasks=tuple(others), english_share=None),
                size_of).items()}
    counts = {task: int(size_of(task)) for task in spec.tasks}
    if spec.rate == "equal":
        return {task: 1.0 / len(counts) for task in counts}
    if spec.rate == "temperature":
        return temperature_rates(counts, spec.temperature, spec.cap)
    return proportional_rates(counts, spec.cap)


def mixture_rates(name: str, sizes: Sizes, split: str = "train") -> dict[str, float]:
    """Flat sampling probability of every task of mixture ``name``. ``sizes`` maps a task to its
    number of ``split`` examples (or is a function computing it)."""
    size_of = _size_of(sizes)
    spec = get_mixture(name)
    rates: dict[str, float] = {}
    own_share = 1.0 - sum(share for _, share in spec.submixtures)
    shares = [(_own_rates(spec, size_of), own_share)] if spec.tasks and own_share > 0 else []
    shares += [(mixture_rates(sub, size_of, split), share)
               for sub, share in (*spec.submixtures, *family_shares(name, size_of))]
    for sub_rates, share in shares:
        for task, p in sub_rates.items():
            rates[task] = rates.get(task, 0.0) + share * p
    return rates


def family_shares(name: str, sizes: Sizes) -> list[tuple[str, float]]:
    """(family mixture, share) of a mixture with ``families``: each family gets the share its
    reference mixture's tasks have in ``match`` (e.g. all9.en's share of MNLI goes to
    mnli.multilingual), so adding translations does not reweight the task families. A task in
    several references (mnli.en is in MNLI and ANLI+) counts for the first of them."""
    spec = get_mixture(name)
    if not spec.families:
        return []
    reference = mixture_rates(spec.match, sizes)
    shares, assigned = [], set()
    for family, ref in spec.families:  # a task shared by references counts for the first
        own = [t for t in mixture_tasks(ref) if t not in assigned]
        assigned.update(own)
        shares.append((family, sum(reference.get(t, 0.0) for t in own)))
    total = sum(s for _, s in shares)
    if total <= 0:
        raise ValueError(f"mixture {name}: its families have no share in {spec.match}")
    return [(family, share / total) for family, share in shares]


def _supervised(name: str, size_of: Callable[[str], int]) -> tuple[float, float]:
    """(S, f): capped supervised (non-MLM) training examples of ``name`` and their draw share."""
    spec = get_mixture(name)
    own = [t for t in spec.tasks if get_task(t).kind != "mlm"]
    count = float(sum(min(int(size_of(t)), spec.cap or math.inf) for t in own))
    share = 1.0 - sum(s for _, s in spec.submixtures) if own else 0.0
    for sub, sub_share in (*spec.submixtures, *family_shares(name, size_of)):
        sub_count, sub_fraction = _supervised(sub, size_of)
        count, share = count + sub_count, share + sub_share * sub_fraction
    return count, share


def mixture_epoch_size(name: str, sizes: Sizes) -> float:
    """Examples drawn in one epoch of mixture ``name``: S / f, where S counts its supervised
    (non-MLM) training examples, each task capped at its mixture's ``cap`` (jiant's
    ``train_examples_cap``), and f is the share of draws that go to them. So epochs are passes
    over the capped supervised data, and MLM mixed in (``+mlm``) adds steps rather than taking
    them away. A mixture of MLM text only: all of its examples."""
    size_of = _size_of(sizes)
    count, fraction = _supervised(name, size_of)
    if fraction == 0:
        return float(sum(int(size_of(t)) for t in mixture_tasks(name)))
    return count / fraction
