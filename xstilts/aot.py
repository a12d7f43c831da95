"""Ahead-of-time check of a train step for a mesh, without the hardware (maxtext's train_compile).

    python -m xstilts.aot --model large --mesh fsdp=8 --batch 32 --length 256
    python -m xstilts.aot --topology v5e:2x2 --model large --mesh fsdp=4 --dtype bfloat16 [--json]

lowers and compiles the partitioned XLM-R train step (AdamW, the task head, microbatching as
asked) with ``jax.eval_shape`` parameters (no weights are materialised) and prints the
per-device memory of the compiled step from ``compiled.memory_analysis()``. The line
``aot: <model> <mesh> batch <B>x<L>: <GiB> GiB per device`` sums it up: validate a pod
configuration before paying for the pod.

Without ``--topology`` the step compiles for fake CPU devices: XLA:CPU's figure is a proxy for
TPU/GPU (their compilers fuse and lay out differently), good for "does it fit" at the GiB level.
With ``--topology`` (``v4:2x2x1``, ``v5e:2x2``, ``v5p:2x2x1``, ``v6e:2x2``, ...; needs libtpu, the
``tpu`` extra) libtpu compiles it for that TPU slice on this machine, deviceless: the TPU
compiler's own per-chip memory (checked against the chip's HBM), HLO FLOPs and bytes accessed
per chip from ``compiled.cost_analysis()``, and a roofline step time
``max(FLOPs / peak, bytes / HBM bandwidth)`` with the MFU it implies (model FLOPs, the
maxtext count of ``trainer.train_flops_per_example``, over that time at the chip's peak).
A roofline is a lower bound on step time (no communication, perfect overlap): its MFU is an
upper bound. ``bytes accessed`` sums every HLO op's operands and outputs, more than the HBM
traffic where the compiler keeps fused intermediates on chip, so a memory-bound verdict is
pessimistic: both times are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from xstilts import partitioning
from xstilts import trainer as trainer_lib
from xstilts.models import attention as attention_lib
from xstilts.models.xlmr import XLMRConfig, check_length
from xstilts.train import build_model

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Published per-chip figures of a TPU generation."""

    name: str
    peak_bf16_flops: float  # FLOP/s, dense bf16
    hbm_bytes_per_s: float
    hbm_gib: float


# Per chip, from Google Cloud's TPU system architecture pages (checked 2026-12-06 against the
# pages' "key specifications" tables; GB = 1e9 bytes, as the pages write bandwidths):
#   v4:  275 TFLOP/s bf16, 1,200 GB/s, 32 GiB  https://cloud.google.com/tpu/docs/v4
#   v5e: 197 TFLOP/s bf16,   819 GB/s, 16 GB   https://cloud.google.com/tpu/docs/v5e
#   v5p: 459 TFLOP/s bf16, 2,765 GB/s, 95 GB   https://cloud.google.com/tpu/docs/v5p
#   v6e: 918 TFLOP/s bf16, 1,638 GB/s, 32 GB   https://cloud.google.com/tpu/docs/v6e
# The pages' HBM "GB" is taken as GiB (the physical stacks); the runtime keeps a little of it
# (JAX reports about 15.75 GiB usable on v5e), so a step within ~2% of the HBM is marginal.
# Keys are the generation prefix of a topology name ("v5e:2x2").
TPU_CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("TPU v4", 275e12, 1200e9, 32),
    "v5e": ChipSpec("TPU v5e", 197e12, 819e9, 16),
    "v5litepod": ChipSpec("TPU v5e", 197e12, 819e9, 16),
    "v5p": ChipSpec("TPU v5p", 459e12, 2765e9, 95),
    "v6e": ChipSpec("TPU v6e", 918e12, 1638e9, 32),
}


def chip_spec(topology: str) -> ChipSpec:
    """The chip of a topology name such as ``v5e:2x2``; a ``ValueError`` names the known ones."""
    generation = topology.split(":", 1)[0].split("-", 1)[0].lower()
    if generation not in TPU_CHIPS:
        raise ValueError(f"topology {topology!r}: unknown TPU generation {generation!r}, "
                         f"expected one of {sorted(TPU_CHIPS)} (as in 'v5e:2x2')")
    return TPU_CHIPS[generation]


