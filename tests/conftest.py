"""Test set-up: 8 fake CPU devices, no TensorFlow in transformers, the shared data samples."""

import os
import sys

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the session and its subprocess workers: the same tiny
# steps are compiled by many tests, and XLA:CPU takes 10-30 s per compile on 2 cores.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/xstilts_test_jax_cache")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$XSTILTS_SHARED_DATA``, else ``../shared/data`` next to the repository root.

    A clone made elsewhere (CI may clone into a scratch folder) falls back to ``/work/shared/data``.
    """
    if "XSTILTS_SHARED_DATA" in os.environ:
        return Path(os.environ["XSTILTS_SHARED_DATA"])
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.exists():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"


def require_sample(relative: str) -> Path:
    """Path of a real data sample; in CI (XSTILTS_CI=1) a missing one fails, elsewhere it skips."""
    path = shared_data_dir() / relative
    if not path.exists():
        message = f"real data sample {path} is missing (set XSTILTS_SHARED_DATA to ../shared/data)"
        if os.environ.get("XSTILTS_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_libtpu(purpose: str) -> None:
    """libtpu (the ``tpu`` extra, which the test extra installs) for a deviceless TPU compile;
    in CI a missing one fails, elsewhere it skips."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        message = f"libtpu is not installed (pip install -e '.[tpu]'): no {purpose}"
        if os.environ.get("XSTILTS_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def shared_data():
    """Callable fixture: ``shared_data("tatoeba/v1")`` -> Path, failing in CI when absent."""
    return require_sample


@pytest.fixture(autouse=True)
def _seqio_registries_as_found():
    """seqio's Task and Mixture registries are process-global: a test that registers the
    project's tasks on its own data (``register_all``, ``SeqioBatches(vocabulary=...)``) would
    otherwise leave them pointing there for the next test on the same xdist worker, whatever
    module it belongs to. Each test gets back the registries it started with (module fixtures'
    registrations included: they are set up before this one)."""
    seqio = sys.modules.get("seqio")
    if seqio is None:
        yield
        return
    saved = [(r, dict(r._REGISTRY)) for r in (seqio.TaskRegistry, seqio.MixtureRegistry)]
    yield
    for registry, entries in saved:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(entries)


@pytest.fixture
def mkl(monkeypatch):
    """``XSTILTS_CPU_GEMM=mkl`` for one test; traces made before or after it are dropped, since
    the setting is read when a function is traced."""
    import jax

    from xstilts.models import cpu_gemm

    if not cpu_gemm.available():
        message = "MKL or a C++ compiler is missing (pip install 'xstilts[mkl]')"
        if os.environ.get("XSTILTS_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    jax.clear_caches()
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "mkl")
    yield
    monkeypatch.setenv("XSTILTS_CPU_GEMM", "xla")
    jax.clear_caches()
