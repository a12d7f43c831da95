"""Process start-up shared by the subprocess test workers (not a test module).

``start(spec)`` sets the number of fake CPU devices (keeping the parent's other XLA flags)
before JAX is imported, and joins ``jax.distributed`` when the spec has ``distributed``
({coordinator, num_processes, process_id, via}). ``via`` says how the worker learns them:

- ``"slurm"`` (the default): the environment an ``srun`` step sets (``SLURM_JOB_ID``,
  ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``, plus
  ``JAX_COORDINATOR_PORT``), and ``initialize_distributed()`` is called with no arguments: the
  automatic start through JAX's own cluster detection;
- ``"env"``: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, no arguments;
- ``"arguments"``: passed to ``initialize_distributed`` (what ``--coordinator_address``,
  ``--num_processes`` and ``--process_id`` do).
"""

from __future__ import annotations

import os
import re
from typing import Any


def distributed_env(d: dict[str, Any]) -> dict[str, str]:
    """The environment variables that make this worker find its peers by itself."""
    host, port = d["coordinator"].rsplit(":", 1)
    if d.get("via", "slurm") == "slurm":
        return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": host,
                "SLURM_NTASKS": str(d["num_processes"]), "SLURM_PROCID": str(d["process_id"]),
                "SLURM_LOCALID": str(d["process_id"]), "JAX_COORDINATOR_PORT": port}
    if d["via"] == "env":
        return {"JAX_COORDINATOR_ADDRESS": d["coordinator"],
                "JAX_NUM_PROCESSES": str(d["num_processes"]),
                "JAX_PROCESS_ID": str(d["process_id"])}
    return {}


def start(spec: dict[str, Any]) -> None:
    if "devices" in spec:
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = \
            f"{flags} --xla_force_host_platform_device_count={spec['devices']}"
    import jax

    from xstilts import partitioning

    if "distributed" in spec:
        d = spec["distributed"]
        os.environ.update(distributed_env(d))
        if d.get("via", "slurm") == "arguments":
            started = partitioning.initialize_distributed(
                coordinator_address=d["coordinator"], num_processes=d["num_processes"],
                process_id=d["process_id"])
        else:
            started = partitioning.initialize_distributed()
        assert started
        assert jax.process_count() == d["num_processes"]
