"""Training on seqio Tasks and Mixtures by name (t5x's MIXTURE_OR_TASK_NAME / _MODULE): a user's
own Task mixed with ``intermediate.mnli.en`` through ``python -m xstilts.train``, exact resume,
the head(s) taken from the task, errors, and offline caching (Beam's ``cache_tasks_main`` where
apache-beam is installed, ``xstilts.data.seqio_cache`` always) read back by a train run."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
pytest.importorskip("tensorflow")

from train_setup import enable_compilation_cache  # noqa: E402

from tests.conftest import REPO_ROOT  # noqa: E402
from tests.seqio_user import FIXTURES, forget_user_tasks, import_user_tasks  # noqa: E402
from xstilts import gin_utils, train  # noqa: E402
from xstilts.data import seqio_cache  # noqa: E402
from xstilts.data import seqio_tasks as S  # noqa: E402
from xstilts.models.xlmr import XLMRConfig  # noqa: E402

enable_compilation_cache()

TINY = ["--gin_file=models/xlmr_tiny.gin", "--gin_file=runs/intermediate.gin"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's TSV (its label word is in the premise, so the task is learnable) and the
    environment its module (tests/fixtures/seqio_user_tasks.py) reads; the module imported."""
    root = tmp_path_factory.mktemp("seqio_user")
    env, module, spm = import_user_tasks(root, 60)
    yield {"root": root, "env": env, "module": module, "spm": spm}
    forget_user_tasks()


