"""The XTREME target and retrieval tasks, one row per dataset, with their TFDS builders."""

from xstilts.benchmark import EPOCHS, MAX_LENGTH, METRIC, TASK2LANGS, TRAIN_TASK, UDPOS_TEST_ONLY
from xstilts.data import readers as r
from xstilts.data.spec import TaskRow

# LASER's Tatoeba file names use ISO 639-3 codes (facebookresearch/LASER data/tatoeba/v1)
TATOEBA_ISO3 = dict(
    af="afr", ar="ara", bg="bul", bn="ben", de="deu", el="ell", es="spa", et="est", eu="eus",
    fa="pes", fi="fin", fr="fra", he="heb", hi="hin", hu="hun", id="ind", it="ita", ja="jpn",
    jv="jav", ka="kat", kk="kaz", ko="kor", ml="mal", mr="mar", nl="nld", pt="por", ru="rus",
    sw="swh", ta="tam", te="tel", th="tha", tl="tgl", tr="tur", ur="urd", vi="vie", zh="cmn",
)  # fmt: skip
UDPOS_WITH_DEV = tuple(lang for lang in TASK2LANGS["udpos"] if lang not in UDPOS_TEST_ONLY)
# TFDS 4.9.10's xtreme_pos maps "ta" to Tagalog and "tl" to Tamil (swapped): undo it
XTREME_POS_CONFIG = {"ta": "tl", "tl": "ta"}


TAGGING_SPLITS = {
    "test": ("{dataset}/test-{lang}.tsv", "{dataset}/hf_dummy/{lang}/test"),
    "dev": (
        "{dataset}/xtreme_format/dev-{lang}.tsv",
        "{dataset}/dev-{lang}.tsv",
        "{dataset}/hf_dummy/{lang}/dev",
    ),
    "train": ("{dataset}/train-{lang}.tsv", "{dataset}/hf_dummy/{lang}/train"),
}
# PAN-X also reads a per-language release archive (panx_dataset/<lang>.tar.gz: train, dev, test)
# extracted into panx/<lang>/ as TFDS wikiann and HF xtreme do; readers.read_panx_archive reads
# the archives themselves
PANX_SPLITS = {
    split: (*candidates, f"{{dataset}}/{{lang}}/{split}")
    for split, candidates in TAGGING_SPLITS.items()
}
QA = dict(role="target", kind="qa", reader=r.read_squad_json, head="span_qa")


