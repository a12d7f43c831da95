"""Gin plumbing: file search, shorthand flags, ``configured``, and no spurious ERROR lines."""

from __future__ import annotations

import logging

import gin
import pytest

from xstilts import gin_utils, train


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _errors(caplog: pytest.LogCaptureFixture, err: str) -> list[str]:
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return records + [line for line in err.splitlines() if "ERROR" in line]


def test_include_below_the_gin_dir_logs_no_error(tmp_path, caplog, capfd):
    """gin probes each search path for an include, starting with the cwd, and its package
    reader logs ``ERROR:root:Path not found`` before the package's ``gin/`` holds the file."""
    run = tmp_path / "run.gin"
    run.write_text("include 'models/xlmr_tiny.gin'\n")
    caplog.set_level(logging.INFO)
    gin_utils.parse_gin([str(run)], [])
    assert gin.query_parameter("%SCAN_LAYERS") is False
    probes = [r.getMessage() for r in caplog.records
              if r.getMessage() == "system_path_file_exists:models/xlmr_tiny.gin"]
    assert probes, "gin no longer probes the package reader: the log filter can go"
    assert _errors(caplog, capfd.readouterr().err) == []


def test_plain_gin_logs_the_probe_error(tmp_path, caplog):
    """The cause, without gin_utils' filter (if this fails, gin fixed it upstream)."""
    run = tmp_path / "run.gin"
    run.write_text("include 'models/xlmr_tiny.gin'\n")
    gin.add_config_file_search_path(gin_utils.gin_dir())
    gin.parse_config_file(str(run))
    assert "Path not found: models/xlmr_tiny.gin" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_paper_scale_experiment_file_parses_without_error(caplog, capfd):
    caplog.set_level(logging.INFO)
    gin_utils.parse_gin(["experiments/xstilts_large.gin"], ["from xstilts import experiment"])
    assert _errors(caplog, capfd.readouterr().err) == []


def test_include_found_nowhere_is_still_an_error(tmp_path):
    run = tmp_path / "run.gin"
    run.write_text("include 'models/nope.gin'\n")
    with pytest.raises(IOError, match=r"Unable to open file: models/nope.gin"):
        gin_utils.parse_gin([str(run)], [])
    assert not any(isinstance(f, gin_utils._IncludeProbeFilter)  # noqa: SLF001
                   for f in logging.getLogger().filters)


def test_gin_file_search_and_shorthand():
    with pytest.raises(FileNotFoundError, match=r"--gin_file runs/nope.gin: no such file"):
        gin_utils.parse_gin(["runs/nope.gin"], [])
    assert gin_utils.rewrite_gin_args(["--gin.MODEL_DIR='/x'", "--gin_file=a.gin"]) == [
        "--gin_bindings=MODEL_DIR = '/x'", "--gin_file=a.gin"]


def test_configured_returns_the_bound_function_or_the_plain_one():
    def plain(*, x: int = 1) -> int:
        return x

    assert gin_utils.configured(plain) is plain
    gin_utils.parse_gin(["models/xlmr_tiny.gin", "runs/finetune.gin"],
                        ["train_script.entry_point.action = 'evaluate'"])
    assert gin_utils.configured(train.entry_point) is not train.entry_point


def test_train_keeps_the_old_names():
    assert train.parse_gin is gin_utils.parse_gin
    assert train.rewrite_gin_args is gin_utils.rewrite_gin_args
