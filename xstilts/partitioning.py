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

log = logging.getLogger("xstilts.partitioning")  # also under python -m

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


def _granule_attr(devices: Sequence[Any]) -> str:
    """What a DCN granule is: a TPU slice (``slice_index``), else a process (GPU/CPU hosts)."""
    return "slice_index" if all(hasattr(d, "slice_index") for d in devices) else "process_index"


def num_slices(devices: Sequence[Any] | None = None) -> int:
    """How many TPU slices ``devices`` span (1 where devices have no ``slice_index``)."""
    devices = list(devices) if devices is not None else jax.devices()
    if _granule_attr(devices) != "slice_index":
        return 1
    return len({d.slice_index for d in devices})


def host_row_blocks(grid: np.ndarray) -> dict[int, tuple[int, int]]:
    """Each process's ``[start, stop)`` positions along the flattened batch axes (data, fsdp).

    Raises ``ValueError`` when a process's devices are not one contiguous run of positions: it
    could not then feed one contiguous block of batch rows (what :class:`DataLayout` assumes).
    """
    flat = grid.reshape(grid.shape[0] * grid.shape[1], -1)
    positions: dict[int, set[int]] = {}
    for pos, row in enumerate(flat):
        for device in row:
            positions.setdefault(device.process_index, set()).add(pos)
    blocks = {}
    for process, pos in sorted(positions.items()):
        start, stop = min(pos), max(pos) + 1
        if len(pos) != stop - start:
            raise ValueError(
                f"process {process} holds batch positions {sorted(pos)} of the (data, fsdp) "
                f"grid {grid.shape[:2]}: not one contiguous block, so its host cannot feed one "
                "contiguous slice of the batch (build the mesh with create_mesh)")
        blocks[process] = (start, stop)
    return blocks


