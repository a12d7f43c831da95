"""The MKL product (``xstilts.models.cpu_gemm``) against numpy, XLA's dot and Hugging Face.

The test session has 8 fake CPU devices, where ``XSTILTS_CPU_GEMM=auto`` keeps XLA's dot, so
these tests ask for ``mkl`` explicitly (conftest's ``mkl`` fixture). Without MKL installed they
skip, except in CI (``XSTILTS_CI=1``, which installs the ``mkl`` extra), where they fail.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import make_hf_model, padded_batch

from xstilts.evals import knn
from xstilts.models import cpu_gemm, heads
from xstilts.models.convert import load_hf_checkpoint, task_params

torch = pytest.importorskip("torch")


def _reference(a, b, trans_a, trans_b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


# (m, k, n): odd sizes in one block; rows cut in blocks (m large); columns cut (m small, n large).
SHAPES = [(13, 7, 5), (512, 256, 384), (8, 512, 4100)]


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_and_its_gradients_equal_float64(mkl, m, k, n, trans_a, trans_b):
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    dc = rng.standard_normal((m, n)).astype(np.float32)
    f = jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_a, trans_b))
    assert "xstilts_cpu_gemm" in f.lower(a, b).as_text()
    c, vjp = jax.vjp(f, a, b)
    ref = _reference(a, b, trans_a, trans_b)
    np.testing.assert_allclose(np.asarray(c), ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    da, db = vjp(dc)
    # C = op(A) op(B): dA = (dC op(B)^T) or its transpose; dB likewise.
    ref_da = _reference(dc, b, False, not trans_b)
    ref_db = _reference(a, dc, not trans_a, False)
    np.testing.assert_allclose(np.asarray(da), ref_da.T if trans_a else ref_da,
                               rtol=1e-4, atol=1e-4 * np.sqrt(n))
    np.testing.assert_allclose(np.asarray(db), ref_db.T if trans_b else ref_db,
                               rtol=1e-4, atol=1e-4 * np.sqrt(m))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_batched_gemm_and_its_gradients_equal_float64(mkl, trans_a, trans_b):
    """[B, M, K] x [B, K, N]: ranges of the batch go to the parts (MKL's strided batch call)."""
    rng = np.random.default_rng(3)
    nb, m, k, n = 6, 40, 64, 72
    a = rng.standard_normal((nb, k, m) if trans_a else (nb, m, k)).astype(np.float32)
    b = rng.standard_normal((nb, n, k) if trans_b else (nb, k, n)).astype(np.float32)
    dc = rng.standard_normal((nb, m, n)).astype(np.float32)
    c, vjp = jax.vjp(jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_a, trans_b)), a, b)
    da, db = vjp(dc)
    for i in range(nb):
        np.testing.assert_allclose(np.asarray(c[i]), _reference(a[i], b[i], trans_a, trans_b),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(k))
        ref_da = _reference(dc[i], b[i], False, not trans_b)
        ref_db = _reference(a[i], dc[i], not trans_a, False)
        np.testing.assert_allclose(np.asarray(da[i]), ref_da.T if trans_a else ref_da,
                                   rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.asarray(db[i]), ref_db.T if trans_b else ref_db,
                                   rtol=1e-4, atol=1e-3)