def use_host_cpu() -> None:
    """Keep JAX's own backend on CPU for a deviceless compile (libtpu describes the target).

    A no-op once a backend has started (a test's CPU devices, a GPU host).
    """
    if not partitioning._backends_initialized():
        jax.config.update("jax_platforms", "cpu")


def topology_devices(topology: str) -> list[Any]:
    """The devices of a TPU slice, described by libtpu without a TPU (deviceless compile)."""
    chip_spec(topology)
    # libtpu takes /tmp/libtpu_lockfile for the life of any process that loaded it (every JAX
    # process without JAX_PLATFORMS=cpu, once libtpu is installed): a deviceless compile needs
    # no TPU, so it must not wait for, or fail on, another process's lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"--topology {topology} needs libtpu: pip install -e '.[tpu]' "
            f"(jax[tpu]==0.10.2, libtpu 0.0.42)") from e
    from jax.experimental import topologies

    use_host_cpu()
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as e:  # libtpu's message says what it could not parse
        raise ValueError(f"topology {topology!r}: libtpu cannot describe it ({e}); expected "
                         f"a name like v5e:2x2, v5p:2x2x1, v4:2x2x1 or v6e:2x2") from e
    return list(desc.devices)


def topology_mesh(topology: str, mesh_shape: Mapping[str, int] | None = None
                  ) -> jax.sharding.Mesh:
    """A mesh over a TPU slice's chips (``mesh_shape``'s sizes, default FSDP over all of them).

    A mesh that does not use exactly the slice's chips is a ``ValueError`` naming both.
    """
    devices = topology_devices(topology)
    try:
        return partitioning.create_mesh(**dict(mesh_shape or {}), devices=devices)
    except ValueError as e:
        raise ValueError(f"topology {topology} has {len(devices)} chips ({chip_spec(topology).name}"
                         f"): {e}") from e


def hbm_fits(total_bytes: int, topology: str) -> bool:
    """Whether ``total_bytes`` per chip fit the chip's HBM."""
    return total_bytes <= chip_spec(topology).hbm_gib * GIB


SCANNED_COST = ("the layers are scanned and XLA's cost analysis counts the loop body once, so "
                "these cover one layer of the stack, not the step")


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Cost of one step on one chip, and the step time / MFU it implies at the chip's peak."""

    chip: ChipSpec
    hlo_flops: float  # per chip, from cost_analysis()
    bytes_accessed: float  # per chip, from cost_analysis()
    model_flops: float  # per chip: the useful (model) FLOPs of the step
    # Per chip: FLOPs inside Pallas kernels (splash attention), which cost_analysis() cannot
    # see (an opaque custom call), estimated by the model count of attention.
    kernel_flops: float = 0.0
    # Layers under ``nn.scan``: XLA's cost analysis counts a while loop's body once, not once
    # per trip, so the HLO FLOPs and bytes cover one layer of the stack and no roofline holds.
    scanned_layers: bool = False

    @property
    def flops(self) -> float:
        return self.hlo_flops + self.kernel_flops

    @property
    def step_seconds(self) -> float:
        return max(self.flops / self.chip.peak_bf16_flops,
                   self.bytes_accessed / self.chip.hbm_bytes_per_s)

    @property
    def bound(self) -> str:
        compute = self.flops / self.chip.peak_bf16_flops
        return "compute" if compute >= self.bytes_accessed / self.chip.hbm_bytes_per_s \
            else "memory"

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_seconds * self.chip.peak_bf16_flops)

    def lines(self) -> list[str]:
        c = self.chip
        kernels = f" + {self.kernel_flops:.3e} in Pallas kernels (model count)" \
            if self.kernel_flops else ""
        if self.scanned_layers:
            return [f"HLO FLOPs per chip: {self.hlo_flops:.3e}, bytes accessed "
                    f"{self.bytes_accessed:.3e}: {SCANNED_COST}; model FLOPs per chip: "
                    f"{self.model_flops:.3e}; no roofline (compile without --scan_layers)"]
        return [
            f"HLO FLOPs per chip: {self.hlo_flops:.3e}{kernels}; model FLOPs per chip: "
            f"{self.model_flops:.3e} (model/total {self.model_flops / self.flops:.2f})",
            f"bytes accessed per chip: {self.bytes_accessed:.3e}",
            f"roofline on {c.name} ({c.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{c.hbm_bytes_per_s / 1e9:.0f} GB/s): compute "
            f"{self.flops / c.peak_bf16_flops * 1e3:.2f} ms, memory "
            f"{self.bytes_accessed / c.hbm_bytes_per_s * 1e3:.2f} ms; step >= "
            f"{self.step_seconds * 1e3:.2f} ms ({self.bound}-bound), MFU <= "
            f"{100 * self.mfu:.1f}%",
        ]


