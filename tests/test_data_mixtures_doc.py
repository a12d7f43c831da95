"""Executes the worked example of docs/mixtures.md (every ```python block, in order)."""

import re

from tests.conftest import REPO_ROOT


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_worked_example_runs(tmp_path, monkeypatch, shared_data):
    guide = (REPO_ROOT / "docs" / "mixtures.md").read_text()
    blocks = _python_blocks(guide)
    assert len(blocks) == 4  # the seqio block is tagged ```python seqio and skipped here
    monkeypatch.setenv("XSTILTS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XSTILTS_SPM", str(shared_data("spm/test_model.model")))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/mixtures.md", "exec"), namespace)
    assert namespace["rates"]["my_nli.en"] > 0
    assert (tmp_path / "synthetic/nli/train-xa.tsv").is_file()
