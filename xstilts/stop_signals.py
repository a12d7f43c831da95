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
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.in_loop:
            self.requested, self.signal_name = True, name  # for enter_loop, should this be lost
            raise StopRequested(name)
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s: saving a checkpoint and stopping%s", name,
                    " (press Ctrl-C again to stop without one)" if signum == signal.SIGINT
                    else "")
        self.requested = True

    def enter_loop(self) -> None:
        """From here a signal checkpoints and stops. A set-up signal whose ``StopRequested``
        was swallowed (Python runs a handler between any two bytecodes, also inside a finalizer
        or a callback whose exceptions are only printed) stops the run here instead."""
        if self.requested:
            raise StopRequested(self.signal_name)
        self.in_loop = True

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
