"""The user-authored seqio Task of the seqio tests, set up as a user would (not a test module)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import seqio

from tests.conftest import REPO_ROOT, require_sample

FIXTURES = REPO_ROOT / "tests" / "fixtures"
LABELS = ("entailment", "neutral", "contradiction")


def import_user_tasks(root: Path, rows: int) -> tuple[dict[str, str], ModuleType, Path]:
    """Write the user's TSV of ``rows`` pairs under ``root`` (the label word is in the premise,
    so the task is learnable), set the environment its module
    (tests/fixtures/seqio_user_tasks.py) reads, and import that module afresh; returns
    (environment, module, SentencePiece model). Undo with :func:`forget_user_tasks`."""
    spm = require_sample("spm/test_model.model")
    mnli = require_sample("english/mnli/multinli_1.0_train.jsonl")
    words = [chr(97 + i // 26) + chr(97 + i % 26) for i in range(rows)]  # digits would be <unk>
    (root / "user.tsv").write_text("".join(
        f"premise {w} about {LABELS[i % 3][:4]}\thypothesis {w}\t{LABELS[i % 3]}\n"
        for i, w in enumerate(words)))
    env = {"USER_NLI_TSV": str(root / "user.tsv"), "USER_NLI_SPM": str(spm),
           "XSTILTS_DATA_DIR": str(mnli.parents[2]), "USER_NLI_ALLOW_SAMPLES": "1"}
    os.environ.update(env)
    sys.path.insert(0, str(FIXTURES))
    seqio.MixtureRegistry.remove("user_nli+mnli")
    seqio.TaskRegistry.remove("user_nli")
    sys.modules.pop("seqio_user_tasks", None)
    return env, importlib.import_module("seqio_user_tasks"), spm


def forget_user_tasks() -> None:
    sys.path.remove(str(FIXTURES))
