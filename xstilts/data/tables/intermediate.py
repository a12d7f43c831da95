"""The intermediate tasks, their translate-train corpora and MLM text, one row per dataset."""

from xstilts.benchmark import TASK2LANGS
from xstilts.data import readers as r
from xstilts.data.spec import TaskRow
from xstilts.data.tables.translated import OursRow

# The nine intermediate tasks of X-STILTs (Phang et al. 2020; nyu-mll/jiant
# guides/projects/xstilts.md)
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
# XTREME's translate-train releases (gs://xtreme_translations): XNLI's MNLI and SQuAD v1.1
XNLI_TRANSLATE_TRAIN = tuple(lang for lang in TASK2LANGS["xnli"] if lang != "en")
SQUAD_TRANSLATE_TRAIN = tuple("ar de el es hi ru th tr vi zh".split())
# XNLI-MT-1.0 (Conneau et al. 2018): XNLI's own machine translation of MNLI train, the same 14
# languages as XTREME's translate-train but another MT system, so a dataset of its own (mnli_mt)
XNLI_MT = XNLI_TRANSLATE_TRAIN
# gs://xtreme_translations/TyDiQA-GoldP/translate-train: TyDiQA-GoldP's *English* train set
# machine-translated into TyDiQA's other eight languages (XTREME README "Translations"; TFDS
# tydi_qa translate-train-<lang> splits). TyDiQA's own data, translated: opt-in only.
TYDIQA_TRANSLATE_TRAIN = tuple(lang for lang in TASK2LANGS["tydiqa"] if lang != "en")
# PAWS-X x-final/<lang>/translated_train.tsv: PAWS (English) train machine-translated by the
# PAWS-X authors. PAWS-X is an XTREME target: opt-in only.
PAWSX_TRANSLATE_TRAIN = tuple(lang for lang in TASK2LANGS["pawsx"] if lang != "en")
# MLM text for every XTREME language (the union of all task languages)
MLM_LANGUAGES = tuple(sorted({lang for langs in TASK2LANGS.values() for lang in langs}))
# Intermediate datasets derived from an XTREME target's own data (translated): a mixture holding
# one makes that target translate-train, not zero-shot. (A target's own dataset name, e.g.
# tydiqa, is such a source too; see mixtures.derived_targets.)
DERIVED_FROM_TARGET: dict[str, str] = {"tydiqa_tt": "tydiqa", "pawsx_tt": "pawsx",
                                       "pawsx_tt_ours": "pawsx"}
# ANLI+ = SNLI + MNLI + ANLI R1-R3 (jiant's anli_plus), one shared NLI head
ANLI_PLUS = ("snli.en", "mnli.en", "anli_r1.en", "anli_r2.en", "anli_r3.en")

NLI = dict(
    role="intermediate",
    kind="classification",
    labels=r.NLI_LABELS,
    head="nli",
    max_length=256,
    epochs=3,
)
SQUAD = dict(
    role="intermediate",
    kind="qa",
    reader=r.read_squad_json,
    metric="squad_em_f1",
    max_length=384,
    epochs=2,
    head="span_qa",
)
MULTIPLE_CHOICE = dict(role="intermediate", kind="multiple_choice", max_length=256, epochs=3)

