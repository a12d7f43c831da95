"""Task and mixture specs: what one dataset, language and role is, and how a table row expands."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

KINDS = ("classification", "tagging", "qa", "multiple_choice", "retrieval", "mlm")
ROLES = ("intermediate", "target", "retrieval", "mlm")
RATES = ("proportional", "temperature", "equal")


def data_directory(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$XSTILTS_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("XSTILTS_DATA_DIR", "data"))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one dataset in one language and role.

    Task names are ``<dataset>.<language>``. ``splits`` maps a split to candidate paths relative
    to the data directory; the first that exists is read (a retrieval split names several files,
    separated by ``|``). ``tfds_name``/``tfds_splits``: the TFDS catalog builder holding the same
    data and our split -> its split (read by ``sources.examples(..., source="tfds")``).
    """

    name: str
    dataset: str
    language: str
    role: str
    kind: str
    splits: Mapping[str, tuple[str, ...]]
    reader: Callable[..., Iterator[dict]]
    labels: tuple[str, ...] | None = None
    metric: str = "accuracy"
    max_length: int = 256
    epochs: int | None = None
    train_task: str | None = None  # the English train task a target is fine-tuned on
    head: str | None = None  # tasks with the same head share the output layer (ANLI+ -> "nli")
    num_choices: int | None = None
    source: str = "native"  # native | translate-train | synthetic | local-only
    reader_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tfds_name: str | None = None
    tfds_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The command that writes this task's files (``{data_dir}`` filled in), named where they are
    # missing; None: they come from ``python -m xstilts.data.prepare``.
    made_by: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.role not in ROLES:
            raise ValueError(f"task {self.name}: role {self.role!r} not in {ROLES}")

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "language": self.language,
            "role": self.role,
            "kind": self.kind,
            "metric": self.metric,
            "max_length": self.max_length,
            "epochs": self.epochs,
            "train_task": self.train_task,
            "head": self.head or self.dataset,
            "labels": self.labels,
            "source": self.source,
            "splits": tuple(self.splits),
        }

    def path(self, split: str, data_dir: str | os.PathLike | None = None, *,
             allow_samples: bool = False) -> list[Path]:
        """The file(s) of ``split``: the first candidate whose files all exist, sample candidates
        (``is_sample``) only with ``allow_samples``; else ``FileNotFoundError`` naming every
        path looked for. Never another split or a sample in place of the prepared file."""
        if split not in self.splits:
            raise KeyError(
                f"task {self.name} has no split {split!r}; splits: {sorted(self.splits)}"
            )
        root = data_directory(data_dir)
        candidates = self.splits[split]
        for candidate in candidates:
            paths = [root / part for part in candidate.split("|")]
            if (allow_samples or not is_sample(candidate)) and all(p.is_file() for p in paths):
                return paths
        tried = [str(root / c) for c in candidates if allow_samples or not is_sample(c)]
        samples = [str(root / c) for c in candidates if not allow_samples and is_sample(c)
                   and all((root / part).is_file() for part in c.split("|"))]  # fmt: skip
        hint = f"; a sample exists ({', '.join(samples)}): pass allow_samples=True to read it" \
            if samples else ""  # fmt: skip
        how = self.made_by.format(data_dir=root) if self.made_by else \
            f"fetch it with `python -m xstilts.data.prepare --data_dir {root}`"  # fmt: skip
        raise FileNotFoundError(
            f"task {self.name} split {split!r}: no data file found (looked for "
            f"{', '.join(tried) or 'no prepared file: only samples are listed'}){hint}; {how}"
        )

    def examples(self, split: str, data_dir: str | os.PathLike | None = None, *,
                 allow_samples: bool = False) -> Iterator[dict]:
        """Examples of ``split`` read from the file(s) ``path`` picks (plain dicts, see
        ``readers.py``). ``sources.examples`` also reads the TFDS builder."""
        yield from self.reader(*self.path(split, data_dir, allow_samples=allow_samples),
                               **self.reader_kwargs)  # fmt: skip

    def num_examples(self, split: str, data_dir: str | os.PathLike | None = None, *,
                     allow_samples: bool = False) -> int:
        return sum(1 for _ in self.examples(split, data_dir, allow_samples=allow_samples))


