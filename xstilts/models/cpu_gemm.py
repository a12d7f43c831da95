"""Float32 matrix products on CPU through MKL's sgemm, as an XLA FFI custom call.

On the Intel Xeons of this project's 2-core benchmark machines XLA:CPU's own GEMM reaches
~190-270 GFLOP/s where MKL reaches ~300-340 and PyTorch (which calls MKL) ~250-370
(``benchmarks/roofline.py``, ``docs/cpu_train_step.md``): on CPU the dense layers' products are
most of a train step, so the GEMM decides every CPU speed comparison with PyTorch. On an AMD
EPYC (Zen 5) it is the other way round, and ``auto`` keeps XLA's dot there. This module
routes the products of :func:`dot_general` to MKL when:

* the backend is ``XSTILTS_CPU_GEMM`` = ``auto`` (default): on a CPU backend with a single
  device, on an Intel CPU (see :data:`MKL_VENDORS`), when MKL is installed (``pip install
  'xstilts[mkl]'``) and a C++ compiler is found; ``mkl``: always on CPU (an error if MKL or the
  compiler is missing); ``xla``: never.
  With several CPU devices (tests' fake meshes) ``auto`` keeps XLA's dot, which the SPMD
  partitioner can shard (a custom call would be replicated on every device);
* the operands and the result are float32 (every dense layer, the tied-embedding logits, the
  retrieval score blocks, and attention's batched products where each matrix has at least
  ``MIN_BATCHED_SIDE`` rows, columns and contracted elements). Operands are transposed into a
  gemm layout where they are not in one already. Anything else is ``jax.lax.dot_general``;
  :func:`einsum` is ``jnp.einsum`` over :func:`dot_general`.

The handler (``cpu_gemm.cc``) is compiled once per source and jaxlib version into
``$XDG_CACHE_HOME/xstilts`` (``~/.cache/xstilts``) with the FFI headers jaxlib ships, and cuts
each product into blocks for XLA's intra-op thread pool (MKL itself runs sequentially, so its
threads never compete with XLA's). Gradients are products of the same kind (``custom_vjp``).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xstilts.models.attention import current_platform

Array = jax.Array
BACKENDS = ("auto", "mkl", "xla")
TARGET = "xstilts_cpu_gemm"
# Batched products with a side this short (a beam-search step's few query rows) stay with XLA:
# through MKL they made decoding no faster (slower in a profile: 6.4 against 5.3 s).
MIN_BATCHED_SIDE = 32
_SOURCE = Path(__file__).with_name("cpu_gemm.cc")
_MKL_SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL (mkl_service.h)
# CPU vendors where ``auto`` uses MKL. MKL dispatches its AVX-512 kernels on Intel CPUs only: on
# a 2-core AMD EPYC (Zen 5, AVX-512) it ran the base step's products at ~180 GFLOP/s (torch)
# against XLA:CPU's 414-434, and our step through MKL took 3.8 s against 2.2-2.6 through XLA
# (docs/cpu_train_step.md), where on the Intel Xeons MKL was 1.2-1.5x XLA's rate.
MKL_VENDORS = ("GenuineIntel",)
_log = logging.getLogger(__name__)


class CpuGemmUnavailable(RuntimeError):
    """MKL or the compiler for the FFI handler is missing (``XSTILTS_CPU_GEMM=mkl``)."""


def backend_setting() -> str:
    """``XSTILTS_CPU_GEMM``: auto (default), mkl or xla."""
    value = os.environ.get("XSTILTS_CPU_GEMM", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"XSTILTS_CPU_GEMM={value!r}: expected one of {BACKENDS}")
    return value


def mkl_library_candidates() -> list[str]:
    """Where ``libmkl_rt`` is looked for: ``XSTILTS_MKL_LIB``, else the environment's lib/."""
    if os.environ.get("XSTILTS_MKL_LIB"):
        return [os.environ["XSTILTS_MKL_LIB"]]
    found: list[str] = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return found


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "xstilts"


