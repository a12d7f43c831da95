"""Exact top-k both ways on CPU in one fused FFI call: MKL products and threshold scans.

``knn.knn``'s XLA scorer selects each block's top-k lists with XLA ops between its matrix
products; on 50,000 x 50,000 x 1,024 it took 1.13-1.23x the time of this kernel
(``benchmarks/retrieval.py``). Here one custom call (``knn_cpu.cc``) does the whole search:
every ``[chunk, tile]`` block of scores comes from MKL's sgemm and is scanned once, right
after, for both directions' top-k lists; a score is inserted only when it beats a list's last
entry (checked 16 at a time with SSE2 compares), so the scans cost ~5 % of the products.

It is used by ``knn.knn(kernel="auto")`` on a one-device CPU mesh wherever ``cpu_gemm``'s MKL
products are (``XSTILTS_CPU_GEMM``; MKL from the ``mkl`` extra and a C++ compiler found), and
built like ``cpu_gemm.cc``, once per source and jaxlib version, into ``~/.cache/xstilts``.
Similarities equal the XLA scorer's; of equal scores the lower index comes first.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xstilts.models import cpu_gemm

TARGET = "xstilts_cpu_knn"
TILE_SIZE = 1024  # rows of y per product: 2,048 x 1,024 scores (8 MB) per core
_SOURCE = Path(__file__).with_name("knn_cpu.cc")


@functools.cache
def load() -> None:
    """Loads MKL, builds and registers the handler; raises ``cpu_gemm.CpuGemmUnavailable``."""
    mkl = cpu_gemm.load_mkl()
    handler = ctypes.CDLL(str(cpu_gemm.build_ffi_library(_SOURCE)))
    handler.xstilts_knn_set_sgemm.argtypes = [ctypes.c_void_p]
    handler.xstilts_knn_set_sgemm(ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler.XstiltsCpuKnn),
                                platform="cpu")


def usable(mesh: jax.sharding.Mesh) -> bool:
    """Whether ``kernel="auto"`` runs a search on ``mesh`` here: one CPU device, and MKL products
    in use (``cpu_gemm.uses_mkl``: ``XSTILTS_CPU_GEMM``, one CPU device in the process)."""
    device = mesh.devices.flat[0]
    if mesh.devices.size != 1 or device.platform != "cpu" or not cpu_gemm.uses_mkl():
        return False
    load()
    return True


def chunk_rows(n: int, chunk_size: int, parts: int) -> int:
    """Rows of x per unit of work: about ``chunk_size``, with the row count cut into a multiple
    of ``parts`` units of equal size (50,000 rows on 2 cores: 26 units of 1,924) so that no core
    idles at the end."""
    units = parts * max(1, math.ceil(n / (parts * chunk_size)))
    return max(1, math.ceil(n / units))


@functools.lru_cache(maxsize=32)
def compiled(n: int, m: int, dim: int, kx: int, ky: int, both: bool, chunk_size: int,
             tile_size: int):
    """The jitted search for ``x [n, dim]`` and ``y [m, dim]``: ``(row values [n, kx], row ids,
    column values [m, ky], column ids)`` (column outputs ``[0, ky]`` unless ``both``)."""
    load()
    parts = cpu_gemm.cores()
    chunk = chunk_rows(n, chunk_size, parts)
    cols = m if both else 0
    call = jax.ffi.ffi_call(TARGET, (
        jax.ShapeDtypeStruct((n, kx), jnp.float32), jax.ShapeDtypeStruct((n, kx), jnp.int32),
        jax.ShapeDtypeStruct((cols, ky), jnp.float32), jax.ShapeDtypeStruct((cols, ky), jnp.int32)))

    def search(x, y):
        return call(x, y, chunk=np.int64(chunk), tile=np.int64(min(tile_size, m)),
                    max_parts=np.int64(parts))

    return jax.jit(search)
