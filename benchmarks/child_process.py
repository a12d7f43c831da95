"""Each system of a benchmark runs in its own process (a peer timed in the same process as JAX
is distorted: ../shared/reference/perf.md); shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

QUIET = {"USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_child(script: str, system: str, argv: Sequence[str], timeout: float,
              env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Run ``script --child SYSTEM ARGV...`` and return the JSON of its ``RESULT `` line, or
    None (printing why) when it times out or fails."""
    cmd = [sys.executable, os.path.abspath(script), "--child", system, *argv]
    env = dict(env) if env is not None else {**os.environ, **QUIET}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  {system}: timed out after {timeout:.0f} s")
        return None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {system}: failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-3:]}")
    return None
