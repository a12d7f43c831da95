"""``SeqioBatches``: a ``train`` batch factory over any seqio Task or Mixture by name (t5x's
``MIXTURE_OR_TASK_NAME`` / ``TASK_FEATURE_LENGTHS`` / ``MIXTURE_OR_TASK_MODULE``), and
``seqio_data_model``, the head(s) such a name asks for. Gin files bind it as
``train_script.SeqioBatches`` (``xstilts.train`` re-exports it)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import numpy as np
from jax.experimental import multihost_utils

from xstilts.data import manifest, pipeline, tasks
from xstilts.data.feature_converters import PAD_ID, fit_width
from xstilts.data.preprocessors import IGNORE_LABEL
from xstilts.models import heads as heads_lib

log = logging.getLogger("xstilts.train")

@dataclasses.dataclass(frozen=True)
class DataModel:
    """The model a batch factory's data asks for: one head (``task_type``, ``num_labels``), or,
    for a mixture drawn one task per step, ``heads`` and ``task_heads`` (``train(heads=...)``)."""

    task_type: str
    num_labels: int = 2
    heads: dict[str, tuple[str, int]] | None = None
    task_heads: dict[str, str] | None = None


LABELLED_KINDS = ("classification", "tagging")


def _seqio_task_labels(task: Any, data_dir: Any, allow_samples: bool) -> int | None:
    """A seqio Task's label count: the project's task table (or its data, for an open label
    set), else the size of the ``targets`` feature's vocabulary (a user's Task declaring
    ``seqio.PassThroughVocabulary(size=N)``); None when neither tells."""
    metadata = getattr(task, "metadata", None) or {}
    if metadata.get("labels"):
        return len(metadata["labels"])
    if task.name in tasks.TASKS and "labels" in metadata:  # an open label set (CCG)
        return len(pipeline.task_labels(tasks.TASKS[task.name], data_dir,
                                        allow_samples=allow_samples))
    feature = task.output_features.get("targets")
    size = getattr(getattr(feature, "vocabulary", None), "vocab_size", 0) if feature else 0
    return int(size) if size else None


def seqio_data_model(name: str, *, kind: str | None = None, num_labels: int | None = None,
                     data_dir: Any = None, allow_samples: bool = False) -> DataModel:
    """The model for seqio Task or Mixture ``name`` (registered): one head when its batches mix
    per example (``seqio_tasks.mixes_per_example``), else one head per head group (a project
    task's ``metadata["head"]``, a user's Task its own name).

    ``kind``: the kind of a user's Task whose output features match none
    (``seqio_tasks.output_features``; gin ``TASK_TYPE``); ``num_labels``: the label count of one
    that declares none (gin ``NUM_LABELS``). Either, when it contradicts the data, is an error.
    """
    import seqio

    from xstilts.data import seqio_tasks

    provider = seqio_tasks._provider(name)  # noqa: SLF001 - the KeyError that names the fix
    leaves = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
    if kind is not None and kind not in heads_lib.TASK_MODELS:
        raise ValueError(f"TASK_TYPE {kind!r}: expected one of {sorted(heads_lib.TASK_MODELS)}")
    facts: dict[str, tuple[str, str, int | None]] = {}
    for task in leaves:
        try:
            task_kind = seqio_tasks.task_kind(task)
        except ValueError as error:
            if kind is None:
                raise ValueError(f"{error}; or name its kind with --gin.TASK_TYPE=... (one of "
                                 f"{sorted(heads_lib.TASK_MODELS)})") from None
            task.metadata = {**(getattr(task, "metadata", None) or {}), "kind": kind}
            task_kind = kind
        head = (getattr(task, "metadata", None) or {}).get("head") or task.name
        labels = _seqio_task_labels(task, data_dir, allow_samples) \
            if task_kind in LABELLED_KINDS else 2
        facts[task.name] = (task_kind, head, labels)

    def resolved(labels: set[int], what: str, task_kind: str) -> int:
        if task_kind not in LABELLED_KINDS:
            return 2
        if num_labels is not None and labels and labels != {int(num_labels)}:
            raise ValueError(f"{what}: NUM_LABELS={num_labels} but its tasks have "
                             f"{sorted(labels)} labels")
        if len(labels) > 1:
            raise ValueError(f"{what}: its tasks disagree on the number of labels "
                             f"{sorted(labels)}")
        if labels:
            return labels.pop()
        if num_labels is None:
            raise ValueError(f"{what}: cannot tell its number of labels ({task_kind}): declare "
                             f"its 'targets' feature on seqio.PassThroughVocabulary(size=N), "
                             f"or set --gin.NUM_LABELS=N")
        return int(num_labels)

    if isinstance(provider, seqio.Task) or seqio_tasks.mixes_per_example(provider):
        (task_kind,) = {k for k, _, _ in facts.values()}
        if kind is not None and kind != task_kind:
            raise ValueError(f"seqio {name}: TASK_TYPE={kind!r} but its tasks are {task_kind}")
        labels = {n for _, _, n in facts.values() if n is not None}
        return DataModel(task_kind, resolved(labels, f"seqio {name}", task_kind))
    if kind is not None:
        raise ValueError(f"seqio mixture {name} trains one head per head group (its tasks "
                         f"differ in kind or head); leave TASK_TYPE None")
    groups: dict[str, tuple[set[str], set[int]]] = {}
    for task_kind, head, labels in facts.values():
        kinds, counts = groups.setdefault(head, (set(), set()))
        kinds.add(task_kind)
        counts.update({labels} if labels is not None else set())
    heads = {}
    for head, (kinds, counts) in groups.items():
        if len(kinds) != 1:
            raise ValueError(f"seqio mixture {name}: head {head!r} has tasks of kinds "
                             f"{sorted(kinds)}")
        (task_kind,) = kinds
        heads[head] = (task_kind, resolved(counts, f"seqio mixture {name} head {head!r}",
                                           task_kind))
    return DataModel("multitask", 2, heads, {t: head for t, (_, head, _) in facts.items()})


def _names(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def agree_width(width: int) -> int:
    """The largest of every process's ``width`` (the step's batch width, length buckets)."""
    return int(np.max(multihost_utils.process_allgather(np.asarray(width, np.int32))))


def gather_rows(row: np.ndarray) -> np.ndarray:
    """Every process's ``row`` (int32 vector), stacked: ``[processes, len(row)]``."""
    gathered = multihost_utils.process_allgather(np.asarray(row, np.int32))
    return np.asarray(gathered).reshape(-1, len(row))