def build_ffi_library(source: Path) -> Path:
    """Compiles the FFI handler ``source`` into a shared library (once per source, this folder's
    headers, flags and jaxlib version, in :func:`_cache_dir`); returns its path."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise CpuGemmUnavailable(f"no C++ compiler (g++ / c++ / $CXX) to build {source.name}")
    # This folder's headers (ffi_units.h) are on the include path and in the cache key.
    headers = sorted(Path(__file__).parent.glob("*.h"))
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-I", jax.ffi.include_dir(),
             "-I", str(Path(__file__).parent)]
    key = hashlib.sha256(b"".join(f.read_bytes() for f in [source, *headers])
                         + " ".join([compiler, *flags]).encode()
                         + jax.__version__.encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name, then an atomic rename: concurrent builders (xdist workers) never load a
    # half-written library.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *flags, str(source), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise CpuGemmUnavailable(f"building {source} failed ({' '.join(cmd)}):\n"
                                     f"{proc.stderr[-2000:]}")
        os.replace(out, target)
    return target


def open_mkl() -> ctypes.CDLL:
    """``libmkl_rt`` from :func:`mkl_library_candidates`; CpuGemmUnavailable naming them if none
    loads."""
    candidates = mkl_library_candidates()
    errors = []
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError as error:
            errors.append(str(error))
    raise CpuGemmUnavailable(
        f"libmkl_rt not found (looked at {candidates or [sys.prefix + '/lib/libmkl_rt.so*']}"
        f"{': ' + '; '.join(errors) if errors else ''}; pip install 'xstilts[mkl]' or set "
        "XSTILTS_MKL_LIB)")


@functools.cache
def load_mkl() -> ctypes.CDLL:
    """``libmkl_rt`` switched to its sequential threading layer (the FFI handlers share the work
    out on XLA's thread pool themselves)."""
    mkl = open_mkl()
    mkl.MKL_Set_Threading_Layer.restype = ctypes.c_int
    mkl.MKL_Set_Threading_Layer(ctypes.c_int(_MKL_SEQUENTIAL))
    return mkl


@functools.cache
def _load() -> None:
    """Loads MKL (sequential), builds and registers the handler; raises CpuGemmUnavailable."""
    mkl = load_mkl()
    handler = ctypes.CDLL(str(build_ffi_library(_SOURCE)))
    handler.xstilts_gemm_set_sgemm.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    handler.xstilts_gemm_set_sgemm(ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p),
                                   ctypes.cast(mkl.cblas_sgemm_batch_strided, ctypes.c_void_p))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler.XstiltsCpuGemm),
                                platform="cpu")


def available() -> bool:
    """Whether the MKL product can be used in this process (built and registered)."""
    try:
        _load()
        return True
    except CpuGemmUnavailable:
        return False


@functools.cache
def cpu_vendor(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor (``vendor_id`` in ``/proc/cpuinfo``, e.g. GenuineIntel, AuthenticAMD);
    empty where that file is missing or says none."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


def _process_reason() -> str | None:
    """None in a process whose backend is one CPU device; otherwise why custom calls that
    replace XLA ops are not used under ``auto``."""
    if jax.default_backend() != "cpu":
        return f"backend {jax.default_backend()}"
    if jax.device_count() != 1:
        return f"{jax.device_count()} CPU devices (XLA's dot shards; a custom call would not)"
    return None


def auto_may_replace_xla() -> bool:
    """Whether ``XSTILTS_CPU_GEMM=auto`` lets a CPU custom call replace XLA ops traced now: the
    setting is ``auto``, the platform traced for is CPU and the process has one CPU device (what
    then replaces them, here MKL's products or ``knn_cpu``'s search, decides for itself)."""
    return (backend_setting() == "auto" and current_platform() == "cpu"
            and _process_reason() is None)


@functools.cache
def _auto_reason() -> str | None:
    """None when ``auto`` uses MKL; otherwise why not (logged once)."""
    if reason := _process_reason():
        return reason
    if cpu_vendor() not in MKL_VENDORS:
        reason = (f"CPU vendor {cpu_vendor() or 'unknown'}: MKL's fast kernels run on "
                  f"{'/'.join(MKL_VENDORS)} only; XSTILTS_CPU_GEMM=mkl forces it")
        _log.info("XSTILTS_CPU_GEMM=auto: XLA's dot (%s)", reason)
        return reason
    try:
        _load()
    except CpuGemmUnavailable as error:
        _log.info("XSTILTS_CPU_GEMM=auto: XLA's dot (%s)", error)
        return str(error)
    return None


def uses_mkl() -> bool:
    """Whether products traced now go to MKL: ``XSTILTS_CPU_GEMM``, this process, and the
    platform being traced for (a deviceless TPU compile traces on a CPU host under a TPU mesh,
    and never gets the custom call)."""
    setting = backend_setting()
    if setting == "xla" or current_platform() != "cpu":
        return False
    if setting == "mkl":
        _load()
        return True
    return _auto_reason() is None


def _ffi_gemm(a: Array, b: Array, trans_a: bool, trans_b: bool) -> Array:
    _load()
    if a.ndim == 2:
        return _ffi_gemm(a[None], b[None], trans_a, trans_b)[0]
    m = a.shape[2] if trans_a else a.shape[1]
    n = b.shape[1] if trans_b else b.shape[2]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((a.shape[0], m, n), jnp.float32),
                            vmap_method="sequential")
    return call(a, b, trans_a=trans_a, trans_b=trans_b, max_parts=np.int64(cores()))