def test_dot_general_and_einsum_route_float32_products(mkl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    w = rng.standard_normal((4, 6, 7)).astype(np.float32)
    q = rng.standard_normal((2, 40, 3, 32)).astype(np.float32)
    kv = rng.standard_normal((2, 48, 3, 32)).astype(np.float32)
    cases = [  # (lhs, rhs, dimension numbers, goes to MKL)
        (x, w, (((2, 3), (0, 1)), ((), ())), True),  # an attention output projection
        (x, w.transpose(2, 0, 1), (((2, 3), (1, 2)), ((), ())), True),  # a tied embedding
        (x.transpose(2, 3, 0, 1), w, (((0, 1), (0, 1)), ((), ())), True),  # leading dims
        (x, w.transpose(1, 0, 2), (((2, 3), (1, 0)), ((), ())), True),  # crossed: transposed
        (q, kv, (((3,), (3,)), ((0, 2), (0, 2))), True),  # attention scores, heads batched
        (x[..., 0], x[..., 1], (((2,), (2,)), ((0,), (0,))), False),  # batched, 5x5 matrices
    ]
    for lhs, rhs, dims, routed in cases:
        f = jax.jit(lambda a, b, dims=dims: cpu_gemm.dot_general(a, b, dims))
        assert ("xstilts_cpu_gemm" in f.lower(lhs, rhs).as_text()) == routed, dims
        np.testing.assert_allclose(np.asarray(f(lhs, rhs)),
                                   np.asarray(jax.lax.dot_general(lhs, rhs, dims)),
                                   rtol=1e-5, atol=1e-5)
    probs = rng.standard_normal((2, 3, 40, 48)).astype(np.float32)
    for spec, a, b in (("bqhd,bkhd->bhqk", q, kv), ("bhqk,bkhd->bqhd", probs, kv)):
        f = jax.jit(lambda a, b, spec=spec: cpu_gemm.einsum(spec, a, b))
        assert "xstilts_cpu_gemm" in f.lower(a, b).as_text()
        np.testing.assert_allclose(np.asarray(f(a, b)), np.einsum(spec, a, b),
                                   rtol=1e-5, atol=1e-4)
    bf16 = jax.jit(lambda a, b: cpu_gemm.dot_general(a, b, (((2, 3), (0, 1)), ((), ()))))
    assert "xstilts_cpu_gemm" not in bf16.lower(x.astype(jnp.bfloat16),
                                                w.astype(jnp.bfloat16)).as_text()


def test_masked_lm_equals_hugging_face_and_xla_gradients(mkl, tmp_path, monkeypatch):
    """The tiny MLM model (dense layers and the tied-embedding logits through MKL) against
    transformers' logits, and its gradients against XLA's dot's."""
    ids, mask = padded_batch()
    hf = make_hf_model("XLMRobertaForMaskedLM", seed=3)
    hf.save_pretrained(tmp_path)
    config, loaded = load_hf_checkpoint(tmp_path)
    model = heads.XLMRForMaskedLM(config)
    fresh = model.init(jax.random.key(0), ids, mask)["params"]
    params = task_params(loaded, jax.tree.map(np.asarray, jax.device_get(
        __import__("flax").linen.unbox(fresh))))

    def loss(p):
        logits = model.apply({"params": p}, ids, mask)
        return (jax.nn.log_softmax(logits) * (ids[..., None] == jnp.arange(logits.shape[-1]))
                ).sum(), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    assert "xstilts_cpu_gemm" in step.lower(params).as_text()
    (value, logits), grads = step(params)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
    assert float(np.abs(np.asarray(logits) - theirs).max()) < 1e-5
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "xla")
    jax.clear_caches()
    xla_step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    assert "xstilts_cpu_gemm" not in xla_step.lower(params).as_text()
    (xla_value, _), xla_grads = xla_step(params)
    np.testing.assert_allclose(float(value), float(xla_value), rtol=1e-5)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(xla_grads))
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(xla_grads), strict=True):
        assert float(np.abs(np.asarray(ours) - np.asarray(ref)).max()) <= 1e-5 * scale


def test_knn_through_mkl_equals_brute_force(mkl):
    rng = np.random.default_rng(5)
    x = knn.l2_normalize(rng.standard_normal((300, 32)))
    y = knn.l2_normalize(rng.standard_normal((410, 32)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (knn.DATA_AXIS,))
    nb = knn.knn(x, y, 4, block_size=128, tile_size=256, mesh=mesh)
    sims = x.astype(np.float64) @ y.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    np.testing.assert_allclose(nb.sim_xy, np.take_along_axis(sims, order, 1), atol=1e-5)
    assert (nb.idx_xy == order).mean() > 0.99
    order_yx = np.argsort(-sims.T, axis=1, kind="stable")[:, :4]
    np.testing.assert_allclose(nb.sim_yx, np.take_along_axis(sims.T, order_yx, 1), atol=1e-5)


def test_settings_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="XSTILTS_CPU_GEMM='fast'.*auto"):
        cpu_gemm.uses_mkl()
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "auto")
    assert jax.device_count() == 8 and not cpu_gemm.uses_mkl()  # the fake mesh keeps XLA's dot
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "xla")
    assert not cpu_gemm.uses_mkl()
    missing = tmp_path / "libmkl_rt.so.3"
    monkeypatch.setenv("XSTILTS_MKL_LIB", str(missing))
    with pytest.raises(cpu_gemm.CpuGemmUnavailable, match=str(missing)):
        cpu_gemm.open_mkl()


