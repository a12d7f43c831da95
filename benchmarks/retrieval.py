"""Exact k=4 retrieval both ways + ratio margin: xstilts' jit scorer against faiss-cpu.

    python benchmarks/retrieval.py [--n 50000] [--d 1024] [--block-size 2048] [--reps 1]
                                   [--baseline 57c6d35 | --baseline none]

Data: X then Y, ``default_rng(0)`` normal, L2-normalised, fp32, N = M = ``--n``.

* **faiss** (XTREME ``knnCPU``): ``IndexFlatIP`` over Y searched with X (k=4), then over X
  searched with Y, and the ratio margins in numpy, exactly XTREME's formula.
* **ours**: ``xstilts.evals.knn.knn`` (one single pass: every ``X_blk @ Y_tile.T`` feeds
  both directions, so half of faiss's FLOPs) and ``knn.ratio_margins``; compiled beforehand.
  On one CPU device with MKL (Intel) or numpy's OpenBLAS on an AVX-512 core this is
  ``knn_cpu``'s fused custom call (the header line says which kernel and sgemm ran).
* **ours before** (``--baseline REV``, default ``57c6d35``, the XLA scorer before the fused
  kernel, its products through today's ``cpu_gemm``: MKL on Intel, XLA's dot elsewhere;
  ``8129cf0`` is the scorer before issue 16's column top-k; ``none`` skips it):
  ``xstilts/evals/knn.py`` as it was at that git revision (read with ``git show``),
  timed in this process beside ours, alternating which goes first, to measure our own speed-up
  on the same machine state; its similarities must equal ours within 1e-6 (revisions before
  ``cpu_gemm`` sum the products in XLA's order).
* **numpy matmul**: ``X_blk @ Y.T`` over the same blocks, i.e. the N x M x d product once, as a
  yardstick for this machine's fp32 GEMM rate.

faiss and numpy each run in a child process of their own (on the 2-core CI machine, timing BLAS
peers in the same process as XLA distorted results by 15-40 %); ours runs in this process. The
children get the data through ``.npy`` files and send their neighbours back the same way, so the
results are checked on identical inputs. The order is ours (and ours before), faiss, numpy per
repetition; the minimum over repetitions is reported. The load average is printed at the start,
per repetition and at the end: on a shared machine the wall-clock ratio is only as good as the
load allows, so each system's CPU seconds (``time.process_time``, all threads; faiss's OpenMP
threads spin while they wait, which inflates its figure) are printed too. ``OPENBLAS_CORETYPE``
is printed and left as found (an empty value makes faiss's bundled OpenBLAS fall back to SSE3
kernels, ~4x slower); the OpenBLAS kernel faiss's process chose is printed, with a warning when
it is the generic Prescott one (faiss-cpu's OpenBLAS 0.3.15 does not recognise every CPU: on a
CPU reporting "Intel(R) Xeon(R) Processor" it ran a 20k search at 41 GFLOP/s, 251 with
``OPENBLAS_CORETYPE=SkylakeX``).

GFLOP/s: "real" counts the multiply-adds actually done (faiss 2 x 2NMd, ours 2NMd); "effective"
is 2 x 2NMd / time for everyone (the work of answering both directions the two-pass way).
Last line: ``retrieval: ours <x> s, faiss <y> s, ratio <y/x>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 4


def _kernel_name(library: str | None) -> str:
    return f"fused ({library} sgemm)" if library else "xla"


def make_data(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def numpy_margins(sim_xy, idx_xy, sim_yx, idx_yx):
    """XTREME ``score_candidates`` with the ratio margin, vectorised."""
    fwd_mean, bwd_mean = sim_xy.mean(axis=1), sim_yx.mean(axis=1)
    fwd = sim_xy / ((fwd_mean[:, None] + bwd_mean[idx_xy]) / 2)
    bwd = sim_yx / ((bwd_mean[:, None] + fwd_mean[idx_yx]) / 2)
    return fwd, bwd


# -- children -----------------------------------------------------------------------------


def child_faiss(workdir: Path, threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    x, y = np.load(workdir / "x.npy"), np.load(workdir / "y.npy")
    for warm in (x[:2000], y[:2000]):  # warm the BLAS / OpenMP pools on a slice
        index = faiss.IndexFlatIP(warm.shape[1])
        index.add(warm)
        index.search(warm, K)
    t0, c0 = time.perf_counter(), time.process_time()
    index = faiss.IndexFlatIP(y.shape[1])
    index.add(y)
    sim_xy, idx_xy = index.search(x, K)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sim_yx, idx_yx = index.search(y, K)
    fwd, bwd = numpy_margins(sim_xy, idx_xy, sim_yx, idx_yx)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(workdir / "faiss.npz", sim_xy=sim_xy, idx_xy=idx_xy, sim_yx=sim_yx, idx_yx=idx_yx,
             fwd=fwd, bwd=bwd)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "faiss": faiss.__version__,
                      "compile_options": faiss.get_compile_options(),
                      "blas_kernels": _blas_kernels()}))


def _blas_kernels() -> list[str]:
    """The OpenBLAS kernels this process chose (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return [f"{i.get('version')}:{i.get('architecture')}" for i in threadpool_info()
            if i.get("internal_api") == "openblas"]


def child_numpy(workdir: Path, block: int) -> None:
    x, y = np.load(workdir / "x.npy"), np.load(workdir / "y.npy")
    x[:block] @ y[:2000].T  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, x.shape[0], block):
        x[start: start + block] @ y.T
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}))