@functools.cache
def cores() -> int:
    """Cores this process may run on: the most blocks a product is cut into."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def gemm(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
    """``op(a) @ op(b)`` via MKL for float32 ``[M, K] x [K, N]`` operands, or batches of them
    (``[B, M, K] x [B, K, N]``), ``op`` transposing the last two axes where asked."""
    return _ffi_gemm(a, b, trans_a, trans_b)


def _gemm_fwd(a, b, trans_a, trans_b):
    return _ffi_gemm(a, b, trans_a, trans_b), (a, b)


def _gemm_bwd(trans_a, trans_b, residuals, dc):
    a, b = residuals
    # C = op(A) op(B): dop(A) = dC op(B)^T, dop(B) = op(A)^T dC, each written for A and B as
    # stored (transposed back where op transposed them).
    da = gemm(b, dc, trans_b, True) if trans_a else gemm(dc, b, False, not trans_b)
    db = gemm(dc, a, True, trans_a) if trans_b else gemm(a, dc, not trans_a, False)
    return da, db


gemm.defvjp(_gemm_fwd, _gemm_bwd)


def _layout(dims: int, batch: Sequence[int], contract: Sequence[int], lhs: bool
            ) -> tuple[tuple[int, ...], bool]:
    """(permutation to apply, transposed) putting an operand in gemm's layout: batch dimensions
    first, then free and contracting ones ([M, K] / [K, N]) or the other way round (transposed),
    whichever needs no copy; (batch, free, contracting) when a copy is needed anyway."""
    batch, contract = tuple(batch), tuple(contract)
    free = tuple(d for d in range(dims) if d not in batch and d not in contract)
    plain = batch + (free + contract if lhs else contract + free)
    transposed = batch + (contract + free if lhs else free + contract)
    identity = tuple(range(dims))
    if plain == identity:
        return identity, False
    if transposed == identity:
        return identity, True
    return (plain, False) if lhs else (transposed, True)


def dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> Array:
    """``jax.lax.dot_general``, through MKL on CPU where :func:`uses_mkl` and the dtypes allow
    (float32 operands and result); operands not already in a gemm layout are transposed."""
    (lc, rc), (lb, rb) = dimension_numbers
    out = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
    batch = [lhs.shape[d] for d in lb]
    k = int(np.prod([lhs.shape[d] for d in lc]))
    lhs_free = [lhs.shape[d] for d in range(lhs.ndim) if d not in lc and d not in lb]
    rhs_free = [rhs.shape[d] for d in range(rhs.ndim) if d not in rc and d not in rb]
    nb, m, n = int(np.prod(batch)), int(np.prod(lhs_free)), int(np.prod(rhs_free))
    eligible = (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
                and out in (None, jnp.float32) and bool(lc)
                and (nb == 1 or min(m, n, k) >= MIN_BATCHED_SIDE))
    if not eligible or not uses_mkl():
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    lhs_perm, trans_a = _layout(lhs.ndim, lb, lc, lhs=True)
    rhs_perm, trans_b = _layout(rhs.ndim, rb, rc, lhs=False)
    a = jnp.transpose(lhs, lhs_perm).reshape((nb, k, m) if trans_a else (nb, m, k))
    b = jnp.transpose(rhs, rhs_perm).reshape((nb, n, k) if trans_b else (nb, k, n))
    y = gemm(a, b, trans_a, trans_b)
    return y.reshape(tuple(batch) + tuple(lhs_free) + tuple(rhs_free))


def einsum(subscripts: str, lhs: Array, rhs: Array, **kwargs) -> Array:
    """``jnp.einsum`` of two operands whose products go through :func:`dot_general`."""
    return jnp.einsum(subscripts, lhs, rhs, _dot_general=dot_general, **kwargs)
