"""The grid driver on a tiny grid (tidy table, resume after a kill, skipping finished cells) and
the paper-scale dry run (every Task, Mixture and train step of xstilts_large*.gin)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from xstilts import experiment, gin_utils, partitioning
from xstilts import train as train_lib
from xstilts.data import tasks
from xstilts.data.synthetic import SyntheticWorld
from xstilts.evals import metrics, xtreme_score
from xstilts.models.xlmr import XLMRConfig

LANGS = ("en", "xa", "xb", "xc", "xd")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    SyntheticWorld(seed=0).write_files(root / "synthetic",
                                       sizes={"train": 48, "dev": 16, "test": 16})
    return root


@pytest.fixture(scope="module")
def one_device():
    """One CPU device (compiles and checkpoints are cheaper than on 8) and a persistent
    compilation cache shared by the runs of this module, restored afterwards."""
    before = jax.config.jax_compilation_cache_dir
    experiment.enable_compilation_cache(Path(
        tempfile.mkdtemp(prefix="xstilts-jax-cache-")))
    yield partitioning.Partitioner(partitioning.create_mesh(devices=jax.devices()[:1]))
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()


def _grid(run_dir, data_dir, **overrides):
    settings = dict(
        run_dir=str(run_dir), data_dir=str(data_dir),
        model_config=XLMRConfig.tiny(num_hidden_layers=1, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0),
        intermediate={"baseline": None},
        targets=["synthetic.paraphrase"], retrieval=["synthetic.parallel", "synthetic.bucc"],
        seeds=[0],
        english_config=None, spm_vocab_size=300, pretrain_mixture="synthetic.mlm",
        pretrain={"steps": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32},
        intermediate_phase={"steps": 2, "batch_size": 8, "learning_rate": 1e-3,
                            "max_length": 48},
        finetune={"steps": 4, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48,
                  "eval_every_steps": 2, "save_every_steps": 2},
        tiers={"en": "high", "xa": "medium", "xb": "medium", "xc": "low", "xd": "low"},
        compilation_cache=False)
    settings.update(overrides)
    return experiment.make_grid(**settings)


KILLED_CELL = "phase2/baseline/synthetic.paraphrase.en/seed0"


def _steps_logged(cell_dir):
    lines = (cell_dir / "train_metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.mark.slow
def test_grid_table_resume_and_skip(tmp_path, data_dir, monkeypatch, one_device):
    run = tmp_path / "run"
    real_train = train_lib.train

    def killed_in_phase2(**kwargs):
        if kwargs["model_dir"].endswith(KILLED_CELL):
            real_train(**kwargs, stop_at_step=2)  # checkpoint at step 2, then "kill -9"
            raise KeyboardInterrupt
        return real_train(**kwargs)

    monkeypatch.setattr(train_lib, "train", killed_in_phase2)
    with pytest.raises(KeyboardInterrupt):
        experiment.Experiment(_grid(run, data_dir), one_device).run()
    assert not (run / KILLED_CELL / "results.jsonl").exists()
    assert not (run / "results.jsonl").exists()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(run, snapshot)

    # Rerun: finished cells are read back, the killed one resumes at step 3.
    monkeypatch.setattr(train_lib, "train", real_train)
    rows = experiment.Experiment(_grid(run, data_dir), one_device).run()
    assert _steps_logged(run / KILLED_CELL) == [1, 2, 3, 4]

    # The tidy table: one row per (config, task, language, metric, seed), CSV = JSONL.
    assert experiment.read_rows(run / "results.jsonl") == rows
    with open(run / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == experiment.FIELDS and len(table) == len(rows)
    keys = {(r["config"], r["task"], r["language"], r["split"], r["metric"], r["seed"])
            for r in rows}
    assert len(keys) == len(rows)
    for config, splits in (("baseline", {"dev", "test"}), ("chance", {"test"})):
        for split in splits:
            got = {r["language"] for r in rows if r["config"] == config and r["split"] == split
                   and r["task"] == "synthetic.paraphrase" and r["metric"] == "accuracy"}
            assert got == set(LANGS), (config, split)
        for name, metric in (("synthetic.parallel", "accuracy"), ("synthetic.bucc", "f1")):
            got = {r["language"] for r in rows if r["config"] == config
                   and r["task"] == name and r["metric"] == metric}
            assert got == set(LANGS) - {"en"}, (config, name)
    for r in rows:
        assert 0.0 <= r["value"] <= 100.0
        if r["config"] == "chance" and r["task"] == "synthetic.parallel":
            assert r["value"] == pytest.approx(100 / 16)  # 1 / N sentences
        if r["config"] == "chance" and r["task"] == "synthetic.paraphrase":
            assert r["value"] == pytest.approx(50.0)  # labels alternate 1, 0 (synthetic.py)
    killed = [r for r in rows if r["config"] == "baseline" and r["task"] == "synthetic.paraphrase"]
    assert {r["step"] for r in killed} <= {2, 4}  # keep-best on English dev picks one of them
    meta = json.loads((run / "experiment.json").read_text())
    assert meta["task_metric"] == {"synthetic.paraphrase": "accuracy",
                                   "synthetic.parallel": "accuracy", "synthetic.bucc": "bucc_f1"}
    assert meta["primary_metric"]["synthetic.bucc"] == "f1"
    assert meta["seen_languages"] == {"baseline": []} and meta["use_pooler"] is True
    assert meta["retrieval_length"]["synthetic.bucc"] == min(
        tasks.tasks_for("synthetic.parallel")[0].max_length, 256)  # tiny: 258 positions
    # Provenance: every file read, with its hash, counts and drops (data_manifest.json).
    records = json.loads((run / "data_manifest.json").read_text())["records"]
    read = {(r["task"], r["split"]) for r in records}
    assert {("synthetic.paraphrase.en", "train"), ("synthetic.paraphrase.en", "dev"),
            ("synthetic.paraphrase.xd", "test"), ("synthetic.mlm.xa", "train")} <= read
    train = next(r for r in records if (r["task"], r["split"]) == ("synthetic.paraphrase.en",
                                                                    "train"))
    (file,) = train["files"]
    assert file["sha256"] == hashlib.sha256((data_dir / file["path"]).read_bytes()).hexdigest()
    assert (train["examples"], train["dropped"]) == (48, {})
    assert (run / KILLED_CELL / "data_manifest.json").is_file()
    # The cell records its selection and per-example statistics that give back every score.
    selection = json.loads((run / KILLED_CELL / "selection.json").read_text())
    assert selection["metric"] == "accuracy" and selection["key"] == "eval/accuracy"
    assert selection["best_step"] == killed[0]["step"]
    with np.load(run / KILLED_CELL / "example_stats.npz") as stats:
        assert len(stats.files) == 2 * len(LANGS)
        for r in killed:
            key = f"synthetic.paraphrase|{r['language']}|{r['split']}"
            assert stats[key].shape == (16, 1)
            assert metrics.reduce_stats("accuracy", stats[key])["accuracy"] == \
                pytest.approx(r["value"], abs=1e-9)

    # The same cell run without interruption gives the same numbers.
    shutil.rmtree(snapshot / KILLED_CELL)
    fresh = experiment.Experiment(_grid(snapshot, data_dir), one_device).run()
    assert _steps_logged(snapshot / KILLED_CELL) == [1, 2, 3, 4]
    assert fresh == rows

    # A third run trains nothing: every cell is finished.
    def must_not_train(**kwargs):
        raise AssertionError(f"trained {kwargs['model_dir']} again")

    monkeypatch.setattr(train_lib, "train", must_not_train)
    assert experiment.Experiment(_grid(run, data_dir), one_device).run() == rows


def test_grid_validation_errors(tmp_path, data_dir):
    with pytest.raises(ValueError, match="exactly one config must have mixture None"):
        _grid(tmp_path, data_dir, intermediate={"a": "synthetic.intermediate.nli.en"})
    with pytest.raises(ValueError, match="exactly one config must have mixture None"):
        _grid(tmp_path, data_dir, intermediate={"a": None, "b": None})
    with pytest.raises(KeyError, match="unknown mixture"):
        _grid(tmp_path, data_dir, intermediate={"baseline": None, "x": "no.such.mixture"})
    with pytest.raises(ValueError, match="unknown keys \\['stepz'\\]"):
        _grid(tmp_path, data_dir, finetune={"stepz": 3})
    with pytest.raises(ValueError, match="target 'nope'"):
        _grid(tmp_path, data_dir, targets=["nope"])
    assert experiment.mixture_kind("intermediate.all9.en") is None  # multi-head (test_multitask)


def test_bucc_like_split_has_unpaired_sources():
    parallel = {"source": [(i, f"s{i}") for i in range(40)],
                "target": [(i, f"t{i}") for i in range(40)]}
    sets = experiment.bucc_like(parallel, [f"pool{i}" for i in range(100)])
    for split in ("dev", "test"):
        part = sets[split]
        assert len(part["source"]) == 20 and len(part["target"]) == 20
        source, target = dict(part["source"]), dict(part["target"])
        assert 0 < len(part["gold"]) < 20
        for s, t in part["gold"]:  # gold pairs are translations of each other
            assert source[s][1:] == target[t][1:]


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _parse(path: str) -> None:
    gin_utils.parse_gin([path], ["from xstilts import experiment", "SCAN_LAYERS = True"])


def test_paper_scale_dry_run(clean_gin):
    """xstilts_large.gin and its multilingual counterpart: every Task and Mixture is built and
    each distinct train step of XLM-R Large is lowered on the 8 fake CPU devices (layers
    scanned to keep tracing short; the step is the same computation)."""
    lowered: dict = {}
    _parse("experiments/xstilts_large.gin")
    result = gin_utils.configured(experiment.run_experiment)(dry_run=True, lowered=lowered)
    for target in ("xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa"):
        for lang in xtreme_score.TASK2LANGS[target]:
            assert f"{target}.{lang}" in result.tasks
    for target in ("bucc2018", "tatoeba"):
        assert {f"{target}.{lang}" for lang in xtreme_score.TASK2LANGS[target]} <= \
            set(result.tasks)
    assert set(result.mixtures) == {f"intermediate.{t}.en" for t in tasks.INTERMEDIATE_TASKS} \
        | {"intermediate.all9.en", "intermediate.all9.en+mlm"}
    shapes = {(s.kind, s.num_labels, s.batch_size, s.length, s.num_choices): info
              for s, info in result.steps.items() if not s.heads}
    assert set(shapes) == {
        ("classification", 3, 32, 256, 1), ("classification", 2, 32, 256, 1),
        ("qa", 2, 32, 384, 1), ("qa", 2, 16, 384, 1), ("multiple_choice", 2, 32, 256, 4),
        ("multiple_choice", 2, 32, 256, 5), ("tagging", 17, 32, 256, 1),
        ("tagging", 7, 32, 256, 1), ("tagging", 2, 32, 256, 1)}
    # Hugging Face's XLMRobertaModel (large, with pooler) has 559,890,432 parameters; the
    # classification head adds dense 1024x1024 + bias and out_proj 1024x3 + bias.
    assert shapes["classification", 3, 32, 256, 1]["params"] == \
        559_890_432 + 1024 * 1024 + 1024 + 1024 * 3 + 3
    assert shapes["qa", 2, 16, 384, 1]["used_by"] == {"phase2 xquad", "phase2 mlqa",
                                                      "phase2 tydiqa"}
    assert all(info["loss_shape"] == () for info in result.steps.values())
    assert any("ccg.en" in note for note in result.notes)
    # The recipe each phase-2 cell runs (the paper's, from xstilts.benchmark), as printed.
    recipes = {line.split(":")[0]: line for line in result.recipes}
    assert recipes["phase2 mnli.en -> xnli"].split(": ", 1)[1].startswith(
        "2 epochs, batch 32, length 256, lr 1e-05, select on English dev by accuracy")
    assert "5 epochs, batch 32" in recipes["phase2 pawsx.en -> pawsx"]
    assert "10 epochs" in recipes["phase2 udpos.en -> udpos"]
    assert "by f1_seqeval" in recipes["phase2 panx.en -> panx"]
    assert recipes["phase2 squad_v1.en -> xquad, mlqa"].split(": ", 1)[1].startswith(
        "2 epochs, batch 16, length 384, lr 1e-05, select on English dev by squad_em_f1")
    assert not any("DEVIATES" in line for line in result.recipes)
    assert "recipe: phase2 mnli.en -> xnli: 2 epochs" in result.summary()
    # all9: one multi-task state, one lowered step per head (MNLI and ANLI+ share the NLI head);
    # +mlm adds the tied MLM head: dense 1024x1024 + bias, LayerNorm, output bias 250,002.
    multi_head = {}
    for step, info in result.steps.items():
        if step.heads:
            (config,) = info["used_by"]
            multi_head.setdefault(config, {})[step.head] = (step.kind, step.length, info["params"])
    all9 = {"nli", "qqp", "span_qa", "span_qa_v2", "hellaswag", "cosmosqa", "commonsenseqa",
            "ccg"}
    assert set(multi_head) == {"phase1 all9.en", "phase1 all9.en+mlm"}
    assert set(multi_head["phase1 all9.en"]) == all9
    assert set(multi_head["phase1 all9.en+mlm"]) == all9 | {"mlm"}
    assert multi_head["phase1 all9.en"]["span_qa"][:2] == ("qa", 384)
    params = {config: {p for *_, p in heads.values()} for config, heads in multi_head.items()}
    assert len(params["phase1 all9.en"]) == len(params["phase1 all9.en+mlm"]) == 1
    assert params["phase1 all9.en+mlm"].pop() - params["phase1 all9.en"].pop() == \
        1024 * 1024 + 1024 + 2 * 1024 + 250_002

    gin.clear_config()
    _parse("experiments/xstilts_large_multilingual.gin")
    multi = gin_utils.configured(experiment.run_experiment)(dry_run=True, lowered=lowered)
    assert "intermediate.mnli.multilingual" in multi.mixtures
    assert "intermediate.all9.multilingual" in multi.mixtures
    rates = multi.mixtures["intermediate.mnli.multilingual"]
    assert set(rates) == {"mnli.en", *(f"mnli.{x}" for x in tasks.XNLI_TRANSLATE_TRAIN)}
    assert sum(rates.values()) == pytest.approx(1.0)
    assert "squad_v1.de" in multi.tasks and "tydiqa.sw" in multi.tasks  # tydiqa: a target
    assert "tydiqa.sw" not in multi.mixtures["intermediate.squad_v1.multilingual"]
    summary = multi.summary()
    # Equal steps per arm: each multilingual config trains for its English config's steps, and
    # all9.multilingual keeps all9.en's share per task family.
    assert ("recipe: phase1 intermediate.mnli.multilingual: the steps of 3 epochs of "
            "intermediate.mnli.en (equal-steps budget), batch 32") in summary
    assert ("recipe: phase1 intermediate.all9.multilingual: the steps of 3 epochs of "
            "intermediate.all9.en (equal-steps budget)") in summary
    assert "note: intermediate.all9.multilingual: each task family at its share in " \
           "intermediate.all9.en" in summary


def test_phase_length_buckets_reach_the_cells_batches(tmp_path, data_dir):
    """A phase's ``length_buckets`` / ``length_grouping`` cut the experiment's training batches
    (the FeatureBatcher the cell trains on), with the same rows as the unbucketed batches."""
    from xstilts.data.feature_converters import ShardInfo
    from xstilts.experiment.grid import Phase
    from xstilts.experiment.inputs import Inputs

    phase = Phase.of({"length_buckets": [16, 32, 48], "length_grouping": 4}, "finetune")
    assert phase.batching() == {"length_buckets": (16, 32, 48), "length_grouping": 4}
    grid = _grid(tmp_path / "run", data_dir, finetune={
        "steps": 4, "batch_size": 8, "max_length": 256, "length_buckets": "auto"})
    inputs = Inputs(grid)
    inputs.prepare_tokenizer()
    task = "synthetic.paraphrase.en"
    fixed = inputs.task_batcher(task, "train", 256, 0, True)(ShardInfo(0, 1), 8)
    cut = inputs.task_batcher(task, "train", 256, 0, True, **grid.finetune.batching())(
        ShardInfo(0, 1), 8)
    widths = set()
    for step in range(6):
        full, short = fixed.batch(step), cut.batch(step)
        width = short["input_ids"].shape[-1]
        widths.add(width)
        assert width in cut.buckets and width >= int(full["attention_mask"].sum(-1).max())
        np.testing.assert_array_equal(short["input_ids"], full["input_ids"][:, :width])
        np.testing.assert_array_equal(short["labels"], full["labels"])
    assert max(widths) < 256  # the synthetic rows are shorter: every batch is cut