@dataclasses.dataclass(frozen=True)
class AotReport:
    model: str
    mesh: str
    batch: int
    length: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    platform: str = "cpu"
    devices: int = 1
    attention: str = "auto"
    roofline: Roofline | None = None

    @property
    def total_bytes(self) -> int:
        """Live at once on one device: inputs + outputs (minus donated aliases) + scratch."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + \
            self.code_bytes

    def lines(self) -> list[str]:
        def gib(n: int) -> str:
            return f"{n / GIB:.3f} GiB"

        head = [f"platform: {self.platform} ({self.devices} devices), attention "
                f"{self.attention}"]
        fit = []
        if self.roofline is not None:
            hbm = self.roofline.chip.hbm_gib
            verdict = "fits" if self.total_bytes <= hbm * GIB else "does NOT fit"
            fit = [*self.roofline.lines(),
                   f"{verdict} in the {hbm:g} GiB of HBM per {self.roofline.chip.name} chip"]
        return head + [
            f"arguments (state + batch): {gib(self.argument_bytes)}",
            f"outputs: {gib(self.output_bytes)} (donated/aliased: {gib(self.alias_bytes)})",
            f"temporaries (activations, gradients, collectives): {gib(self.temp_bytes)}",
            f"generated code: {gib(self.code_bytes)}",
            *fit,
            f"aot: {self.model} {self.mesh} batch {self.batch}x{self.length}: "
            f"{self.total_bytes / GIB:.2f} GiB per device",
        ]

    @property
    def fits(self) -> bool | None:
        """Whether the step fits the chip's HBM (TPU topologies only)."""
        if self.roofline is None:
            return None
        return self.total_bytes <= self.roofline.chip.hbm_gib * GIB

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "roofline"}
        out["total_bytes"] = self.total_bytes
        out["gib_per_device"] = self.total_bytes / GIB
        if self.roofline is not None:
            r = self.roofline
            out.update(chip=r.chip.name, hbm_gib=r.chip.hbm_gib, fits=self.fits,
                       hlo_flops_per_chip=r.hlo_flops, kernel_flops_per_chip=r.kernel_flops,
                       bytes_accessed_per_chip=r.bytes_accessed,
                       model_flops_per_chip=r.model_flops,
                       roofline_step_seconds=None if r.scanned_layers else r.step_seconds,
                       roofline_bound=None if r.scanned_layers else r.bound,
                       roofline_mfu=None if r.scanned_layers else r.mfu,
                       scanned_layers=r.scanned_layers,
                       peak_bf16_flops=r.chip.peak_bf16_flops,
                       hbm_bytes_per_s=r.chip.hbm_bytes_per_s)
        return out


