"""Process start-up shared by the subprocess test workers (not a test module).

``start(spec)`` sets the number of fake CPU devices (keeping the parent's other XLA flags)
before JAX is imported, and joins ``jax.distributed`` when the spec has ``distributed``
({coordinator, num_processes, process_id})."""

from __future__ import annotations

import os
import re
from typing import Any


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
        assert partitioning.initialize_distributed(coordinator_address=d["coordinator"],
                                                   num_processes=d["num_processes"],
                                                   process_id=d["process_id"])
        assert jax.process_count() == d["num_processes"]