def _slice_grid(sizes: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
    """One slice's (or host set's) devices as a ``sizes`` grid, each host a contiguous block.

    TPU: ``mesh_utils.create_device_mesh``'s torus-aware order when it keeps every host's devices
    on one contiguous run of batch positions; it often does not (a v5e 4x4 slice as fsdp=16
    interleaves the four hosts' chips along the ring, and fsdp=8 x data=2 has no assignment at
    all), and then the process-major order below is used. Elsewhere: process-major (devices
    sorted by process, then id), so each host holds whole batch rows.
    """
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        for kwargs in ({}, {"allow_split_physical_axes": True}):
            try:
                grid = mesh_utils.create_device_mesh(sizes, devices=devices, **kwargs)
            except (ValueError, NotImplementedError, AssertionError):
                continue
            try:
                host_row_blocks(grid)
            except ValueError:
                break
            return grid
        log.info("mesh %s: the torus order of mesh_utils.create_device_mesh would split hosts "
                 "along the batch; using process-major device order", sizes)
    return np.array(sorted(devices, key=lambda d: (d.process_index, d.id)),
                    dtype=object).reshape(sizes)


def _dcn_granules(devices: Sequence[Any], dcn_data: int) -> tuple[dict[int, list[Any]], str]:
    """Devices by DCN granule; errors unless there are exactly ``dcn_data`` equal granules."""
    attr = _granule_attr(devices)
    granules: dict[int, list[Any]] = {}
    for d in devices:
        granules.setdefault(getattr(d, attr), []).append(d)
    what = "slices" if attr == "slice_index" else "processes (devices have no slice_index)"
    if dcn_data < 1:
        raise ValueError(f"dcn_data={dcn_data}: must be >= 1")
    if len(granules) % dcn_data:
        raise ValueError(f"dcn_data={dcn_data} does not divide the {len(granules)} {what}")
    if len(granules) != dcn_data:
        raise ValueError(f"dcn_data={dcn_data}: the devices span {len(granules)} {what}; only "
                         "the data axis crosses DCN, so dcn_data must equal that number")
    counts = {k: len(v) for k, v in granules.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"dcn_data={dcn_data}: the {what} hold unequal device counts {counts}")
    return granules, attr


def device_grid(sizes: Sequence[int], devices: Sequence[Any], *,
                dcn_data: int = 1) -> np.ndarray:
    """Devices arranged as a ``(data, fsdp, tensor)`` grid of ``sizes`` (total sizes).

    ``dcn_data > 1``: the data axis spans that many granules of the data-centre network (TPU
    slices by ``slice_index``, else processes), maxtext's ``dcn_data_parallelism``:
    ``mesh_utils.create_hybrid_device_mesh`` with ICI shape ``(data // dcn_data, fsdp, tensor)``
    and DCN shape ``(dcn_data, 1, 1)``, so ``data`` index ``i`` lies on granule
    ``i // (data // dcn_data)`` and only the data-parallel gradient reduction crosses DCN.
    Every process holds one contiguous block of batch positions (see :func:`host_row_blocks`).
    """
    sizes = tuple(int(s) for s in sizes)
    devices = list(devices)
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
                         f"{int(np.prod(sizes))} devices but {len(devices)} were given")
    if dcn_data < 1:
        raise ValueError(f"dcn_data={dcn_data}: must be >= 1")
    if dcn_data == 1 and num_slices(devices) == 1:
        return _slice_grid(sizes, devices)  # type: ignore[arg-type]
    granules, attr = _dcn_granules(devices, dcn_data)
    what = "slices" if attr == "slice_index" else "processes"
    if sizes[0] % dcn_data:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: data={sizes[0]} is "
                         f"not divisible by dcn_data={dcn_data} (the data axis spans the "
                         f"{dcn_data} {what})")
    ici = (sizes[0] // dcn_data, sizes[1], sizes[2])
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh(
            ici, (dcn_data, 1, 1), devices, process_is_granule=attr == "process_index",
            allow_split_physical_axes=True)
        host_row_blocks(grid)
        return grid
    except (ValueError, NotImplementedError, AssertionError):
        # Same block structure (granule k = data rows [k*ici_data, (k+1)*ici_data)), each
        # granule laid out by _slice_grid.
        return np.concatenate([_slice_grid(ici, granules[k]) for k in sorted(granules)], axis=0)


@gin.configurable
def create_mesh(*, data: int | None = None, fsdp: int | None = None, tensor: int | None = None,
                dcn_data: int | None = None,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over all devices (or ``devices``).

    Unset sizes take :func:`default_mesh_shape`. Every host's devices hold one contiguous block
    of batch positions (the flattened data x fsdp axes), so each host feeds whole, consecutive
    batch rows: on TPU the torus-aware order of ``mesh_utils`` where it keeps hosts contiguous,
    process-major order otherwise (see :func:`device_grid`).

    ``dcn_data`` (maxtext's ``dcn_data_parallelism``): how many TPU slices (multi-slice, over
    the data-centre network) the data axis spans; ``-1`` or unset on a multi-slice job is every
    slice. ``data`` is the total (ICI x DCN) size; unset, it is ``dcn_data``.

    When ``devices`` is not given and JAX has not started yet, the distributed system is
    started first (:func:`initialize_distributed`), so a pod forms before devices are listed.
    """
    if devices is None:
        if not _start_attempted and not _backends_initialized():
            initialize_distributed()
        devices = jax.devices()
    devices = list(devices)
    slices = num_slices(devices)
    if dcn_data is None:
        dcn_data = slices
    elif dcn_data == -1:
        dcn_data = slices if slices > 1 else len({d.process_index for d in devices})
    if dcn_data != 1 or slices > 1:
        _dcn_granules(devices, dcn_data)  # a clear error before the shape's
    given = {k: v for k, v in (("data", data), ("fsdp", fsdp), ("tensor", tensor))
             if v is not None}
    shape = default_mesh_shape(devices[0].platform) if not given else {
        "data": 1, "fsdp": 1, "tensor": 1}
    if dcn_data > 1 and "data" not in given and shape.get("data", 1) != -1:
        shape["data"] = dcn_data
    shape.update(given)
    sizes = resolve_mesh_shape(shape, len(devices))
    grid = device_grid(sizes, devices, dcn_data=dcn_data)
    if dcn_data > 1:
        log.info("mesh %s over %d DCN granules (dcn_data=%d)",
                 dict(zip(MESH_AXES, sizes, strict=True)), dcn_data, dcn_data)
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
        rows = global_batch_size // self.num_batch_shards
        for process, starts in starts_by_process.items():
            if len(starts) != (max(starts) - min(starts)) // rows + 1:
                raise ValueError(
                    f"process {process} holds batch rows starting at {sorted(starts)} of "
                    f"{global_batch_size}: not one contiguous block (mesh {dict(self.mesh.shape)}"
                    "); build the mesh with partitioning.create_mesh")
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


# Distributed start (jax.distributed) -------------------------------------------------------------
_OFF = ("0", "off", "false", "no")
_start_attempted = False  # initialize_distributed ran in this process (create_mesh asks once)
_FORCE = ("1", "on", "true", "yes", "force")


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """How this process joins a multi-process run, and where that was read from.

    ``source``: ``"arguments"`` (flags/gin), ``"environment"`` (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` or their ``XSTILTS_*`` twins), or the name of the
    JAX cluster environment detected (``slurm``, ``ompi``, ``gcetpu``, ``gketpu``, ``k8s``),
    possibly joined with ``+`` when explicit values complete a detected cluster.
    ``coordinator_address`` may be ``None``: JAX then derives it from the cluster.
    """

    source: str
    num_processes: int
    process_id: int
    coordinator_address: str | None = None


def _env_int(*names: str) -> tuple[int | None, str | None]:
    for name in names:
        if os.environ.get(name, "").strip():
            try:
                return int(os.environ[name]), name
            except ValueError:
                raise ValueError(f"{name}={os.environ[name]!r}: expected an integer") from None
    return None, None


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the private probe: assume started
        return True


def detect_cluster() -> tuple[str, int, int] | None:
    """The JAX cluster environment this process runs in: ``(name, process count, process id)``.

    The environments are JAX's own (``jax._src.clusters``, what ``jax.distributed.initialize()``
    auto-detects): Open MPI (``OMPI_MCA_orte_hnp_uri``, ``OMPI_COMM_WORLD_SIZE/RANK``), SLURM
    (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
    ``SLURM_LOCALID``: set by ``srun``), GKE TPU (``TPU_WORKER_HOSTNAMES`` or
    ``TPU_PROCESS_ADDRESSES``, ``TPU_WORKER_ID``), Cloud TPU VM (the metadata server's
    ``agent-worker-number`` and ``worker-network-endpoints``; only asked on a TPU VM, where JAX
    found TPU chips and libtpu) and Kubernetes (``KUBERNETES_SERVICE_HOST`` with the
    ``kubernetes`` package). Multi-slice TPU adds ``MEGASCALE_NUM_SLICES``/``MEGASCALE_SLICE_ID``.
    A plain CPU/GPU machine matches none and nothing is asked over the network.
    """
    try:
        from jax._src import clusters
        kinds = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError) as e:  # a JAX that moved its private cluster API
        log.warning("jax.distributed: cannot read JAX's cluster environments (%s)", e)
        return None
    for env in kinds:
        if getattr(env, "opt_in_only_method", False):
            continue  # mpi4py: only on request (cluster_detection_method)
        try:
            present = env.is_env_present()
        except Exception as e:  # e.g. a metadata server that does not answer (Colab)
            log.warning("jax.distributed: probing %s failed (%s); not that cluster",
                        env.__name__, e)
            continue
        if present:
            try:
                return env.name, int(env.get_process_count()), int(env.get_process_id())
            except Exception as e:
                raise RuntimeError(
                    f"jax.distributed: detected a {env.name} cluster but could not read its "
                    f"process count/id ({e}); set XSTILTS_DISTRIBUTED=0 to run this process "
                    "alone") from e
    return None


def distributed_setup(*, coordinator_address: str | None = None,
                      num_processes: int | None = None,
                      process_id: int | None = None) -> DistributedSetup | None:
    """Where this process's multi-process settings come from; ``None`` when there are none.

    Explicit values first (arguments, then ``XSTILTS_COORDINATOR``/``JAX_COORDINATOR_ADDRESS``,
    ``XSTILTS_NUM_PROCESSES``/``JAX_NUM_PROCESSES``, ``XSTILTS_PROCESS_ID``/``JAX_PROCESS_ID``);
    what they leave unset comes from :func:`detect_cluster`. Incomplete explicit settings with
    no cluster to complete them are an error naming what is missing.
    """
    source = "arguments" if any(v is not None for v in (coordinator_address, num_processes,
                                                        process_id)) else None
    if coordinator_address is None:
        for name in ("XSTILTS_COORDINATOR", "JAX_COORDINATOR_ADDRESS"):
            if os.environ.get(name, "").strip():
                coordinator_address, source = os.environ[name].strip(), source or "environment"
                break
    if num_processes is None:
        num_processes, name = _env_int("XSTILTS_NUM_PROCESSES", "JAX_NUM_PROCESSES")
        source = source or (name and "environment")
    if process_id is None:
        process_id, name = _env_int("XSTILTS_PROCESS_ID", "JAX_PROCESS_ID")
        source = source or (name and "environment")
    if coordinator_address and num_processes is not None and process_id is not None:
        return DistributedSetup(str(source), num_processes, process_id, coordinator_address)
    if num_processes == 1:
        return DistributedSetup(str(source), 1, process_id or 0, coordinator_address)
    cluster = detect_cluster()
    if cluster is None:
        if source is None:
            return None
        missing = [what for what, v in (("coordinator address (--coordinator_address or "
                                         "JAX_COORDINATOR_ADDRESS)", coordinator_address),
                                        ("number of processes (--num_processes or "
                                         "JAX_NUM_PROCESSES)", num_processes),
                                        ("process id (--process_id or JAX_PROCESS_ID)",
                                         process_id)) if v is None]
        raise ValueError(f"multi-process settings from {source} are incomplete and no cluster "
                         f"environment (SLURM, Open MPI, TPU VM, GKE) supplies the rest: "
                         f"missing {', '.join(missing)}")
    name, count, pid = cluster
    return DistributedSetup(f"{source}+{name}" if source else name,
                            count if num_processes is None else num_processes,
                            pid if process_id is None else process_id, coordinator_address)


@gin.configurable
def initialize_distributed(*, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None,
                           initialization_timeout: int = 300) -> bool:
    """Start ``jax.distributed`` when this process is one of several; returns whether it runs.

    Automatic, as in maxtext/t5x: on a Cloud TPU pod slice, a SLURM ``srun`` step, an Open MPI
    ``mpirun``, a GKE TPU JobSet (:func:`detect_cluster`), or with explicit coordinator
    settings (:func:`distributed_setup`), every process joins one distributed system before JAX
    touches a device; a single host with none of these starts nothing (and never waits for a
    coordinator). A detected single-process environment (a v4-8 TPU VM, ``srun -n1``) starts
    nothing either. ``XSTILTS_DISTRIBUTED=0`` turns the start off; ``XSTILTS_DISTRIBUTED=1``
    (or the older ``XSTILTS_AUTO_DISTRIBUTED=1``) calls ``jax.distributed.initialize()`` even for
    one process. Logs what was detected. Idempotent: a started system returns ``True``.
    """
    mode = os.environ.get("XSTILTS_DISTRIBUTED", "auto").strip().lower()
    if os.environ.get("XSTILTS_AUTO_DISTRIBUTED") == "1" and mode == "auto":
        mode = "1"
    if mode not in (*_OFF, *_FORCE, "auto"):
        raise ValueError(f"XSTILTS_DISTRIBUTED={mode!r}: expected auto, 0 (off) or 1 (force)")
    if jax.distributed.is_initialized():
        return True
    global _start_attempted
    _start_attempted = True
    if mode in _OFF:
        log.info("jax.distributed: not started (XSTILTS_DISTRIBUTED=%s)", mode)
        return False
    setup = distributed_setup(coordinator_address=coordinator_address,
                              num_processes=num_processes, process_id=process_id)
    if (setup is None or setup.num_processes <= 1) and mode not in _FORCE:
        log.info("jax.distributed: not started (%s)",
                 "no multi-process environment detected" if setup is None else
                 f"{setup.source}: a single process")
        return False
    if _backends_initialized():
        raise RuntimeError(
            f"jax.distributed: {setup.source if setup else 'XSTILTS_DISTRIBUTED=1'} asks for "
            f"{setup.num_processes if setup else 'several'} processes, but JAX's backend is "
            "already running in this process (something listed devices or computed first): "
            "call initialize_distributed() first, or set XSTILTS_DISTRIBUTED=0 to run alone")
    kwargs: dict[str, Any] = {"initialization_timeout": initialization_timeout,
                              "local_device_ids": local_device_ids}
    if setup is not None:
        kwargs.update(coordinator_address=setup.coordinator_address,
                      num_processes=setup.num_processes, process_id=setup.process_id)
    log.info("jax.distributed: starting from %s: process %s of %s, coordinator %s",
             setup.source if setup else "jax auto-detection",
             setup.process_id if setup else "?", setup.num_processes if setup else "?",
             (setup.coordinator_address if setup else None) or "from the cluster")
    jax.distributed.initialize(**kwargs)
    from jax._src import distributed as _dist

    log.info("jax.distributed: process %d of %d joined (coordinator %s): %d local of %d "
             "devices", jax.process_index(), jax.process_count(),
             getattr(_dist.global_state, "coordinator_address", None), jax.local_device_count(),
             jax.device_count())
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xstilts.partitioning``: start as a run does and print what formed.

    Run the same command on every host (``gcloud ... ssh --worker=all``, ``srun``, ``mpirun``):
    each prints its process, the devices and the default mesh, and, on several processes, that
    a cross-process all-gather answered from every one of them.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m xstilts.partitioning",
                                     description=main.__doc__.splitlines()[0])
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = initialize_distributed(coordinator_address=args.coordinator_address,
                                     num_processes=args.num_processes,
                                     process_id=args.process_id)
    mesh = create_mesh()
    devices = jax.devices()
    print(f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local of {len(devices)} devices "
          f"({devices[0].device_kind}), {num_slices(devices)} slice(s), "
          f"jax.distributed {'started' if started else 'not started'}, "
          f"mesh {dict(mesh.shape)}", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ids = multihost_utils.process_allgather(np.asarray([jax.process_index()], np.int32))
        answered = sorted(int(i) for i in np.asarray(ids).ravel())
        if answered != list(range(jax.process_count())):
            print(f"process {jax.process_index()}: all-gather returned {answered}", flush=True)
            return 1
        print(f"process {jax.process_index()}: all {jax.process_count()} processes answered",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
