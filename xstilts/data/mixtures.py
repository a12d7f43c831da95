"""Mixture recipes: the intermediate-training mixtures of the experiment and the synthetic world."""

from __future__ import annotations

from collections.abc import Iterable

from xstilts.benchmark import TASK2LANGS
from xstilts.data.spec import MixtureSpec
from xstilts.data.tables.intermediate import (
    ANLI_PLUS,
    INTERMEDIATE_TASKS,
    MLM_LANGUAGES,
    SQUAD_TRANSLATE_TRAIN,
    XNLI_TRANSLATE_TRAIN,
)
from xstilts.data.tables.synthetic import SYNTHETIC_LANGUAGES, SYNTHETIC_TRANSLATED

# Defaults (assumptions: the paper leaves them unstated; see docs/mixtures.md): all-9 multi-task
# training samples proportionally with a 100k-example cap per task (jiant's
# SpecifiedProbMultiTaskSampler with train_examples_cap); multilingual corpora are mixed with
# temperature 3 over their sizes (alpha ~ 0.3 as in XLM-R / mT5); MLM text takes 20% of steps.
ALL9_CAP = 100_000
MULTILINGUAL_TEMPERATURE = 3.0
MLM_SHARE = 0.2
# The English share inside each multilingual task mixture (None: temperature sampling over all
# its languages decides, as XLM-R and mT5 sample languages). A float in (0, 1) pins it.
MULTILINGUAL_ENGLISH_SHARE: float | None = None
SYNTHETIC_INTERMEDIATE = ("nli", "qa")  # the synthetic world's all9: NLI + QA, two heads
VARIANTS = ("en", "multilingual")


def english_tasks(task: str) -> tuple[str, ...]:
    """The English tasks of intermediate task ``task`` (ANLI+ is five)."""
    return ANLI_PLUS if task == "anli_plus" else (f"{task}.en",)


def multilingual_tasks(task: str) -> tuple[str, ...]:
    """English plus the translated / native corpora of ``task``; () when none exists. Never an
    XTREME target's own training data: that would make the target in-language, not zero-shot
    (``SQUAD_WITH_TYDIQA`` is the opt-in exception)."""
    if task == "mnli":
        return ("mnli.en", *(f"mnli.{lang}" for lang in XNLI_TRANSLATE_TRAIN))
    if task == "squad_v1":
        return ("squad_v1.en", *(f"squad_v1.{lang}" for lang in SQUAD_TRANSLATE_TRAIN))
    return ()


# Opt-in: SQuAD's translations plus TyDiQA-GoldP's own train data in its nine languages. TyDiQA
# is then no longer zero-shot; the report marks every TyDiQA cell of a config trained on it.
SQUAD_WITH_TYDIQA = "intermediate.squad_v1.multilingual+tydiqa"


def _squad_with_tydiqa() -> MixtureSpec:
    return _temperature(
        SQUAD_WITH_TYDIQA,
        (*multilingual_tasks("squad_v1"), *(f"tydiqa.{lang}" for lang in TASK2LANGS["tydiqa"])),
        "squad_v1 translations + TyDiQA-GoldP train (TyDiQA is then not zero-shot)")


def _temperature(name: str, tasks: Iterable[str], description: str = "",
                 english_share: float | None = None) -> MixtureSpec:
    return MixtureSpec(
        name,
        tuple(tasks),
        rate="temperature",
        temperature=MULTILINGUAL_TEMPERATURE,
        description=description,
        english_share=english_share,
    )


def _with_mlm(base: str, mlm: str, description: str = "") -> MixtureSpec:
    shares = ((base, 1 - MLM_SHARE), (mlm, MLM_SHARE))
    return MixtureSpec(f"{base}+mlm", submixtures=shares, description=description)


def _union(mixtures: Iterable[MixtureSpec]) -> tuple[str, ...]:
    tasks: list[str] = []
    for mixture in mixtures:
        tasks.extend(t for t in mixture.tasks if t not in tasks)
    return tuple(tasks)


def _per_task(task: str) -> tuple[MixtureSpec, MixtureSpec]:
    english = MixtureSpec(
        f"intermediate.{task}.en", english_tasks(task), description=f"{task}: English only"
    )
    name, extra = f"intermediate.{task}.multilingual", multilingual_tasks(task)
    if extra:
        return english, _temperature(name, extra, f"{task}: English + translated/native corpora",
                                     MULTILINGUAL_ENGLISH_SHARE)
    # no multilingual corpus exists: the English tasks (kept for a uniform grid)
    return english, MixtureSpec(
        name, english.tasks, description=f"{task}: no multilingual corpus; English only"
    )


def intermediate_mixtures() -> list[MixtureSpec]:
    """``mlm.xtreme``, ``intermediate.<task>.{en,multilingual}``, ``intermediate.all9.*`` and
    the ``+mlm`` variant of each intermediate mixture, in registration order."""
    per_task = [_per_task(task) for task in INTERMEDIATE_TASKS]
    base = [m for pair in per_task for m in pair]
    english = MixtureSpec("intermediate.all9.en", _union(pair[0] for pair in per_task),
                          cap=ALL9_CAP, description="all nine intermediate tasks, en")
    # The multilingual all9 keeps all9.en's share of every task family (MNLI's 15 languages
    # and SQuAD's 11 would otherwise take most of the steps: QQP 13% -> 3%, span QA 12% -> 31%).
    multilingual = MixtureSpec(
        "intermediate.all9.multilingual", families=tuple((ml.name, en.name) for en, ml in per_task),
        match=english.name, description="all nine intermediate tasks, multilingual, each task "
        "family at its all9.en share")
    base += [english, multilingual]
    mlm = _temperature(
        "mlm.xtreme",
        (f"mlm.{lang}" for lang in MLM_LANGUAGES),
        "multilingual MLM text (mlm/<lang>.txt), temperature-sampled",
    )
    with_mlm = [
        _with_mlm(m.name, mlm.name, f"{m.name} with multilingual MLM mixed in") for m in base
    ]
    return [mlm, *base, *with_mlm, _squad_with_tydiqa()]


def synthetic_mixtures() -> list[MixtureSpec]:
    """The synthetic world's ``synthetic.mlm`` and ``synthetic.intermediate.*`` mixtures."""
    mlm = _temperature("synthetic.mlm", (f"synthetic.mlm.{lang}" for lang in SYNTHETIC_LANGUAGES))
    out, bases = [mlm], {variant: [] for variant in VARIANTS}
    for task in SYNTHETIC_INTERMEDIATE:
        name = f"synthetic.intermediate.{task}"
        pair = (
            MixtureSpec(f"{name}.en", (f"synthetic.{task}.en",)),
            _temperature(
                f"{name}.multilingual",
                (f"synthetic.{task}.{lang}" for lang in SYNTHETIC_TRANSLATED),
            ),
        )
        for variant, mixture in zip(VARIANTS, pair, strict=True):
            bases[variant].append(mixture)
        out += [*pair, *(_with_mlm(m.name, mlm.name) for m in pair)]
    for variant in VARIANTS:
        base = MixtureSpec(
            f"synthetic.intermediate.all.{variant}",
            _union(bases[variant]),
            cap=ALL9_CAP,
            description=f"synthetic NLI + QA, {variant} (multi-head, like all9)",
        )
        out += [base, _with_mlm(base.name, mlm.name)]
    return out


def all_mixtures() -> list[MixtureSpec]:
    """Every recipe, in registration order (a mixture after the mixtures it nests)."""
    return [*intermediate_mixtures(), *synthetic_mixtures()]