def _cli(args, env, cwd=REPO_ROOT, timeout=300):
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO_ROOT),
                                               os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _losses(model_dir):
    lines = (model_dir / "train_metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_a_users_seqio_mixture_trains_through_the_cli(user, tmp_path):
    model_dir = tmp_path / "run"
    output = _cli(["-m", "xstilts.train", *TINY,
                   "--gin.MIXTURE_OR_TASK_NAME='user_nli+mnli'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}",
                   "--gin.MIXTURE_OR_TASK_MODULE='seqio_user_tasks'",
                   f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=30",
                   "--gin.BATCH_SIZE=16", "--gin.INIT_PRETRAINED_FROM=None",
                   "--gin.LEARNING_RATE=3e-3", "--gin.DROPOUT_RATE=0.0"], user["env"])
    losses = _losses(model_dir)
    print("user_nli+mnli losses:", [round(x, 4) for x in losses])
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses
    assert "seqio user_nli+mnli: preprocessing on the fly" in output
    operative = (model_dir / "operative_config.gin").read_text()
    assert "MIXTURE_OR_TASK_NAME = 'user_nli+mnli'" in operative.splitlines()
    # provenance: the project's task with its file and hash, the user's with its count
    records = {r["task"]: r for r in
               json.loads((model_dir / "data_manifest.json").read_text())["records"]}
    assert set(records) == {"user_nli", "mnli.en"}
    # (its TextLineDataSource declares no num_input_examples: seqio cannot tell the count)
    assert records["user_nli"]["source"] == "seqio Task" and records["user_nli"]["files"] == []
    (mnli_file,) = records["mnli.en"]["files"]
    assert mnli_file["path"].endswith(".tsv") and len(mnli_file["sha256"]) == 64
    assert records["mnli.en"]["examples"] > 0
    assert {r["mixture"] for r in records.values()} == {"user_nli+mnli"}
    assert sum(r["share"] for r in records.values()) == pytest.approx(1.0)
    assert records["user_nli"]["rate"] == pytest.approx(3 * records["mnli.en"]["rate"])


def _train(model_dir, batches, steps, stop_at_step=None):
    return train.train(model_dir=str(model_dir), model_config=XLMRConfig.tiny(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), total_steps=steps,
        batch_size=8, train_batches=batches, task_type=None, num_labels=None,
        stop_at_step=stop_at_step, progress=False, log_every_steps=1)


def _batches(name, length=24, **kwargs):
    return train.SeqioBatches(mixture_or_task_name=name, task_feature_lengths={"inputs": length},
                              **kwargs)


def test_exact_resume_of_a_seqio_fed_run(user, tmp_path):
    full = _train(tmp_path / "full", _batches("user_nli+mnli"), 6)
    first = _train(tmp_path / "resumed", _batches("user_nli+mnli"), 6, stop_at_step=3)
    assert first.step == 3
    resumed = _train(tmp_path / "resumed", _batches("user_nli+mnli"), 6)
    assert resumed.step == 6 and [r["step"] for r in resumed.history] == [4, 5, 6]
    full_losses = [r["loss"] for r in full.history]
    split_losses = [r["loss"] for r in first.history + resumed.history]
    print("full:", full_losses, "\nstop at 3 + resume:", split_losses)
    assert split_losses == full_losses  # bit-identical: same batches, same state
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_gin_evaluates_a_seqio_tasks_split(user, tmp_path):
    """eval.gin on a seqio name: the dev split of mnli.en, one pass, every example once."""
    _train(tmp_path / "run", _batches("mnli.en"), 2)
    gin.clear_config()
    try:
        gin_utils.parse_gin(["models/xlmr_tiny.gin", "runs/eval.gin"], [
            f"MODEL_DIR = '{tmp_path / 'run'}'", "TASK_TYPE = 'classification'",
            "NUM_LABELS = 3", "BATCH_SIZE = 8", "EVAL_BATCHES = @train_script.SeqioBatches()",
            "MIXTURE_OR_TASK_NAME = 'mnli.en'", "TASK_FEATURE_LENGTHS = {'inputs': 24}",
            "EVAL_SPLIT = 'dev'", "LENGTH_BUCKETS = 'auto'", "DROPOUT_RATE = 0.0"])
        result = gin_utils.configured(train.entry_point)()
    finally:
        gin.clear_config()
    examples = seqio.get_mixture_or_task("mnli.en").num_input_examples("dev")
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["step"] == 2 and saved["weight"] == float(examples) > 0
    assert np.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0


def test_a_run_with_length_buckets_trains_at_each_batchs_width(user, tmp_path):
    seen = []
    batches = _batches("user_nli", length=32, length_buckets=(16, 24), kind="classification",
                       num_labels=3)  # short rows

    def factory(**kwargs):
        for item in batches(**kwargs):
            seen.append(item["input_ids"].shape[-1])
            yield item

    factory.model = batches.model
    run = _train(tmp_path / "run", factory, 4)
    assert run.step == 4 and all(np.isfinite(r["loss"]) for r in run.history)
    assert set(seen) <= {16, 24, 32} and min(seen) < 32


def test_hosts_read_their_own_shard_and_batches_resume(user):
    batches = _batches("user_nli", num_labels=3)
    assert batches.model() == train.DataModel("classification", 3)
    one = [b["input_ids"] for _, b in zip(range(4), batches(
        shard_index=0, num_shards=1, batch_size=4, start_batch=0), strict=False)]
    later = next(batches(shard_index=0, num_shards=1, batch_size=4, start_batch=3))
    np.testing.assert_array_equal(later["input_ids"], one[3])
    host0 = next(batches(shard_index=0, num_shards=2, batch_size=4, start_batch=0))
    host1 = next(batches(shard_index=1, num_shards=2, batch_size=4, start_batch=0))
    rows0 = {tuple(r) for r in host0["input_ids"]}
    assert not rows0 & {tuple(r) for r in host1["input_ids"]}


def test_the_head_comes_from_the_task(user):
    assert train.seqio_data_model("user_nli+mnli") == train.DataModel("classification", 3)
    assert train.seqio_data_model("mnli.en") == train.DataModel("classification", 3)
    with pytest.raises(ValueError, match=r"seqio user_nli: cannot tell its number of labels "
                                         r"\(classification\).*--gin.NUM_LABELS=N"):
        train.seqio_data_model("user_nli")
    assert train.seqio_data_model("user_nli", num_labels=3).num_labels == 3
    with pytest.raises(ValueError, match=r"NUM_LABELS=2 but its tasks have \[3\] labels"):
        train.seqio_data_model("user_nli+mnli", num_labels=2)
    with pytest.raises(ValueError, match=r"TASK_TYPE='qa' but its tasks are classification"):
        train.seqio_data_model("user_nli+mnli", kind="qa")


def test_a_mixed_kind_mixture_trains_one_head_per_group(user, tmp_path):
    """squad_v2 (qa) + mnli (classification) + the user's NLI: multi-head, (task, batch) pairs,
    the user's Task on a head of its own, two steps through train()."""
    S.register_mixture("intermediate.squad_v2.en", user["env"]["XSTILTS_DATA_DIR"],
                       user["module"].VOCABULARY, allow_samples=True)
    seqio.MixtureRegistry.remove("user_nli+squad+mnli")
    seqio.MixtureRegistry.add("user_nli+squad+mnli", [
        ("user_nli", 1.0), ("intermediate.squad_v2.en", 1.0), ("mnli.en", 1.0)],
        mixture_cls=S.MultiKindMixture)
    model = train.seqio_data_model("user_nli+squad+mnli", num_labels=3)
    assert model.heads == {"user_nli": ("classification", 3), "span_qa_v2": ("qa", 2),
                           "nli": ("classification", 3)}  # the project's head groups
    assert model.task_heads == {"user_nli": "user_nli", "squad_v2.en": "span_qa_v2",
                                "mnli.en": "nli"}
    with pytest.raises(ValueError, match="cannot tell its number of labels"):
        train.seqio_data_model("user_nli+squad+mnli")
    batches = _batches("user_nli+squad+mnli", length=64, num_labels=3)
    items = list(zip(range(6), batches(shard_index=0, num_shards=1, batch_size=8,
                                       start_batch=0), strict=False))
    assert {task for _, (task, _) in items} <= {"user_nli", "squad_v2.en", "mnli.en"}
    result = _train(tmp_path / "multi", batches, 2)
    assert [r["head"] for r in result.history] == [model.task_heads[t] for _, (t, _) in
                                                   items[:2]]
    assert all(np.isfinite(r["loss"]) for r in result.history)


def test_bad_names_modules_and_kinds_are_clear_errors(user, tmp_path):
    with pytest.raises(KeyError, match=r"MIXTURE_OR_TASK_NAME 'no.such' is neither a registered "
                                       r"seqio Task nor Mixture; set MIXTURE_OR_TASK_MODULE"):
        _batches("no.such").model()
    with pytest.raises(KeyError, match=r"'xnli.de'.*set VOCABULARY"):
        seqio.TaskRegistry.remove("xnli.de")
        _batches("xnli.de").model()
    with pytest.raises(ModuleNotFoundError, match=r"MIXTURE_OR_TASK_MODULE 'no_such_module'.*"
                                                  r"importable module"):
        _batches("user_nli", mixture_or_task_module="no_such_module").model()
    with pytest.raises(ValueError, match=r"set the gin macros \['MIXTURE_OR_TASK_NAME'\]"):
        import gin
        train.SeqioBatches(mixture_or_task_name=gin.REQUIRED, task_feature_lengths=32)
    # a user's Task whose features name no kind: TASK_TYPE says it
    seqio.TaskRegistry.remove("user_odd")
    features = dict(seqio.get_mixture_or_task("user_nli").output_features)
    features["idx"] = seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False, rank=0)
    seqio.TaskRegistry.add("user_odd", source=seqio.get_mixture_or_task("user_nli").source,
                           preprocessors=[], output_features=features)
    with pytest.raises(ValueError, match=r"match no encoder kind.*--gin.TASK_TYPE"):
        train.seqio_data_model("user_odd")
    assert train.seqio_data_model("user_odd", kind="classification", num_labels=3) == \
        train.DataModel("classification", 3)
    with pytest.raises(ValueError, match=r"TASK_TYPE 'nli': expected one of"):
        train.seqio_data_model("user_odd", kind="nli")


