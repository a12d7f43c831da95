"""Compile the NMT beam search ahead of time for a mesh or a TPU slice: memory and FLOPs.

    python -m xstilts.translate_aot --preset nllb-200-distilled-600M --topology v5e:2x2 \\
        [--batch 64] [--source_length 128] [--beams 4] [--max_length 200] [--dtype bfloat16]

compiles ``xstilts.decoding.beam_search`` (the whole jit-compiled decode: encoder, cache, every
step) for abstract parameters replicated on every chip and batch rows split over the ``data``
axis of all of them, with libtpu describing the slice (``xstilts.aot.topology_devices``; no TPU
needed). Without ``--topology`` it compiles for this host's devices. Printed (``--json``: one
object): bytes per chip and whether they fit the chip's HBM, HLO FLOPs and bytes accessed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xstilts import aot
from xstilts.decoding import DecodeSettings, beam_search, greedy_search
from xstilts.models.nmt import PRESETS, NMTConfig, init_params


def compile_decode(preset: str, *, batch: int, source_length: int, settings: DecodeSettings,
                   dtype: str = "bfloat16", topology: str | None = None,
                   config_overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(compiled, figures)`` of the beam search for ``preset`` (``NMTConfig.preset`` names)."""
    config = NMTConfig.preset(preset, dtype=dtype, **dict(config_overrides or {}))
    devices = aot.topology_devices(topology) if topology else jax.devices()
    if batch % len(devices):
        raise ValueError(f"--batch {batch} does not split over {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    replicated, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(
        mesh, PartitionSpec("data"))
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          shapes)
    ids = jax.ShapeDtypeStruct((batch, source_length), jnp.int32, sharding=rows)
    forced = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    search = greedy_search if settings.num_beams == 1 else beam_search
    start = time.perf_counter()
    compiled = search.lower(config, settings, params, ids, ids, forced).compile()
    stats = compiled.memory_analysis()
    total = int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    figures = {
        "preset": preset, "platform": devices[0].platform, "topology": topology,
        "devices": len(devices), "batch": batch, "source_length": source_length,
        "num_beams": settings.num_beams, "max_length": settings.max_length, "dtype": dtype,
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))),
        "bytes_per_chip": total, "argument_bytes": int(stats.argument_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "hlo_flops_per_chip": float(cost.get("flops", 0.0)),
        "bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
        "compile_seconds": round(time.perf_counter() - start, 1)}
    if topology:
        figures.update(hbm_gib=aot.chip_spec(topology).hbm_gib,
                       fits=aot.hbm_fits(total, topology))
    return compiled, figures


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xstilts.translate_aot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nllb-200-distilled-600M", choices=sorted(PRESETS))
    p.add_argument("--topology", help="a TPU slice, e.g. v5e:2x2 (needs libtpu)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--source_length", type=int, default=128)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--max_length", type=int, default=200)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    _, figures = compile_decode(
        args.preset, batch=args.batch, source_length=args.source_length,
        settings=DecodeSettings(num_beams=args.beams, max_length=args.max_length),
        dtype=args.dtype, topology=args.topology)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
