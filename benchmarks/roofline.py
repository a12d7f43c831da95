"""Roofline of the base train step on this CPU: fp32 matmul peak per library and the step's FLOPs.

    python benchmarks/roofline.py [--size 4096] [--reps 5] [--torch_step_s 2.62]

Measures fp32 ``a @ b`` GFLOP/s (median of ``--reps``) for numpy (OpenBLAS), torch (MKL) and
``jax.jit(jnp.dot)`` (XLA:CPU), each in its own process, at ``--size``^3 and at the base step's
own shapes (1024 tokens x 768 -> 3072, 3072 -> 768, 768 -> 768). Then counts the model FLOPs of
``model_step.py``'s step (``xstilts.trainer.train_flops_per_example``: 6 x matmul params x
tokens + attention, batch 8 x 128, 12 layers x 768) and prints the GFLOP/s a step time means:
torch eager's (``--torch_step_s``, the idle figure of the last run), what 1.1x torch needs, and
the time the step's matmuls alone take at each library's measured rates (forward and the two
backward matmuls per weight, at the forward shape's rate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from child_process import run_child  # benchmarks/ is the script's directory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
LIBS = ("numpy", "torch", "jax")
TOKENS, HIDDEN, FFN, LAYERS = 1024, 768, 3072, 12
SHAPES = {"ffn_up": (TOKENS, HIDDEN, FFN), "ffn_down": (TOKENS, FFN, HIDDEN),
          "proj": (TOKENS, HIDDEN, HIDDEN)}
# per layer: 4 projections (q, k, v, attention output), one FFN up, one FFN down
PER_LAYER = {"proj": 4, "ffn_up": 1, "ffn_down": 1}


def _matmul_rates(lib: str, size: int, reps: int) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = {"square": (size, size, size), **SHAPES}
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
        if lib == "numpy":
            def call(a=a, b=b):
                return a @ b
        elif lib == "torch":
            import torch

            torch.set_num_threads(os.cpu_count() or 2)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)

            def call(ta=ta, tb=tb):
                return ta @ tb
        else:
            import jax
            import jax.numpy as jnp

            dot = jax.jit(jnp.dot)
            ja, jb = jnp.asarray(a), jnp.asarray(b)

            def call(ja=ja, jb=jb, dot=dot):
                return dot(ja, jb).block_until_ready()
        inner = 1 if m * k * n >= 2**33 else 10
        call(), call()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(inner):
                call()
            times.append((time.perf_counter() - start) / inner)
        out[name] = 2 * m * k * n / statistics.median(times) / 1e9
    return out


def step_gflop() -> float:
    from xstilts.models.xlmr import XLMRConfig
    from xstilts.trainer import train_flops_per_example

    config = XLMRConfig(vocab_size=32000, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        intermediate_size=FFN)
    return 8 * train_flops_per_example(config, 128) / 1e9


def matmul_seconds(rates: dict[str, float]) -> float:
    """The step's projection and FFN matmuls (forward + 2 backward each) at ``rates``."""
    return sum(3 * count * LAYERS * 2 * TOKENS * SHAPES[name][1] * SHAPES[name][2] / 1e9
               / rates[name] for name, count in PER_LAYER.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", dest="lib", choices=LIBS)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--torch_step_s", type=float, default=2.62,
                        help="torch eager's s/step in model_step.py (idle, last session)")
    args = parser.parse_args()
    if args.lib:
        print("RESULT " + json.dumps(_matmul_rates(args.lib, args.size, args.reps)))
        return
    print(f"roofline: load average {os.getloadavg()}")
    rates = {}
    for lib in LIBS:
        got = run_child(__file__, lib, [f"--size={args.size}", f"--reps={args.reps}"], 900)
        if got:
            rates[lib] = got
            print(f"  {lib:>6} GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in got.items()))
    gflop = step_gflop()
    need = args.torch_step_s / 1.1
    print(f"step: {gflop:.1f} GFLOP (model FLOPs, batch 8 x 128); torch eager "
          f"{args.torch_step_s:.2f} s = {gflop / args.torch_step_s:.0f} GFLOP/s; 1.1x torch "
          f"= {need:.2f} s = {gflop / need:.0f} GFLOP/s")
    for lib, r in rates.items():
        print(f"  {lib:>6}: 1.1x torch = {100 * gflop / need / r['square']:.0f}% of its "
              f"{args.size}^3 peak; the step's projection + FFN matmuls alone at its rates: "
              f"{matmul_seconds(r):.2f} s")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
