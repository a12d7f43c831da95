"""Multi-process agreement: the chief process, its decisions shared, and named barriers."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_chief() -> bool:
    """Whether this process writes the shared files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def agreed(flag: bool) -> bool:
    """The chief's ``flag`` on every process (skip/resume decisions must not diverge)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def barrier(name: str) -> None:
    """Wait until every process gets here (the chief's files are then visible to all)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"xstilts.experiment:{name}")
