"""The synthetic world's tasks (files written by ``SyntheticWorld.write_files``), one row each."""

from xstilts.data import readers as r
from xstilts.data.spec import TaskRow
from xstilts.data.synthetic import DEFAULT_LANGUAGES, SPLITS

SYNTHETIC_LANGUAGES = tuple(spec.code for spec in DEFAULT_LANGUAGES)
# Languages with intermediate-task train data (NLI, QA): the multilingual mixtures' languages.
SYNTHETIC_TRANSLATED = tuple(spec.code for spec in DEFAULT_LANGUAGES if spec.translated_train > 0)
PLAIN = {"strip_language_prefix": False}  # synthetic tokens carry no "xx:" prefix
METRIC = {"classification": "accuracy", "tagging": "f1_seqeval", "qa": "squad_em_f1"}
# task -> (kind, reader, reader arguments); files are synthetic/<task>/<split>-<lang>.tsv (.json)
FILES = {
    "nli": ("classification", r.read_xtreme_pair_tsv, {"labels": r.NLI_LABELS}),
    "paraphrase": ("classification", r.read_xtreme_pair_tsv, {"labels": r.BINARY_LABELS}),
    "pos": ("tagging", r.read_token_tag_file, {"tags": r.UPOS_TAGS, **PLAIN}),
    "ner": ("tagging", r.read_token_tag_file, {"tags": r.PANX_TAGS, **PLAIN}),
    "qa": ("qa", r.read_squad_json, {}),
}
SUFFIX = {"qa": "json"}

TASK_ROWS = tuple(
    TaskRow(
        dataset=f"synthetic.{task}",
        languages=SYNTHETIC_LANGUAGES,
        role="intermediate" if task in ("nli", "qa") else "target",
        kind=kind,
        reader=reader,
        reader_kwargs=kwargs,
        labels=kwargs.get("labels") or kwargs.get("tags"),
        source="synthetic",
        metric=METRIC[kind],
        max_length=128,
        epochs=3,
        train_task=f"synthetic.{task}.en",
        head=f"synthetic.{task}",
        splits={
            split: (f"synthetic/{task}/{split}-{{lang}}.{SUFFIX.get(task, 'tsv')}",)
            for split in SPLITS
        },
    )
    for task, (kind, reader, kwargs) in FILES.items()
)
MLM = TaskRow(
    dataset="synthetic.mlm",
    languages=SYNTHETIC_LANGUAGES,
    role="mlm",
    kind="mlm",
    metric="mlm_accuracy",
    reader=r.read_text_lines,
    source="synthetic",
    max_length=128,
    splits={"train": ("synthetic/mlm/{lang}.txt",)},
)
PARALLEL = TaskRow(
    dataset="synthetic.parallel",
    languages=tuple(lang for lang in SYNTHETIC_LANGUAGES if lang != "en"),
    role="retrieval",
    kind="retrieval",
    metric="accuracy",
    reader=r.read_tatoeba,
    source="synthetic",
    max_length=128,
    splits={
        "test": ("synthetic/parallel/test.{lang}-en.{lang}|synthetic/parallel/test.{lang}-en.en",)
    },
)
ROWS = (*TASK_ROWS, MLM, PARALLEL)