def compile_train_step(*, model: str, mesh_shape: Mapping[str, int], batch: int, length: int,
                       task_type: str = "classification", num_labels: int = 3,
                       num_choices: int = 4, num_microbatches: int = 1,
                       config_overrides: Mapping[str, Any] | None = None,
                       devices: Sequence[Any] | None = None,
                       topology: str | None = None) -> tuple[Any, AotReport]:
    """Compile the train step for abstract params; returns ``(compiled, AotReport)``.

    The step is the run's ``Trainer.partitioned_train_step`` with the run's ``StepShape``
    (``num_choices`` counts only for ``multiple_choice``). ``topology`` (``"v5e:2x2"``)
    compiles with libtpu for that TPU slice (its devices replace ``devices``) and adds the
    roofline to the report.
    """
    config = XLMRConfig.preset(model, **dict(config_overrides or {}))
    check_length(config, length)
    if topology is not None:
        mesh = topology_mesh(topology, mesh_shape)
    else:
        mesh = partitioning.create_mesh(**dict(mesh_shape), devices=devices)
    part = partitioning.Partitioner(mesh)
    shape = trainer_lib.StepShape(task_type, num_labels, batch, length,
                                  num_choices if task_type == "multiple_choice" else 1)
    part.check_batch_size(batch)
    tx, schedule = trainer_lib.make_optimizer(total_steps=1000)
    tr = trainer_lib.Trainer(build_model(task_type, config, num_labels=num_labels),
                             trainer_lib.task_loss(task_type), tx, schedule, part,
                             num_microbatches=num_microbatches)
    abstract = shape.batch(part)
    tr.check_batch(abstract)
    state = tr.abstract_state(shape.input_shape)
    compiled = tr.partitioned_train_step(state, abstract).lower(state, abstract).compile()
    mesh_text = ",".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names if mesh.shape[a] > 1)
    platform = mesh.devices.flat[0].platform
    impl = attention_lib.resolve(
        config.attention, platform=platform, dtype=jnp.dtype(config.dtype), length=length,
        head_dim=config.head_dim, dropout_active=config.attention_probs_dropout_prob > 0)
    roofline = None
    if topology is not None:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        model_flops = trainer_lib.train_flops_per_example(
            config, length, num_choices=shape.num_choices if task_type == "multiple_choice"
            else 1, mlm=task_type == "mlm",
            mlm_predictions=trainer_lib.mlm_max_predictions(length)) * batch / mesh.size
        kernel_flops = 0.0
        if impl == "splash":  # fwd + bwd attention matmuls, maxtext's count (12 n h L^2)
            kernel_flops = (12.0 * config.num_hidden_layers * config.hidden_size * length**2
                            * shape.num_choices * batch / mesh.size)
        roofline = Roofline(chip_spec(topology), float(cost["flops"]),
                            float(cost["bytes accessed"]), model_flops, kernel_flops,
                            scanned_layers=config.scan_layers)
    report = dataclasses.replace(
        _report(compiled.memory_analysis(), model, mesh_text or "single", shape),
        platform=platform if topology is None else f"{platform} {topology}",
        devices=mesh.size, attention=impl, roofline=roofline)
    return compiled, report


def chip_figures(compiled: Any, topology: str, *, scanned_layers: bool = False
                 ) -> dict[str, Any]:
    """Per-chip memory (and whether it fits the HBM), HLO FLOPs and bytes accessed of a step
    compiled for ``topology`` (with ``scanned_layers``, those two cover one layer: see
    ``SCANNED_COST``)."""
    total = _report(compiled.memory_analysis(), "", "", trainer_lib.StepShape(
        "classification", 2, 1, 1)).total_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {"bytes_per_chip": total, "fits": hbm_fits(total, topology),
            "hbm_gib": chip_spec(topology).hbm_gib, "chip": chip_spec(topology).name,
            "hlo_flops_per_chip": float(cost["flops"]),
            "bytes_accessed_per_chip": float(cost["bytes accessed"]),
            "scanned_layers": scanned_layers}


def compile_chip_figures(lowered: Any, topology: str, *, scanned_layers: bool = False
                         ) -> dict[str, Any]:
    """``chip_figures`` of ``lowered.compile()``; when the TPU compiler refuses the step for
    lack of HBM (``RESOURCE_EXHAUSTED``), the figures of a step that does not fit: its message,
    and the temporaries it asked for as ``bytes_per_chip`` (a lower bound on the total)."""
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        needed = re.search(r"RESOURCE_EXHAUSTED: .*?\(([\d.]+)G\) exceeds", str(e))
        if needed is None:
            raise
        chip = chip_spec(topology)
        return {"bytes_per_chip": int(float(needed.group(1)) * GIB), "fits": False,
                "hbm_gib": chip.hbm_gib, "chip": chip.name, "hlo_flops_per_chip": None,
                "bytes_accessed_per_chip": None, "scanned_layers": scanned_layers,
                "compile_error": str(e).splitlines()[0]}
    return chip_figures(compiled, topology, scanned_layers=scanned_layers)


