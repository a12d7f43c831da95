"""The grid: phase settings and the experiment's arguments, validated (no JAX, no data)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from xstilts.data import tasks
from xstilts.models.xlmr import XLMRConfig

# jiant's simple runscript default train batch (X-STILTs intermediate training) and the
# phase-0 MLM length when a grid leaves them open.
INTERMEDIATE_BATCH_SIZE = 32
PRETRAIN_MAX_LENGTH = 128
BUDGETS = ("equal_steps", "epochs")
ON_CHANGE = ("stop", "rerun", "keep")
# A BUCC-style mining set built from the synthetic parallel test sentences (retrieval.bucc_like).
SYNTHETIC_BUCC = "synthetic.bucc"


@dataclasses.dataclass(frozen=True)
class Phase:
    """Hyper-parameters of one training phase (gin passes them as dicts); ``None``: the
    recipe's value for the task (``xstilts.experiment.plan``)."""

    steps: int | None = None  # fixed number of steps, or ...
    epochs: float | None = None  # ... epochs over the training features (None: the recipe's)
    batch_size: int | None = None
    learning_rate: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_length: int | None = None
    eval_every_steps: int = 0  # phase 2: score English dev every this many steps
    save_every_steps: int = 1000
    max_steps: int | None = None  # cap on epoch-derived steps
    patience: int | None = None  # stop after this many evaluations without improvement
    # (jiant's no_improvements_for_n_evals; None: train on, keep the best)
    # Padding (xstilts.data.feature_converters): each training batch cut to the smallest of these
    # widths holding its longest row ("auto": multiples of max_length/8; None: max_length), and
    # windows of ``length_grouping`` batches sorted by length (0: off). Same examples, same order
    # of steps, fewer pad tokens; each width compiles once.
    length_buckets: Sequence[int] | str | None = None
    length_grouping: int = 0
    # Phase 2 only: rows pack whole classification examples (at most max_segments a row, None:
    # max_length // 16); batch_size then counts rows and epochs count packed rows
    # (feature_converters: packed classification rows). Other kinds are batched as before.
    classification_packing: bool = False
    max_segments: int | None = None

    def __post_init__(self) -> None:
        if self.length_buckets is not None and not isinstance(self.length_buckets, str):
            object.__setattr__(self, "length_buckets", tuple(int(b) for b in self.length_buckets))

    def batching(self) -> dict[str, Any]:
        """The batcher options of this phase (``FeatureBatcher``'s keywords)."""
        packing = {"classification_packing": True, "max_segments": self.max_segments} \
            if self.classification_packing else {}
        return {"length_buckets": self.length_buckets, "length_grouping": self.length_grouping,
                **packing}

    @classmethod
    def of(cls, value: Phase | Mapping[str, Any] | None, where: str) -> Phase:
        if isinstance(value, Phase):
            return value
        value = dict(value or {})
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected some of "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**value)

    def merged(self, overrides: Mapping[str, Any], where: str) -> Phase:
        """These settings with ``overrides`` (a dict of Phase fields) on top."""
        return Phase.of({**dataclasses.asdict(self), **overrides}, where)

    def num_steps(self, num_features: float, where: str) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is None:
            raise ValueError(f"{where}: give steps or epochs (the task declares no epochs)")
        if self.batch_size is None:
            raise ValueError(f"{where}: batch_size is not resolved")
        steps = max(1, math.ceil(self.epochs * num_features / self.batch_size))
        return min(steps, self.max_steps) if self.max_steps else steps


