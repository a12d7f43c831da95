"""Subprocess worker for the kill -9 resume and two-process tests (not a test module).

    python tests/train_worker.py '<json spec>'

Spec keys: ``model_dir``, ``mesh`` ({data, fsdp, tensor}), ``total_steps``, ``stop_at`` (list of
``stop_at_step`` values, one ``train()`` call each: the later calls resume), ``save_every``,
``dropout``; optional ``block_checkpoint`` (a step whose Orbax finalisation blocks forever after
writing ``marker``: the parent then kills the process mid-write), ``distributed``
({coordinator, num_processes, process_id}) and ``result`` (process 0 writes the loss history and
the final parameters, gathered to numpy, there as ``.npz``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import worker_bootstrap  # this script's directory is on sys.path

spec = json.loads(sys.argv[1])
worker_bootstrap.start(spec)  # fake devices, jax.distributed

import jax  # noqa: E402
import numpy as np  # noqa: E402
from train_setup import run_train  # noqa: E402  (this script's directory is on sys.path)

if "block_checkpoint" in spec:
    from orbax.checkpoint._src.path import atomicity

    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def blocking_finalize(self):  # the data is written; only the rename is left
        if os.path.basename(str(self.get_final())) == str(spec["block_checkpoint"]):
            with open(spec["marker"], "w") as f:
                f.write(str(self._tmp_path))
            await asyncio.sleep(3600)
        return await original_finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = blocking_finalize

history = []
result = None
for stop in spec["stop_at"]:
    result = run_train(spec, stop_at_step=stop)
    history += result.history

if spec.get("result") and result is not None:
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(result.state.params, tiled=True)
    if jax.process_index() == 0:
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(spec["result"] + ".npz", **flat)
        with open(spec["result"] + ".json", "w") as f:
            json.dump({"history": history, "process_count": jax.process_count()}, f)
if "distributed" in spec:
    jax.distributed.shutdown()
