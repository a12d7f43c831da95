"""notebooks/colab_tpu.ipynb executed top to bottom on CPU with its tiny configuration (what CI
runs): ``TINY = True`` and a scratch ``WORK_DIR`` are injected after the parameter cell, as
papermill would; no network (the tiny path installs nothing and loads a local checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab_tpu.ipynb"
LANGS = {"en", "xa", "xb", "xc", "xd"}


def _output_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", ())
                   if o.get("output_type") == "stream")


def test_notebook_has_one_parameters_cell_first():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", ())]
    assert len(tagged) == 1
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert tagged[0] == code_cells[0]
    source = nb.cells[tagged[0]].source
    assert "TINY = False" in source and 'CHECKPOINT = "FacebookAI/xlm-roberta-large"' in source
    assert nb.metadata["accelerator"] == "TPU"
    # Every code cell is free of stored outputs (the notebook is committed clean).
    assert all(not nb.cells[i].get("outputs") for i in code_cells)


def test_notebook_runs_tiny_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", ()))
    work = tmp_path / "work"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"# Injected parameters\nTINY = True\nWORK_DIR = {str(work)!r}",
        metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    text = "\n".join(_output_text(c) for c in nb.cells if c.cell_type == "code")
    assert "TINY configuration" in text
    assert "backend cpu, 1 devices" in text
    # The demo ran its (minimal) grid and wrote the report.
    demo = work / "demo"
    assert (demo / "report" / "report.md").is_file()
    meta = json.loads((demo / "experiment.json").read_text())
    assert meta["configs"] == ["baseline", "nli.en", "nli.multilingual"]
    assert meta["seeds"] == [0] and meta["model"]["num_hidden_layers"] == 1
    demo_rows = [json.loads(line) for line in (demo / "results.jsonl").read_text().splitlines()]
    assert {r["language"] for r in demo_rows if r["task"] == "synthetic.paraphrase"} == LANGS

    # The tiny Hugging Face checkpoint was written and loaded through load_hf_checkpoint.
    saved = json.loads((work / "tiny-xlmr" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1
    assert (f"{work / 'tiny-xlmr'}: 1 layers, hidden {saved['hidden_size']}, "
            f"vocab {saved['vocab_size']}") in text

    # The fine-tune scored the target in every language; the printed table is the file's.
    rows = [json.loads(line)
            for line in (work / "finetune" / "results.jsonl").read_text().splitlines()]
    scores = {r["language"]: r["value"] for r in rows
              if r["config"] == "baseline" and r["metric"] == "accuracy"}
    assert set(scores) == LANGS
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    for language, value in scores.items():
        assert f"{language:>8} {value:6.1f}" in text
    assert f"mean over 5 languages: {sum(scores.values()) / 5:.1f}" in text
