"""seqio's own offline cache: ``python -m seqio.scripts.cache_tasks_main`` (Apache Beam,
DirectRunner) caches a user's small Task, and ``python -m xstilts.train`` trains on that cache.

Needs apache-beam[tfrecord] 2.77, which caps protobuf<7: with protobuf 6.33 (tensorflow 2.21 takes
>=6.31.1,<8) and sentencepiece 0.2.2 (0.2.3's generated code demands a 7.x runtime). Where it is
not installed the test skips and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from tests.conftest import REPO_ROOT  # noqa: E402
from tests.seqio_user import FIXTURES, forget_user_tasks, import_user_tasks  # noqa: E402


def _require_beam() -> None:
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        message = ("apache-beam is not installed: cache_tasks_main needs apache-beam[tfrecord]"
                   "==2.77.0 with protobuf 6.33.x and sentencepiece 0.2.2 (the data extra)")
        if os.environ.get("XSTILTS_CI") == "1":  # the data extra installs it: CI must run it
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's TSV and the environment tests/fixtures/seqio_user_tasks.py reads; imported."""
    _require_beam()
    env, _, _ = import_user_tasks(tmp_path_factory.mktemp("beam_user"), 40)
    yield {"env": env}
    forget_user_tasks()


def _run(args, env, timeout=300):
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO_ROOT),
                                               os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _records(paths):
    rows = []
    for path in paths:
        for record in tf.data.TFRecordDataset(str(path)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            rows.append(tuple(tuple(feature[k].int64_list.value)
                              for k in ("inputs", "inputs_b", "targets")))
    return sorted(rows)


def test_cache_tasks_main_caches_a_task_and_a_train_run_reads_it(user, tmp_path):
    cache = tmp_path / "beam_cache"
    _run(["-m", "seqio.scripts.cache_tasks_main", "--module_import=seqio_user_tasks",
          "--tasks=user_nli", f"--output_cache_dir={cache}", "--min_shards=2",
          "--pipeline_options=--runner=DirectRunner"], user["env"])
    task_dir = cache / "user_nli"
    shards = sorted(task_dir.glob("train.tfrecord-*"))
    assert (task_dir / "COMPLETED").exists() and [p.name for p in shards] == [
        "train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
    stats = json.loads((task_dir / "stats.train.json").read_text())
    info = json.loads((task_dir / "info.train.json").read_text())
    assert stats["examples"] == 40 and info["num_shards"] == 2
    assert set(info["features"]) == {f"{k}{suffix}" for k in ("inputs", "inputs_b", "targets")
                                     for suffix in ("", "_pretokenized")}
    # The cache holds exactly what the Task yields on the fly (ids from XLMRVocabulary).
    fresh = seqio.get_mixture_or_task("user_nli").get_dataset(
        None, split="train", use_cached=False, shuffle=False, num_epochs=1)
    expected = sorted((tuple(ex["inputs"].tolist()), tuple(ex["inputs_b"].tolist()),
                       (int(ex["targets"]),)) for ex in fresh.as_numpy_iterator())
    assert _records(shards) == expected and len(expected) == 40
    assert stats["inputs_tokens"] == sum(len(row[0]) for row in expected)

    model_dir = tmp_path / "run"
    out = _run(["-m", "xstilts.train", "--gin_file=models/xlmr_tiny.gin",
                "--gin_file=runs/intermediate.gin", f"--seqio_additional_cache_dirs={cache}",
                "--gin.MIXTURE_OR_TASK_NAME='user_nli'",
                "--gin.MIXTURE_OR_TASK_MODULE='seqio_user_tasks'", "--gin.NUM_LABELS=3",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}", "--gin.USE_CACHED_TASKS=True",
                f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8",
                "--gin.INIT_PRETRAINED_FROM=None"], user["env"])
    assert "seqio user_nli: reading the offline cache" in out
    losses = [json.loads(line)["loss"]
              for line in (model_dir / "train_metrics.jsonl").read_text().splitlines()]
    print("cache_tasks_main:", stats["examples"], "examples in 2 shards; train losses", losses)
    assert len(losses) == 4 and all(np.isfinite(losses))
