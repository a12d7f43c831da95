"""The grid's dry run compiled for a TPU slice with libtpu (deviceless), and the shapes that
cannot run: each a clear error before anything compiles."""

from __future__ import annotations

import json
import re
import textwrap

import gin
import pytest

from tests.conftest import require_libtpu
from xstilts import aot, experiment
from xstilts.experiment import compiled_steps
from xstilts.models.xlmr import XLMRConfig

TINY = XLMRConfig.tiny(num_hidden_layers=1)


def _grid(tmp_path, **overrides):
    """Phase 0 MLM, phase 1 a two-head mixture (classification + QA), phase 2 classification."""
    settings = dict(
        run_dir=str(tmp_path), data_dir=str(tmp_path), model_config=TINY,
        intermediate={"baseline": None, "all": "synthetic.intermediate.all.en"},
        targets=["synthetic.paraphrase"], seeds=[0], english_config=None,
        pretrain_mixture="synthetic.mlm", pretrain={"steps": 2, "batch_size": 8,
                                                    "max_length": 32},
        intermediate_phase={"steps": 2, "batch_size": 8, "max_length": 48},
        finetune={"steps": 2, "batch_size": 8, "max_length": 48},
        tiers={"en": "high", "xa": "medium", "xb": "medium", "xc": "low", "xd": "low"},
        compilation_cache=False)
    settings.update(overrides)
    return experiment.make_grid(**settings)


@pytest.fixture(autouse=True)
def _libtpu():
    require_libtpu("deviceless TPU compile")


def test_grid_dry_run_compiles_every_step_for_tpu_v5e_2x2(tmp_path):
    result = experiment.dry_run(_grid(tmp_path), topology="v5e:2x2")
    assert {(s.kind, s.head, s.batch_size, s.length) for s in result.steps} == {
        ("mlm", None, 8, 32),  # phase 0
        ("classification", "synthetic.nli", 8, 48), ("qa", "synthetic.qa", 8, 48),  # phase 1
        ("classification", None, 8, 48)}  # phase 2
    for info in result.steps.values():
        assert (info["topology"], info["chip"], info["hbm_gib"]) == ("v5e:2x2", "TPU v5e", 16)
        assert 0 < info["bytes_per_chip"] < 2**30 and info["fits"] is True
        assert info["hlo_flops_per_chip"] > 0 and info["bytes_accessed_per_chip"] > 0
    # The multi-task state holds both heads: more per chip than phase 2's one head.
    by_head = {(s.kind, s.head): i["bytes_per_chip"] for s, i in result.steps.items()}
    assert by_head["classification", "synthetic.nli"] > by_head["classification", None]
    assert result.unfit == []
    lines = result.summary().splitlines()
    assert lines[0].endswith("4 train steps compiled for TPU v5e:2x2")
    assert any(re.fullmatch(r"  mlm\(2\) batch 8 x 32: [\d,]+ params, loss \(\), \d+\.\d\d GiB "
                            r"per chip \(fits 16\), \d\.\d{3}e\+\d\d HLO FLOPs per chip, compiled "
                            r"in \d+ s; used by phase0 pretrain", x) for x in lines)
    assert lines[-1] == "every step fits the 16 GiB of HBM per TPU v5e chip"


def test_cli_exits_1_naming_the_steps_that_do_not_fit(tmp_path, monkeypatch, capsys):
    """A chip with 64 KiB of HBM (the real compile's figures, a made-up chip): exit 1."""
    monkeypatch.setitem(aot.TPU_CHIPS, "v5e", aot.ChipSpec("TPU v5e", 197e12, 819e9, 2**-14))
    gin_file = tmp_path / "tiny.gin"
    gin_file.write_text(textwrap.dedent(f"""\
        from __gin__ import dynamic_registration
        from xstilts import experiment
        from xstilts.models import xlmr
        experiment.run_experiment.run_dir = '{tmp_path}'
        experiment.run_experiment.model_config = @xlmr.XLMRConfig.preset()
        xlmr.XLMRConfig.preset.name = 'tiny'
        xlmr.XLMRConfig.preset.num_hidden_layers = 1
        experiment.run_experiment.intermediate = {{'baseline': None}}
        experiment.run_experiment.targets = ['synthetic.paraphrase']
        experiment.run_experiment.english_config = None
        experiment.run_experiment.finetune = {{'steps': 2, 'batch_size': 8, 'max_length': 48}}
        """))
    gin.clear_config()
    try:
        with pytest.raises(SystemExit, match="--compiled_steps needs --topology"):
            experiment.main([f"--gin_file={gin_file}", "--dry_run", "--compiled_steps", "x"])
        code = experiment.main([f"--gin_file={gin_file}", "--dry_run", "--topology", "v5e:2x2",
                                f"--compiled_steps={tmp_path / 'steps.jsonl'}"])
    finally:
        gin.clear_config()
    assert code == 1
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("does NOT fit the 6.10352e-05 GiB of HBM per TPU v5e chip: "
                    "classification(2) batch 8 x 48")


