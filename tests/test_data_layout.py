"""The data layer's shape: one benchmark table, table rows that match the protocol, imports that
point one way (no cycle, no import inside a function), and no test file used as dev data."""

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from xstilts import benchmark
from xstilts.data import mixtures, readers, sources
from xstilts.data import tasks as T
from xstilts.data.tables import xtreme
from xstilts.evals import xtreme_score

PACKAGE = REPO_ROOT / "xstilts"
DATA_MODULES = sorted(
    ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
    for p in (PACKAGE / "data").rglob("*.py")
    if p.name != "seqio_tasks.py"  # needs the data extra; checked by the registry tests
)
NEW_MODULES = [
    "xstilts.benchmark",
    "xstilts.data.spec",
    "xstilts.data.registry",
    "xstilts.data.sources",
    "xstilts.data.tables.xtreme",
    "xstilts.data.tables.translated",
    "xstilts.data.tables.intermediate",
    "xstilts.data.tables.synthetic",
    "xstilts.data.mixtures",
    "xstilts.data.tasks",
]
_ALONE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "xstilts" or m.startswith("xstilts.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
from xstilts.data import tasks
print(json.dumps([len(tasks.TASKS), len(tasks.MIXTURES)]))
"""


def _xstilts_imports(path):
    """(top-level xstilts imports, xstilts imports inside a function) of one module."""
    tree = ast.parse(path.read_text())
    inner = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    top, nested = set(), []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xstilts"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("xstilts")]
        if names:
            (nested.append(names[0]) if id(node) in inner else top.update(names))
    return top, nested


def _module_path(name):
    path = REPO_ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _graph(modules):
    graph = {}
    for name in modules:
        top, _ = _xstilts_imports(_module_path(name))
        graph[name] = {m for m in top if _module_path(m).is_file() and m != name}
    return graph


def test_each_module_imports_alone_and_the_registry_size_is_unchanged():
    result = subprocess.run(
        [sys.executable, "-c", _ALONE, json.dumps(NEW_MODULES)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # issue 14 item 7: + 14 mnli_mt, 8 tydiqa_tt, 6 pawsx_tt tasks; + 3 mixtures (two opt-in)
    # issue 17 item 5: + 39 languages x 10 datasets of our translations (390 tasks); + 8
    # .multilingual.lowres mixtures and their 8 +mlm variants
    assert json.loads(result.stdout.splitlines()[-1]) == [690, 74]
    # the same counts from the tables and recipes (unaffected by tests that register more)
    assert sum(len(row.specs()) for row in T.ROWS) == 690
    assert len(mixtures.all_mixtures()) == 74


def test_no_xstilts_import_inside_a_function_and_no_cycle():
    for name in DATA_MODULES + ["xstilts.benchmark", "xstilts.evals.xtreme_score"]:
        _, nested = _xstilts_imports(_module_path(name))
        assert nested == [], f"{name} imports {nested} inside a function"
    graph = _graph(DATA_MODULES + ["xstilts.benchmark"])
    state: dict[str, str] = {}

    def visit(node, path):
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*path, node])}"
        if state.get(node) is None:
            state[node] = "open"
            for dep in graph.get(node, ()):
                visit(dep, [*path, node])
            state[node] = "done"

    for name in graph:
        visit(name, [])


def test_leaves_and_direction():
    graph = _graph(DATA_MODULES + ["xstilts.benchmark"])
    assert graph["xstilts.benchmark"] == set()
    assert graph["xstilts.data.spec"] == set()
    upper = {"xstilts.data.tasks", "xstilts.data.mixtures", "xstilts.data.pipeline"}
    for low in ("registry", "sources", "spec", "readers", "tfds_sources", "tables.xtreme",
                "tables.intermediate", "tables.synthetic"):  # fmt: skip
        assert not graph[f"xstilts.data.{low}"] & upper, low
    assert "xstilts.data.tasks" not in graph["xstilts.data.mixtures"]  # recipes, no side effects


def test_one_benchmark_table():
    assert T.LANGUAGES is benchmark.TASK2LANGS is xtreme_score.TASK2LANGS
    assert xtreme_score.GROUP2TASK is benchmark.GROUP2TASK
    assert set(benchmark.METRIC) == set(benchmark.TASKS)
    assert set(benchmark.METRIC.values()) == {
        "accuracy", "f1_seqeval", "squad_em_f1", "mlqa_em_f1", "bucc_f1"
    }  # fmt: skip
    for lang, iso in xtreme.TATOEBA_ISO3.items():  # LASER's codes, as the tier table has them
        assert xtreme_score.language(lang).tatoeba_code == iso


def test_target_rows_follow_the_fine_tuning_recipe():
    for task in benchmark.TASKS:
        specs = T.tasks_for(task)
        assert [s.language for s in specs] == list(benchmark.TASK2LANGS[task])
        for spec in specs:
            assert spec.metric == benchmark.METRIC[task]
            assert spec.max_length == benchmark.MAX_LENGTH[task]
            assert spec.epochs == benchmark.EPOCHS.get(task)
            assert spec.train_task == benchmark.TRAIN_TASK.get(task)
    assert {s.epochs for s in T.tasks_for("xnli")} == {2}
    assert {s.epochs for s in T.tasks_for("pawsx")} == {5}
    assert {s.epochs for t in ("udpos", "panx") for s in T.tasks_for(t)} == {10}
    assert {s.epochs for t in benchmark.QA_TASKS for s in T.tasks_for(t)} == {2}
    assert {s.max_length for t in benchmark.QA_TASKS for s in T.tasks_for(t)} == {384}
    assert {s.max_length for t in benchmark.UNTRAINED_TASKS for s in T.tasks_for(t)} == {512}
    assert set(benchmark.BATCH_SIZE.values()) == {16, 32}
    assert all(benchmark.BATCH_SIZE[t] == 16 for t in benchmark.QA_TASKS)


def test_row_expansion_per_language_splits():
    assert "train" in T.get_task("pawsx.en").splits and "train" not in T.get_task("pawsx.de").splits
    assert T.get_task("pawsx.de").tfds_splits["train"] == "train"  # TFDS has the translations
    assert set(T.get_task("udpos.kk").tfds_splits) == {"test"}
    assert set(T.get_task("udpos.en").tfds_splits) == {"dev", "test", "train"}
    assert T.get_task("tatoeba.sw").splits["test"] == (
        "tatoeba/v1/tatoeba.swh-eng.swh|tatoeba/v1/tatoeba.swh-eng.eng",
    )
    assert T.get_task("bucc2018.de").reader is readers.read_bucc


def test_no_test_file_is_ever_dev_data():
    test_files = {c for spec in T.TASKS.values() for c in spec.splits.get("test", ())}
    for spec in T.TASKS.values():
        for split, candidates in spec.splits.items():
            if split != "test":
                assert not set(candidates) & test_files, (spec.name, split)
    assert T.get_task("squad_v1.en").splits["dev"] == ("squad/dev-v1.1.json",)


def test_squad_dev_without_its_file_names_the_path_not_xquad(tmp_path):
    (tmp_path / "xquad").mkdir()
    (tmp_path / "xquad/xquad.en.json").write_text('{"data": []}')
    with pytest.raises(FileNotFoundError, match=r"squad_v1\.en split 'dev'.*squad/dev-v1\.1\.json"):
        list(T.get_task("squad_v1.en").examples("dev", tmp_path))
    with pytest.raises(KeyError, match="no split 'dev'"):
        T.get_task("xquad.en").path("dev")


def test_sources_read_native_files_like_the_spec(shared_data):
    root = shared_data("xnli").parent
    spec = T.get_task("xnli.th")
    assert sources.num_examples(spec, "dev", root) == spec.num_examples("dev", root) == 500
    assert T.load_retrieval is sources.load_retrieval


def test_mnli_reader_takes_either_release(shared_data):
    tsv = list(readers.read_mnli(shared_data("english/mnli/glue_format/dev_matched.tsv")))
    jsonl = list(readers.read_mnli(shared_data("english/mnli/multinli_1.0_dev_matched.jsonl")))
    assert tsv and jsonl and {e["label"] for e in tsv + jsonl} <= {*readers.NLI_LABELS, None}
    assert T.get_task("mnli.en").reader is readers.read_mnli
