"""Multi-process helpers in one process: this process is the chief and agrees with itself."""

from __future__ import annotations

import jax

from xstilts import multihost


def test_one_process_is_the_chief_and_agrees_with_itself():
    assert jax.process_count() == 1
    assert multihost.is_chief()
    assert multihost.agreed(True) is True
    assert multihost.agreed(False) is False
    assert multihost.agreed(1) is True  # any truthy flag, returned as a bool


def test_barrier_returns_at_once_in_one_process():
    multihost.barrier("test")
