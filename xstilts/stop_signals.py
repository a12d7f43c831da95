"""SIGTERM (preemption) and SIGINT (Ctrl-C) during ``train``: a checkpoint and a clean stop in the
loop, a clean return with a message before it (``StopRequest``)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
import numpy as np

log = logging.getLogger("xstilts.train")


class StopRequested(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """SIGTERM/SIGINT during ``train``'s set-up (before the first step): nothing to save."""


class StopRequest:
    """SIGTERM (TPU preemption) and SIGINT (Ctrl-C) for the whole ``train`` call.

    In the loop (``in_loop``) a signal sets ``requested``: the loop checkpoints and returns
    cleanly; a second SIGINT there raises ``KeyboardInterrupt`` (the user insists). Before the
    loop (data, model, restore) a signal raises ``StopRequested`` at once: ``train`` logs it and
    returns a preempted result without a step or a checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.in_loop:
            raise StopRequested(name)
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s: saving a checkpoint and stopping%s", name,
                    " (press Ctrl-C again to stop without one)" if signum == signal.SIGINT
                    else "")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def agreed(self) -> bool:
        """Whether any host was asked to stop (all hosts must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.any(flags))
