"""The protocol the grid runs: one recipe table (XNLI 2 epochs), deviations named, one pooler
rule, retrieval at the task's length, and no split scored without its gold."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import pytest
from test_experiment import _grid as grid_of_test_experiment
from test_experiment import data_dir  # noqa: F401  (fixture)

from xstilts import benchmark, experiment, partitioning, report, results
from xstilts import train as train_lib
from xstilts.checkpoints import LOCK_NAME, RunLock, RunLockedError
from xstilts.data import tasks
from xstilts.evals import metrics
from xstilts.experiment.driver import contaminated
from xstilts.experiment.dry_run import recipe_line
from xstilts.experiment.intermediate import run_intermediate
from xstilts.experiment.retrieval import retrieval_length
from xstilts.experiment.runtime import Runtime
from xstilts.experiment.scoring import MissingGoldError, check_gold
from xstilts.models.xlmr import XLMRConfig

TARGETS = ["xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa"]


def _grid(tmp_path, **overrides):
    settings = dict(run_dir=str(tmp_path), model_config=XLMRConfig.tiny(),
                    intermediate={"baseline": None, "mnli.en": "intermediate.mnli.en"},
                    targets=TARGETS, retrieval=["bucc2018", "tatoeba"], seeds=[0, 1, 2],
                    finetune={"eval_every_steps": 1000, "patience": 30})
    settings.update(overrides)
    return experiment.make_grid(**settings)


def test_phase2_jobs_take_the_paper_recipe_per_target(tmp_path):
    jobs = [j for j in experiment.plan(_grid(tmp_path)) if j.phase == "phase2"]
    assert len(jobs) == 2 * 3 * 6  # configs x seeds x English train tasks (xquad+mlqa share)
    by_source = {j.source: j for j in jobs}
    for target in TARGETS:
        job = by_source[benchmark.TRAIN_TASK[target]]
        assert target in job.targets
        assert (job.epochs, job.settings.batch_size, job.settings.max_length) == (
            benchmark.EPOCHS[target], benchmark.BATCH_SIZE[target], benchmark.MAX_LENGTH[target])
        # Selected on the English train task's dev by its metric: the target's primary number
        # (SQuAD's dev selects MLQA's cell with SQuAD's normalisation, as jiant does).
        assert job.selection == tasks.get_task(job.source).metric and job.deviations == ()
        assert metrics.primary(job.selection) == metrics.primary(benchmark.METRIC[target])
    assert by_source["mnli.en"].epochs == 2  # XNLI's 2, not MNLI's 3
    assert tasks.get_task("mnli.en").epochs == 3
    # Epochs become steps on the train split: 2 epochs of 392,702 MNLI examples at batch 32.
    assert by_source["mnli.en"].num_steps(392_702) == 24_544
    # Phase 1 runs once per seed (the comparison's variance), and phase 2 seed k starts from it.
    phase1 = [j for j in experiment.plan(_grid(tmp_path)) if j.phase == "phase1"]
    assert [j.seed for j in phase1] == [0, 1, 2]
    assert {j.init_from for j in jobs if j.config == "mnli.en" and j.seed == 1} == {
        "phase1/mnli.en/seed1/checkpoints"}


def test_a_deviation_from_the_recipe_is_named(tmp_path):
    grid = _grid(tmp_path, finetune_overrides={"xnli": {"epochs": 3}, "udpos.en":
                                               {"batch_size": 8}})
    jobs = {j.source: j for j in experiment.plan(grid) if j.phase == "phase2"}
    assert jobs["mnli.en"].deviations == ("epochs 3 instead of the paper's 2",)
    assert jobs["udpos.en"].deviations == ("batch_size 8 instead of the paper's 32",)
    line = recipe_line(jobs["mnli.en"])
    assert "3 epochs" in line and "DEVIATES from the paper: epochs 3 instead" in line
    with pytest.raises(ValueError, match="unknown keys"):
        experiment.plan(_grid(tmp_path, finetune_overrides={"xnli": {"epoch": 3}}))


def test_one_pooler_rule_and_retrieval_at_the_task_length(tmp_path):
    grid = _grid(tmp_path)
    assert grid.use_pooler  # jiant classifies from the pooled output
    rt = Runtime.create(grid, partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.devices()[:1])))
    assert rt.predictor.use_pooler
    assert tasks.tasks_for("bucc2018")[0].max_length == 512
    assert retrieval_length(rt, 512) == min(512, XLMRConfig.tiny().max_length) == 256
    rt.predictor.model_config = XLMRConfig.large()
    assert retrieval_length(rt, 512) == 512  # was 128, hard-coded


def test_eval_of_a_checkpoint_uses_the_pooler_it_was_trained_with(tmp_path):
    config = XLMRConfig.tiny(num_hidden_layers=1, vocab_size=64)
    kwargs = dict(model_config=config, batch_size=8, task_type="classification", num_labels=3,
                  train_batches=lambda **kw: train_lib.synthetic_batches(
                      **kw, vocab_size=64, length=16, num_labels=3))
    train_lib.train(model_dir=str(tmp_path), total_steps=1, use_pooler=False, progress=False,
                    **kwargs)
    evaluate = dict(model_dir=str(tmp_path), model_config=config, batch_size=8, num_labels=3,
                    eval_batches=lambda **kw: train_lib.synthetic_batches(
                        **kw, vocab_size=64, length=16, num_labels=3, num_batches=2))
    assert "accuracy" in train_lib.evaluate_checkpoint(**evaluate)  # None: the checkpoint's
    with pytest.raises(ValueError, match="trained with use_pooler=False"):
        train_lib.evaluate_checkpoint(**evaluate, use_pooler=True)


@pytest.mark.parametrize("kind,example", [
    ("classification", {"id": "3", "premise": "a", "hypothesis": "b", "label": None}),
    ("tagging", {"id": "3", "tokens": ["a"], "tags": []}),
    ("qa", {"id": "3", "context": "c", "question": "q", "answers": []}),
])
def test_a_split_without_gold_is_an_error_naming_it(kind, example):
    spec = {"classification": tasks.get_task("xnli.de"), "tagging": tasks.get_task("udpos.de"),
            "qa": tasks.get_task("xquad.de")}[kind]
    good = {"classification": {"label": spec.labels[0] if spec.labels else "x"},
            "tagging": {"tags": ["NOUN"]}, "qa": {"answers": [{"text": "c",
                                                               "answer_start": 0}]}}[kind]
    check_gold(spec, "test", [{**example, **good}])
    with pytest.raises(MissingGoldError, match=f"{spec.name} test.*id '3'.*no gold"):
        check_gold(spec, "test", [{**example, **good}, example])
    with pytest.raises(MissingGoldError, match="no examples"):
        check_gold(spec, "test", [])


def test_equal_steps_budget_pairs_each_multilingual_config_with_its_english_one(tmp_path):
    pairs = {"intermediate": {"baseline": None, "mnli.en": "intermediate.mnli.en",
                              "mnli.multilingual": "intermediate.mnli.multilingual"},
             "english_config": "mnli.en", "multilingual_config": "mnli.multilingual",
             "intermediate_phase": {"epochs": 3}}
    jobs = {j.config: j for j in experiment.plan(_grid(tmp_path, **pairs)) if j.phase == "phase1"}
    assert jobs["mnli.multilingual"].budget_source == "intermediate.mnli.en"
    assert jobs["mnli.multilingual"].equal_budget and not jobs["mnli.en"].equal_budget
    assert "the steps of 3 epochs of intermediate.mnli.en (equal-steps budget)" in recipe_line(
        jobs["mnli.multilingual"])
    epochs = {j.config: j for j in experiment.plan(_grid(
        tmp_path, **pairs, intermediate_budget="epochs")) if j.phase == "phase1"}
    assert epochs["mnli.multilingual"].budget_source == "intermediate.mnli.multilingual"
    with pytest.raises(ValueError, match="intermediate_budget 'tokens'"):
        _grid(tmp_path, **pairs, intermediate_budget="tokens")


def test_equal_steps_budget_trains_both_arms_for_the_same_steps(tmp_path, data_dir):  # noqa: F811
    grid = grid_of_test_experiment(
        tmp_path, data_dir, targets=["synthetic.paraphrase"], retrieval=[],
        intermediate={"baseline": None, "nli.en": "synthetic.intermediate.nli.en",
                      "nli.multilingual": "synthetic.intermediate.nli.multilingual"},
        english_config="nli.en", multilingual_config="nli.multilingual",
        intermediate_phase={"epochs": 0.5, "batch_size": 8, "learning_rate": 1e-3,
                            "max_length": 32, "save_every_steps": 100})
    rt = Runtime.create(grid, partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.devices()[:1])))
    rt.inputs.prepare_tokenizer()
    rt.fit_vocab()
    budgets = {}
    for job in (j for j in experiment.plan(grid) if j.phase == "phase1" and j.seed == 0):
        run_intermediate(rt, dataclasses.replace(job, init_from=None))
        budgets[job.config] = json.loads((tmp_path / job.model_dir / "budget.json").read_text())
    english, multi = budgets["nli.en"], budgets["nli.multilingual"]
    train = len(rt.inputs.features("synthetic.nli.en", "train", 32))
    assert english["steps"] == multi["steps"] == math.ceil(0.5 * train / 8)
    assert set(english["examples_per_language"]) == {"en"}
    assert sum(multi["examples_per_language"].values()) == multi["steps"] * 8
    assert len(multi["examples_per_language"]) > 1
    assert set(multi["tokens_per_language_estimate"]) == set(multi["examples_per_language"])
    assert 0 < english["tokens_per_language_estimate"]["en"] <= english["steps"] * 8 * 32
    md, csv_text = report.budget_section(list(budgets.values()))
    assert "| nli.multilingual | 1 | " in "\n".join(md) and csv_text.startswith("config,")


def test_target_training_data_in_a_mixture_is_marked_not_zero_shot(tmp_path):
    grid = _grid(tmp_path, intermediate={
        "baseline": None, "squad": "intermediate.squad_v1.multilingual",
        "squad_tydiqa": "intermediate.squad_v1.multilingual+tydiqa"})
    assert contaminated(grid) == {"squad_tydiqa": ["tydiqa"]}  # the default mixture is clean
    rows = [results.row(c, "tydiqa", lang, "test", "em_f1", v, s, 1)
            for c, v in (("baseline", 50.0), ("squad", 52.0), ("squad_tydiqa", 70.0))
            for lang in benchmark.TASK2LANGS["tydiqa"] for s in (0, 1)]
    meta = {"configs": ["baseline", "squad", "squad_tydiqa"], "baseline": "baseline",
            "targets": ["tydiqa"], "retrieval": [], "task_metric": {"tydiqa": "squad_em_f1"},
            "not_zero_shot": contaminated(grid)}
    text, _, _ = report.build_report(rows, meta, resamples=10)
    table = text.split("## XTREME-style table (zero-shot test")[1]
    assert "| squad_tydiqa | 70.0 ± 0.0† |" in table and "| squad | 52.0 ± 0.0 |" in table
    assert "† not zero-shot: the config's intermediate mixture trains on that target's own " \
           "data (squad_tydiqa: tydiqa)" in table


def test_missing_gold_names_the_file(tmp_path):
    spec = tasks.get_task("xnli.de")
    path = tmp_path / spec.splits["test"][0].split("|")[0]
    path.parent.mkdir(parents=True)
    path.write_text("a\tb\t\n")
    examples = [{"id": "0", "label": None}]
    with pytest.raises(MissingGoldError, match=f"xnli.de test \\({path}\\): example 0"):
        check_gold(spec, "test", examples, str(tmp_path))


def test_a_second_driver_into_a_run_directory_stops_at_once(tmp_path):
    """A live driver holds RUN_DIR/writer.lock: another one stops before any work, naming the
    holder; the lock of a killed driver on this host is stale and taken over."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = RunLock(run_dir).acquire()  # taken in this process, then handed to the sleeper
        record = json.loads((run_dir / LOCK_NAME).read_text())
        lock.release()
        run_dir.mkdir(exist_ok=True)
        (run_dir / LOCK_NAME).write_text(json.dumps({**record, "pid": holder.pid}))
        grid = _grid(run_dir, intermediate={"baseline": None}, targets=["xnli"], seeds=[0])
        with pytest.raises(RunLockedError, match=rf"is in use: .*{LOCK_NAME} is held by pid "
                                                 rf"{holder.pid}"):
            experiment.Experiment(grid).run()
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, a new driver takes it (and releases it after)
    with RunLock(run_dir) as taken:
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    assert not (run_dir / LOCK_NAME).exists()
