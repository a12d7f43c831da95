"""A rerun with other settings (issue 18): every cell records its effective settings, a changed
setting stops the run before any work with the difference and the cells it affects, and
``on_change`` recomputes exactly those cells (``rerun``) or keeps them (``keep``, marked)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from xstilts import experiment, partitioning, report
from xstilts import train as train_lib
from xstilts.data.synthetic import SyntheticWorld
from xstilts.experiment import cells
from xstilts.models.xlmr import XLMRConfig

PHASE1 = "phase1/nli.en/seed0"
FT_BASE = "phase2/baseline/synthetic.paraphrase.en/seed0"
FT_NLI = "phase2/nli.en/synthetic.paraphrase.en/seed0"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    SyntheticWorld(seed=0).write_files(root / "synthetic",
                                       sizes={"train": 32, "dev": 8, "test": 8})
    return root


@pytest.fixture(scope="module")
def one_device():
    before = jax.config.jax_compilation_cache_dir
    experiment.enable_compilation_cache(Path(tempfile.mkdtemp(prefix="xstilts-jax-cache-")))
    yield partitioning.Partitioner(partitioning.create_mesh(devices=jax.devices()[:1]))
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()


def _grid(run_dir, data_dir, finetune_lr=1e-3, intermediate_lr=1e-3, **overrides):
    settings = dict(
        run_dir=str(run_dir), data_dir=str(data_dir),
        model_config=XLMRConfig.tiny(num_hidden_layers=1, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0),
        intermediate={"baseline": None, "nli.en": "synthetic.intermediate.nli.en"},
        targets=["synthetic.paraphrase"], retrieval=["synthetic.parallel"], seeds=[0],
        spm_vocab_size=300, pretrain_mixture="synthetic.mlm",
        pretrain={"steps": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32},
        intermediate_phase={"steps": 2, "batch_size": 8, "learning_rate": intermediate_lr,
                            "max_length": 32},
        finetune={"steps": 2, "batch_size": 8, "learning_rate": finetune_lr, "max_length": 32,
                  "eval_every_steps": 2, "save_every_steps": 2},
        tiers={"en": "high", "xa": "medium", "xb": "medium", "xc": "low", "xd": "low"},
        compilation_cache=False)
    settings.update(overrides)
    return experiment.make_grid(**settings)


@pytest.fixture
def trained(monkeypatch):
    """The model directories ``train.train`` is called for (their last path parts)."""
    calls: list[str] = []
    real = train_lib.train

    def recording(**kwargs):
        parts = Path(kwargs["model_dir"]).parts
        calls.append("/".join(parts[parts.index("run") + 1:]))
        return real(**kwargs)

    monkeypatch.setattr(train_lib, "train", recording)
    return calls


def _rows(run, config):
    return sorted((r["task"], r["language"], r["split"], r["metric"], r["value"])
                  for r in experiment.read_rows(run / "results.jsonl") if r["config"] == config)


@pytest.mark.slow
def test_changed_settings_stop_rerun_keep(tmp_path, data_dir, one_device, trained):
    run = tmp_path / "run"
    experiment.Experiment(_grid(run, data_dir), one_device).run()
    assert trained == ["phase0", PHASE1, FT_BASE, FT_NLI]
    record = json.loads((run / FT_BASE / cells.RECORD).read_text())
    assert record["settings"]["learning_rate"] == 1e-3
    assert record["settings"]["init"]["phase"] == "phase0"  # the checkpoint it started from
    assert record["fingerprint"] == cells.fingerprint(record["settings"])
    meta = json.loads((run / "experiment.json").read_text())
    assert meta["phase_settings"]["finetune"]["learning_rate"] == 1e-3
    assert {c["cell"] for c in meta["cells"]} >= {"tokenizer", "chance", "phase0", PHASE1,
                                                  FT_BASE, FT_NLI, f"{PHASE1}/retrieval"}
    before = {c: _rows(run, c) for c in ("baseline", "nli.en")}
    trained.clear()

    # Another fine-tuning learning rate: stops before any work, naming both phase-2 cells only.
    with pytest.raises(experiment.SettingsChanged) as stop:
        experiment.Experiment(_grid(run, data_dir, finetune_lr=2e-3), one_device).run()
    message = str(stop.value)
    assert "2 cell(s) computed with other settings" in message
    assert "learning_rate: 0.001 -> 0.002" in message
    assert FT_BASE in message and FT_NLI in message and PHASE1 + "," not in message
    assert trained == []

    # rerun: exactly the two fine-tuning cells train again; retrieval rows are untouched.
    rows = experiment.Experiment(_grid(run, data_dir, finetune_lr=2e-3, on_change="rerun"),
                                 one_device).run()
    assert sorted(trained) == [FT_BASE, FT_NLI]
    assert json.loads((run / FT_BASE / cells.RECORD).read_text())["settings"][
        "learning_rate"] == 2e-3
    after = {c: _rows(run, c) for c in ("baseline", "nli.en")}
    for config in after:
        retrieval = [r for r in after[config] if r[0] == "synthetic.parallel"]
        assert retrieval == [r for r in before[config] if r[0] == "synthetic.parallel"]
    for cell in (FT_BASE, FT_NLI):  # recomputed at the new rate
        first = json.loads((run / cell / "train_metrics.jsonl").read_text().splitlines()[0])
        assert first["learning_rate"] == pytest.approx(2e-3)
    trained.clear()

    # Another intermediate learning rate: its phase-1 cell and everything downstream of it
    # (retrieval and fine-tuning of nli.en), not the baseline's cells.
    with pytest.raises(experiment.SettingsChanged) as stop:
        experiment.Experiment(_grid(run, data_dir, 2e-3, intermediate_lr=5e-3),
                              one_device).run()
    message = str(stop.value)
    assert "3 cell(s)" in message and "learning_rate: 0.001 -> 0.005" in message
    assert "init.learning_rate: 0.001 -> 0.005" in message  # the fine-tune, via its init
    assert FT_NLI in message and FT_BASE not in message

    # keep: nothing trains, the kept cells are marked in experiment.json and the report.
    kept_grid = _grid(run, data_dir, 2e-3, intermediate_lr=5e-3, on_change="keep")
    assert experiment.Experiment(kept_grid, one_device).run() == rows
    assert trained == []
    meta = json.loads((run / "experiment.json").read_text())
    kept = {c["cell"]: c["kept"] for c in meta["cells"] if c["kept"]}
    assert set(kept) == {PHASE1, f"{PHASE1}/retrieval", FT_NLI}
    assert kept[PHASE1] == ["learning_rate: 0.001 -> 0.005"]
    phase1 = next(c for c in meta["cells"] if c["cell"] == PHASE1)
    assert phase1["settings"]["learning_rate"] == 1e-3  # what it was computed with
    text = report.write_report(run, resamples=10)
    assert "## Cell settings" in text and f"| {PHASE1} |" in text
    assert "kept: learning_rate: 0.001 -> 0.005" in text
    # Accepted once: the same settings again neither stop nor train.
    experiment.Experiment(_grid(run, data_dir, 2e-3, intermediate_lr=5e-3), one_device).run()
    assert trained == []


def test_settings_diff_and_message():
    old = {"learning_rate": 1e-3, "steps": 4, "init": {"learning_rate": 1e-3, "data": {}}}
    new = {"learning_rate": 1e-3, "steps": 8, "init": {"learning_rate": 2e-3, "data": {}},
           "max_steps": None}
    diff = cells.settings_diff(old, new)
    assert cells.diff_lines(diff) == ["init.learning_rate: 0.001 -> 0.002",
                                      "max_steps: <not set> -> null", "steps: 4 -> 8"]
    assert cells.settings_diff(new, dict(new)) == []
    assert cells.fingerprint(old) != cells.fingerprint(new)
    assert cells.fingerprint({"a": 1, "b": 2}) == cells.fingerprint({"b": 2, "a": 1})
    cell = cells.Cell("phase2/x/t/seed0", "phase2", "d", "r", ())
    text = cells.describe_changes(Path("/run"), [(cell, diff, True)])
    assert "1 phase2 cell(s): phase2/x/t/seed0" in text and "    steps: 4 -> 8" in text
    assert "--on_change=rerun" in text and "--on_change=keep" in text
    with pytest.raises(ValueError, match="on_change 'redo'"):
        _grid("/tmp/x", "/tmp/y", on_change="redo")
