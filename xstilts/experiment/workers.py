"""One grid, any number of launches: each cell is claimed before it is computed.

Every driver claims a cell by creating ``<run_dir>/<cell>.claim`` (``CellClaim``: created only
if it does not exist, with the claimer's pid, host and command, the rule of
``checkpoints.RunLock``) and removes it when the cell is done or fails. A launch walks the cells
in dependency order and computes the first one that is unfinished, unclaimed and whose upstream
cell (the checkpoint it starts from, and the tokenizer) is finished; when none is, it waits for
the others and looks again, until every cell it was given is finished. So independent launches
that share a run directory (a SLURM array, a GKE JobSet, several TPU VMs, each an ordinary job)
split a grid between them: ``--worker`` launches take whatever is free (any number can join; one
that dies leaves a claim that a launch on the same host takes over, as a stale lock, and one
from another host names the file to delete), ``--cells i/N`` launches take every N-th cell.

On a URL (``gs://...``) creating a file only if it is absent is a check then a write (as for
``writer.lock``): two launches that claim one cell within the same instant could both compute it
(the same result, written twice). ``--cells i/N`` needs no claim to be atomic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence

from xstilts.checkpoints import RunLock, RunLockedError, run_path
from xstilts.experiment.cells import Cell
from xstilts.multihost import agreed, is_chief

log = logging.getLogger("xstilts.experiment")
WAIT_LOG_SECONDS = 60.0


class CellClaim(RunLock):
    """``<run_dir>/<cell>.claim``: one launch computes a cell at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = run_path(path)
        super().__init__(path.parent)
        self.path = path

    def try_acquire(self) -> bool:
        """Claim the cell; False if a live launch holds it (a dead one's is taken over)."""
        try:
            self.acquire()
        except RunLockedError as error:
            log.debug("%s", error)
            return False
        return True


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"cells {text!r}: expected i/N with 0 <= i < N (this launch computes "
                         f"every N-th cell, starting at the i-th)")
    return i, n


def mine(cells: Sequence[Cell], part: tuple[int, int] | None) -> list[Cell]:
    """The cells of launch ``i`` of ``N`` (every cell without ``part``)."""
    if part is None:
        return list(cells)
    i, n = part
    return [c for k, c in enumerate(cells) if k % n == i]


def claimed_cells(run_dir: os.PathLike[str], cells: Sequence[Cell], *,
                  done: Callable[[Cell], bool], ready: Callable[[Cell], bool],
                  poll_seconds: float) -> Iterator[Cell]:
    """Yield each of ``cells`` this launch claims, in order, while it holds the claim; wait
    for cells claimed elsewhere or waiting on their upstream until all of them are finished.
    Every process of a multi-host launch gets the chief's decisions."""
    pending = list(cells)
    last_log = time.monotonic()
    while pending:
        pending = [c for c in pending if not done(c)]
        for cell in pending:
            if not ready(cell):
                continue
            claim = CellClaim(os.path.join(os.fspath(run_dir), f"{cell.name}.claim"))
            if not agreed(claim.try_acquire() if is_chief() else False):
                continue
            try:
                if not done(cell):  # finished by another launch since we looked
                    yield cell
                    if not done(cell):
                        raise RuntimeError(f"cell {cell.name}: computed, but {cell.done} "
                                           f"was not written")
            finally:
                if is_chief():
                    claim.release()
            break  # look again from the first cell: an upstream may be free now
        else:
            if not pending:
                break
            if time.monotonic() - last_log > WAIT_LOG_SECONDS:
                log.info("waiting for %d cell(s) computed by other launches or waiting on "
                         "their upstream: %s", len(pending),
                         ", ".join(c.name for c in pending[:5]))
                last_log = time.monotonic()
            time.sleep(poll_seconds)