def _padding_like(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of ``batch``'s shapes holding only padding examples (``example_mask`` 0)."""
    fill = {"input_ids": PAD_ID, "labels": IGNORE_LABEL}
    return {k: np.full_like(v, fill.get(k, 0)) for k, v in batch.items()}


def aligned_batches(stream: Iterator[dict[str, np.ndarray]], *, where: str,
                    gather: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """A finite per-host ``stream`` (evaluation) with every host yielding the same number of
    batches of the same width, so no host waits in a collective that another never enters:
    per step one all-gather (``gather``) of (has a batch, its width); the step ends the pass
    when no host has one, is as wide as the widest, and a host whose shard ran out yields a
    batch of padding examples (``example_mask`` 0, never counted) of its last batch's shape.
    A host whose shard is empty while another's is not is an error naming ``where``."""
    gather = gather or gather_rows
    last = None
    while True:
        batch = next(stream, None)
        width = 0 if batch is None else int(batch["input_ids"].shape[-1])
        steps = gather(np.asarray([batch is not None, width], np.int32))
        if not steps[:, 0].any():
            return
        if batch is None:
            if last is None:
                raise ValueError(f"{where}: this host's shard has no examples while another "
                                 f"host's has; use fewer hosts (processes) for this split")
            batch = _padding_like(last)
        last = batch
        yield fit_width(batch, int(steps[:, 1].max()))


DATA_MANIFEST = "data_manifest.json"  # what a run read, as the experiment writes per job


@dataclasses.dataclass
class SeqioBatches:
    """A ``train`` batch factory over any seqio Task or Mixture by name (t5x's
    ``MIXTURE_OR_TASK_NAME`` / ``TASK_FEATURE_LENGTHS`` / ``MIXTURE_OR_TASK_MODULE`` /
    ``USE_CACHED_TASKS``), through ``seqio_tasks.seqio_batches``.

    Set-up (once, on first use): the project's Tasks and Mixtures are registered when
    ``vocabulary`` (an XLM-R SentencePiece model) is given (``data_dir``: their prepared files;
    ``allow_samples``: sample files too), then each ``mixture_or_task_module`` is imported (it
    registers a user's Tasks and may mix them with the project's), then ``cache_dirs`` join
    seqio's cache directories. ``use_cached``: None reads the offline cache
    (``seqio.scripts.cache_tasks_main`` or ``xstilts.data.seqio_cache``) when every task of
    ``mixture_or_task_name`` has one; True requires it.

    Each host reads its shard (``seqio.ShardInfo(shard_index, num_shards)``) and a resumed run
    starts at batch ``start_batch`` of the same stream (exact resume). ``model()`` tells
    ``train`` the head(s) (``seqio_data_model``; ``kind``/``num_labels`` for a user's Task
    whose features do not tell); a Mixture drawn one task per step yields ``(task, batch)``.

    ``length_buckets`` (gin ``LENGTH_BUCKETS``; None, ``"auto"`` or lengths, see
    ``feature_converters.bucket_lengths``): each batch as wide as the smallest bucket holding
    its longest row. With several hosts each sees only its shard, so the hosts agree on every
    step's width, the largest of theirs (``agree_width``: one small all-gather per step).
    """

    mixture_or_task_name: str
    task_feature_lengths: int | Mapping[str, int]
    mixture_or_task_module: str | Sequence[str] | None = None
    data_dir: str | None = None
    vocabulary: str | None = None
    allow_samples: bool = False
    use_cached: bool | None = None
    cache_dirs: Sequence[str] = ()
    split: str = "train"
    seed: int = 0
    kind: str | None = None
    num_labels: int | None = None
    length_buckets: Sequence[int] | str | None = None

    def __post_init__(self) -> None:
        missing = [macro for macro, value in (
            ("MIXTURE_OR_TASK_NAME", self.mixture_or_task_name),
            ("TASK_FEATURE_LENGTHS", self.task_feature_lengths)) if value is gin.REQUIRED]
        if missing:
            raise ValueError(f"SeqioBatches: set the gin macros {missing} (e.g. "
                             f"--gin.MIXTURE_OR_TASK_NAME=\"'my_mixture'\" "
                             f"--gin.TASK_FEATURE_LENGTHS=\"{{'inputs': 128}}\"), or another "
                             f"TRAIN_BATCHES")
        self._model: DataModel | None = None
        self._cached = False

    def model(self) -> DataModel:
        """Set up (registration, module imports, cache directories) and the model's head(s)."""
        if self._model is not None:
            return self._model
        try:
            import seqio

            from xstilts.data import seqio_tasks
        except ImportError as error:
            raise ImportError(f"SeqioBatches needs the data extra (pip install "
                              f"'xstilts[data]'): {error}") from error
        if self.vocabulary:
            seqio_tasks.register_all(self.data_dir, self.vocabulary,
                                     allow_samples=self.allow_samples)
        for module in _names(self.mixture_or_task_module):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                raise ModuleNotFoundError(
                    f"MIXTURE_OR_TASK_MODULE {module!r}: {error} (expected an importable module "
                    f"that registers seqio Tasks/Mixtures; is its folder on PYTHONPATH?)"
                ) from error
        if self.cache_dirs:
            seqio.add_global_cache_dirs([*seqio.get_global_cache_dirs(),
                                         *_names(self.cache_dirs)])
        name = self.mixture_or_task_name
        if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
            hint = ("it is one of the project's: set VOCABULARY (an XLM-R SentencePiece model) "
                    "and DATA_DIR to register them" if name in tasks.TASKS or
                    name in tasks.MIXTURES else "set MIXTURE_OR_TASK_MODULE to the module "
                    "that registers it")
            raise KeyError(f"MIXTURE_OR_TASK_NAME {name!r} is neither a registered seqio Task "
                           f"nor Mixture; {hint}")
        self._model = seqio_data_model(name, kind=self.kind, num_labels=self.num_labels,
                                       data_dir=self.data_dir, allow_samples=self.allow_samples)
        self._cached = self._resolve_cache(seqio)
        return self._model

    def _resolve_cache(self, seqio: Any) -> bool:
        provider = seqio.get_mixture_or_task(self.mixture_or_task_name)
        leaves = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
        uncached = [t.name for t in leaves if not (t.supports_caching and t.cache_dir)]
        if self.use_cached and uncached:
            raise ValueError(f"USE_CACHED_TASKS=True but {uncached} have no offline cache in "
                             f"{seqio.get_global_cache_dirs()} (cache them with "
                             f"seqio.scripts.cache_tasks_main or xstilts.data.seqio_cache, and "
                             f"pass --seqio_additional_cache_dirs)")
        use = bool(leaves) and not uncached and self.use_cached is not False
        log.info("seqio %s: %s", self.mixture_or_task_name,
                 "reading the offline cache" if use else "preprocessing on the fly")
        return use

    def data_records(self) -> list[dict[str, Any]]:
        """Provenance of what this factory reads (``data.manifest`` records): per leaf Task of
        ``mixture_or_task_name`` its split, files (relative path, bytes, sha256) and counts for
        the project's Tasks, the example count for a user's, and each Task's mixing ``rate``
        and ``share`` (seqio's rates)."""
        import seqio

        self.model()
        provider = seqio.get_mixture_or_task(self.mixture_or_task_name)
        leaves = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
        rates = {t.name: 1.0 for t in leaves} if isinstance(provider, seqio.Task) else \
            {t.name: float(provider.get_rate(t)) for t in leaves}  # fmt: skip
        total = sum(rates.values()) or 1.0
        mixture = None if isinstance(provider, seqio.Task) else self.mixture_or_task_name
        records = []
        for task in leaves:
            source = task.source  # the project's ReaderDataSource knows its files
            if task.name in tasks.TASKS and hasattr(source, "allow_samples"):
                (record,) = manifest.records_for_tasks(
                    [(task.name, self.split)], source.data_dir,
                    allow_samples=source.allow_samples)
            else:
                record = {"task": task.name, "split": self.split, "source": "seqio Task",
                          "files": [], "examples": task.num_input_examples(self.split),
                          "max_length": None}
            records.append({**record, "mixture": mixture, "rate": rates[task.name],
                            "share": rates[task.name] / total})
        return records

    @property
    def reads_cache(self) -> bool:
        """Whether the batches come from the offline cache (after ``model()``)."""
        return self._cached

    def __call__(self, *, shard_index: int, num_shards: int, batch_size: int,
                 start_batch: int) -> Iterator[Any]:
        model = self.model()
        import seqio

        from xstilts.data import seqio_tasks

        # evaluation on several hosts: each host's shard may hold a different number of
        # batches; aligned_batches pads them to the same count (and agrees on the width)
        aligned = self.split != "train" and int(num_shards) > 1 and not model.heads
        stream = seqio_tasks.seqio_batches(
            self.mixture_or_task_name, sequence_length=self.task_feature_lengths,
            batch_size=batch_size, split=self.split,
            shard_info=seqio.ShardInfo(int(shard_index), int(num_shards)), seed=self.seed,
            start_step=int(start_batch), use_cached=self._cached,
            length_buckets=self.length_buckets,
            agree_width=(lambda width: width) if aligned
            else agree_width if int(num_shards) > 1 else None)  # fmt: skip
        if aligned:
            yield from aligned_batches((batch for _, batch in stream),
                                       where=f"{self.mixture_or_task_name} {self.split}")
            return
        for task, batch in stream:
            yield (task, batch) if model.heads else batch
