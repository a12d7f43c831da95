"""The XTREME benchmark as tables: languages, groups, train tasks, metrics, fine-tuning recipe."""

# google-research/xtreme evaluate.py XTREME_TASK2LANGS (HEAD), in its task and language order;
# nyu-mll/jiant jiant/scripts/benchmarks/xtreme/xtreme_runconfig_writer.py LANGS_DICT agrees.
TASK2LANGS: dict[str, tuple[str, ...]] = {
    "pawsx": tuple("de en es fr ja ko zh".split()),
    "xnli": tuple("ar bg de el en es fr hi ru sw th tr ur vi zh".split()),
    "panx": tuple(
        "ar he vi id jv ms tl eu ml ta te af nl en de el bn hi mr ur fa fr it pt es bg ru ja ka "
        "ko th sw yo my zh kk tr et fi hu".split()
    ),
    "udpos": tuple(
        "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr "
        "ur vi yo zh".split()
    ),
    "bucc2018": tuple("de fr ru zh".split()),
    "tatoeba": tuple(
        "ar he vi id jv tl eu ml ta te af nl de el bn hi mr ur fa fr it pt es bg ru ja ka ko th "
        "sw zh kk tr et fi hu".split()
    ),
    "xquad": tuple("en es de el ru tr ar vi th zh hi".split()),
    "mlqa": tuple("en es de ar hi vi zh".split()),
    "tydiqa": tuple("en ar bn fi id ko ru sw te".split()),
}
TASKS = tuple(TASK2LANGS)

# google-research/xtreme evaluate.py XTREME_GROUP2TASK
GROUP2TASK: dict[str, tuple[str, ...]] = {
    "classification": ("pawsx", "xnli"),
    "tagging": ("udpos", "panx"),
    "qa": ("xquad", "mlqa", "tydiqa"),
    "retrieval": ("bucc2018", "tatoeba"),
}
QA_TASKS = GROUP2TASK["qa"]

# UDPOS languages with test data only (jiant xtreme_runconfig_writer.py EXTRA_UDPOS_TEST_LANGS)
UDPOS_TEST_ONLY = ("kk", "th", "tl", "yo")

# The English task each target is fine-tuned on (jiant xtreme_runconfig_writer.py
# TRAIN_TASK_DICT; task names are this project's ``<dataset>.<language>``). BUCC and Tatoeba are
# evaluated straight from the intermediate checkpoint (jiant UNTRAINED_TASKS).
TRAIN_TASK: dict[str, str] = {
    "xnli": "mnli.en",
    "pawsx": "pawsx.en",
    "udpos": "udpos.en",
    "panx": "panx.en",
    "xquad": "squad_v1.en",
    "mlqa": "squad_v1.en",
    "tydiqa": "tydiqa.en",
}
UNTRAINED_TASKS = ("bucc2018", "tatoeba")

# Metric of each target (google-research/xtreme evaluate.py METRIC_FUNCTION): "accuracy",
# seqeval's chunk F1, the SQuAD v1.1 script's EM/F1, the MLQA script's EM/F1, BUCC pair F1.
METRIC: dict[str, str] = {
    "pawsx": "accuracy",
    "xnli": "accuracy",
    "panx": "f1_seqeval",
    "udpos": "f1_seqeval",
    "bucc2018": "bucc_f1",
    "tatoeba": "accuracy",
    "xquad": "squad_em_f1",
    "mlqa": "mlqa_em_f1",
    "tydiqa": "squad_em_f1",
}

# Fine-tuning recipe (nyu-mll/jiant jiant/scripts/benchmarks/xtreme/subscripts/d_write_configs.sh:
# epochs, batch 4 x gradient accumulation; c_tokenize_and_cache.sh: max_seq_length).
EPOCHS: dict[str, int] = {
    "xnli": 2,
    "pawsx": 5,
    "udpos": 10,
    "panx": 10,
    "xquad": 2,
    "mlqa": 2,
    "tydiqa": 2,
}
BATCH_SIZE: dict[str, int] = {  # effective batch: 4 x 8, QA 4 x 4
    "xnli": 32,
    "pawsx": 32,
    "udpos": 32,
    "panx": 32,
    "xquad": 16,
    "mlqa": 16,
    "tydiqa": 16,
}
MAX_LENGTH: dict[str, int] = {
    "xnli": 256,
    "pawsx": 256,
    "udpos": 256,
    "panx": 256,
    "xquad": 384,
    "mlqa": 384,
    "tydiqa": 384,
    "bucc2018": 512,
    "tatoeba": 512,
}
