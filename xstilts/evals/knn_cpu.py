"""Exact top-k both ways on CPU in one fused FFI call: BLAS products and threshold scans.

``knn.knn``'s XLA scorer selects each block's top-k lists with XLA ops between its matrix
products; on 50,000 x 50,000 x 1,024 it took 1.13-1.23x the time of this kernel
(``benchmarks/retrieval.py``, Intel Xeon, MKL). Here one custom call (``knn_cpu.cc``) does the
whole search: every ``[chunk, tile]`` block of scores comes from a BLAS sgemm and is scanned
once, right after, for both directions' top-k lists; a score is inserted only when it beats a
list's last entry (checked 16 at a time with SSE2 compares), so the scans cost ~5 % of the
products.

The sgemm (:func:`library`) is MKL's where ``cpu_gemm``'s MKL products are in use (Intel CPUs,
``XSTILTS_CPU_GEMM``), else numpy's own OpenBLAS where it runs AVX-512 kernels
(:data:`OPENBLAS_AVX512_CORES`; on an AMD EPYC, Zen 5, it reached 435-445 GFLOP/s one thread
per block against MKL's 170-196 and XLA's dot's 359-389), else none and ``knn.knn`` keeps the
XLA scorer. ``knn.knn(kernel="auto")`` uses it on a one-device CPU mesh, built like
``cpu_gemm.cc``, once per source and jaxlib version, into ``~/.cache/xstilts``. Similarities
equal the XLA scorer's (same products, summed in the BLAS's order); of equal scores the lower
index comes first.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from xstilts.models import cpu_gemm

TARGET = "xstilts_cpu_knn"
TILE_SIZE = 1024  # rows of y per product: 2,048 x 1,024 scores (8 MB) per core
LIBRARIES = ("mkl", "openblas")  # the handler's `library` attribute is the index
# OpenBLAS cores (``openblas_get_corename``) with AVX-512 sgemm kernels. numpy's OpenBLAS picks
# its core at load time, from ``OPENBLAS_CORETYPE`` where set: some machines here carry
# ``Haswell`` (AVX2, ~210 GFLOP/s here), where XLA's dot is faster and ``auto`` keeps XLA.
OPENBLAS_AVX512_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})
_SOURCE = Path(__file__).with_name("knn_cpu.cc")
# (sgemm, int width) as numpy's OpenBLAS builds name them: ILP64 (numpy >= 2 wheels) or LP64.
_OPENBLAS_SGEMMS = (("scipy_cblas_sgemm64_", 64), ("cblas_sgemm64_", 64),
                    ("scipy_cblas_sgemm", 32), ("cblas_sgemm", 32))
_OPENBLAS_SET_THREADS = ("openblas_set_num_threads_local",
                         "scipy_openblas_set_num_threads_local64_",
                         "scipy_openblas_set_num_threads_local")


@functools.cache
def _handler() -> ctypes.CDLL:
    """Builds and registers the handler (no BLAS yet); raises ``cpu_gemm.CpuGemmUnavailable``."""
    handler = ctypes.CDLL(str(cpu_gemm.build_ffi_library(_SOURCE)))
    handler.xstilts_knn_set_sgemm.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 3
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler.XstiltsCpuKnn),
                                platform="cpu")
    return handler


@functools.cache
def numpy_openblas() -> dict | None:
    """numpy's BLAS as threadpoolctl reports it (``filepath``, ``architecture`` = the OpenBLAS
    core in use, ``version``) when it is OpenBLAS (the one in numpy's folder first, else the
    first loaded); None otherwise."""
    found = [i for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
    found.sort(key=lambda i: "numpy" not in i.get("filepath", ""))
    return found[0] if found else None


def _address(lib: ctypes.CDLL, names) -> tuple[str, int] | None:
    for name in names:
        try:
            return name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except AttributeError:
            continue
    return None


@functools.cache
def load(library: str = "mkl") -> None:
    """Builds the handler and gives it ``library``'s sgemm ('mkl': sequential MKL; 'openblas':
    numpy's OpenBLAS, held at one thread while a search runs); raises
    ``cpu_gemm.CpuGemmUnavailable`` naming what is missing."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    handler = _handler()
    if library == "mkl":
        mkl = cpu_gemm.load_mkl()
        handler.xstilts_knn_set_sgemm(0, ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p), None,
                                      None)
        return
    info = numpy_openblas()
    if info is None:
        raise cpu_gemm.CpuGemmUnavailable("numpy's BLAS is not OpenBLAS, so the fused kernel "
                                          "has no OpenBLAS")
    blas = ctypes.CDLL(info["filepath"])  # the copy numpy already loaded
    sgemm = _address(blas, [name for name, _ in _OPENBLAS_SGEMMS])
    set_threads = _address(blas, _OPENBLAS_SET_THREADS)
    if sgemm is None or set_threads is None:
        raise cpu_gemm.CpuGemmUnavailable(
            f"{info['filepath']} (OpenBLAS {info.get('version')}) has no "
            f"{'cblas sgemm' if sgemm is None else 'openblas_set_num_threads_local (0.3.27+)'}")
    width = dict(_OPENBLAS_SGEMMS)[sgemm[0]]
    handler.xstilts_knn_set_sgemm(1, sgemm[1] if width == 32 else None,
                                  sgemm[1] if width == 64 else None, set_threads[1])


