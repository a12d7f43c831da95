"""Mixture recipes: the intermediate-training mixtures of the experiment and the synthetic world."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xstilts.benchmark import TASK2LANGS
from xstilts.data.spec import MixtureSpec
from xstilts.data.tables.intermediate import (
    ANLI_PLUS,
    DERIVED_FROM_TARGET,
    INTERMEDIATE_TASKS,
    MLM_LANGUAGES,
    OURS,
    PAWSX_TRANSLATE_TRAIN,
    SQUAD_TRANSLATE_TRAIN,
    TYDIQA_TRANSLATE_TRAIN,
    XNLI_MT,
    XNLI_TRANSLATE_TRAIN,
)
from xstilts.data.tables.synthetic import SYNTHETIC_LANGUAGES, SYNTHETIC_TRANSLATED
from xstilts.evals.xtreme_score import LANGUAGES

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
    (the ``OPT_IN`` mixtures are the exceptions; TyDiQA's and PAWS-X's translated train sets are
    a target's own data too)."""
    if task == "mnli":
        return ("mnli.en", *(f"mnli.{lang}" for lang in XNLI_TRANSLATE_TRAIN))
    if task == "squad_v1":
        return ("squad_v1.en", *(f"squad_v1.{lang}" for lang in SQUAD_TRANSLATE_TRAIN))
    return ()


# Opt-in: SQuAD's translations plus TyDiQA-GoldP's own train data in its nine languages. TyDiQA
# is then no longer zero-shot; the report marks every TyDiQA cell of a config trained on it.
SQUAD_WITH_TYDIQA = "intermediate.squad_v1.multilingual+tydiqa"
# Opt-in: SQuAD's translations plus XTREME's TyDiQA-GoldP translate-train (TyDiQA's English train
# set machine-translated): TyDiQA is then translate-train, not zero-shot.
SQUAD_WITH_TYDIQA_TT = "intermediate.squad_v1.multilingual+tydiqa_tt"
# Opt-in: QQP plus PAWS-X's translated train (paraphrase data in 6 languages): PAWS-X is then
# translate-train, not zero-shot.
QQP_WITH_PAWSX_TT = "intermediate.qqp.multilingual+pawsx_tt"
# An alternative MNLI arm: English + XNLI-MT-1.0 (XNLI's own MT) instead of XTREME's translations
MNLI_XNLI_MT = "intermediate.mnli.multilingual.xnli_mt"
OPT_IN = (SQUAD_WITH_TYDIQA, SQUAD_WITH_TYDIQA_TT, QQP_WITH_PAWSX_TT)


# The low-resource arm: English plus the translations into XTREME's low-resource languages
# (tier low of evals.xtreme_score, and yo, unseen by XLM-R: the experiment's low_resource list).
# Each language's default task: the official release's where one exists (mnli.sw), else ours
# (mnli.yo, tables/translated.py).
LOW_RESOURCE = tuple(sorted(code for code, lang in LANGUAGES.items()
                            if lang.tier in ("low", "unseen")))
LOWRES = "lowres"  # intermediate.<task>.multilingual.lowres
# intermediate task -> the translated datasets of its low-resource arm (ANLI+'s rounds; its
# MNLI is the mnli arm's, so all9.multilingual.lowres does not count MNLI's translations twice)
LOWRES_DATASETS = {"anli_plus": ("anli_r1", "anli_r2", "anli_r3")}


def lowres_tasks(task: str) -> tuple[str, ...]:
    """English plus ``task``'s translations into ``LOW_RESOURCE``; () where none is
    registered (no translator layout yet: squad_v2, ccg)."""
    ours = {row.dataset for row in OURS}
    datasets = [d for d in LOWRES_DATASETS.get(task, (task,)) if d in ours]
    if not datasets:
        return ()
    return (*english_tasks(task), *(f"{d}.{lang}" for d in datasets for lang in LOW_RESOURCE))


def lowres_name(task: str) -> str:
    return f"intermediate.{task}.multilingual.{LOWRES}"


def lowres_mixtures(per_task: Iterable[tuple[MixtureSpec, MixtureSpec]]) -> list[MixtureSpec]:
    """``intermediate.<task>.multilingual.lowres`` of each task with translations, and
    ``intermediate.all9.multilingual.lowres``: every task family at its ``all9.en`` share, a
    family without translations by its ``multilingual`` mixture."""
    out, families = [], []
    for english, multilingual in per_task:
        task = english.name.split(".")[1]
        if tasks := lowres_tasks(task):
            out.append(_temperature(lowres_name(task), tasks, f"{task}: English + translations "
                                    f"into {', '.join(LOW_RESOURCE)}", MULTILINGUAL_ENGLISH_SHARE))
        families.append((out[-1].name if tasks else multilingual.name, english.name))
    out.append(MixtureSpec(
        lowres_name("all9"), families=tuple(families), match="intermediate.all9.en",
        description="all nine intermediate tasks, English + low-resource translations, each "
                    "task family at its all9.en share"))
    return out