MNLI = TaskRow(
    dataset="mnli",
    languages=("en",),
    **NLI,
    reader=r.read_mnli,
    splits={
        "train": (
            "english/mnli/glue_format/train.tsv",
            "mnli/train.tsv",
            "mnli/multinli_1.0_train.jsonl",
        ),
        "dev": ("english/mnli/glue_format/dev_matched.tsv", "mnli/dev_matched.tsv"),
    },
    tfds_name="multi_nli",
    tfds_splits={"train": "train", "dev": "validation_matched"},
)
MNLI_TRANSLATED = TaskRow(  # XTREME's machine translation of MNLI train (gs://xtreme_translations)
    dataset="mnli",
    languages=XNLI_TRANSLATE_TRAIN,
    **NLI,
    source="translate-train",
    # five columns: English premise/hypothesis, translated premise/hypothesis, label (the
    # English side stays in text_a_en/text_b_en); TFDS xtreme_xnli reads the same files
    reader=r.read_translate_train_tsv,
    reader_kwargs={"labels": r.NLI_LABELS},
    splits={
        "train": (
            "xnli/translate-train/en-{lang}-translated.tsv",
            "XNLI-Translated/en-{lang}-translated.tsv",
        )
    },
)
SNLI = TaskRow(
    dataset="snli",
    languages=("en",),
    **NLI,
    reader=r.read_nli_jsonl,
    splits={
        "train": ("snli/snli_1.0_train.jsonl", "english/snli/snli_1.0_sample.jsonl"),
        "dev": ("snli/snli_1.0_dev.jsonl",),
    },
    tfds_name="snli",
    tfds_splits={"train": "train", "dev": "validation"},
)
ANLI = tuple(
    TaskRow(
        dataset=f"anli_r{round_}",
        languages=("en",),
        **NLI,
        reader=r.read_nli_jsonl,
        splits={
            split: (
                f"anli/R{round_}/{split}.jsonl",
                f"english/anli/original_jsonl_sample/R{round_}/{split}.jsonl",
            )
            for split in ("train", "dev", "test")
        },
        tfds_name=f"anli/r{round_}",
        tfds_splits={"train": "train", "dev": "validation", "test": "test"},
    )
    for round_ in (1, 2, 3)
)
QQP = TaskRow(
    dataset="qqp",
    languages=("en",),
    role="intermediate",
    kind="classification",
    labels=r.BINARY_LABELS,
    reader=r.read_glue_qqp_tsv,
    epochs=3,
    splits={
        "train": ("qqp/train.tsv", "english/qqp/glue_format/train.tsv"),
        "dev": ("qqp/dev.tsv", "english/qqp/glue_format/dev.tsv"),
    },
    tfds_name="glue/qqp",
    tfds_splits={"train": "train", "dev": "validation"},
)
SQUAD_V1 = TaskRow(  # its dev set is SQuAD's own: XQuAD is test data, never dev
    dataset="squad_v1",
    languages=("en",),
    **SQUAD,
    splits={
        "train": ("squad/train-v1.1.json", "english/squad/allennlp_squad_v1.1_sample.json"),
        "dev": ("squad/dev-v1.1.json",),
    },
    tfds_name="squad/v1.1",
    tfds_splits={"train": "train", "dev": "validation"},
)
SQUAD_V1_TRANSLATED = TaskRow(  # XTREME's translate-train SQuAD
    dataset="squad_v1",
    languages=SQUAD_TRANSLATE_TRAIN,
    **SQUAD,
    source="translate-train",
    reader_kwargs={"on_misaligned": "drop"},
    splits={"train": ("squad/translate-train/squad.translate.train.en-{lang}.json",)},
    tfds_name="xquad/{lang}",
    tfds_splits={"train": "translate-train"},
)
MNLI_MT = TaskRow(  # XNLI-MT-1.0.zip, XNLI's own MT of MNLI train (not XTREME's)
    dataset="mnli_mt",
    languages=XNLI_MT,
    **NLI,
    source="translate-train",
    reader=r.read_xnli_mt_tsv,
    splits={"train": ("XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv",)},
)
TYDIQA_TRANSLATED = TaskRow(  # TyDiQA-GoldP English train, machine-translated (see above)
    dataset="tydiqa_tt",
    languages=TYDIQA_TRANSLATE_TRAIN,
    **SQUAD,
    source="translate-train",
    reader_kwargs={"on_misaligned": "drop"},
    splits={"train": ("tydiqa/translate-train/tydiqa.translate.train.en-{lang}.json",)},
    tfds_name="tydi_qa/goldp",
    tfds_splits={"train": "translate-train-{lang}"},
)
PAWSX_TRANSLATED = TaskRow(  # PAWS-X release x-final.tar.gz: id, sentence1, sentence2, label
    dataset="pawsx_tt",
    languages=PAWSX_TRANSLATE_TRAIN,
    role="intermediate",
    kind="classification",
    labels=r.BINARY_LABELS,
    head="qqp",  # binary paraphrase labels, 1 = paraphrase, as QQP's is_duplicate
    reader=r.read_pawsx_original_tsv,
    epochs=3,
    source="translate-train",
    splits={"train": ("pawsx/x-final/{lang}/translated_train.tsv",)},
    tfds_name="paws_x_wiki/{lang}",
    tfds_splits={"train": "train"},
)
SQUAD_V2 = TaskRow(
    dataset="squad_v2",
    languages=("en",),
    **{**SQUAD, "head": "span_qa_v2"},
    splits={
        "train": ("squad/train-v2.0.json", "english/squad/allennlp_squad_v2.0_sample.json"),
        "dev": ("squad/dev-v2.0.json",),
    },
    tfds_name="squad/v2.0",
    tfds_splits={"train": "train", "dev": "validation"},
)
HELLASWAG = TaskRow(
    dataset="hellaswag",
    languages=("en",),
    **MULTIPLE_CHOICE,
    reader=r.read_hellaswag_jsonl,
    num_choices=4,
    splits={
        split: (f"hellaswag/hellaswag_{split}.jsonl", f"english/hellaswag/hellaswag_{split}.jsonl")
        for split in ("train", "val", "test")
    },
    tfds_name="hellaswag",
    tfds_splits={"train": "train", "val": "validation", "test": "test"},
)
COSMOSQA = TaskRow(
    dataset="cosmosqa",
    languages=("en",),
    **MULTIPLE_CHOICE,
    reader=r.read_cosmosqa_csv,
    num_choices=4,
    splits={
        "train": ("cosmosqa/train.csv",),
        "dev": ("cosmosqa/valid.csv", "english/cosmosqa/valid.head300.csv"),
    },
    tfds_name="cosmos_qa",
    tfds_splits={"train": "train", "dev": "validation"},
)
COMMONSENSEQA = TaskRow(
    dataset="commonsenseqa",
    languages=("en",),
    **MULTIPLE_CHOICE,
    reader=r.read_commonsenseqa_jsonl,
    num_choices=5,
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
)
CCG = TaskRow(  # CCGbank is licensed: a local-only corpus with an open tag set
    dataset="ccg",
    languages=("en",),
    role="intermediate",
    kind="tagging",
    reader=r.read_ccg_supertags,
    epochs=3,
    source="local-only",
    splits={split: (f"ccg/ccg.{split}",) for split in ("train", "dev", "test")},
)
MLM = TaskRow(
    dataset="mlm",
    languages=MLM_LANGUAGES,
    role="mlm",
    kind="mlm",
    metric="mlm_accuracy",
    reader=r.read_text_lines,
    splits={"train": ("mlm/{lang}.txt",)},
)
# Our translations (python -m xstilts.translate) into every XTREME language: tables/translated.py
# (mnli.yo is ours; where a release exists ours is mnli_ours.de). PAWS-X's is opt-in (a target).
MNLI_OURS = OursRow("mnli", "mnli", "xnli/translate-train/en-{lang}-translated.tsv",
                    MNLI_TRANSLATED, XNLI_TRANSLATE_TRAIN)
