"""Device mesh, logical axis rules and shardings (t5x's ``partitioning.py``, in modern JAX).

One :class:`Partitioner` holds a ``(data, fsdp, tensor)`` mesh and the logical-axis rules that map
the model's logical names (``batch``, ``embed``, ``mlp``, ...) onto it. It turns logical
annotations into ``NamedSharding``s for parameters, optimizer state and batches, wraps
``jax.jit`` with in/out shardings and donation under ``jax.set_mesh`` plus the axis rules, and
turns each host's slice of a batch into a global array. The same code runs on one CPU, a GPU, a
TPU VM or a multi-host pod: mesh sizes come from gin, and ``-1`` fills the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# DESIGN.md defaults (t5x-like, with FSDP on the embed axis).
DEFAULT_RULES: LogicalRules = (
    ("batch", BATCH_MESH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@gin.configurable
def default_mesh_shape(backend: str | None = None) -> dict[str, int]:
    """Mesh sizes when none are given: data parallel on CPU, FSDP on accelerators.

    Never raises for an unknown chip (unlike t5x's TPU table): every backend gets a valid shape.
    """
    backend = backend or jax.default_backend()
    if backend in ("gpu", "cuda", "rocm", "tpu"):
        return {"data": 1, "fsdp": -1, "tensor": 1}
    return {"data": -1, "fsdp": 1, "tensor": 1}


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Sizes for ``MESH_AXES`` with one ``-1`` filled in; errors name the offending sizes."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} are unknown: expected a subset of {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: sizes must be >= 1 "
                         "or -1 (fill the rest)")
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: at most one axis "
                         "may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if fills:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: the fixed axes ({known} "
                f"devices) do not divide the {num_devices} available devices")
        sizes[fills[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {known} devices but "
            f"{num_devices} are available: the mesh must use all of them (use -1 to fill)")
    return tuple(sizes)  # type: ignore[return-value]


@gin.configurable
def create_mesh(*, data: int | None = None, fsdp: int | None = None, tensor: int | None = None,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over all devices (or ``devices``).

    Unset sizes take :func:`default_mesh_shape`. Devices are laid out process-major, so each
    host's devices form a contiguous block of the outer (data) axes and hold whole batch rows.
    """
    devices = list(devices) if devices is not None else jax.devices()
    given = {k: v for k, v in (("data", data), ("fsdp", fsdp), ("tensor", tensor))
             if v is not None}
    shape = default_mesh_shape(devices[0].platform) if not given else {
        "data": 1, "fsdp": 1, "tensor": 1}
    shape.update(given)
    sizes = resolve_mesh_shape(shape, len(devices))
    if devices[0].platform == "tpu" and len(devices) == jax.device_count():
        # Topology-aware order (torus neighbours on the inner axes).
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    else:
        grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def parse_mesh_flag(text: str) -> dict[str, int]:
    """``"data=2,fsdp=4"`` -> ``{"data": 2, "fsdp": 4}`` (missing axes are 1)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in MESH_AXES:
            raise ValueError(f"mesh {text!r}: expected comma-separated AXIS=SIZE with AXIS in "
                             f"{MESH_AXES}, got {part!r}")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(
                f"mesh {text!r}: size of {name!r} is not an integer: {value!r}") from None
    return out


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Which rows of the global batch this host feeds (t5x's ``DataLayout``)."""

    global_batch_size: int
    shard_index: int
    num_shards: int

    @property
    def per_host_batch_size(self) -> int:
        return self.global_batch_size // self.num_shards

    def host_rows(self, global_rows: np.ndarray) -> np.ndarray:
        """This host's slice of a full global array (tests and synthetic data)."""
        n = self.per_host_batch_size
        return global_rows[self.shard_index * n:(self.shard_index + 1) * n]


@gin.configurable
class Partitioner:
    """Mesh + logical axis rules; builds shardings and partitioned (jitted) functions."""

    def __init__(self, mesh: Mesh | None = None, *,
                 logical_axis_rules: Sequence[tuple[str, Any]] | None = None) -> None:
        self.mesh = mesh if mesh is not None else create_mesh()
        rules = DEFAULT_RULES if logical_axis_rules is None else logical_axis_rules
        self.rules: LogicalRules = tuple(
            (str(name), tuple(ax) if isinstance(ax, list) else ax) for name, ax in rules)
        for name, axes in self.rules:
            for a in (axes if isinstance(axes, tuple) else (axes,)):
                if a is not None and a not in self.mesh.axis_names:
                    raise ValueError(f"logical axis rule {name!r} -> {axes!r}: mesh axis {a!r} "
                                     f"is not one of {self.mesh.axis_names}")

    # Contexts -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """``jax.set_mesh`` and the logical axis rules (needed while tracing the model)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # Shardings ----------------------------------------------------------------------------
    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def logical_to_mesh(self, logical_specs: Any) -> Any:
        """A tree of logical ``PartitionSpec``s -> a tree of ``NamedSharding``s."""
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    def boxed_shardings(self, boxed_tree: Any) -> Any:
        """Shardings for a tree that may hold ``nn.LogicallyPartitioned`` boxes.

        Unboxed leaves (optimizer counters, RNG keys, unannotated params) are replicated.
        """
        specs = nn.get_partition_spec(boxed_tree)
        return jax.tree.map(
            lambda s: self.logical_to_mesh(s) if isinstance(s, P) else self.replicated,
            specs, is_leaf=lambda x: isinstance(x, P))

    @property
    def batch_axes(self) -> tuple[str, ...]:
        for name, axes in self.rules:
            if name == "batch":
                if axes is None:
                    return ()
                return axes if isinstance(axes, tuple) else (axes,)
        return ()

    def batch_spec(self, ndim: int) -> P:
        axes = self.batch_axes
        lead = axes if len(axes) != 1 else axes[0]
        return P(lead or None, *([None] * (ndim - 1)))

    def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
        return {k: self.sharding(self.batch_spec(np.ndim(v))) for k, v in batch.items()}

    @property
    def num_batch_shards(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self.batch_axes], dtype=int))

    def check_batch_size(self, batch_size: int, *, what: str = "global batch") -> None:
        if batch_size % self.num_batch_shards:
            raise ValueError(
                f"{what} size {batch_size} is not divisible by the {self.num_batch_shards} data "
                f"shards of the mesh {dict(self.mesh.shape)} (batch -> {self.batch_axes})")

    # Data layout (multi-host) -------------------------------------------------------------
    def data_layout(self, global_batch_size: int) -> DataLayout:
        """The contiguous block of batch rows this process feeds, and how many such blocks."""
        self.check_batch_size(global_batch_size)
        sharding = self.sharding(self.batch_spec(1))
        starts_by_process: dict[int, set[int]] = {}
        for device, index in sharding.devices_indices_map((global_batch_size,)).items():
            starts_by_process.setdefault(device.process_index, set()).add(
                index[0].start or 0)
        ranges = {p: (min(s), max(s)) for p, s in starts_by_process.items()}
        blocks = sorted(set(ranges.values()))
        mine = ranges[jax.process_index()]
        num_shards = len(blocks)
        return DataLayout(global_batch_size, blocks.index(mine), num_shards)

    def host_local_to_global(self, batch: Mapping[str, np.ndarray],
                             global_batch_size: int) -> dict[str, jax.Array]:
        """Each host's rows -> global arrays sharded on the batch axes."""
        out = {}
        for key, value in batch.items():
            value = np.asarray(value)
            shape = (global_batch_size, *value.shape[1:])
            out[key] = jax.make_array_from_process_local_data(
                self.sharding(self.batch_spec(value.ndim)), value, shape)
        return out

    # Partitioned functions ----------------------------------------------------------------
    def partition(self, fn: Callable[..., Any], *, in_shardings: Any, out_shardings: Any,
                  donate_argnums: tuple[int, ...] = (),
                  static_argnums: tuple[int, ...] = ()) -> PartitionedFn:
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                         donate_argnums=donate_argnums, static_argnums=static_argnums)
        return PartitionedFn(jitted, self)


