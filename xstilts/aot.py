"""Ahead-of-time check of a train step for a mesh, without the hardware (maxtext's train_compile).

    python -m xstilts.aot --model large --mesh fsdp=8 --batch 32 --length 256

lowers and compiles the partitioned XLM-R train step (AdamW, the task head, microbatching as
asked) on fake CPU devices, with ``jax.eval_shape`` parameters (no weights are materialised),
and prints the per-device memory of the compiled step from ``compiled.memory_analysis()``. The
last line reads ``aot: <model> <mesh> batch <B>x<L>: <GiB> GiB per device``: validate a pod
configuration before paying for the pod. XLA:CPU's figure is a proxy for TPU/GPU (their
compilers fuse and lay out differently), good for "does it fit" at the GiB level.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from xstilts import partitioning
from xstilts import trainer as trainer_lib
from xstilts.models.xlmr import XLMRConfig
from xstilts.train import build_model

GIB = 1024**3


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

    @property
    def total_bytes(self) -> int:
        """Live at once on one device: inputs + outputs (minus donated aliases) + scratch."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + \
            self.code_bytes

    def lines(self) -> list[str]:
        def gib(n: int) -> str:
            return f"{n / GIB:.3f} GiB"

        return [
            f"arguments (state + batch): {gib(self.argument_bytes)}",
            f"outputs: {gib(self.output_bytes)} (donated/aliased: {gib(self.alias_bytes)})",
            f"temporaries (activations, gradients, collectives): {gib(self.temp_bytes)}",
            f"generated code: {gib(self.code_bytes)}",
            f"aot: {self.model} {self.mesh} batch {self.batch}x{self.length}: "
            f"{self.total_bytes / GIB:.2f} GiB per device",
        ]


def compile_train_step(*, model: str, mesh_shape: Mapping[str, int], batch: int, length: int,
                       task_type: str = "classification", num_labels: int = 3,
                       num_choices: int = 4, num_microbatches: int = 1,
                       config_overrides: Mapping[str, Any] | None = None,
                       devices: Sequence[Any] | None = None) -> tuple[Any, AotReport]:
    """Compile the train step for abstract params; returns ``(compiled, AotReport)``.

    The step is the run's ``Trainer.partitioned_train_step`` with the run's ``StepShape``
    (``num_choices`` counts only for ``multiple_choice``).
    """
    config = XLMRConfig.preset(model, **dict(config_overrides or {}))
    if length > config.max_length:
        raise ValueError(f"length {length} exceeds the model's maximum {config.max_length}")
    mesh = partitioning.create_mesh(**dict(mesh_shape), devices=devices)
    part = partitioning.Partitioner(mesh)
    shape = trainer_lib.StepShape(task_type, num_labels, batch, length,
                                  num_choices if task_type == "multiple_choice" else 1)
    tx, schedule = trainer_lib.make_optimizer(total_steps=1000)
    tr = trainer_lib.Trainer(build_model(task_type, config, num_labels=num_labels),
                             trainer_lib.task_loss(task_type), tx, schedule, part,
                             num_microbatches=num_microbatches)
    abstract = shape.batch(part)
    tr.check_batch(abstract)
    state = tr.abstract_state(shape.input_shape)
    compiled = tr.partitioned_train_step(state, abstract).lower(state, abstract).compile()
    mesh_text = ",".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names if mesh.shape[a] > 1)
    return compiled, _report(compiled.memory_analysis(), model, mesh_text or "single", shape)


def _report(stats: Any, model: str, mesh: str, shape: trainer_lib.StepShape) -> AotReport:
    """``compiled.memory_analysis()`` as an ``AotReport``."""
    return AotReport(
        model=model, mesh=mesh, batch=shape.batch_size, length=shape.length,
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes), temp_bytes=int(stats.temp_size_in_bytes),
        code_bytes=int(getattr(stats, "generated_code_size_in_bytes", 0)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xstilts.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large", help="XLM-R preset: tiny, base or large")
    parser.add_argument("--mesh", default="fsdp=8",
                        help="mesh sizes, e.g. 'fsdp=8' or 'data=2,fsdp=4' (-1 fills the rest)")
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
    mesh_shape = partitioning.parse_mesh_flag(args.mesh)
    use_fake_cpu_devices(_device_count(mesh_shape, args.devices))
    _, report = compile_train_step(
        model=args.model, mesh_shape=mesh_shape, batch=args.batch, length=args.length,
        task_type=args.task, num_labels=args.num_labels, num_choices=args.num_choices,
        num_microbatches=args.microbatches,
        config_overrides={"dtype": args.dtype, "remat": args.remat,
                          "scan_layers": args.scan_layers})
    print("\n".join(report.lines()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