PAWSX_OURS = OursRow("pawsx_tt", "pawsx", "pawsx/x-final/{lang}/translated_train.tsv",
                     PAWSX_TRANSLATED, PAWSX_TRANSLATE_TRAIN)
# our projected answers sit at their answer_start: a misaligned one is an error, not a drop
SQUAD_V1_OURS = OursRow("squad_v1", "squad_v1",
                        "squad/translate-train/squad.translate.train.en-{lang}.json",
                        SQUAD_V1_TRANSLATED, SQUAD_TRANSLATE_TRAIN, reader_kwargs={})
QQP_OURS = OursRow("qqp", "qqp", "qqp/translate-train/{lang}/train.tsv", QQP)
ANLI_OURS = tuple(OursRow(row.dataset, row.dataset,
                          f"anli/translate-train/{{lang}}/R{n}/train.jsonl", row)
                  for n, row in enumerate(ANLI, 1))  # fmt: skip
HELLASWAG_OURS = OursRow("hellaswag", "hellaswag",
                         "hellaswag/translate-train/{lang}/hellaswag_train.jsonl", HELLASWAG)
COSMOSQA_OURS = OursRow("cosmosqa", "cosmosqa", "cosmosqa/translate-train/{lang}/train.csv",
                        COSMOSQA)
COMMONSENSEQA_OURS = OursRow("commonsenseqa", "commonsenseqa",
                             "commonsenseqa/translate-train/{lang}/train_rand_split.jsonl",
                             COMMONSENSEQA)
OURS = (MNLI_OURS, PAWSX_OURS, SQUAD_V1_OURS, QQP_OURS, *ANLI_OURS, HELLASWAG_OURS,
        COSMOSQA_OURS, COMMONSENSEQA_OURS)
# the official releases' tasks (mnli.de) refuse a file of ours (a manifest beside it)
ROWS = (
    MNLI,
    MNLI_OURS.official_row(),
    SNLI,
    *ANLI,
    QQP,
    SQUAD_V1,
    SQUAD_V1_OURS.official_row(),
    MNLI_MT,
    TYDIQA_TRANSLATED,
    PAWSX_OURS.official_row(),
    SQUAD_V2,
    HELLASWAG,
    COSMOSQA,
    COMMONSENSEQA,
    CCG,
    MLM,
    *OURS,
)