def library() -> str | None:
    """The sgemm ``kernel="auto"`` runs the fused kernel with in this process: 'mkl' where
    ``cpu_gemm.uses_mkl()``; else 'openblas' where ``cpu_gemm.auto_may_replace_xla()`` (``auto``,
    one CPU device) and numpy's OpenBLAS runs an AVX-512 core; else None (XLA's dot
    is the faster product here: the XLA scorer)."""
    if cpu_gemm.uses_mkl():
        return "mkl"
    if not cpu_gemm.auto_may_replace_xla():
        return None
    info = numpy_openblas()
    if info is None or info.get("architecture") not in OPENBLAS_AVX512_CORES:
        return None
    try:
        load("openblas")
    except cpu_gemm.CpuGemmUnavailable:
        return None
    return "openblas"


def usable(mesh: jax.sharding.Mesh) -> str | None:
    """The library ``kernel="auto"`` runs a search on ``mesh`` with (:func:`library`), or None:
    only on a mesh of one CPU device."""
    device = mesh.devices.flat[0]
    if mesh.devices.size != 1 or device.platform != "cpu":
        return None
    chosen = library()
    if chosen is not None:
        load(chosen)
    return chosen


def chunk_rows(n: int, chunk_size: int, parts: int) -> int:
    """Rows of x per unit of work: about ``chunk_size``, with the row count cut into a multiple
    of ``parts`` units of equal size (50,000 rows on 2 cores: 26 units of 1,924) so that no core
    idles at the end."""
    units = parts * max(1, math.ceil(n / (parts * chunk_size)))
    return max(1, math.ceil(n / units))


@functools.lru_cache(maxsize=32)
def compiled(n: int, m: int, dim: int, kx: int, ky: int, both: bool, chunk_size: int,
             tile_size: int, library: str = "mkl"):
    """The jitted search for ``x [n, dim]`` and ``y [m, dim]`` with ``library``'s sgemm:
    ``(row values [n, kx], row ids, column values [m, ky], column ids)`` (column outputs
    ``[0, ky]`` unless ``both``)."""
    load(library)
    parts = cpu_gemm.cores()
    chunk = chunk_rows(n, chunk_size, parts)
    cols = m if both else 0
    call = jax.ffi.ffi_call(TARGET, (
        jax.ShapeDtypeStruct((n, kx), jnp.float32), jax.ShapeDtypeStruct((n, kx), jnp.int32),
        jax.ShapeDtypeStruct((cols, ky), jnp.float32), jax.ShapeDtypeStruct((cols, ky), jnp.int32)))

    def search(x, y):
        return call(x, y, chunk=np.int64(chunk), tile=np.int64(min(tile_size, m)),
                    max_parts=np.int64(parts), library=np.int64(LIBRARIES.index(library)))

    return jax.jit(search)