def is_sample(candidate: str) -> bool:
    """Whether a split's candidate path (relative, ``|``-joined) names a sample file: under
    ``english/`` or with ``sample``, ``head300`` or ``hf_dummy`` in its path, as the shared test
    samples are laid out."""
    parts = [part for path in candidate.split("|") for part in Path(path).parts]
    return (bool(parts) and parts[0] in SAMPLE_DIRS) or any(
        marker in part for part in parts for marker in SAMPLE_MARKERS
    )


SAMPLE_MARKERS = ("sample", "head300", "hf_dummy")
SAMPLE_DIRS = ("english",)  # the shared samples of the English intermediate tasks


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One dataset of a table, registered as one ``TaskSpec`` per language.

    Path and TFDS patterns are ``str.format`` templates over ``dataset``, ``lang`` and ``code``
    (the language's code in this dataset's file or builder names: ``codes.get(lang, lang)``).
    ``split_languages`` / ``tfds_split_languages``: a split (native / TFDS) that only these
    languages have; other splits exist for every language.
    """

    dataset: str
    languages: tuple[str, ...]
    role: str
    kind: str
    reader: Callable[..., Iterator[dict]]
    splits: Mapping[str, tuple[str, ...]]
    split_languages: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    codes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    metric: str = "accuracy"
    max_length: int = 256
    epochs: int | None = None
    train_task: str | None = None
    head: str | None = None
    num_choices: int | None = None
    source: str = "native"
    reader_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tfds_name: str | None = None
    tfds_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tfds_split_languages: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def spec(self, lang: str) -> TaskSpec:
        """The ``TaskSpec`` of ``lang``."""
        fill = {"dataset": self.dataset, "lang": lang, "code": self.codes.get(lang, lang)}
        splits = {
            split: tuple(pattern.format(**fill) for pattern in patterns)
            for split, patterns in self.splits.items()
            if lang in self.split_languages.get(split, (lang,))
        }
        tfds_splits = {
            split: name.format(**fill)
            for split, name in self.tfds_splits.items()
            if lang in self.tfds_split_languages.get(split, (lang,))
        }
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(TaskSpec)
                  if hasattr(self, f.name)}  # fmt: skip
        return TaskSpec(
            **{
                **shared,
                "name": f"{self.dataset}.{lang}",
                "language": lang,
                "splits": splits,
                "tfds_name": self.tfds_name and self.tfds_name.format(**fill),
                "tfds_splits": tfds_splits,
            }
        )

    def specs(self) -> list[TaskSpec]:
        return [self.spec(lang) for lang in self.languages]


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """Tasks sampled by a rate rule, plus sub-mixtures taking fixed shares of the steps.

    ``rate``: ``"proportional"`` (to the number of training examples, each capped at ``cap``),
    ``"temperature"`` (``n_i^(1/temperature)``) or ``"equal"``.
    """

    name: str
    tasks: tuple[str, ...] = ()
    rate: str = "proportional"
    cap: int | None = None
    temperature: float = 1.0
    submixtures: tuple[tuple[str, float], ...] = ()
    description: str = ""
    # Families: (mixture, reference mixture) pairs whose shares are those the reference's tasks
    # get in mixture ``match`` (all9.multilingual keeps all9.en's share per intermediate task).
    families: tuple[tuple[str, str], ...] = ()
    match: str | None = None
    # The share of the English tasks among the mixture's own tasks (None: the rate rule decides).
    english_share: float | None = None

    def __post_init__(self):
        if self.rate not in RATES:
            raise ValueError(f"mixture {self.name}: unknown rate rule {self.rate!r}")
        if bool(self.families) != bool(self.match) or (
                self.families and (self.tasks or self.submixtures)):
            raise ValueError(f"mixture {self.name}: families need match, and neither tasks nor "
                             f"submixtures beside them")
        if self.english_share is not None and not 0 < self.english_share < 1:
            raise ValueError(f"mixture {self.name}: english_share {self.english_share} is not "
                             f"in (0, 1)")
        share = sum(s for _, s in self.submixtures)
        if not 0 <= share <= 1 or (share == 1 and self.tasks):
            raise ValueError(f"mixture {self.name}: sub-mixture shares sum to {share}, need < 1")
