"""A ``gs://`` run directory stays a URL through the experiment, the report and the demo (no
network: only the paths are built, nothing is read or written)."""

from __future__ import annotations

import os

import pytest

from xstilts import experiment, partitioning, results
from xstilts.data.feature_converters import ShardInfo
from xstilts.experiment import cells, rundir
from xstilts.experiment.runtime import Runtime
from xstilts.models.xlmr import XLMRConfig


def _grid(run_dir: str, **extra):
    return experiment.make_grid(
        run_dir=run_dir, model_config=XLMRConfig.tiny(num_hidden_layers=1),
        intermediate={"baseline": None, "nli.en": "synthetic.intermediate.nli.en"},
        targets=["synthetic.paraphrase"], seeds=[0], pretrained="FacebookAI/xlm-roberta-base",
        **extra)


def test_url_run_dir_stays_a_url():
    rt = Runtime.create(_grid("gs://bucket/runs/x"), partitioning.Partitioner())
    assert os.fspath(rt.run_dir) == "gs://bucket/runs/x"
    assert rt.path("phase1/nli.en/seed0/checkpoints") == \
        "gs://bucket/runs/x/phase1/nli.en/seed0/checkpoints"
    assert os.fspath(rt.inputs.tokenizer_dir) == "gs://bucket/runs/x/tokenizer"
    # The feature cache is local-only: a URL run directory gets none, and each host then
    # featurizes every split itself (a host cannot read the others' parts).
    assert rundir.local_cache_dir(rt.run_dir) is None
    assert rt.inputs._featurize_shard() == ShardInfo(0, 1)
    assert os.fspath(results.location("gs://bucket/runs/x/results.jsonl")) == \
        "gs://bucket/runs/x/results.jsonl"
    tokenizer = Runtime.create(_grid("gs://b/r", tokenizer_dir="gs://b/spm"),
                               partitioning.Partitioner()).inputs.tokenizer_dir
    assert os.fspath(tokenizer) == "gs://b/spm"


def test_local_run_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rt = Runtime.create(_grid("run"), partitioning.Partitioner())
    assert os.fspath(rt.run_dir) == str(tmp_path / "run")
    assert os.fspath(rundir.local_cache_dir(rt.run_dir)) == str(tmp_path / "run" / "cache")
    assert os.fspath(results.location("run/results.jsonl")) == str(tmp_path / "run" /
                                                                   "results.jsonl")


def test_demo_url_run_dir_needs_a_local_data_dir(capsys):
    from xstilts import demo

    with pytest.raises(SystemExit, match="gs://bucket/demo is a URL; give --data_dir"):
        demo.main(["--run_dir", "gs://bucket/demo"])


def test_cells_parts():
    from xstilts.experiment import workers

    assert workers.parse_part("1/3") == (1, 3)
    for bad in ("3/3", "a/2", "2", "-1/2"):
        with pytest.raises(ValueError, match="expected i/N"):
            workers.parse_part(bad)
    named = [cells.Cell(str(k), "phase2", "d", "r", ()) for k in range(7)]
    parts = [[c.name for c in workers.mine(named, (i, 3))] for i in range(3)]
    assert parts == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    with pytest.raises(ValueError, match="cells '2/2'"):
        _grid("/tmp/x", cells="2/2")
