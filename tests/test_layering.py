"""The package's imports point one way: no cycle between modules, no project import hidden in
a function, and the experiment's layers (plan without JAX, the dry run without the driver)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xstilts"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> list[tuple[ast.AST, list[str], bool]]:
    """(node, imported xstilts modules, inside a function) for every import statement."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("xstilts"):
                names = [f"{child.module}.{a.name}" for a in child.names]
                out.append((child, [n if n in MODULES else child.module for n in names], inner))
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names if a.name.startswith("xstilts")]
                if names:
                    out.append((child, names, inner))
            visit(child, inner)

    visit(tree, False)
    return out


GRAPH = {}
IN_FUNCTIONS = []
for name, path in MODULES.items():
    found = _imports(ast.parse(path.read_text(encoding="utf-8")))
    GRAPH[name] = {m for _, mods, inner in found if not inner for m in mods if m != name}
    IN_FUNCTIONS += [(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", mods)
                     for node, mods, inner in found if inner]


# The only project imports allowed inside a function, each with its reason: modules that need
# an optional extra, imported where that extra is used.
DEFERRED = {
    "xstilts.data.seqio_tasks": "the data extra (TensorFlow, seqio): only seqio names need it",
    "xstilts.train": "plan.seqio_facts, for seqio intermediate names only: the heads of a user's "
                     "Task come from train.seqio_data_model; registry names keep plan JAX-free",
}


def test_no_project_import_inside_a_function():
    assert [where for where, modules in IN_FUNCTIONS if not set(modules) <= set(DEFERRED)] == []


def test_module_imports_have_no_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt.startswith("xstilts.") and "." in nxt and nxt not in MODULES:
                continue  # an attribute of a package, not a module
            if state.get(nxt) == 1:
                # A module importing its own package's __init__ re-exports is not a cycle of
                # definitions when the package only re-exports; flag everything else.
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):])}"
                                     f" -> {nxt}")
            if nxt in MODULES and state.get(nxt) is None:
                walk(nxt)
        stack.pop()
        state[node] = 2

    packages_reexporting = {"xstilts.experiment"}  # __init__ re-exports only; nothing imports it
    for name in sorted(GRAPH):
        GRAPH[name] -= packages_reexporting if name.startswith("xstilts.experiment.") else set()
    for name in sorted(MODULES):
        if state.get(name) is None:
            walk(name)


def _direct_third_party(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names - {"xstilts"}


def _reached(module: str) -> set[str]:
    """The project modules ``module`` imports, directly or through others."""
    reached, todo = set(), [module]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    return reached


@pytest.mark.parametrize("module,forbidden", [
    ("xstilts.experiment.grid", {"jax", "flax"}),  # settings only (XLMRConfig is a dataclass)
    ("xstilts.experiment.plan", {"jax", "flax", "xstilts.train", "xstilts.data.pipeline"}),
    ("xstilts.experiment.dry_run", {"xstilts.experiment.driver", "xstilts.experiment.finetune",
                                    "xstilts.experiment.intermediate",
                                    "xstilts.experiment.pretrain"}),
    ("xstilts.data.tasks", {"xstilts.experiment", "xstilts.train", "xstilts.trainer",
                            "xstilts.checkpoints"}),
    ("xstilts.benchmark", {"xstilts.data", "jax"}),
    ("xstilts.evals.stats", {"jax", "xstilts.experiment", "xstilts.data"}),
    ("xstilts.results", {"jax", "numpy", "xstilts.experiment"}),  # read by the report
    ("xstilts.report_tables", {"jax", "xstilts.experiment", "xstilts.train"}),
])
def test_layers_import_nothing_above_them(module, forbidden):
    """``module`` imports (directly, or through project modules) none of ``forbidden``;
    third-party libraries are checked on the module's own imports."""
    reached = _reached(module)
    above = {m for m in reached for f in forbidden if m == f or m.startswith(f + ".")}
    assert not above and not _direct_third_party(module) & forbidden, above
