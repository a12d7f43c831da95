"""The jit blockwise scorer against brute force (full matrix, argsort in numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xstilts.evals import knn


def brute_force(x, y, k):
    sims = x.astype(np.float64) @ y.T.astype(np.float64)
    order_xy = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, y.shape[0])]
    order_yx = np.argsort(-sims.T, axis=1, kind="stable")[:, : min(k, x.shape[0])]
    return (sims, np.take_along_axis(sims, order_xy, 1), order_xy,
            np.take_along_axis(sims.T, order_yx, 1), order_yx)


def assert_same_topk(sims_full, sim, idx, ref_sim, ref_idx):
    """Equal up to ties: same sorted values, indices distinct and pointing at those values, and
    any index that differs from the argsort has a value tied with the reference's."""
    assert sim.shape == ref_sim.shape and idx.shape == ref_idx.shape
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sims_full, idx, 1), sim, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in idx.tolist())
    differs = idx != ref_idx
    np.testing.assert_allclose(sim[differs], ref_sim[differs], atol=1e-5)
    assert differs.mean() < 0.01  # random data: ties are rare


def numpy_margins(s_xy, i_xy, s_yx, i_yx):
    fwd = np.empty_like(s_xy)
    for i in range(s_xy.shape[0]):  # XTREME score_candidates, element by element
        for j in range(s_xy.shape[1]):
            fwd[i, j] = s_xy[i, j] / ((s_xy[i].mean() + s_yx[i_xy[i, j]].mean()) / 2)
    bwd = s_yx / ((s_yx.mean(1)[:, None] + s_xy.mean(1)[i_yx]) / 2)
    return fwd, bwd


def mesh_of(devices):
    assert jax.device_count() >= devices, "tests expect 8 fake CPU devices (conftest)"
    return jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])


CASES = [  # n, m, d, k, block_size, devices, row_group, col_group (tiles of <= 1024 columns)
    (1001, 1500, 32, 4, 128, 1, 16, 8),  # two-stage both ways, 2 tiles of 750, padding rows
    (500, 1303, 16, 1, 100, 1, 16, 8),   # k=1, M prime: padded, masked columns
    (1001, 2003, 32, 4, 96, 8, 16, 8),   # 8 devices, padding rows and columns
    (333, 5003, 16, 1, 64, 8, 64, 8),    # 8 devices, k=1, N < one block per device
    (777, 640, 8, 4, 200, 8, 1, 1),      # plain lax.top_k path
    (5, 3, 4, 4, 2048, 8, 80, 8),        # k larger than M: capped at M (and at N)
    (338, 999, 16, 4, 64, 8, 16, 8),     # device 7's block has 2 valid rows: < k valid groups
    (600, 1100, 16, 3, 200, 1, 16, 1),   # column top-k by insertion over every row (group 1)
    (480, 1500, 16, 4, 240, 2, 16, 7),   # col group 7 -> 6 (a divisor of 240); tiles of 750
]


@pytest.mark.parametrize("n,m,d,k,block,devices,row_group,col_group,method",
                         [(*case, "auto") for case in CASES]
                         + [(*CASES[0], "sort"), (*CASES[6], "sort"), (*CASES[1], "sort"),
                            (*CASES[4], "sort")])  # the GPU/TPU path
def test_knn_equals_brute_force(n, m, d, k, block, devices, row_group, col_group, method):
    rng = np.random.default_rng(n + m)
    x = knn.l2_normalize(rng.standard_normal((n, d)))
    y = knn.l2_normalize(rng.standard_normal((m, d)))
    nb = knn.knn(x, y, k, block_size=block, mesh=mesh_of(devices), row_group=row_group,
                 col_group=col_group, tile_size=1024, col_method=method,
                 row_method="select" if method == "auto" else method)
    plan = knn._plan(n, m, d, k, True, devices, block, row_group, col_group, 1024)
    two_stage = (plan.row_group > 1, plan.col_group > 1)
    assert two_stage == (row_group > 1 and n > 5, col_group > 1 and n > 5)
    full, s_xy, i_xy, s_yx, i_yx = brute_force(x, y, k)
    assert_same_topk(full, nb.sim_xy, nb.idx_xy, s_xy, i_xy)
    assert_same_topk(full.T, nb.sim_yx, nb.idx_yx, s_yx, i_yx)
    fwd, bwd = knn.ratio_margins(nb)
    ref_fwd, ref_bwd = numpy_margins(s_xy, i_xy, s_yx, i_yx)
    np.testing.assert_allclose(fwd, ref_fwd, atol=1e-5)
    np.testing.assert_allclose(bwd, ref_bwd, atol=1e-5)


def test_knn_one_direction_and_block_plan():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((450, 8))  # not normalised
    nb = knn.knn(x, y, 3, both=False, block_size=64, mesh=mesh_of(8))
    full, s_xy, i_xy, _, _ = brute_force(x, y, 3)
    assert nb.sim_yx is None and nb.idx_yx is None
    assert_same_topk(full, nb.sim_xy, nb.idx_xy, s_xy, i_xy)
    # 50,000 rows and a 2,048 block: 25 blocks of exactly 2,000 rows, no padding to mask;
    # 50,000 columns: 20 tiles of 2,500, each 100 groups of 25, no padding either.
    plan = knn._plan(50_000, 50_000, 1024, 4, True, 1, 2048, 25, 25, 2500)
    assert (plan.steps, plan.block, plan.rows_padded) == (25, 2000, False)
    assert (plan.tile, plan.row_group, plan.m_padded) == (2500, 25, 50_000)
    assert plan.col_group == 25  # 80 groups of 25 rows per block of 2,000
    assert knn._plan(480, 1500, 16, 4, True, 2, 240, 16, 7, 1024).col_group == 6