def _per_language(dataset: str, languages: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{dataset}.{lang}" for lang in languages)


def _more_sources() -> list[MixtureSpec]:
    """The opt-in mixtures (a target's own data, native or translated) and the XNLI-MT arm."""
    squad = multilingual_tasks("squad_v1")
    return [
        _temperature(SQUAD_WITH_TYDIQA, (*squad, *_per_language("tydiqa", TASK2LANGS["tydiqa"])),
                     "squad_v1 translations + TyDiQA-GoldP train (TyDiQA is then not zero-shot)"),
        _temperature(SQUAD_WITH_TYDIQA_TT,
                     (*squad, *_per_language("tydiqa_tt", TYDIQA_TRANSLATE_TRAIN)),
                     "squad_v1 translations + TyDiQA-GoldP translate-train (TyDiQA's English "
                     "train, machine-translated: TyDiQA is then translate-train, not zero-shot)"),
        _temperature(QQP_WITH_PAWSX_TT,
                     (*english_tasks("qqp"), *_per_language("pawsx_tt", PAWSX_TRANSLATE_TRAIN)),
                     "qqp + PAWS-X translated train (PAWS-X is then translate-train, not "
                     "zero-shot)"),
        _temperature(MNLI_XNLI_MT, (*english_tasks("mnli"), *_per_language("mnli_mt", XNLI_MT)),
                     "mnli: English + XNLI-MT-1.0 (XNLI's own MT of MNLI train) in 14 languages",
                     MULTILINGUAL_ENGLISH_SHARE),
    ]


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
    """``mlm.xtreme``, ``intermediate.<task>.{en,multilingual}``, ``intermediate.all9.*``, the
    ``*.multilingual.lowres`` arms and the ``+mlm`` variant of each intermediate mixture, in
    registration order."""
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
    base += [english, multilingual, *lowres_mixtures(per_task)]
    mlm = _temperature(
        "mlm.xtreme",
        (f"mlm.{lang}" for lang in MLM_LANGUAGES),
        "multilingual MLM text (mlm/<lang>.txt), temperature-sampled",
    )
    with_mlm = [
        _with_mlm(m.name, mlm.name, f"{m.name} with multilingual MLM mixed in") for m in base
    ]
    return [mlm, *base, *with_mlm, *_more_sources()]


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


# ------------------------------------------------------------------------- reach and provenance


def recipe_tasks(name: str, recipes: Mapping[str, MixtureSpec] | None = None) -> list[str]:
    """Every task of mixture ``name`` (sub-mixtures and families included, first-seen order),
    from ``recipes`` (default: this module's recipes); no registry needed."""
    recipes = recipes if recipes is not None else {m.name: m for m in all_mixtures()}
    if name not in recipes:
        raise KeyError(f"unknown mixture {name!r}")
    spec, tasks = recipes[name], list(recipes[name].tasks)
    for sub in (*(s for s, _ in spec.submixtures), *(f for f, _ in spec.families)):
        tasks.extend(t for t in recipe_tasks(sub, recipes) if t not in tasks)
    return tasks


def low_resource_reach(name: str, recipes: Mapping[str, MixtureSpec] | None = None) -> list[str]:
    """The low-resource XTREME languages (tier ``low`` of ``evals.xtreme_score``: under 5 GiB of
    CC-100) that mixture ``name`` trains on, sorted (a task's language ends its name)."""
    languages = {task.rpartition(".")[2] for task in recipe_tasks(name, recipes)}
    return sorted(lang for lang in languages
                  if lang in LANGUAGES and LANGUAGES[lang].tier == "low")


def derived_targets(name: str, recipes: Mapping[str, MixtureSpec] | None = None) -> list[str]:
    """The XTREME targets whose own data (native, or translated: ``DERIVED_FROM_TARGET``)
    mixture ``name`` trains on: those targets are not zero-shot after it."""
    datasets = {task.rpartition(".")[0] for task in recipe_tasks(name, recipes)}
    hit = {DERIVED_FROM_TARGET.get(d, d) for d in datasets}
    return sorted(hit & set(TASK2LANGS))


def reach_table() -> list[tuple[str, list[str]]]:
    """(mixture, low-resource languages reached) for ``mlm.xtreme`` and every intermediate
    mixture but the English-only ones and the ``+mlm`` variants (each of those reaches its
    base's languages plus ``mlm.xtreme``'s): the table of docs/mixtures.md."""
    recipes = {m.name: m for m in all_mixtures()}
    names = [m.name for m in intermediate_mixtures()
             if not m.name.endswith((".en", "+mlm"))]
    return [(name, low_resource_reach(name, recipes)) for name in names]