def _cached_examples(task_dir):
    import tensorflow as tf

    rows = []
    for path in sorted(task_dir.glob("train.tfrecord-*")):
        for record in tf.data.TFRecordDataset(str(path)):
            example = tf.train.Example.FromString(record.numpy())
            rows.append(tuple(tuple(example.features.feature[k].int64_list.value)
                              for k in ("inputs", "inputs_b", "targets")))
    return sorted(rows)


def test_offline_cache_then_a_train_run_reads_it(user, tmp_path):
    """The user's Task cached by xstilts.data.seqio_cache and, where apache-beam is installed, by
    Beam's cache_tasks_main (both caches must hold the same examples and stats); then the
    ``python -m xstilts.train`` entry (``train.main``, in-process) reads the cache with
    USE_CACHED_TASKS=True and --seqio_additional_cache_dirs."""
    import gin

    ours = tmp_path / "cache"
    assert seqio_cache.main(["--module_import=seqio_user_tasks", "--tasks=user_nli",
                             f"--output_cache_dir={ours}"]) == 0
    stats = json.loads((ours / "user_nli" / "stats.train.json").read_text())
    assert stats["examples"] == 60 and (ours / "user_nli" / "COMPLETED").exists()
    assert not list(tmp_path.glob("cache/*.tmp-*"))
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        print("apache-beam is not installed (it caps protobuf<7): Beam comparison skipped")
    else:
        beam = tmp_path / "beam_cache"
        _cli(["-m", "seqio.scripts.cache_tasks_main", "--module_import=seqio_user_tasks",
              "--tasks=user_nli", f"--output_cache_dir={beam}", "--min_shards=1"], user["env"])
        assert _cached_examples(beam / "user_nli") == _cached_examples(ours / "user_nli")
        assert json.loads((beam / "user_nli" / "stats.train.json").read_text()) == stats
        print("cache_tasks_main and seqio_cache hold the same", stats["examples"], "examples")
    model_dir = tmp_path / "run"
    gin.clear_config()
    try:  # USE_CACHED_TASKS=True: a task without a cache would be an error, not a fallback
        assert train.main([*TINY, f"--seqio_additional_cache_dirs={ours}",
                           "--gin.MIXTURE_OR_TASK_NAME='user_nli'", "--gin.NUM_LABELS=3",
                           "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}",
                           "--gin.USE_CACHED_TASKS=True", f"--gin.MODEL_DIR='{model_dir}'",
                           "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8",
                           "--gin.INIT_PRETRAINED_FROM=None"]) == 0
    finally:
        gin.clear_config()
    cached = _batches("user_nli", num_labels=3)  # USE_CACHED_TASKS None: the cache, found
    cached.model()
    assert cached.reads_cache and seqio.get_mixture_or_task("user_nli").cache_dir == \
        str(ours / "user_nli")
    first = next(cached(shard_index=0, num_shards=1, batch_size=60, start_batch=0))
    fresh = next(_batches("user_nli", num_labels=3, use_cached=False)(
        shard_index=0, num_shards=1, batch_size=60, start_batch=0))
    assert sorted(map(tuple, first["input_ids"])) == sorted(map(tuple, fresh["input_ids"]))
    losses = _losses(model_dir)
    print("cached user_nli losses:", losses)
    assert len(losses) == 4 and all(np.isfinite(losses))
    with pytest.raises(ValueError, match=r"USE_CACHED_TASKS=True but \['mnli.en'\] have no "
                                         r"offline cache"):
        _batches("user_nli+mnli", use_cached=True).model()