def _report(stats: Any, model: str, mesh: str, shape: trainer_lib.StepShape) -> AotReport:
    """``compiled.memory_analysis()`` as an ``AotReport``."""
    return AotReport(
        model=model, mesh=mesh, batch=shape.batch_size, length=shape.length,
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes), temp_bytes=int(stats.temp_size_in_bytes),
        code_bytes=int(getattr(stats, "generated_code_size_in_bytes", 0) or 0))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xstilts.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large", help="XLM-R preset: tiny, base or large")
    parser.add_argument("--mesh", default=None,
                        help="mesh sizes, e.g. 'fsdp=8' or 'data=2,fsdp=4' (-1 fills the rest; "
                             "default fsdp=8 on CPU, fsdp over every chip of --topology)")
    parser.add_argument("--topology", default=None,
                        help="compile for this TPU slice with libtpu, e.g. v5e:2x2, v5p:2x2x1, "
                             "v4:2x2x1, v6e:2x2 (needs the tpu extra)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.add_argument("--devices", type=int, default=None,
                        help="fake CPU devices (default: the product of the mesh sizes)")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--length", type=int, default=256, help="sequence length")
    parser.add_argument("--task", default="classification",
                        help="classification | tagging | qa | multiple_choice | mlm")
    parser.add_argument("--num_labels", type=int, default=3)
    parser.add_argument("--num_choices", type=int, default=4, help="multiple_choice only")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on TPU)")
    parser.add_argument("--remat", default="none", help="none | full | dots | dots_no_batch")
    parser.add_argument("--scan_layers", action="store_true")
    parser.add_argument("--attention", default="auto",
                        help="auto | einsum | xla | cudnn | splash (xstilts.models.attention)")
    parser.add_argument("--attention_dropout", type=float, default=None,
                        help="attention_probs_dropout_prob (default: the preset's 0.1; the "
                             "fused kernels need 0.0 to be used in training)")
    parser.add_argument("--dropout_rng", default="threefry", help="threefry | rbg | unsafe_rbg")
    return parser.parse_args(argv)


def _device_count(mesh_shape: Mapping[str, int], devices: int | None) -> int:
    """``--devices``, or the product of the mesh sizes."""
    if devices is not None:
        return devices
    if any(v == -1 for v in mesh_shape.values()):
        raise SystemExit("--mesh has -1: give --devices")
    return math.prod(mesh_shape.values())


def use_fake_cpu_devices(count: int) -> None:
    """Ask for ``count`` fake CPU devices; JAX must not have started a backend yet."""
    jax.config.update("jax_platforms", "cpu")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])
    if jax.device_count() != count:
        raise SystemExit(f"JAX already started with {jax.device_count()} devices; run "
                         f"`python -m xstilts.aot` in a fresh process")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.topology is not None:
        try:
            chip_spec(args.topology)
        except ValueError as e:
            print(f"aot: {e}", file=sys.stderr, flush=True)
            return 2
        # The compile targets the TPU slice; the host backend stays CPU (no TPU is needed).
        jax.config.update("jax_platforms", "cpu")
        mesh_shape = partitioning.parse_mesh_flag(args.mesh or "fsdp=-1")
    else:
        mesh_shape = partitioning.parse_mesh_flag(args.mesh or "fsdp=8")
        use_fake_cpu_devices(_device_count(mesh_shape, args.devices))
    overrides: dict[str, Any] = {"dtype": args.dtype, "remat": args.remat,
                                 "scan_layers": args.scan_layers, "attention": args.attention,
                                 "dropout_rng": args.dropout_rng}
    if args.attention_dropout is not None:
        overrides["attention_probs_dropout_prob"] = args.attention_dropout
    try:
        _, report = compile_train_step(
            model=args.model, mesh_shape=mesh_shape, batch=args.batch, length=args.length,
            task_type=args.task, num_labels=args.num_labels, num_choices=args.num_choices,
            num_microbatches=args.microbatches, config_overrides=overrides,
            topology=args.topology)
    except (ValueError, RuntimeError) as e:
        print(f"aot: {e}", file=sys.stderr, flush=True)
        return 2
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
    else:
        print("\n".join(report.lines()), flush=True)
    return 1 if report.fits is False else 0


if __name__ == "__main__":
    sys.exit(main())