@dataclasses.dataclass(frozen=True)
class Grid:
    """The grid and how to run it (``run_experiment``'s arguments, validated)."""

    run_dir: str
    model_config: XLMRConfig
    intermediate: Mapping[str, str | None]  # config name -> Mixture (None: the baseline); a
    # name outside the project's registry is a seqio Task or Mixture (``seqio_modules``)
    targets: Sequence[str]  # target datasets (xnli, synthetic.paraphrase, ...)
    retrieval: Sequence[str] = ()  # tatoeba, bucc2018, synthetic.parallel, synthetic.bucc
    seeds: Sequence[int] = (0,)
    data_dir: str | None = None
    tokenizer_dir: str | None = None  # holds sentencepiece.bpe.model (None: run_dir/tokenizer)
    pretrained: str | None = None  # Hugging Face checkpoint (dir or hub id) to start from
    spm_vocab_size: int | None = None  # train a SentencePiece model on the phase-0 mixture
    pretrain: Phase | None = None  # phase 0: MLM on ``pretrain_mixture``
    pretrain_mixture: str | None = None
    intermediate_phase: Phase = Phase()
    finetune: Phase = Phase()
    # Per English train task (mnli.en) or target (xnli): Phase fields over ``finetune`` and the
    # recipe; every value that differs from the paper's recipe is printed by the dry run.
    finetune_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # Phase-1 budget of a multilingual config compared with an English-only one (the primary
    # pair and more_comparisons): "equal_steps" (default) trains it for the steps the English
    # config's epochs give, at the same batch, so both arms get the same optimizer updates;
    # "epochs" counts epochs over its own, larger data (the multilingual arm then gets several
    # times more updates).
    intermediate_budget: str = "equal_steps"
    # Phase 1 once per seed (the variance the English-vs-multilingual comparison is about);
    # False: once, with seeds[0], shared by every fine-tuning seed.
    intermediate_per_seed: bool = True
    # The paper's code (jiant) classifies from the pooled output (dense + tanh on <s>).
    use_pooler: bool = True
    retrieval_layer: int | None = None  # hidden state for retrieval (None: 14/24 of the depth)
    retrieval_length: int | None = None  # None: the retrieval task's (512), capped by the model
    # Subtract each language's mean sentence embedding before retrieval (Libovický et al., 2020;
    # not in XTREME's protocol, so off by default): ``evals.retrieval.center``.
    retrieval_center: bool = False
    english_config: str | None = None  # the primary comparison: (English-only, multilingual)
    multilingual_config: str | None = None
    # Further (English-only, multilingual) pairs; the report Holm-corrects over them.
    more_comparisons: Sequence[tuple[str, str]] = ()
    low_resource: Sequence[str] = ()
    tiers: Mapping[str, str] | None = None  # language -> tier (None: CC-100 tiers)
    # Languages moved to another tier for the report's sensitivity check (None: hi and tr, on
    # the 20 GiB CC-100 cut, moved to medium).
    tier_boundary: Mapping[str, str] | None = None
    eval_batch_size: int = 32
    # Modules imported before planning that register seqio Tasks/Mixtures (t5x's
    # MIXTURE_OR_TASK_MODULE); an ``intermediate`` entry may name one of theirs.
    seqio_modules: Sequence[str] = ()
    compilation_cache: bool = True  # JAX's persistent cache in run_dir/jax_cache: every cell
    # compiles the same steps, so all but the first load them
    # A rerun whose settings differ from a recorded cell's (experiment.cells): "stop" (print the
    # differences and the cells they affect), "rerun" (compute those cells again, with all
    # downstream of them) or "keep" (use the finished ones as they are, marked in the report).
    on_change: str = "stop"
    # Launches sharing run_dir (experiment.workers): ``worker`` claims whatever cell is free,
    # ``cells="i/N"`` every N-th cell; both wait poll_seconds between looks for cells that
    # other launches compute or whose upstream is not finished yet.
    worker: bool = False
    cells: str | None = None
    poll_seconds: float = 10.0

    def __post_init__(self) -> None:
        baselines = [c for c, m in self.intermediate.items() if m is None]
        if len(baselines) != 1:
            raise ValueError(f"intermediate: exactly one config must have mixture None (the "
                             f"baseline), found {baselines or 'none'} in {dict(self.intermediate)}")
        for name, mixture in self.intermediate.items():
            if "/" in name or not name:
                raise ValueError(f"intermediate config name {name!r}: must be a plain name")
            if mixture is not None and mixture not in tasks.MIXTURES and not self.seqio_modules:
                tasks.get_mixture(mixture)  # the registry's error: no seqio module to look in
        for target in self.targets:
            if not tasks.tasks_for(target):
                raise ValueError(f"target {target!r}: no registered tasks of that dataset")
        for name in self.retrieval:
            if name != SYNTHETIC_BUCC and not tasks.tasks_for(name):
                raise ValueError(f"retrieval task {name!r}: no registered tasks of that "
                                 f"dataset (or synthetic.bucc)")
        for name in (self.english_config, self.multilingual_config,
                     *(n for pair in self.more_comparisons for n in pair)):
            if name is not None and name not in self.intermediate:
                raise ValueError(f"config {name!r} is not one of {list(self.intermediate)}")
        for pair in self.more_comparisons:
            if len(pair) != 2:
                raise ValueError(f"more_comparisons: {pair!r} is not an (English-only, "
                                 f"multilingual) pair of configs")
        if isinstance(self.seqio_modules, str):
            object.__setattr__(self, "seqio_modules", (self.seqio_modules,))
        if self.on_change not in ON_CHANGE:
            raise ValueError(f"on_change {self.on_change!r}: expected one of {ON_CHANGE}")
        if self.cells is not None:
            index, sep, count = str(self.cells).partition("/")
            if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
                raise ValueError(f"cells {self.cells!r}: expected i/N with 0 <= i < N (this "
                                 f"launch computes every N-th cell, starting at the i-th)")
        if self.intermediate_budget not in BUDGETS:
            raise ValueError(f"intermediate_budget {self.intermediate_budget!r}: expected one "
                             f"of {BUDGETS}")
        for name, phase in (("pretrain", self.pretrain),
                            ("intermediate_phase", self.intermediate_phase)):
            if phase is not None and phase.classification_packing:
                raise ValueError(f"{name}: classification_packing is for phase 2 (finetune) "
                                 f"only: phase 0/1 steps and mixture rates count examples")
        if self.pretrain is not None and not self.pretrain_mixture:
            raise ValueError("pretrain is set but pretrain_mixture is not")
        if not self.seeds:
            raise ValueError("seeds: need at least one")

    @property
    def baseline(self) -> str:
        return next(c for c, m in self.intermediate.items() if m is None)

    def comparisons(self) -> list[tuple[str, str]]:
        """Every (English-only, multilingual) pair: the primary one first."""
        pairs = [(self.english_config, self.multilingual_config)] \
            if self.english_config and self.multilingual_config else []
        return pairs + [tuple(p) for p in self.more_comparisons if tuple(p) not in pairs]

    def is_seqio(self, mixture: str | None) -> bool:
        """Whether an ``intermediate`` mixture is a seqio name (not the project's registry)."""
        return mixture is not None and mixture not in tasks.MIXTURES

    def phase1_seed(self, seed: int) -> int:
        """The intermediate run a fine-tuning seed starts from."""
        return seed if self.intermediate_per_seed else self.seeds[0]


def make_grid(**kwargs: Any) -> Grid:
    """A ``Grid`` from keyword settings (phase dicts become ``Phase``); unknown keys fail."""
    for key in ("pretrain",):
        if kwargs.get(key) is not None:
            kwargs[key] = Phase.of(kwargs[key], key)
    for key in ("intermediate_phase", "finetune"):
        if key in kwargs:
            kwargs[key] = Phase.of(kwargs[key], key)
    known = {f.name for f in dataclasses.fields(Grid)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"run_experiment: unknown settings {unknown}; expected some of "
                         f"{sorted(known)}")
    for key in ("targets", "retrieval", "seeds", "low_resource", "seqio_modules"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    return Grid(**kwargs)