def run_child(kind: str, workdir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--workdir", str(workdir), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- ours ---------------------------------------------------------------------------------


def load_baseline(rev: str):
    """``xstilts/evals/knn.py`` as it was at git revision ``rev``, imported as a module."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:xstilts/evals/knn.py"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--baseline {rev}: git show failed: {done.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="xstilts-knn-") as tmp:
        path = Path(tmp) / f"knn_{rev}.py"
        path.write_text(done.stdout)
        spec = importlib.util.spec_from_file_location(f"knn_{rev}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def run_ours(knn, x, y, block_size: int):
    """One timed call of ``knn.knn`` + ``knn.ratio_margins``: (wall s, CPU s, results)."""
    t0, c0 = time.perf_counter(), time.process_time()
    nb = knn.knn(x, y, K, block_size=block_size)
    fwd, bwd = knn.ratio_margins(nb)
    return time.perf_counter() - t0, time.process_time() - c0, nb, fwd, bwd


def compare(nb, fwd, bwd, ref) -> dict:
    """Agreement with faiss, up to ties: sims must match within 1e-5 everywhere; an index may
    differ only where its sim is tied with faiss's, and margins are compared on the candidates
    both found (a tied alternative candidate has its own, different, margin)."""
    out = {}
    margin_diff = []
    for name, sims, idx, marg, rsims, ridx, rmarg in (
            ("x->y", nb.sim_xy, nb.idx_xy, fwd, ref["sim_xy"], ref["idx_xy"], ref["fwd"]),
            ("y->x", nb.sim_yx, nb.idx_yx, bwd, ref["sim_yx"], ref["idx_yx"], ref["bwd"])):
        same = idx == ridx
        out[name] = {"top1": float(np.mean(same[:, 0])),
                     "top4_set": float(np.mean(np.all(np.sort(idx, 1) == np.sort(ridx, 1), 1))),
                     "tied_candidates": int((~same).sum()),
                     "max_abs_dsim": float(np.abs(sims - rsims).max())}
        margin_diff.append(float(np.abs(marg - rmarg)[same].max()))
    out["max_abs_dmargin"] = max(margin_diff)
    out["equal"] = bool(all(out[d]["max_abs_dsim"] < 1e-5 for d in ("x->y", "y->x"))
                        and out["max_abs_dmargin"] < 1e-5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--baseline", default="57c6d35",
                        help="git revision of xstilts/evals/knn.py timed as 'ours before' "
                             "('none' to skip)")
    parser.add_argument("--child", choices=["faiss", "numpy"], default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.child == "faiss":
        return child_faiss(args.workdir, args.threads)
    if args.child == "numpy":
        return child_numpy(args.workdir, args.block_size)

    import jax

    from xstilts.evals import knn
    from xstilts.models import cpu_gemm

    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"OPENBLAS_CORETYPE={coretype!r} (left as found)"
          + ("  WARNING: empty value slows faiss ~4x" if coretype == "" else ""))
    print(f"jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()} products={'MKL' if cpu_gemm.uses_mkl() else 'XLA'} "
          f"(XSTILTS_CPU_GEMM={cpu_gemm.backend_setting()}) cpu={cpu_gemm.cpu_vendor()} "
          f"kernel={_kernel_name(knn._fused('auto', knn.default_mesh(), 'auto', 'auto'))}")
    n, d = args.n, args.d
    x, y = make_data(n, d)
    flop = 2.0 * n * n * d  # one N x M x d product
    with tempfile.TemporaryDirectory(prefix="xstilts-bench-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "x.npy", x)
        np.save(workdir / "y.npy", y)
        # Warm-up: compile ours (and ours before) for the full shapes without running them.
        systems = {"ours": knn}
        if args.baseline != "none":
            systems["before"] = load_baseline(args.baseline)
        for name, module in systems.items():
            t0 = time.perf_counter()
            module.precompile(n, n, d, K, block_size=args.block_size)
            print(f"{name}: compile {time.perf_counter() - t0:.1f} s")
        wall = {name: [] for name in [*systems, "faiss", "numpy"]}
        cpu = {name: [] for name in wall}
        results = {}
        for rep in range(args.reps):
            order = list(systems) if rep % 2 == 0 else list(systems)[::-1]
            for name in order:
                t, c, *results[name] = run_ours(systems[name], x, y, args.block_size)
                wall[name].append(t)
                cpu[name].append(c)
            faiss_info = run_child("faiss", workdir, ["--threads", str(args.threads)])
            numpy_info = run_child("numpy", workdir, ["--block-size", str(args.block_size)])
            for name, info in (("faiss", faiss_info), ("numpy", numpy_info)):
                wall[name].append(info["seconds"])
                cpu[name].append(info["cpu"])
            print(f"rep {rep}: " + ", ".join(f"{name} {wall[name][-1]:.2f} s" for name in wall)
                  + f"  (loadavg {os.getloadavg()[0]:.1f})", flush=True)
        ref = dict(np.load(workdir / "faiss.npz"))
    nb, fwd, bwd = results["ours"]
    check = compare(nb, fwd, bwd, ref)
    print(f"faiss {faiss_info['faiss']} ({faiss_info['compile_options']}), threads {args.threads}"
          f", OpenBLAS kernels {faiss_info.get('blas_kernels')}")
    if any(k.endswith(":Prescott") for k in faiss_info.get("blas_kernels", ())):
        print("WARNING: faiss's bundled OpenBLAS chose the generic Prescott kernel (it does not "
              "recognise this CPU): faiss runs several times below its speed and the ratio "
              "favours us; rerun with OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2)")
    print("check vs faiss: " + json.dumps(check))
    if not check["equal"]:
        raise SystemExit("results differ from faiss beyond 1e-5")
    if "before" in results:
        old = results["before"][0]
        # Not bit-identical where the old scorer summed the products in XLA's order.
        dsim = max(float(np.abs(getattr(nb, f) - getattr(old, f)).max())
                   for f in ("sim_xy", "sim_yx"))
        tied = sum(int((getattr(nb, f) != getattr(old, f)).sum()) for f in ("idx_xy", "idx_yx"))
        print(f"ours vs ours before ({args.baseline}): similarities differ by at most "
              f"{dsim:.2e}, indices differing (ties) {tied}")
        if dsim > 1e-6:
            raise SystemExit("ours and ours before return different similarities (> 1e-6)")
    best = {name: min(times) for name, times in wall.items()}
    ours, peer, mm = best["ours"], best["faiss"], best["numpy"]
    print("CPU s (min): " + ", ".join(f"{name} {min(c):.2f}" for name, c in cpu.items()))
    print(f"GFLOP/s real:      ours {flop / ours / 1e9:.0f}, faiss {2 * flop / peer / 1e9:.0f}, "
          f"numpy matmul {flop / mm / 1e9:.0f}")
    print(f"GFLOP/s effective: ours {2 * flop / ours / 1e9:.0f}, faiss {2 * flop / peer / 1e9:.0f}"
          f"  (ours real = {100 * mm / ours:.0f} % of numpy matmul rate)")
    print(f"loadavg at end {os.getloadavg()}")
    if "before" in best:
        print(f"ours before ({args.baseline}): {best['before']:.2f} s, ratio to faiss "
              f"{peer / best['before']:.2f}; ours after/before speed-up "
              f"{best['before'] / ours:.2f}x")
    print(f"retrieval: ours {ours:.2f} s, faiss {peer:.2f} s, ratio {peer / ours:.2f}")


if __name__ == "__main__":
    main()
