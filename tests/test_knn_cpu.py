"""The fused CPU search (``xstilts.evals.knn_cpu``) against brute force and the XLA scorer.

It runs with each sgemm it can use: MKL (conftest's ``mkl`` fixture) and numpy's OpenBLAS
(``blas`` below); skipped where one is missing, failed in CI. ``knn.knn`` runs it on one CPU
device; the session's 8 fake devices keep ``kernel="auto"`` on the XLA scorer unless
``XSTILTS_CPU_GEMM=mkl`` (the ``mkl`` fixture) or ``knn_cpu.library`` says otherwise.
"""

import os

import jax
import numpy as np
import pytest
import threadpoolctl
from test_evals_knn import assert_same_topk, brute_force, numpy_margins

from xstilts.evals import knn, knn_cpu
from xstilts.models import cpu_gemm


def require_openblas() -> None:
    """Loads numpy's OpenBLAS into the handler; skips where it cannot, fails in CI."""
    try:
        knn_cpu.load("openblas")
    except cpu_gemm.CpuGemmUnavailable as error:
        if os.environ.get("XSTILTS_CI") == "1":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(params=knn_cpu.LIBRARIES)
def blas(request, monkeypatch):
    """The fused kernel's sgemm for one test: MKL, or numpy's OpenBLAS whatever its core."""
    if request.param == "mkl":
        request.getfixturevalue("mkl")
    else:
        require_openblas()
        monkeypatch.setattr(knn_cpu, "library", lambda: "openblas")
    return request.param


def one_device():
    return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


CASES = [  # n, m, d, k, block_size, tile_size
    (1001, 1303, 33, 4, 64, 100),  # 16 units on 2 workers, tiles of 100 and a last one of 3
    (500, 2003, 16, 1, 2048, 1024),  # one unit per core, k=1, M not a multiple of 16
    (5, 3, 4, 4, 2048, 1024),  # k larger than M (capped at 3) and than N (capped at 5)
    (64, 700, 8, 3, 8, 7),  # 8 units, tiles of 7: every scan ends in a partial group
]


@pytest.mark.parametrize("n,m,d,k,block,tile", CASES)
def test_fused_search_equals_brute_force_and_the_xla_scorer(blas, n, m, d, k, block, tile):
    rng = np.random.default_rng(n + m)
    x = knn.l2_normalize(rng.standard_normal((n, d)))
    y = knn.l2_normalize(rng.standard_normal((m, d)))
    assert knn._fused("auto", one_device(), "auto", "auto") == blas
    threads = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    nb = knn.knn(x, y, k, block_size=block, tile_size=tile, mesh=one_device())
    # OpenBLAS ran one thread per unit; numpy's own setting is as it was.
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == threads
    sims, ref_xy, ord_xy, ref_yx, ord_yx = brute_force(x, y, k)
    assert_same_topk(sims, nb.sim_xy, nb.idx_xy, ref_xy, ord_xy)
    assert_same_topk(sims.T, nb.sim_yx, nb.idx_yx, ref_yx, ord_yx)
    assert nb.idx_xy.dtype == np.int64 and nb.sim_xy.dtype == np.float32
    fwd, bwd = knn.ratio_margins(nb)
    ref_fwd, ref_bwd = numpy_margins(nb.sim_xy, nb.idx_xy, nb.sim_yx, nb.idx_yx)
    np.testing.assert_allclose(fwd, ref_fwd, rtol=1e-5)
    np.testing.assert_allclose(bwd, ref_bwd, rtol=1e-5)
    xla = knn.knn(x, y, k, mesh=one_device(), kernel="xla")
    np.testing.assert_allclose(nb.sim_xy, xla.sim_xy, atol=1e-6)
    np.testing.assert_allclose(nb.sim_yx, xla.sim_yx, atol=1e-6)
    assert (nb.idx_xy == xla.idx_xy).mean() > 0.99 and (nb.idx_yx == xla.idx_yx).mean() > 0.99
    one_way = knn.knn(x, y, k, both=False, block_size=block, tile_size=tile, mesh=one_device())
    assert one_way.sim_yx is None
    np.testing.assert_array_equal(one_way.idx_xy, nb.idx_xy)