def test_auto_uses_mkl_on_intel_cpus_only(monkeypatch, tmp_path):
    """``auto`` with one CPU device: MKL on GenuineIntel, XLA's dot on AuthenticAMD (where MKL
    runs its slower kernels) and where the vendor is unknown."""
    if not cpu_gemm.available():
        (pytest.fail if os.environ.get("XSTILTS_CI") == "1" else pytest.skip)(
            "MKL or a C++ compiler is missing")
    intel, amd = tmp_path / "intel", tmp_path / "amd"
    intel.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert cpu_gemm.cpu_vendor(str(intel)) == "GenuineIntel"
    assert cpu_gemm.cpu_vendor(str(amd)) == "AuthenticAMD"
    assert cpu_gemm.cpu_vendor(str(tmp_path / "missing")) == ""
    assert cpu_gemm.cpu_vendor() in ("GenuineIntel", "AuthenticAMD", "")  # this machine's
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "auto")
    monkeypatch.setattr(cpu_gemm.jax, "device_count", lambda: 1)
    read_vendor = cpu_gemm.cpu_vendor
    for path, expected in ((intel, True), (amd, False), (tmp_path / "missing", False)):
        monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda p=str(path): read_vendor(p))
        cpu_gemm._auto_reason.cache_clear()
        assert cpu_gemm.uses_mkl() is expected, path.name
        if not expected:
            assert "XSTILTS_CPU_GEMM=mkl forces it" in cpu_gemm._auto_reason()
    cpu_gemm._auto_reason.cache_clear()


def test_beam_search_through_mkl_equals_hugging_face(mkl, tmp_path):
    """The NMT decoder (every projection and the tied logits through MKL): num_beams=4 gives
    ``generate()``'s tokens."""
    from nmt_reference import make_hf_nmt, source_batch

    from xstilts.decoding import DecodeSettings, generate
    from xstilts.models.nmt_convert import load_nmt_checkpoint

    hf = make_hf_nmt("nllb", seed=11, eos_boost=0.2)
    hf.save_pretrained(tmp_path)
    config, params = load_nmt_checkpoint(tmp_path)
    lang = config.vocab_size - 4
    ids, mask = source_batch(config.vocab_size, lengths=(9, 5, 2, 7, 3), seed=7,
                             lang_id=config.vocab_size - 2)
    settings = DecodeSettings(num_beams=4, max_length=12)
    ours, _ = generate(config, params, ids, mask, lang, settings)
    with torch.no_grad():
        theirs = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long), num_beams=4,
                             max_length=12, do_sample=False, forced_bos_token_id=lang).numpy()
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == config.pad_token_id).all()


def test_a_deviceless_tpu_trace_never_gets_the_custom_call(mkl):
    """``xstilts.aot --topology`` traces on this CPU host under a TPU mesh: even with
    ``XSTILTS_CPU_GEMM=mkl`` its products stay XLA dots (the TPU compiler has no such target)."""
    from tests.conftest import require_libtpu
    from xstilts import aot

    require_libtpu("deviceless TPU trace")
    assert cpu_gemm.uses_mkl()
    mesh = jax.sharding.Mesh(np.array(aot.topology_devices("v5e:2x2")), ("data",))
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    w = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    with jax.set_mesh(mesh):
        assert not cpu_gemm.uses_mkl()
        lowered = jax.jit(lambda x, w: cpu_gemm.dot_general(x, w, (((1,), (0,)), ((), ())))
                          ).lower(x, w)
    assert "xstilts_cpu_gemm" not in lowered.as_text()
