"""Subprocess worker for the automatic distributed start (not a test module).

    python tests/distributed_worker.py '<json spec>'

Spec: ``devices`` (fake CPU devices in this process), ``distributed`` (see
``worker_bootstrap``), ``out`` (a JSON file this process writes). The worker joins the
distributed system, then checks that the processes agree: ``process_allgather`` of each
process's id, the chief's broadcast flag, a barrier, and a jitted global sum over a
``create_mesh`` mesh fed by each host's own rows (``data_layout`` + ``host_local_to_global``).
"""

from __future__ import annotations

import json
import logging
import sys

import worker_bootstrap  # this script's directory is on sys.path

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
spec = json.loads(sys.argv[1])
worker_bootstrap.start(spec)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from xstilts import multihost, partitioning  # noqa: E402

pid = jax.process_index()
gathered = multihost_utils.process_allgather(np.asarray([pid * 10 + 1], np.int32))
part = partitioning.Partitioner(partitioning.create_mesh(data=-1))
batch = 8
layout = part.data_layout(batch)
rows = layout.host_rows(np.arange(batch * 3, dtype=np.float32).reshape(batch, 3))
arrays = part.host_local_to_global({"x": rows}, batch)
total = jax.jit(jnp.sum, out_shardings=part.replicated)(arrays["x"])
agreed = multihost.agreed(pid == 0)
multihost.barrier("distributed_worker")
with open(spec["out"], "w") as f:
    json.dump({"process_index": pid, "process_count": jax.process_count(),
               "device_count": jax.device_count(),
               "local_device_count": jax.local_device_count(),
               "distributed": jax.distributed.is_initialized(),
               "allgather": np.asarray(gathered).ravel().tolist(),
               "shard_index": layout.shard_index, "num_shards": layout.num_shards,
               "rows": rows[:, 0].tolist(), "sum": float(total), "agreed": agreed,
               "mesh": dict(part.mesh.shape)}, f)
jax.distributed.shutdown()