class PartitionedFn:
    """A jitted function that runs (and traces) under the partitioner's mesh and rules."""

    def __init__(self, jitted: Any, partitioner: Partitioner) -> None:
        self._jitted = jitted
        self._partitioner = partitioner

    def __call__(self, *args: Any) -> Any:
        with self._partitioner.context():
            return self._jitted(*args)

    def lower(self, *args: Any) -> Any:
        with self._partitioner.context():
            return self._jitted.lower(*args)


@gin.configurable
def initialize_distributed(*, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> bool:
    """``jax.distributed.initialize`` when the run is multi-process; returns whether it did.

    Explicit arguments (gin or flags) win; otherwise ``XSTILTS_COORDINATOR``,
    ``XSTILTS_NUM_PROCESSES`` and ``XSTILTS_PROCESS_ID``; on a TPU pod or SLURM/Open MPI cluster
    ``jax.distributed.initialize()`` detects the rest by itself when ``XSTILTS_AUTO_DISTRIBUTED=1``.
    """
    coordinator_address = coordinator_address or os.environ.get("XSTILTS_COORDINATOR")
    if num_processes is None and "XSTILTS_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["XSTILTS_NUM_PROCESSES"])
    if process_id is None and "XSTILTS_PROCESS_ID" in os.environ:
        process_id = int(os.environ["XSTILTS_PROCESS_ID"])
    if coordinator_address and (num_processes or 1) > 1:
        if process_id is None:
            raise ValueError("multi-process run: process_id (or XSTILTS_PROCESS_ID) is required")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   local_device_ids=local_device_ids)
        log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
        return True
    if os.environ.get("XSTILTS_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