def test_ties_go_to_the_lower_index_however_units_are_shared(blas):
    """Every similarity tied: each direction's lists hold the lowest indices, in order, whether
    one worker sees all rows or rows are cut in 1-row units taken by both workers."""
    x = np.eye(4, dtype=np.float32)
    y = np.concatenate([np.eye(4)] * 3).astype(np.float32)  # y rows r, r+4, r+8 equal
    for block in (2048, 1):
        nb = knn.knn(x, y, 3, block_size=block, tile_size=5, mesh=one_device())
        np.testing.assert_array_equal(nb.idx_xy, [[r, r + 4, r + 8] for r in range(4)])
        np.testing.assert_array_equal(nb.sim_xy, np.ones((4, 3)))
        # y row j: similarity 1 with x row j % 4, 0 with the three others (lowest first).
        expected = [[j % 4] + [i for i in range(4) if i != j % 4][:2] for j in range(12)]
        np.testing.assert_array_equal(nb.idx_yx, expected)
        np.testing.assert_array_equal(nb.sim_yx, np.tile([[1.0, 0.0, 0.0]], (12, 1)))


def test_units_are_cut_evenly_over_the_cores():
    assert knn_cpu.chunk_rows(50_000, 2048, 2) == 1924  # 26 units, 13 per core
    assert knn_cpu.chunk_rows(5, 2048, 2) == 3  # 2 units, one per core
    assert knn_cpu.chunk_rows(1, 2048, 4) == 1


def test_kernel_choice_is_checked(mkl, monkeypatch):
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="kernel must be 'auto', 'fused' or 'xla'"):
        knn.knn(x, x, 1, kernel="faiss")
    eight = jax.make_mesh((8,), ("data",))
    with pytest.raises(ValueError, match="one CPU device, not on a mesh of 8 cpu devices"):
        knn.knn(x, x, 1, mesh=eight, kernel="fused")
    # 'auto' keeps the XLA scorer when a method is asked for, or MKL products are off.
    assert not knn._fused("auto", one_device(), "sort", "auto")
    assert not knn._fused("auto", eight, "auto", "auto")
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "xla")
    assert not knn._fused("auto", one_device(), "auto", "auto")
    assert knn._fused("fused", one_device(), "auto", "auto")


def test_auto_picks_mkl_then_an_avx512_openblas_else_xla(monkeypatch):
    """``knn_cpu.library()``: MKL where ``cpu_gemm`` uses it; else numpy's OpenBLAS only on an
    AVX-512 core (with ``OPENBLAS_CORETYPE=Haswell`` XLA's dot is faster), one CPU device and
    ``XSTILTS_CPU_GEMM`` not ``xla``."""
    info = knn_cpu.numpy_openblas()
    if info is None:
        (pytest.fail if os.environ.get("XSTILTS_CI") == "1" else pytest.skip)(
            "numpy's BLAS is not OpenBLAS")
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "auto")
    assert jax.device_count() == 8 and knn_cpu.library() is None  # the fake mesh: XLA
    monkeypatch.setattr(cpu_gemm.jax, "device_count", lambda: 1)
    monkeypatch.setattr(cpu_gemm, "uses_mkl", lambda: False)
    for core, expected in (("SkylakeX", "openblas"), ("SapphireRapids", "openblas"),
                           ("Haswell", None), ("Prescott", None)):
        monkeypatch.setattr(knn_cpu, "numpy_openblas", lambda c=core: {**info, "architecture": c})
        assert knn_cpu.library() == expected, core
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "xla")
    assert knn_cpu.library() is None
    monkeypatch.setattr(cpu_gemm, "uses_mkl", lambda: True)
    assert knn_cpu.library() == "mkl"
    with pytest.raises(ValueError, match="library must be one of"):
        knn_cpu.load("blis")


def test_concurrent_openblas_searches_restore_numpys_thread_count():
    """OpenBLAS's thread count is process-wide: two searches at once leave it as it was."""
    from concurrent.futures import ThreadPoolExecutor

    require_openblas()
    rng = np.random.default_rng(5)
    x = knn.l2_normalize(rng.standard_normal((3000, 64)))
    y = knn.l2_normalize(rng.standard_normal((2000, 64)))
    threads = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    search = knn_cpu.compiled(3000, 2000, 64, 4, 4, True, 64, 256, "openblas")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [np.asarray(a) for a in search(x, y)], range(8)))
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == threads
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            np.testing.assert_array_equal(a, b)