XNLI = TaskRow(
    dataset="xnli",
    languages=TASK2LANGS["xnli"],
    role="target",
    kind="classification",
    reader=r.read_xtreme_pair_tsv,
    reader_kwargs={"labels": r.NLI_LABELS},
    splits={
        "dev": ("xnli/xtreme_format/dev-{lang}.tsv", "xnli/dev-{lang}.tsv"),
        "test": ("xnli/test-{lang}.tsv",),
    },
    labels=r.NLI_LABELS,
    metric=METRIC["xnli"],
    max_length=MAX_LENGTH["xnli"],
    epochs=EPOCHS["xnli"],
    train_task=TRAIN_TASK["xnli"],
    head="nli",
    tfds_name="xnli",
    tfds_splits={"dev": "validation", "test": "test"},
)
PAWSX = TaskRow(
    dataset="pawsx",
    languages=TASK2LANGS["pawsx"],
    role="target",
    kind="classification",
    reader=r.read_xtreme_pair_tsv,
    reader_kwargs={"labels": r.BINARY_LABELS},
    splits={
        "dev": ("pawsx/xtreme_format/dev-{lang}.tsv", "pawsx/dev-{lang}.tsv"),
        "test": ("pawsx/test-{lang}.tsv",),
        "train": ("pawsx/train-{lang}.tsv",),
    },
    split_languages={"train": ("en",)},
    labels=r.BINARY_LABELS,
    metric=METRIC["pawsx"],
    max_length=MAX_LENGTH["pawsx"],
    epochs=EPOCHS["pawsx"],
    train_task=TRAIN_TASK["pawsx"],
    tfds_name="paws_x_wiki/{lang}",
    tfds_splits={"train": "train", "dev": "validation", "test": "test"},
)
UDPOS = TaskRow(
    dataset="udpos",
    languages=TASK2LANGS["udpos"],
    role="target",
    kind="tagging",
    reader=r.read_token_tag_file,
    reader_kwargs={"tags": r.UPOS_TAGS, "strip_language_prefix": False},
    splits=TAGGING_SPLITS,
    split_languages={"train": ("en",), "dev": UDPOS_WITH_DEV},
    labels=r.UPOS_TAGS,
    metric=METRIC["udpos"],
    max_length=MAX_LENGTH["udpos"],
    epochs=EPOCHS["udpos"],
    train_task=TRAIN_TASK["udpos"],
    codes=XTREME_POS_CONFIG,
    tfds_name="xtreme_pos/xtreme_pos_{code}",
    tfds_splits={"dev": "dev", "test": "test", "train": "train"},
    tfds_split_languages={"train": ("en",), "dev": UDPOS_WITH_DEV},
)
PANX = TaskRow(
    dataset="panx",
    languages=TASK2LANGS["panx"],
    role="target",
    kind="tagging",
    reader=r.read_token_tag_file,
    reader_kwargs={"tags": r.PANX_TAGS, "strip_language_prefix": True},
    splits=PANX_SPLITS,
    labels=r.PANX_TAGS,
    metric=METRIC["panx"],
    max_length=MAX_LENGTH["panx"],
    epochs=EPOCHS["panx"],
    train_task=TRAIN_TASK["panx"],
    tfds_name="wikiann/{lang}",
    tfds_splits={"train": "train", "dev": "validation", "test": "test"},
)
XQUAD = TaskRow(  # XQuAD has a test set only
    dataset="xquad",
    languages=TASK2LANGS["xquad"],
    **QA,
    metric=METRIC["xquad"],
    max_length=MAX_LENGTH["xquad"],
    epochs=EPOCHS["xquad"],
    train_task=TRAIN_TASK["xquad"],
    splits={"test": ("xquad/xquad.{lang}.json",)},
    tfds_name="xquad/{lang}",
    tfds_splits={"test": "test"},
)
MLQA = TaskRow(  # context and question in the same language
    dataset="mlqa",
    languages=TASK2LANGS["mlqa"],
    **QA,
    metric=METRIC["mlqa"],
    max_length=MAX_LENGTH["mlqa"],
    epochs=EPOCHS["mlqa"],
    train_task=TRAIN_TASK["mlqa"],
    splits={
        split: (
            f"mlqa/{split}-context-{{lang}}-question-{{lang}}.json",
            f"mlqa/MLQA_V1/{split}/{split}-context-{{lang}}-question-{{lang}}.json",
        )
        for split in ("dev", "test")
    },
    tfds_name="mlqa/{lang}",
    tfds_splits={"dev": "validation", "test": "test"},
)
TYDIQA = TaskRow(  # XTREME's TyDiQA "test" is the official GoldP dev set
    dataset="tydiqa",
    languages=TASK2LANGS["tydiqa"],
    **QA,
    metric=METRIC["tydiqa"],
    max_length=MAX_LENGTH["tydiqa"],
    epochs=EPOCHS["tydiqa"],
    train_task=TRAIN_TASK["tydiqa"],
    splits={
        "train": ("tydiqa/tydiqa-goldp-v1.1-train/tydiqa.goldp.{lang}.train.json",),
        "test": (
            "tydiqa/xtreme_format/tydiqa.goldp.{lang}.dev.json",
            "tydiqa/tydiqa-goldp-v1.1-dev/tydiqa.goldp.{lang}.dev.json",
        ),
    },
    tfds_name="tydi_qa/goldp",  # the train split mixes languages: filtered by id prefix
    tfds_splits={"train": "train", "test": "validation-{lang}"},
)
BUCC2018 = TaskRow(  # XTREME renames BUCC's "sample" to dev and "training" to test
    dataset="bucc2018",
    languages=TASK2LANGS["bucc2018"],
    role="retrieval",
    kind="retrieval",
    reader=r.read_bucc,
    splits={
        split: (
            f"bucc2018/{{lang}}-en.{split}.{{lang}}|bucc2018/{{lang}}-en.{split}.en|"
            f"bucc2018/{{lang}}-en.{split}.gold",
            f"bucc2018/{{lang}}-en.{split}.{{lang}}|bucc2018/{{lang}}-en.{split}.en",
        )
        for split in ("dev", "test")
    },
    metric=METRIC["bucc2018"],
    max_length=MAX_LENGTH["bucc2018"],
)
TATOEBA = TaskRow(
    dataset="tatoeba",
    languages=TASK2LANGS["tatoeba"],
    role="retrieval",
    kind="retrieval",
    reader=r.read_tatoeba,
    codes=TATOEBA_ISO3,
    splits={"test": ("tatoeba/v1/tatoeba.{code}-eng.{code}|tatoeba/v1/tatoeba.{code}-eng.eng",)},
    metric=METRIC["tatoeba"],
    max_length=MAX_LENGTH["tatoeba"],
)
ROWS = (XNLI, PAWSX, UDPOS, PANX, XQUAD, MLQA, TYDIQA, BUCC2018, TATOEBA)
