"""The experiment driver on two processes (``jax.distributed`` over gloo, one CPU device each)
against one process with two devices: the same global mesh (data=2), so the same grid must give
the same tidy table; only the chief writes the shared files; a rerun skips every cell.

The grid starts from a tiny random Hugging Face checkpoint instead of phase-0 MLM: MLM masks are
drawn per host shard (``FeatureBatcher``: ``default_rng([seed, step, shard index, 7])``), so a
two-host phase 0 masks other tokens than a one-host one and equality could not hold there.
The grid is the baseline only (no phase 1) to fit the test budget: on 2 loaded CPU cores each
multi-process train call took ~30 s, a second cell with the same shapes as long as the first (its
compiles seemed not to be served from the persistent cache)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from xstilts import experiment
from xstilts.data.synthetic import SyntheticWorld

WORKER = os.path.join(os.path.dirname(__file__), "experiment_worker.py")


def _run(specs: list[dict], timeout: float = 300) -> None:
    procs = [subprocess.Popen([sys.executable, WORKER, json.dumps(s)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for s in specs]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _two_process_specs(run_dir, out, **extra) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [{"run_dir": str(run_dir), "devices": 1, "out": str(out),
             "distributed": {"coordinator": f"127.0.0.1:{port}", "num_processes": 2,
                             "process_id": pid}, **extra} for pid in range(2)]


def _tiny_checkpoint(tmp_path, data_dir):
    """A random one-layer XLM-R in Hugging Face format with a SentencePiece model trained on the
    synthetic MLM text beside it (the grid's ``pretrained`` and ``tokenizer_dir``)."""
    from xstilts.models.convert import save_hf_checkpoint
    from xstilts.models.heads import XLMRForMaskedLM
    from xstilts.models.xlmr import XLMRConfig

    tokenizer = experiment.Experiment(experiment.make_grid(
        run_dir=str(tmp_path / "tokenizer_run"), data_dir=str(data_dir),
        tokenizer_dir=str(tmp_path / "tokenizer"), model_config=XLMRConfig.tiny(),
        intermediate={"baseline": None}, targets=["synthetic.paraphrase"],
        spm_vocab_size=300, pretrain_mixture="synthetic.mlm"))
    tokenizer.prepare_tokenizer()
    config = XLMRConfig.tiny(num_hidden_layers=1, vocab_size=tokenizer.tokenizer.vocab_size)
    ids = np.array([[config.bos_token_id, 5, 6, config.eos_token_id]], np.int32)
    params = XLMRForMaskedLM(config).init(jax.random.key(0), ids, np.ones_like(ids))["params"]
    folder = Path(save_hf_checkpoint(config, params, tmp_path / "pretrained"))
    shutil.copy(tmp_path / "tokenizer" / experiment.SPM_FILENAME, folder)
    return folder


def _losses(run_dir, cell) -> list[float]:
    lines = (run_dir / cell / "train_metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _load(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in experiment.FIELDS if k != "value")


@pytest.mark.slow
def test_two_process_experiment_matches_one_process(tmp_path):
    data_dir = tmp_path / "world"
    SyntheticWorld(seed=0).write_files(data_dir / "synthetic",
                                       sizes={"train": 48, "dev": 16, "test": 16})
    pretrained = _tiny_checkpoint(tmp_path, data_dir)
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = {"data_dir": str(data_dir), "pretrained": str(pretrained),
              "vocab_size": json.loads((pretrained / "config.json").read_text())["vocab_size"]}
    _run([{**common, "run_dir": str(single), "devices": 2, "out": str(tmp_path / "out1")},
          *_two_process_specs(multi, tmp_path / "out2", **common)])

    one = _load(tmp_path / "out1" / "process0.json")
    chief, other = (_load(tmp_path / "out2" / f"process{k}.json") for k in range(2))
    assert (one["process_count"], one["device_count"]) == (1, 2)
    assert (chief["process_count"], chief["device_count"]) == (2, 2)

    # Training saw the same global batches: the same losses up to float summation order.
    cell = "phase2/baseline/synthetic.paraphrase.en/seed0"
    assert len(_losses(single, cell)) == 2
    np.testing.assert_allclose(_losses(multi, cell), _losses(single, cell), rtol=1e-5)

    # Every process returns the same table; it is the one the chief wrote.
    assert chief["rows"] == other["rows"] == experiment.read_rows(multi / "results.jsonl")
    assert chief["report"] == other["report"]
    # The table equals the one-process run's: same rows (chance, retrieval of the checkpoint,
    # zero-shot scores of the phase-2 cell in five languages), same values and best steps.
    assert sorted(map(_key, chief["rows"])) == sorted(map(_key, one["rows"]))
    assert {r["config"] for r in one["rows"]} == {"chance", "baseline"}
    assert len(one["rows"]) >= 18  # 2 x (5 paraphrase + 4 parallel languages)
    expected = {_key(r): r["value"] for r in one["rows"]}
    for row in chief["rows"]:
        assert row["value"] == pytest.approx(expected[_key(row)], abs=1e-6), _key(row)
    assert (multi / "report" / "report.md").read_text() == \
        (single / "report" / "report.md").read_text()

    # Only the chief wrote the shared files (Orbax checkpoints coordinate their own writes).
    assert other["written"] == []
    assert {"experiment.json", "chance.jsonl", "results.jsonl", "results.csv",
            "phase1/baseline/seed0/retrieval.jsonl",
            "phase2/baseline/synthetic.paraphrase.en/seed0/results.jsonl",
            "report/report.md"} <= set(chief["written"])
    assert sorted(chief["written"]) == sorted(one["written"])
    assert not list(multi.rglob("*.tmp-*"))

    # A second two-process run agrees that every cell is finished and trains nothing.
    _run(_two_process_specs(multi, tmp_path / "out3", forbid_training=True, **common))
    again = _load(tmp_path / "out3" / "process1.json")
    assert again["rows"] == chief["rows"]