def test_column_topk_insertion_and_tiles():
    """The y->x side alone: exact against a full sort for every group size, with ties across
    groups, padded rows masked, and the running lists merged over several calls."""
    rng = np.random.default_rng(7)
    s = rng.integers(0, 5, (120, 33)).astype(np.float32)  # many ties
    ref = -np.sort(-s, axis=0)[:4]
    topk_into = jax.jit(knn._topk_first_into, static_argnums=1)
    for group in (1, 3, 20):
        acc = (jnp.full((4, 33), -np.inf), jnp.full((4, 33), -1, jnp.int32))
        for half in (0, 60):  # two blocks of 60 rows merged into the same lists
            acc = topk_into(jnp.asarray(s[half:half + 60]), group, *acc, jnp.int32(half))
        v, i = map(np.asarray, acc)
        np.testing.assert_array_equal(v, ref)
        np.testing.assert_array_equal(np.take_along_axis(s, i, axis=0), v)
        assert all(len(set(col)) == 4 for col in i.T.tolist())
    valid = jnp.arange(60) < 2  # only rows 0 and 1 count: 2 of 4 slots filled
    v, i = topk_into(jnp.asarray(s[:60]), 6, jnp.full((4, 33), -np.inf),
                     jnp.full((4, 33), -1, jnp.int32), jnp.int32(0), valid)
    np.testing.assert_array_equal(np.asarray(v)[:2], -np.sort(-s[:2], axis=0))
    assert (np.asarray(i)[2:] == -1).all() and (np.asarray(v)[2:] == -np.inf).all()
    assert set(np.asarray(i)[:2].ravel()) <= {0, 1}


def test_row_topk_selection_and_tiles():
    """The x->y side alone: exact against a full sort for every group size, with ties across
    groups, masked columns, and the running lists merged over several tiles."""
    rng = np.random.default_rng(8)
    s = rng.integers(0, 5, (33, 120)).astype(np.float32)  # many ties
    ref = -np.sort(-s, axis=1)[:, :4]
    topk_into = jax.jit(knn._topk_last_into, static_argnums=1)
    for group in (1, 3, 6):
        acc = (jnp.full((4, 33), -np.inf), jnp.full((4, 33), -1, jnp.int32))
        for half in (0, 60):  # two tiles of 60 columns merged into the same lists
            acc = topk_into(jnp.asarray(s[:, half:half + 60]), group, *acc, jnp.int32(half))
        v, i = (np.asarray(a).T for a in acc)
        np.testing.assert_array_equal(v, ref)
        np.testing.assert_array_equal(np.take_along_axis(s, i, axis=1), v)
        assert all(len(set(row)) == 4 for row in i.tolist())
    valid = jnp.arange(60) < 2  # only columns 0 and 1 count: 2 of 4 slots filled
    v, i = topk_into(jnp.asarray(s[:, :60]), 6, jnp.full((4, 33), -np.inf),
                     jnp.full((4, 33), -1, jnp.int32), jnp.int32(0), valid)
    np.testing.assert_array_equal(np.asarray(v)[:2].T, -np.sort(-s[:, :2], axis=1))
    assert (np.asarray(i)[2:] == -1).all() and (np.asarray(v)[2:] == -np.inf).all()
    assert set(np.asarray(i)[:2].ravel()) <= {0, 1}
    # Of equal values the running lists' entries (earlier tiles) come first.
    ones = jnp.ones((2, 12), jnp.float32)
    v, i = topk_into(ones, 3, jnp.ones((4, 2)), jnp.full((4, 2), 7, jnp.int32), jnp.int32(100))
    assert (np.asarray(i) == 7).all()


def test_knn_ties_are_broken_consistently():
    x = np.eye(4, dtype=np.float32)
    y = np.concatenate([np.eye(4), np.eye(4)]).astype(np.float32)  # every sim tied twice
    nb = knn.knn(x, y, 2, mesh=mesh_of(1))
    np.testing.assert_array_equal(nb.sim_xy, np.ones((4, 2)))
    assert all({int(a) % 4, int(b) % 4} == {r} for r, (a, b) in enumerate(nb.idx_xy))
    # y -> x: each row of y has one sim of 1 and three of 0, tied; the 0s are any other rows.
    np.testing.assert_array_equal(nb.sim_yx, np.tile([[1.0, 0.0]], (8, 1)))
    assert [int(i) for i in nb.idx_yx[:, 0]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(a != b for a, b in nb.idx_yx)


def test_knn_bad_input():
    good = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="x has dimension 4 but y has 5"):
        knn.knn(good, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"y \(index\): expected a non-empty"):
        knn.knn(good, np.ones((0, 4)))
    with pytest.raises(ValueError, match=r"row 1 has a NaN"):
        knn.knn(np.array([[1.0, 0], [np.nan, 0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="col_method must be"):
        knn.knn(good, good, 1, col_method="approx")
    with pytest.raises(ValueError, match="row_method must be"):
        knn.knn(good, good, 1, row_method="approx")
    assert knn._row_select("auto", mesh_of(1))  # CPU: selection
    assert knn._col_insert("auto", mesh_of(1))  # CPU: insertion
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn.knn(good, good, 0)
    with pytest.raises(ValueError, match="both directions"):
        knn.ratio_margins(knn.knn(good, good, 1, both=False, mesh=mesh_of(1)))
