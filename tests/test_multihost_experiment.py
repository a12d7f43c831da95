"""The experiment driver on two processes (``jax.distributed`` over gloo, one CPU device each)
against one process with two devices: the same global mesh (data=2), so the same grid must give
the same tidy table; only the chief writes the shared files; a rerun skips every cell. Two
independent worker launches sharing one run directory give the same table too.

The grid runs end to end from nothing: SentencePiece trained by the chief on the synthetic MLM
text, phase-0 MLM (masks are keyed on the global row, so two hosts mask exactly the tokens one
host masks), phase-1 intermediate training (synthetic NLI, English), retrieval from phase 1,
phase-2 fine-tuning of the baseline and of the intermediate encoder, zero-shot scores and the
report. Two steps per phase keep it inside the test budget.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

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
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = {"data_dir": str(data_dir), "from_scratch": True,
              "intermediate": {"nli.en": "synthetic.intermediate.nli.en"}}
    _run([{**common, "run_dir": str(single), "devices": 2, "out": str(tmp_path / "out1")},
          *_two_process_specs(multi, tmp_path / "out2", **common)])

    one = _load(tmp_path / "out1" / "process0.json")
    chief, other = (_load(tmp_path / "out2" / f"process{k}.json") for k in range(2))
    assert (one["process_count"], one["device_count"]) == (1, 2)
    assert (chief["process_count"], chief["device_count"]) == (2, 2)

    # Both runs trained the same tokenizer, and every phase saw the same global batches (MLM
    # masks included): the same losses up to float summation order.
    assert (multi / "tokenizer" / experiment.SPM_FILENAME).read_bytes() == \
        (single / "tokenizer" / experiment.SPM_FILENAME).read_bytes()
    for cell in ("phase0", "phase1/nli.en/seed0", "phase2/baseline/synthetic.paraphrase.en/seed0",
                 "phase2/nli.en/synthetic.paraphrase.en/seed0"):
        assert len(_losses(single, cell)) == 2, cell
        np.testing.assert_allclose(_losses(multi, cell), _losses(single, cell), rtol=1e-5,
                                   err_msg=cell)

    # Every process returns the same table; it is the one the chief wrote.
    assert chief["rows"] == other["rows"] == experiment.read_rows(multi / "results.jsonl")
    assert chief["report"] == other["report"]
    # The table equals the one-process run's: same rows (chance, retrieval of the phase-0 and
    # phase-1 encoders, zero-shot scores of both phase-2 cells in five languages), same values
    # and best steps.
    assert sorted(map(_key, chief["rows"])) == sorted(map(_key, one["rows"]))
    assert {r["config"] for r in one["rows"]} == {"chance", "baseline", "nli.en"}
    assert len(one["rows"]) >= 27  # 3 x (5 paraphrase + 4 parallel languages)
    expected = {_key(r): r["value"] for r in one["rows"]}
    for row in chief["rows"]:
        assert row["value"] == pytest.approx(expected[_key(row)], abs=1e-6), _key(row)
    assert (multi / "report" / "report.md").read_text() == \
        (single / "report" / "report.md").read_text()

    # Only the chief wrote the shared files (Orbax checkpoints coordinate their own writes).
    assert other["written"] == []
    assert {"experiment.json", "chance.jsonl", "results.jsonl", "results.csv",
            "phase1/baseline/seed0/retrieval.jsonl", "phase1/nli.en/seed0/retrieval.jsonl",
            "phase2/baseline/synthetic.paraphrase.en/seed0/results.jsonl",
            "phase2/nli.en/synthetic.paraphrase.en/seed0/results.jsonl",
            "report/report.md"} <= set(chief["written"])
    assert sorted(chief["written"]) == sorted(one["written"])
    assert not list(multi.rglob("*.tmp-*"))

    # Two independent launches with ``worker`` on one run directory (issue 16 item 6) split
    # the grid between them (each cell claimed once; a fine-tune waits for its phase-1
    # checkpoint) and give the one-process table.
    shared = tmp_path / "shared"
    _run([{**common, "run_dir": str(shared), "devices": 2, "out": str(tmp_path / f"w{k}"),
           "worker": True} for k in range(2)])
    workers = [_load(tmp_path / f"w{k}" / "process0.json") for k in range(2)]
    assert len(one["started"]) == 8  # tokenizer, chance, phase 0 and 1, 2 retrieval, 2 tunes
    a, b = (set(w["started"]) for w in workers)
    assert a and b and not a & b and a | b == set(one["started"])
    assert workers[0]["rows"] == workers[1]["rows"] == experiment.read_rows(
        shared / "results.jsonl")
    assert sorted(map(_key, workers[0]["rows"])) == sorted(map(_key, one["rows"]))
    for row in workers[0]["rows"]:
        assert row["value"] == pytest.approx(expected[_key(row)], abs=1e-6), _key(row)
    for cell in ("phase0", "phase1/nli.en/seed0", "phase2/nli.en/synthetic.paraphrase.en/seed0"):
        np.testing.assert_allclose(_losses(shared, cell), _losses(single, cell), rtol=1e-6,
                                   err_msg=cell)
    assert not list(shared.rglob("*.claim")) and not (shared / "writer.lock").exists()

    # A second two-process run agrees that every cell is finished and trains nothing.
    _run(_two_process_specs(multi, tmp_path / "out3", forbid_training=True, **common))
    again = _load(tmp_path / "out3" / "process1.json")
    assert again["rows"] == chief["rows"]

