"""The task and mixture registry: one Task per dataset, language and role, with metadata, and
the intermediate-training Mixtures of the experiment. Pure Python (no TensorFlow): seqio Tasks
and Mixtures are built from these specs by ``xstilts.data.seqio_tasks``.

Task names are ``<dataset>.<language>`` (``xnli.de``, ``mnli.en``, ``mnli.de`` = XNLI's machine
translation of the MNLI train set, ``squad_v1.de`` = XTREME's translate-train SQuAD,
``tydiqa.sw``, ``mlm.sw``, ``synthetic.nli.xa``). Files are looked up under a data directory
(``--data_dir``; ``$XSTILTS_DATA_DIR``) in the layout ``python -m xstilts.data.prepare`` writes,
which is also the layout of the project's real-data samples (``../shared/data``); each split
lists candidate paths, the first that exists is read.

Mixture names: ``intermediate.<task>.en`` (English only), ``intermediate.<task>.multilingual``
(English plus the translated or native multilingual corpora that exist), ``intermediate.all9.en``
/ ``.multilingual``, and ``+mlm`` variants of each (multilingual MLM text mixed in).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts.data import readers as r

# ----------------------------------------------------------------------------- languages
# google-research/xtreme evaluate.py XTREME_TASK2LANGS (reference/anchors.md §2.3)
LANGUAGES: dict[str, tuple[str, ...]] = {
    "xnli": tuple("ar bg de el en es fr hi ru sw th tr ur vi zh".split()),
    "pawsx": tuple("de en es fr ja ko zh".split()),
    "udpos": tuple(
        "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr "
        "ur vi yo zh".split()
    ),
    "panx": tuple(
        "ar he vi id jv ms tl eu ml ta te af nl en de el bn hi mr ur fa fr it pt es bg ru ja ka "
        "ko th sw yo my zh kk tr et fi hu".split()
    ),
    "xquad": tuple("en es de el ru tr ar vi th zh hi".split()),
    "mlqa": tuple("en es de ar hi vi zh".split()),
    "tydiqa": tuple("en ar bn fi id ko ru sw te".split()),
    "bucc2018": tuple("de fr ru zh".split()),
    "tatoeba": tuple(
        "ar he vi id jv tl eu ml ta te af nl de el bn hi mr ur fa fr it pt es bg ru ja ka ko th "
        "sw zh kk tr et fi hu".split()
    ),
}
TATOEBA_ISO3 = dict(
    af="afr",
    ar="ara",
    bg="bul",
    bn="ben",
    de="deu",
    el="ell",
    es="spa",
    et="est",
    eu="eus",
    fa="pes",
    fi="fin",
    fr="fra",
    he="heb",
    hi="hin",
    hu="hun",
    id="ind",
    it="ita",
    ja="jpn",
    jv="jav",
    ka="kat",
    kk="kaz",
    ko="kor",
    ml="mal",
    mr="mar",
    nl="nld",
    pt="por",
    ru="rus",
    sw="swh",
    ta="tam",
    te="tel",
    th="tha",
    tl="tgl",
    tr="tur",
    ur="urd",
    vi="vie",
    zh="cmn",
)
UDPOS_TEST_ONLY = ("kk", "th", "tl", "yo")  # no dev data (jiant EXTRA_UDPOS_TEST_LANGS)
# XTREME's translate-train releases (gs://xtreme_translations): XNLI's MNLI and SQuAD v1.1
XNLI_TRANSLATE_TRAIN = tuple(lang for lang in LANGUAGES["xnli"] if lang != "en")
SQUAD_TRANSLATE_TRAIN = tuple("ar de el es hi ru th tr vi zh".split())
MLM_LANGUAGES = tuple(sorted(set(LANGUAGES["panx"])))
INTERMEDIATE_TASKS = (
    "mnli",
    "anli_plus",
    "qqp",
    "squad_v1",
    "squad_v2",
    "hellaswag",
    "cosmosqa",
    "commonsenseqa",
    "ccg",
)

KINDS = ("classification", "tagging", "qa", "multiple_choice", "retrieval", "mlm")
ROLES = ("intermediate", "target", "retrieval", "mlm")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one dataset in one language and role."""

    name: str
    dataset: str
    language: str
    role: str
    kind: str
    splits: Mapping[str, tuple[str, ...]]  # split -> candidate paths (relative to the data dir)
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
    # the TFDS catalog builder holding the same data, and our split -> its split (``tfds_sources``)
    tfds_name: str | None = None
    tfds_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)

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

    def path(self, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
        """The file(s) of ``split``: the first existing candidate (a retrieval split has several
        files, separated by ``|`` in the candidate)."""
        if split not in self.splits:
            raise KeyError(
                f"task {self.name} has no split {split!r}; splits: {sorted(self.splits)}"
            )
        root = data_directory(data_dir)
        for candidate in self.splits[split]:
            paths = [root / part for part in candidate.split("|")]
            if all(p.is_file() for p in paths):
                return paths
        tried = ", ".join(str(root / c) for c in self.splits[split])
        raise FileNotFoundError(
            f"task {self.name} split {split!r}: no data file found (tried {tried}); "
            f"fetch it with `python -m xstilts.data.prepare --data_dir {root}`"
        )

    def examples(
        self, split: str, data_dir: str | os.PathLike | None = None, source: str = "files"
    ) -> Iterator[dict]:
        """Examples of ``split`` as plain dicts (see ``readers.py``), read from the native files
        under ``data_dir`` or (``source="tfds"``, needs tensorflow-datasets) from the prepared
        TFDS builder ``tfds_name`` in the TFDS data dir ``data_dir``."""
        if source == "tfds":
            from xstilts.data.tfds_sources import tfds_examples

            yield from tfds_examples(self, split, data_dir)
        elif source == "files":
            yield from self.reader(*self.path(split, data_dir), **self.reader_kwargs)
        else:
            raise ValueError(f"source must be 'files' or 'tfds', got {source!r}")

    def num_examples(
        self, split: str, data_dir: str | os.PathLike | None = None, source: str = "files"
    ) -> int:
        return sum(1 for _ in self.examples(split, data_dir, source))


def data_directory(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$XSTILTS_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("XSTILTS_DATA_DIR", "data"))


TASKS: dict[str, TaskSpec] = {}


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


# ------------------------------------------------------------------------------ readers


def _read_bucc(source: Path, english: Path, gold: Path | None = None) -> Iterator[dict]:
    gold_pairs = set(r.read_bucc_gold(gold)) if gold else set()
    for side, path in (("source", source), ("target", english)):
        for e in r.read_bucc_sentences(path):
            yield {**e, "side": side}
    for src, tgt in sorted(gold_pairs):
        yield {"id": f"{src}\t{tgt}", "side": "gold", "text": ""}


def _read_tatoeba(source: Path, english: Path) -> Iterator[dict]:
    yield from r.read_tatoeba(source, english)


def _tsv_or_jsonl_nli(path: Path) -> Iterator[dict]:
    if path.suffix == ".jsonl":
        return r.read_nli_jsonl(path)
    return r.read_glue_mnli_tsv(path)


# --------------------------------------------------------------------------- the tasks


def _add(**kwargs: Any) -> None:
    register_task(TaskSpec(**kwargs))


def _register_xtreme() -> None:
    xtreme_pair = {"nli": r.NLI_LABELS, "binary": r.BINARY_LABELS}
    for lang in LANGUAGES["xnli"]:
        _add(
            name=f"xnli.{lang}",
            dataset="xnli",
            language=lang,
            role="target",
            kind="classification",
            splits={
                "dev": (f"xnli/xtreme_format/dev-{lang}.tsv", f"xnli/dev-{lang}.tsv"),
                "test": (f"xnli/test-{lang}.tsv",),
            },
            reader=r.read_xtreme_pair_tsv,
            reader_kwargs={"labels": xtreme_pair["nli"]},
            labels=r.NLI_LABELS,
            metric="accuracy",
            epochs=2,
            train_task="mnli.en",
            head="nli",
        )
    for lang in LANGUAGES["pawsx"]:
        splits = {
            "dev": (f"pawsx/xtreme_format/dev-{lang}.tsv", f"pawsx/dev-{lang}.tsv"),
            "test": (f"pawsx/test-{lang}.tsv",),
        }
        if lang == "en":
            splits["train"] = ("pawsx/train-en.tsv",)
        _add(
            name=f"pawsx.{lang}",
            dataset="pawsx",
            language=lang,
            role="target",
            kind="classification",
            splits=splits,
            reader=r.read_xtreme_pair_tsv,
            reader_kwargs={"labels": r.BINARY_LABELS},
            labels=r.BINARY_LABELS,
            epochs=5,
            train_task="pawsx.en",
        )
    for dataset, tags in (("udpos", r.UPOS_TAGS), ("panx", r.PANX_TAGS)):
        for lang in LANGUAGES[dataset]:
            splits = {"test": (f"{dataset}/test-{lang}.tsv", f"{dataset}/hf_dummy/{lang}/test")}
            if not (dataset == "udpos" and lang in UDPOS_TEST_ONLY):
                splits["dev"] = (
                    f"{dataset}/xtreme_format/dev-{lang}.tsv",
                    f"{dataset}/dev-{lang}.tsv",
                    f"{dataset}/hf_dummy/{lang}/dev",
                )
            if lang == "en" or dataset == "panx":
                splits["train"] = (
                    f"{dataset}/train-{lang}.tsv",
                    f"{dataset}/hf_dummy/{lang}/train",
                )
            _add(
                name=f"{dataset}.{lang}",
                dataset=dataset,
                language=lang,
                role="target",
                kind="tagging",
                splits=splits,
                reader=r.read_token_tag_file,
                reader_kwargs={"tags": tags, "strip_language_prefix": dataset == "panx"},
                labels=tags,
                metric="f1_seqeval",
                epochs=10,
                train_task=f"{dataset}.en",
            )
    qa = {
        "kind": "qa",
        "role": "target",
        "metric": "squad_em_f1",
        "max_length": 384,
        "epochs": 2,
        "reader": r.read_squad_json,
        "head": "span_qa",
    }
    for lang in LANGUAGES["xquad"]:
        _add(
            name=f"xquad.{lang}",
            dataset="xquad",
            language=lang,
            train_task="squad_v1.en",
            splits={"test": (f"xquad/xquad.{lang}.json",)},
            **qa,
        )
    for lang in LANGUAGES["mlqa"]:
        _add(
            name=f"mlqa.{lang}",
            dataset="mlqa",
            language=lang,
            train_task="squad_v1.en",
            splits={
                split: (
                    f"mlqa/{split}-context-{lang}-question-{lang}.json",
                    f"mlqa/MLQA_V1/{split}/{split}-context-{lang}-question-{lang}.json",
                )
                for split in ("dev", "test")
            },
            **{**qa, "metric": "mlqa_em_f1"},
        )
    for lang in LANGUAGES["tydiqa"]:
        _add(
            name=f"tydiqa.{lang}",
            dataset="tydiqa",
            language=lang,
            train_task="tydiqa.en",
            splits={
                "train": (f"tydiqa/tydiqa-goldp-v1.1-train/tydiqa.goldp.{lang}.train.json",),
                # XTREME's TyDiQA "test" is the official GoldP dev set
                "test": (
                    f"tydiqa/xtreme_format/tydiqa.goldp.{lang}.dev.json",
                    f"tydiqa/tydiqa-goldp-v1.1-dev/tydiqa.goldp.{lang}.dev.json",
                ),
            },
            **qa,
        )
    for lang in LANGUAGES["bucc2018"]:
        _add(
            name=f"bucc2018.{lang}",
            dataset="bucc2018",
            language=lang,
            role="retrieval",
            kind="retrieval",
            metric="bucc_f1",
            max_length=512,
            reader=_read_bucc,
            splits={
                split: (
                    f"bucc2018/{lang}-en.{split}.{lang}|bucc2018/{lang}-en.{split}.en|"
                    f"bucc2018/{lang}-en.{split}.gold",
                    f"bucc2018/{lang}-en.{split}.{lang}|bucc2018/{lang}-en.{split}.en",
                )
                for split in ("dev", "test")
            },
        )
    for lang in LANGUAGES["tatoeba"]:
        iso = TATOEBA_ISO3[lang]
        _add(
            name=f"tatoeba.{lang}",
            dataset="tatoeba",
            language=lang,
            role="retrieval",
            kind="retrieval",
            metric="accuracy",
            max_length=512,
            reader=_read_tatoeba,
            splits={
                "test": (f"tatoeba/v1/tatoeba.{iso}-eng.{iso}|tatoeba/v1/tatoeba.{iso}-eng.eng",)
            },
        )


def _register_intermediate() -> None:
    nli = {
        "kind": "classification",
        "role": "intermediate",
        "labels": r.NLI_LABELS,
        "head": "nli",
        "max_length": 256,
        "epochs": 3,
    }
    _add(
        name="mnli.en",
        dataset="mnli",
        language="en",
        reader=_tsv_or_jsonl_nli,
        splits={
            "train": (
                "english/mnli/glue_format/train.tsv",
                "mnli/train.tsv",
                "mnli/multinli_1.0_train.jsonl",
            ),
            "dev": ("english/mnli/glue_format/dev_matched.tsv", "mnli/dev_matched.tsv"),
        },
        **nli,
    )
    for lang in XNLI_TRANSLATE_TRAIN:  # XNLI's machine-translated MNLI train
        _add(
            name=f"mnli.{lang}",
            dataset="mnli",
            language=lang,
            source="translate-train",
            reader=r.read_xtreme_pair_tsv,
            reader_kwargs={"labels": r.NLI_LABELS},
            splits={
                "train": (
                    f"xnli/translate-train/en-{lang}-translated.tsv",
                    f"XNLI-Translated/en-{lang}-translated.tsv",
                )
            },
            **nli,
        )
    _add(
        name="snli.en",
        dataset="snli",
        language="en",
        reader=r.read_nli_jsonl,
        splits={
            "train": ("snli/snli_1.0_train.jsonl", "english/snli/snli_1.0_sample.jsonl"),
            "dev": ("snli/snli_1.0_dev.jsonl",),
        },
        **nli,
    )
    for round_ in (1, 2, 3):
        _add(
            name=f"anli_r{round_}.en",
            dataset=f"anli_r{round_}",
            language="en",
            reader=r.read_nli_jsonl,
            splits={
                split: (
                    f"anli/R{round_}/{split}.jsonl",
                    f"english/anli/original_jsonl_sample/R{round_}/{split}.jsonl",
                )
                for split in ("train", "dev", "test")
            },
            **nli,
        )
    _add(
        name="qqp.en",
        dataset="qqp",
        language="en",
        role="intermediate",
        kind="classification",
        labels=r.BINARY_LABELS,
        reader=r.read_glue_qqp_tsv,
        epochs=3,
        splits={
            "train": ("qqp/train.tsv", "english/qqp/glue_format/train.tsv"),
            "dev": ("qqp/dev.tsv", "english/qqp/glue_format/dev.tsv"),
        },
    )
    squad = {
        "kind": "qa",
        "role": "intermediate",
        "metric": "squad_em_f1",
        "max_length": 384,
        "epochs": 2,
        "reader": r.read_squad_json,
        "head": "span_qa",
    }
    _add(
        name="squad_v1.en",
        dataset="squad_v1",
        language="en",
        splits={
            "train": ("squad/train-v1.1.json", "english/squad/allennlp_squad_v1.1_sample.json"),
            "dev": ("squad/dev-v1.1.json", "xquad/xquad.en.json"),
        },
        **squad,
    )
    for lang in SQUAD_TRANSLATE_TRAIN:
        _add(
            name=f"squad_v1.{lang}",
            dataset="squad_v1",
            language=lang,
            source="translate-train",
            reader_kwargs={"on_misaligned": "drop"},
            splits={"train": (f"squad/translate-train/squad.translate.train.en-{lang}.json",)},
            **squad,
        )
    _add(
        name="squad_v2.en",
        dataset="squad_v2",
        language="en",
        splits={
            "train": ("squad/train-v2.0.json", "english/squad/allennlp_squad_v2.0_sample.json"),
            "dev": ("squad/dev-v2.0.json",),
        },
        **{**squad, "head": "span_qa_v2"},
    )
    mc = {
        "kind": "multiple_choice",
        "role": "intermediate",
        "metric": "accuracy",
        "max_length": 256,
        "epochs": 3,
    }
    _add(
        name="hellaswag.en",
        dataset="hellaswag",
        language="en",
        reader=r.read_hellaswag_jsonl,
        num_choices=4,
        splits={
            split: (
                f"hellaswag/hellaswag_{split}.jsonl",
                f"english/hellaswag/hellaswag_{split}.jsonl",
            )
            for split in ("train", "val", "test")
        },
        **mc,
    )
    _add(
        name="cosmosqa.en",
        dataset="cosmosqa",
        language="en",
        reader=r.read_cosmosqa_csv,
        num_choices=4,
        splits={
            "train": ("cosmosqa/train.csv",),
            "dev": ("cosmosqa/valid.csv", "english/cosmosqa/valid.head300.csv"),
        },
        **mc,
    )
    _add(
        name="commonsenseqa.en",
        dataset="commonsenseqa",
        language="en",
        num_choices=5,
        reader=r.read_commonsenseqa_jsonl,
        splits={
            "train": (
                "commonsenseqa/train_rand_split.jsonl",
                "english/commonsenseqa/original_format_sample/train_rand_split.jsonl",
            ),
            "dev": (
                "commonsenseqa/dev_rand_split.jsonl",
                "english/commonsenseqa/original_format_sample/dev_rand_split.jsonl",
            ),
        },
        **mc,
    )
    _add(
        name="ccg.en",
        dataset="ccg",
        language="en",
        role="intermediate",
        kind="tagging",
        reader=r.read_ccg_supertags,
        metric="accuracy",
        epochs=3,
        source="local-only",
        splits={split: (f"ccg/ccg.{split}",) for split in ("train", "dev", "test")},
    )
    for lang in MLM_LANGUAGES:
        _add(
            name=f"mlm.{lang}",
            dataset="mlm",
            language=lang,
            role="mlm",
            kind="mlm",
            metric="mlm_accuracy",
            reader=r.read_text_lines,
            splits={"train": (f"mlm/{lang}.txt",)},
        )


def _register_synthetic() -> None:
    """The synthetic world (``synthetic.py``) written by ``SyntheticWorld.write_files`` under
    ``<data_dir>/synthetic``."""
    from xstilts.data.synthetic import DEFAULT_LANGUAGES, SPLITS

    plain = {"strip_language_prefix": False}  # synthetic tokens carry no "xx:" prefix
    for spec in DEFAULT_LANGUAGES:
        lang = spec.code
        files = {
            "nli": (
                "classification",
                r.read_xtreme_pair_tsv,
                {"labels": r.NLI_LABELS},
                "nli/{s}-{l}.tsv",
            ),
            "paraphrase": (
                "classification",
                r.read_xtreme_pair_tsv,
                {"labels": r.BINARY_LABELS},
                "paraphrase/{s}-{l}.tsv",
            ),
            "pos": (
                "tagging",
                r.read_token_tag_file,
                {"tags": r.UPOS_TAGS, **plain},
                "pos/{s}-{l}.tsv",
            ),
            "ner": (
                "tagging",
                r.read_token_tag_file,
                {"tags": r.PANX_TAGS, **plain},
                "ner/{s}-{l}.tsv",
            ),
            "qa": ("qa", r.read_squad_json, {}, "qa/{s}-{l}.json"),
        }
        for task, (kind, reader, kwargs, pattern) in files.items():
            labels = kwargs.get("labels") or kwargs.get("tags")
            _add(
                name=f"synthetic.{task}.{lang}",
                dataset=f"synthetic.{task}",
                language=lang,
                role="intermediate" if task in ("nli", "qa") else "target",
                kind=kind,
                reader=reader,
                reader_kwargs=kwargs,
                labels=labels,
                source="synthetic",
                metric={"classification": "accuracy", "tagging": "f1_seqeval", "qa": "squad_em_f1"}[
                    kind
                ],
                max_length=128,
                epochs=3,
                train_task=f"synthetic.{task}.en",
                head=f"synthetic.{task}",
                splits={s: ("synthetic/" + pattern.format(s=s, l=lang),) for s in SPLITS},
            )
        _add(
            name=f"synthetic.mlm.{lang}",
            dataset="synthetic.mlm",
            language=lang,
            role="mlm",
            kind="mlm",
            metric="mlm_accuracy",
            reader=r.read_text_lines,
            source="synthetic",
            max_length=128,
            splits={"train": (f"synthetic/mlm/{lang}.txt",)},
        )
        if lang != "en":
            _add(
                name=f"synthetic.parallel.{lang}",
                dataset="synthetic.parallel",
                language=lang,
                role="retrieval",
                kind="retrieval",
                metric="accuracy",
                reader=_read_tatoeba,
                source="synthetic",
                max_length=128,
                splits={
                    "test": (
                        f"synthetic/parallel/test.{lang}-en.{lang}|synthetic/parallel/test.{lang}-en.en",
                    )
                },
            )


# ------------------------------------------------------------------------------ mixtures


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

    def __post_init__(self):
        if self.rate not in ("proportional", "temperature", "equal"):
            raise ValueError(f"mixture {self.name}: unknown rate rule {self.rate!r}")
        share = sum(s for _, s in self.submixtures)
        if not 0 <= share <= 1 or (share == 1 and self.tasks):
            raise ValueError(f"mixture {self.name}: sub-mixture shares sum to {share}, need < 1")


MIXTURES: dict[str, MixtureSpec] = {}


def register_mixture(spec: MixtureSpec, *, replace: bool = False) -> MixtureSpec:
    if spec.name in MIXTURES and not replace:
        raise ValueError(f"mixture {spec.name} is already registered (pass replace=True)")
    for task in spec.tasks:
        get_task(task)  # unknown task -> KeyError naming it
    for sub, _ in spec.submixtures:
        get_mixture(sub)
    MIXTURES[spec.name] = spec
    return spec


def get_mixture(name: str) -> MixtureSpec:
    if name not in MIXTURES:
        close = difflib.get_close_matches(name, list(MIXTURES), n=5)
        raise KeyError(f"unknown mixture {name!r}; similar registered mixtures: {close}")
    return MIXTURES[name]


def mixture_rates(
    name: str, sizes: Mapping[str, int] | Callable[[str], int], split: str = "train"
) -> dict[str, float]:
    """Flat sampling probability of every task of mixture ``name``. ``sizes`` maps a task to its
    number of ``split`` examples (or is a function computing it)."""
    from xstilts.data.feature_converters import proportional_rates, temperature_rates

    size_of = sizes if callable(sizes) else sizes.__getitem__
    spec = get_mixture(name)
    rates: dict[str, float] = {}
    own_share = 1.0 - sum(share for _, share in spec.submixtures)
    if spec.tasks and own_share > 0:
        counts = {task: int(size_of(task)) for task in spec.tasks}
        if spec.rate == "equal":
            own = {task: 1.0 / len(counts) for task in counts}
        elif spec.rate == "temperature":
            own = temperature_rates(counts, spec.temperature, spec.cap)
        else:
            own = proportional_rates(counts, spec.cap)
        for task, p in own.items():
            rates[task] = rates.get(task, 0.0) + own_share * p
    for sub, share in spec.submixtures:
        for task, p in mixture_rates(sub, size_of, split).items():
            rates[task] = rates.get(task, 0.0) + share * p
    return rates


def mixture_epoch_size(
    name: str, sizes: Mapping[str, int] | Callable[[str], int]
) -> float:
    """Examples drawn in one epoch of mixture ``name``: S / f, where S counts its supervised
    (non-MLM) training examples, each task capped at its mixture's ``cap`` (jiant's
    ``train_examples_cap``), and f is the share of draws that go to them. So epochs are passes
    over the capped supervised data, and MLM mixed in (``+mlm``) adds steps rather than taking
    them away. A mixture of MLM text only: all of its examples."""
    size_of = sizes if callable(sizes) else sizes.__getitem__

    def supervised(mixture: str) -> tuple[float, float]:  # (S, f)
        spec = get_mixture(mixture)
        own = [t for t in spec.tasks if get_task(t).kind != "mlm"]
        count = float(sum(min(int(size_of(t)), spec.cap or math.inf) for t in own))
        share = 1.0 - sum(s for _, s in spec.submixtures) if own else 0.0
        for sub, sub_share in spec.submixtures:
            sub_count, sub_fraction = supervised(sub)
            count, share = count + sub_count, share + sub_share * sub_fraction
        return count, share

    count, fraction = supervised(name)
    if fraction == 0:
        return float(sum(int(size_of(t)) for t in mixture_tasks(name)))
    return count / fraction


def mixture_tasks(name: str) -> list[str]:
    spec = get_mixture(name)
    tasks = list(spec.tasks)
    for sub, _ in spec.submixtures:
        tasks.extend(t for t in mixture_tasks(sub) if t not in tasks)
    return tasks


# Defaults (assumptions, not taken from the paper, which leaves them unstated; reference/paper.md
# §2, §5.5): all-9 multi-task training samples proportionally with a 100k-example cap per task
# (jiant's SpecifiedProbMultiTaskSampler with train_examples_cap); multilingual corpora are mixed
# with temperature 3 over their sizes (alpha ~ 0.3 as in XLM-R / mT5); MLM text takes 20% of steps.
ALL9_CAP = 100_000
MULTILINGUAL_TEMPERATURE = 3.0
MLM_SHARE = 0.2


def _multilingual_tasks(task: str) -> tuple[str, ...]:
    if task == "mnli":
        return ("mnli.en", *(f"mnli.{lang}" for lang in XNLI_TRANSLATE_TRAIN))
    if task == "squad_v1":
        return (
            "squad_v1.en",
            *(f"squad_v1.{lang}" for lang in SQUAD_TRANSLATE_TRAIN),
            *(f"tydiqa.{lang}" for lang in LANGUAGES["tydiqa"]),
        )
    return ()


def _register_mixtures() -> None:
    english = {"anli_plus": ("snli.en", "mnli.en", "anli_r1.en", "anli_r2.en", "anli_r3.en")}
    register_mixture(
        MixtureSpec(
            "mlm.xtreme",
            tuple(f"mlm.{lang}" for lang in MLM_LANGUAGES),
            rate="temperature",
            temperature=MULTILINGUAL_TEMPERATURE,
            description="multilingual MLM text (mlm/<lang>.txt), temperature-sampled",
        )
    )
    for task in INTERMEDIATE_TASKS:
        tasks_en = english.get(task, (f"{task}.en",))
        register_mixture(
            MixtureSpec(f"intermediate.{task}.en", tasks_en, description=f"{task}: English only")
        )
        extra = _multilingual_tasks(task)
        if extra:
            multi = MixtureSpec(
                f"intermediate.{task}.multilingual",
                extra,
                rate="temperature",
                temperature=MULTILINGUAL_TEMPERATURE,
                description=f"{task}: English + translated/native corpora",
            )
        else:  # no multilingual corpus exists: same tasks as English (kept for a uniform grid)
            multi = MixtureSpec(
                f"intermediate.{task}.multilingual",
                tasks_en,
                description=f"{task}: no multilingual corpus; English only",
            )
        register_mixture(multi)
    for variant in ("en", "multilingual"):
        tasks: list[str] = []
        for task in INTERMEDIATE_TASKS:
            tasks.extend(
                t for t in mixture_tasks(f"intermediate.{task}.{variant}") if t not in tasks
            )
        register_mixture(
            MixtureSpec(
                f"intermediate.all9.{variant}",
                tuple(tasks),
                cap=ALL9_CAP,
                description=f"all nine intermediate tasks, {variant}",
            )
        )
    for base in [name for name in MIXTURES if name.startswith("intermediate.")]:
        register_mixture(
            MixtureSpec(
                f"{base}+mlm",
                submixtures=((base, 1 - MLM_SHARE), ("mlm.xtreme", MLM_SHARE)),
                description=f"{base} with multilingual MLM mixed in",
            )
        )
    synthetic = [spec.language for spec in TASKS.values() if spec.dataset == "synthetic.mlm"]
    register_mixture(
        MixtureSpec(
            "synthetic.mlm",
            tuple(f"synthetic.mlm.{lang}" for lang in synthetic),
            rate="temperature",
            temperature=MULTILINGUAL_TEMPERATURE,
        )
    )
    for task in ("nli", "qa"):
        register_mixture(
            MixtureSpec(f"synthetic.intermediate.{task}.en", (f"synthetic.{task}.en",))
        )
        register_mixture(
            MixtureSpec(
                f"synthetic.intermediate.{task}.multilingual",
                tuple(f"synthetic.{task}.{lang}" for lang in synthetic),
                rate="temperature",
                temperature=MULTILINGUAL_TEMPERATURE,
            )
        )
        for variant in ("en", "multilingual"):
            base = f"synthetic.intermediate.{task}.{variant}"
            register_mixture(
                MixtureSpec(
                    f"{base}+mlm", submixtures=((base, 1 - MLM_SHARE), ("synthetic.mlm", MLM_SHARE))
                )
            )
    for variant in ("en", "multilingual"):  # the synthetic world's all9: NLI + QA, two heads
        members: list[str] = []
        for task in ("nli", "qa"):
            members.extend(mixture_tasks(f"synthetic.intermediate.{task}.{variant}"))
        base = f"synthetic.intermediate.all.{variant}"
        register_mixture(
            MixtureSpec(
                base,
                tuple(members),
                cap=ALL9_CAP,
                description=f"synthetic NLI + QA, {variant} (multi-head, like all9)",
            )
        )
        register_mixture(
            MixtureSpec(
                f"{base}+mlm", submixtures=((base, 1 - MLM_SHARE), ("synthetic.mlm", MLM_SHARE))
            )
        )


_register_xtreme()
_register_intermediate()
_register_synthetic()
_register_mixtures()


def _attach_tfds() -> None:
    """TFDS 4.9 catalog builders for the tasks they cover (reference/deps.md §5). All of them
    are auto-download builders: prepare them with ``tfds build`` on a machine with internet;
    xstilts only reads them (``download=False``)."""
    table: dict[str, tuple[str, dict[str, str]]] = {
        "mnli.en": ("multi_nli", {"train": "train", "dev": "validation_matched"}),
        "snli.en": ("snli", {"train": "train", "dev": "validation"}),
        "qqp.en": ("glue/qqp", {"train": "train", "dev": "validation"}),
        "squad_v1.en": ("squad/v1.1", {"train": "train", "dev": "validation"}),
        "squad_v2.en": ("squad/v2.0", {"train": "train", "dev": "validation"}),
        "hellaswag.en": ("hellaswag", {"train": "train", "val": "validation", "test": "test"}),
        "cosmosqa.en": ("cosmos_qa", {"train": "train", "dev": "validation"}),
    }
    for k in (1, 2, 3):
        table[f"anli_r{k}.en"] = (
            f"anli/r{k}",
            {"train": "train", "dev": "validation", "test": "test"},
        )
    for lang in LANGUAGES["xnli"]:
        table[f"xnli.{lang}"] = ("xnli", {"dev": "validation", "test": "test"})
    for lang in LANGUAGES["pawsx"]:
        table[f"pawsx.{lang}"] = (
            f"paws_x_wiki/{lang}",
            {"train": "train", "dev": "validation", "test": "test"},
        )
    for lang in LANGUAGES["xquad"]:
        table[f"xquad.{lang}"] = (f"xquad/{lang}", {"test": "test"})
    for lang in SQUAD_TRANSLATE_TRAIN:
        table[f"squad_v1.{lang}"] = (f"xquad/{lang}", {"train": "translate-train"})
    for lang in LANGUAGES["mlqa"]:
        table[f"mlqa.{lang}"] = (f"mlqa/{lang}", {"dev": "validation", "test": "test"})
    for lang in LANGUAGES["tydiqa"]:  # the train split mixes languages: filtered by id prefix
        table[f"tydiqa.{lang}"] = (
            "tydi_qa/goldp",
            {"train": "train", "test": f"validation-{lang}"},
        )
    for lang in LANGUAGES["panx"]:
        table[f"panx.{lang}"] = (
            f"wikiann/{lang}",
            {"train": "train", "dev": "validation", "test": "test"},
        )
    for lang in LANGUAGES["udpos"]:
        # TFDS 4.9.10's xtreme_pos maps "ta" to Tagalog and "tl" to Tamil (swapped): undo it
        config = {"ta": "tl", "tl": "ta"}.get(lang, lang)
        splits = {"test": "test"} if lang in UDPOS_TEST_ONLY else {"dev": "dev", "test": "test"}
        if lang == "en":
            splits["train"] = "train"
        table[f"udpos.{lang}"] = (f"xtreme_pos/xtreme_pos_{config}", splits)
    for name, (builder, splits) in table.items():
        TASKS[name] = dataclasses.replace(TASKS[name], tfds_name=builder, tfds_splits=splits)


_attach_tfds()


def tasks_for(dataset: str) -> list[TaskSpec]:
    return [t for t in TASKS.values() if t.dataset == dataset]


def languages_of(dataset: str) -> list[str]:
    return [t.language for t in tasks_for(dataset)]


def summary(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Metadata rows of the registered tasks (for docs and the CLI)."""
    return [
        {"name": t.name, **t.metadata} for t in TASKS.values() if names is None or t.name in names
    ]


def load_retrieval(
    name: str, split: str = "test", data_dir: str | os.PathLike | None = None
) -> dict[str, list]:
    """A retrieval task's two sides and gold pairs: ``{"source": [(id, text)], "target":
    [(id, text)], "gold": [(source_id, target_id)]}``. Tatoeba's gold is line ``i`` <-> line
    ``i``; BUCC's comes from its gold file (empty for the test split, whose gold is withheld)."""
    spec = get_task(name)
    if spec.kind != "retrieval":
        raise ValueError(f"task {name} is a {spec.kind} task, not a retrieval task")
    out: dict[str, list] = {"source": [], "target": [], "gold": []}
    for e in spec.examples(split, data_dir):
        if "source" in e:  # Tatoeba layout
            out["source"].append((e["id"], e["source"]))
            out["target"].append((e["id"], e["target"]))
            out["gold"].append((e["id"], e["id"]))
        elif e["side"] == "gold":
            out["gold"].append(tuple(e["id"].split("\t")))
        else:
            out[e["side"]].append((e["id"], e["text"]))
    return out