# ------------------------------------------------------------------ the experiment's phase 1


def _grid(tmp_path, mixture, **phase):
    from xstilts.experiment.grid import make_grid

    return make_grid(
        run_dir=str(tmp_path / "exp"), model_config=XLMRConfig.tiny(
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        intermediate={"baseline": None, "user": mixture}, targets=["xnli"],
        seqio_modules=["seqio_user_tasks"], intermediate_budget="epochs",
        intermediate_phase={"steps": 3, "batch_size": 8, "max_length": 24,
                            "learning_rate": 1e-3, **phase})


def test_the_grid_plans_and_runs_phase_1_on_a_seqio_name(user, tmp_path):
    from xstilts.experiment.runtime import Runtime

    plan, dry_run, intermediate = (importlib.import_module(f"xstilts.experiment.{m}")
                                   for m in ("plan", "dry_run", "intermediate"))

    grid = _grid(tmp_path, "user_nli+mnli")
    (job,) = plan.plan_intermediate(grid)
    assert (job.seqio, job.kind, job.num_labels, job.source, job.length) == \
        (True, "classification", 3, "user_nli+mnli", 24)
    assert dict(job.lengths) == {"mnli.en": 24, "user_nli": 24}
    assert plan.seqio_languages(grid, "user_nli+mnli") == ["en"]
    assert plan.seqio_targets(grid, "user_nli+mnli") == []  # mnli is not xnli's own data
    result = dry_run.dry_run(grid)
    assert any("user_nli+mnli: a seqio name" in n for n in result.notes)
    assert any("phase1 user" in info["used_by"] for info in result.steps.values())
    rt = Runtime.create(grid)
    intermediate.run_intermediate(rt, job)
    run = tmp_path / "exp" / job.model_dir
    budget = json.loads((run / "budget.json").read_text())
    assert (run / "DONE").exists() and budget["steps"] == 3 and budget["seqio"] is True
    assert len((run / "train_metrics.jsonl").read_text().splitlines()) == 3
    # a seqio name that no module registers: the error names both places looked in
    bad = _grid(tmp_path, "no_such_mixture")
    with pytest.raises(ValueError, match=r"'no_such_mixture': neither one of the registry's "
                                         r".*seqio_modules \['seqio_user_tasks'\]"):
        plan.plan_intermediate(bad)


def test_the_grid_plans_a_mixed_kind_seqio_mixture_one_head_per_group(user, tmp_path):
    plan = importlib.import_module("xstilts.experiment.plan")
    S.register_mixture("intermediate.squad_v2.en", user["env"]["XSTILTS_DATA_DIR"],
                       user["module"].VOCABULARY, allow_samples=True)
    seqio.MixtureRegistry.remove("squad+mnli")
    seqio.MixtureRegistry.add("squad+mnli", [("intermediate.squad_v2.en", 1.0),
                                             ("mnli.en", 1.0)], mixture_cls=S.MultiKindMixture)
    (job,) = plan.plan_intermediate(_grid(tmp_path, "squad+mnli", max_length=None))
    assert job.kind == "multitask" and job.length == 384  # squad_v2's length, the longest
    assert dict((h, (k, n)) for h, k, n in job.heads) == {"span_qa_v2": ("qa", 2),
                                                          "nli": ("classification", 3)}
    assert dict(job.task_heads) == {"squad_v2.en": "span_qa_v2", "mnli.en": "nli"}
