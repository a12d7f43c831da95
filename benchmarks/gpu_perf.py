"""GPU performance check: XLM-R Large train step (bf16, length 256) and retrieval at BUCC scale.

1. The real ``xstilts.trainer.Trainer`` step (AdamW, clipping, dropout on) for XLM-R Large with
   bf16 compute and fp32 parameters, sequence classification at length 256. The global batch is
   the largest of ``--batches`` whose compiled step fits the device (judged from
   ``compiled.memory_analysis()``, then confirmed by running it); beyond ``--max-microbatch`` rows
   the step accumulates gradients over microbatches. Prints tokens/s, model TFLOP/s and MFU
   against the chip's dense bf16 peak (``--peak-tflops`` overrides the table).
2. ``xstilts.evals.knn.knn``: exact k=4 neighbours both ways for ``--retrieval-n`` x
   ``--retrieval-n`` sentences of width 1024 (BUCC's scale is 400,000), plus ratio margins.

Runs anywhere (on a CPU it uses a small model unless ``--force``); on a GPU:
``python benchmarks/gpu_perf.py``. Last lines:
``gpu_perf: train <tok/s> tok/s, MFU <x>%`` and ``gpu_perf: retrieval <n>x<n> <s> s``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from step_timing import time_train_steps  # benchmarks/ is the script's directory

# Dense bf16 peak TFLOP/s per chip (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0,
}


def peak_tflops(device: jax.Device, override: float | None) -> float | None:
    if override:
        return override
    kind = device.device_kind
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def _batch(global_batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab - 1, (global_batch, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, 3, global_batch).astype(np.int32)}


def _trainer(config, microbatches: int):
    from xstilts import partitioning, trainer
    from xstilts.models.heads import XLMRForSequenceClassification

    optimizer, schedule = trainer.make_optimizer(learning_rate=1e-5, total_steps=1000)
    return trainer.Trainer(
        model=XLMRForSequenceClassification(config, 3), loss_fn=trainer.task_loss("classification"),
        optimizer=optimizer, schedule=schedule, partitioner=partitioning.Partitioner(),
        num_microbatches=microbatches)


def bench_train(args: argparse.Namespace) -> None:
    from xstilts.models.xlmr import XLMRConfig
    from xstilts.trainer import train_flops_per_example

    device = jax.devices()[0]
    on_accelerator = device.platform != "cpu" or args.force
    config = (XLMRConfig.large(dtype="bfloat16", remat=args.remat) if on_accelerator else
              XLMRConfig.tiny(dtype="bfloat16", max_position_embeddings=514))
    capacity = (device.memory_stats() or {}).get("bytes_limit") if on_accelerator else None
    chosen = None
    for batch_size in args.batches:
        micro = max(1, batch_size // args.max_microbatch)
        tr = _trainer(config, micro)
        state = tr.abstract_state((batch_size, args.length))
        batch = _batch(batch_size, args.length, config.vocab_size)
        try:
            compiled = tr.partitioned_train_step(state, batch).lower(state, batch).compile()
            mem = compiled.memory_analysis()
            need = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                    + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
            print(f"  batch {batch_size} ({micro} microbatches): {need / 2**30:.1f} GiB per "
                  f"device" + (f" of {capacity / 2**30:.1f}" if capacity else ""))
            if capacity and need > 0.95 * capacity:
                continue
            chosen = (batch_size, micro, tr)
            break
        except Exception as e:  # XLA reports out-of-memory as several error types
            print(f"  batch {batch_size}: does not compile/fit ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:120]})")
    if chosen is None:
        raise SystemExit("gpu_perf: no batch size fits")
    batch_size, micro, tr = chosen
    state = tr.init_state(jax.random.key(0), (batch_size, args.length))
    batch = _batch(batch_size, args.length, config.vocab_size)
    times = time_train_steps(tr, state, batch, warmup=args.warmup, steps=args.steps)
    step = statistics.median(times)
    tokens = batch_size * args.length / step
    tflops = train_flops_per_example(config, args.length) * batch_size / step / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a (unknown peak; pass --peak-tflops)"
    print(f"train: {device.device_kind}, XLM-R {'Large' if on_accelerator else 'tiny'} bf16, "
          f"batch {batch_size} x {args.length} ({micro} microbatches, remat {config.remat}), "
          f"{step:.3f} s/step (median of {len(times)}), {tflops:.1f} model TFLOP/s")
    print(f"gpu_perf: train {tokens:.0f} tok/s, MFU {mfu}")


def bench_retrieval(args: argparse.Namespace) -> None:
    from xstilts.evals import knn

    n = args.retrieval_n if (jax.devices()[0].platform != "cpu" or args.force) else 5_000
    rng = np.random.default_rng(0)
    x = knn.l2_normalize(rng.standard_normal((n, 1024), dtype=np.float32))
    y = knn.l2_normalize(rng.standard_normal((n, 1024), dtype=np.float32))
    knn.precompile(n, n, 1024, 4, block_size=args.block_size)
    t0 = time.perf_counter()
    nb = knn.knn(x, y, 4, block_size=args.block_size)
    fwd, bwd = knn.ratio_margins(nb)
    seconds = time.perf_counter() - t0
    assert np.isfinite(fwd).all() and np.isfinite(bwd).all()
    print(f"retrieval: k=4 both ways + margins, {n} x {n} x 1024 fp32, block {args.block_size}: "
          f"{seconds:.2f} s, {4 * n * n * 1024 / seconds / 1e12:.1f} effective TFLOP/s")
    print(f"gpu_perf: retrieval {n}x{n} {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 192, 128, 96, 64, 32])
    parser.add_argument("--max-microbatch", type=int, default=64,
                        help="rows per microbatch; larger batches accumulate gradients")
    parser.add_argument("--remat", default="dots_no_batch",
                        choices=["none", "full", "dots", "dots_no_batch"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--retrieval-n", type=int, default=400_000)
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--skip", choices=["train", "retrieval"], action="append", default=[])
    parser.add_argument("--force", action="store_true", help="full sizes even on a CPU")
    args = parser.parse_args()
    print(f"gpu_perf: jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    if "train" not in args.skip:
        bench_train(args)
    if "retrieval" not in args.skip:
        bench_retrieval(args)


if __name__ == "__main__":
    main()