def test_a_step_the_tpu_compiler_refuses_for_hbm_is_recorded_as_not_fitting(tmp_path):
    """A one-layer model with a 2M-wide feed-forward layer at batch 64 x 256 (its activations
    alone ~33 GiB per chip): the TPU compiler itself stops with RESOURCE_EXHAUSTED. The dry
    run records the step as not fitting (with the temporaries the compiler asked for) instead
    of stopping, and the next run reads it from the record."""
    wide = TINY.replace(intermediate_size=2_000_000)
    grid = _grid(tmp_path, model_config=wide, pretrain=None, intermediate={"baseline": None},
                 finetune={"steps": 2, "batch_size": 64, "max_length": 256})
    record = tmp_path / "steps.jsonl"
    result = experiment.dry_run(grid, topology="v5e:2x2", compiled_steps=record)
    [(shape, info)] = result.steps.items()
    assert info["fits"] is False and info["bytes_per_chip"] > 16 * 2**30
    assert info["compile_error"].startswith("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    assert result.unfit == [shape]
    assert re.search(r"classification\(2\) batch 64 x 256: [\d,]+ params, loss \(\), does NOT fit "
                     r"16 GiB: the TPU compiler asked for \d+\.\d\d GiB of temporaries per chip",
                     result.summary())
    assert result.summary().splitlines()[-1] == (
        "does NOT fit the 16 GiB of HBM per TPU v5e chip: classification(2) batch 64 x 256")
    again = experiment.dry_run(grid, topology="v5e:2x2", compiled_steps=record)
    assert again.steps[shape]["recorded"] == str(record) and again.unfit == [shape]


# Bad shapes: errors naming the step, before anything compiles --------------------------------
def test_a_batch_the_slice_does_not_divide_is_an_error(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(aot, "compile_chip_figures", lambda *a, **k: compiled.append(a))
    with pytest.raises(ValueError, match=re.escape(
            "dry run: classification(2) batch 8 x 48, used by phase2 synthetic.paraphrase: global "
            "batch size 8 is not divisible by the 16 data shards of the mesh")):
        experiment.dry_run(_grid(tmp_path), topology="v5e:4x4")
    assert compiled == []  # checked before anything compiles
    # Only phase 0's batch does not divide: still named before any other step compiles.
    grid = _grid(tmp_path, pretrain={"steps": 2, "batch_size": 6, "max_length": 32})
    with pytest.raises(ValueError, match=re.escape(
            "dry run: mlm(2) batch 6 x 32, used by phase0 pretrain: global batch size 6 is not "
            "divisible by the 4 data shards")):
        experiment.dry_run(grid, topology="v5e:2x2")
    assert compiled == []


def test_a_length_past_the_positions_is_an_error(tmp_path):
    grid = _grid(tmp_path, pretrain=None, intermediate={"baseline": None},
                 finetune={"steps": 2, "batch_size": 8, "max_length": 300})
    with pytest.raises(ValueError, match=re.escape(
            "dry run: classification(2) batch 8 x 300, used by phase2 synthetic.paraphrase: "
            "input length 300 exceeds the model's 256 positions")):
        experiment.dry_run(grid, topology="v5e:2x2")


def test_a_mesh_that_does_not_match_the_topology_is_an_error(capsys):
    with pytest.raises(ValueError, match=re.escape(
            "topology v5e:2x2 has 4 chips (TPU v5e): mesh {'data': 1, 'fsdp': 8, 'tensor': 1} "
            "needs 8 devices but 4 are available")):
        aot.topology_mesh("v5e:2x2", {"fsdp": 8})
    assert aot.main(["--topology", "v5e:2x2", "--mesh", "fsdp=8", "--model", "tiny"]) == 2
    assert "topology v5e:2x2 has 4 chips" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"topology 'v5e:3x7': libtpu cannot describe it"):
        aot.topology_devices("v5e:3x7")


# A cut-short compile resumes from its record ----------------------------------------------------
def test_compiled_steps_record_lets_a_cut_short_dry_run_resume(tmp_path, monkeypatch, caplog):
    record = tmp_path / "compiled.jsonl"
    one_step = dict(pretrain=None, intermediate={"baseline": None})
    first = experiment.dry_run(_grid(tmp_path, **one_step), topology="v5e:2x2",
                               compiled_steps=record)
    [(shape, info)] = first.steps.items()
    [line] = record.read_text().splitlines()
    assert json.loads(line)["step"] == "classification(2) batch 8 x 48"
    assert "recorded" not in info

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled a step that was recorded")

    monkeypatch.setattr(aot, "compile_chip_figures", no_compile)
    again = experiment.dry_run(_grid(tmp_path, **one_step), topology="v5e:2x2",
                               compiled_steps=record)
    recorded = again.steps[shape]
    assert recorded["recorded"] == str(record)
    for key in ("bytes_per_chip", "hlo_flops_per_chip", "bytes_accessed_per_chip", "fits",
                "params", "loss_shape", "topology"):
        assert recorded[key] == info[key], key
    assert f"(recorded in {record})" in again.summary()

    # Another model is another lowered module, so another key: it compiles (here: refuses to).
    with pytest.raises(AssertionError, match="compiled a step that was recorded"):
        experiment.dry_run(_grid(tmp_path, model_config=TINY.replace(num_hidden_layers=2),
                                 **one_step), topology="v5e:2x2", compiled_steps=record)

    # A last line cut short by a kill is dropped with a warning (and the step recompiles) ...
    record.write_text(line + "\n" + line[:40])
    with caplog.at_level("WARNING"):
        assert len(compiled_steps.CompiledSteps(record)) == 1
    assert "dropping a record cut short" in caplog.text
    assert record.read_text() == line + "\n"
    # ... any other bad line is an error naming the file and line.
    record.write_text("not json\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{record}:1: not a compiled-step record")):
        compiled_steps.CompiledSteps(record)
