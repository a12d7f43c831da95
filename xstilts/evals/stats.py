"""Paired intervals for differences between two arms over runs and test examples, Holm, std."""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from xstilts.evals import metrics

# With one paired run there is no estimate of run-to-run variance, the component that
# dominates when an intermediate run is shared (the test suite's simulation: percentile
# intervals without it cover a true zero difference far less often than they claim).
MIN_RUNS = 2
RESAMPLES = 2000
_CHUNK = 256  # example resamples per block: bounds the [block, n] count matrix


# ------------------------------------------------------------------------- descriptive
def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if values.size >= 2 else None


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample std or None) of a non-empty sequence."""
    if len(values) == 0:
        raise ValueError("mean_std: no values")
    return float(np.mean(values)), sample_std(values)


# ---------------------------------------------------------------------- Student's t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (``inf``: the normal)."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom {df}: expected > 0")
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(-x / math.sqrt(2))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def t_two_sided(x: float, df: float) -> float:
    """P(|T| >= |x|), computed from the tail (no 1 − cdf cancellation)."""
    if math.isinf(df) or df > 1e7:
        return math.erfc(abs(x) / math.sqrt(2))
    return _betainc(df / 2.0, 0.5, df / (df + x * x))


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on ``t_cdf``)."""
    if not 0 < q < 1:
        raise ValueError(f"t_ppf: probability {q}: expected a number in (0, 1)")
    if math.isinf(df) or df > 1e7:
        return NormalDist().inv_cdf(q)
    if q < 0.5:
        return -t_ppf(1 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-13 * max(1.0, high):
            break
    return (low + high) / 2


# ------------------------------------------------------------------------------ Holm
def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in input order (None / NaN: not in the family)."""
    present = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    order = sorted(present, key=lambda i: pvalues[i])
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------- the arms
@dataclasses.dataclass(frozen=True)
class Arm:
    """One config's runs on one (task, language) cell.

    ``full[k]``: the metric's primary number of run k on the whole test set; ``draws[r, k]``:
    the same on example resample r (the same resampled examples for every run and for every
    arm of the cell); None for a run-level score without per-example statistics (retrieval).
    """

    full: np.ndarray
    draws: np.ndarray | None


def _counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, n]: how often each example is drawn in each bootstrap resample."""
    picks = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)


def _rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def arm(metric: str, runs: Sequence[np.ndarray | float], *, key: str = "",
        resamples: int = RESAMPLES, seed: int = 0) -> Arm:
    """The arm of a cell from per-run per-example stats ``[n, k]`` (``metrics.*_stats``) or
    per-run scores (floats: run-level only).

    Example resamples depend only on (``key``, ``seed``, n): give both arms of a cell the same
    key, and cells with parallel test sets (XNLI's languages are translations of the same
    examples) the same key to resample the same examples in every language.
    """
    return arms(metric, {"": runs}, key=key, resamples=resamples, seed=seed)[""]


def arms(metric: str, runs: Mapping[str, Sequence[np.ndarray | float]], *, key: str = "",
         resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Arm]:
    """``arm`` for several configs of one cell at once (one set of example resamples)."""
    out: dict[str, Arm] = {}
    tables: dict[str, list[np.ndarray]] = {}
    for name, per_run in runs.items():
        if not per_run:
            raise ValueError(f"arm {key!r}: {name or 'arm'} has no runs")
        arrays = [np.asarray(r, dtype=np.float64) for r in per_run]
        if all(a.ndim == 0 for a in arrays):
            out[name] = Arm(np.array([float(a) for a in arrays]), None)
        else:
            tables[name] = arrays
    shapes = {a.shape for arrays in tables.values() for a in arrays}
    if tables and (len(shapes) != 1 or len(next(iter(shapes))) != 2):
        raise ValueError(f"arm {key!r}: every run needs stats of one shape [n, k] over the same "
                         f"test examples, got shapes {sorted(shapes)}")
    if not tables:
        return out
    primary = metrics.primary(metric)
    n, width = next(iter(shapes))
    names = list(tables)
    runs_of = [len(tables[name]) for name in names]
    stacked = np.concatenate([a for name in names for a in tables[name]], axis=1)
    rng = _rng(key, seed)
    sums = []  # one product per block for every run of every config: [block, runs, width]
    for start in range(0, resamples, _CHUNK):
        counts = _counts(n, min(_CHUNK, resamples - start), rng).astype(np.float64)
        sums.append((counts @ stacked).reshape(counts.shape[0], -1, width))
    values = metrics.reduce_sums(metric, np.concatenate(sums), n)[primary]  # [R, all runs]
    for name, first in zip(names, np.cumsum([0, *runs_of[:-1]]), strict=True):
        full = np.array([metrics.reduce_stats(metric, a)[primary] for a in tables[name]])
        out[name] = Arm(full, values[:, first:first + len(tables[name])])
    return out


# ------------------------------------------------------------------------ the interval
@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference (b − a): estimate, interval, SE, df and two-sided p (None: the
    number of paired runs does not support an interval)."""

    estimate: float
    runs: int
    low: float | None = None
    high: float | None = None
    se: float | None = None
    df: float | None = None
    p: float | None = None
    confidence: float = 0.95

    @property
    def supported(self) -> bool:
        return self.low is not None

    def text(self, digits: int = 2) -> str:
        if not self.supported:
            return f"n/a ({self.runs} run{'s' if self.runs != 1 else ''})"
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _differences(pairs: Sequence[tuple[Arm, Arm]], weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted (b − a) per run on the full data [K] and per example resample [R, K]."""
    runs = {len(a.full) for pair in pairs for a in pair}
    if len(runs) != 1:
        raise ValueError(f"paired interval: cells have different numbers of runs {sorted(runs)}")
    sizes = {x.draws.shape[0] for pair in pairs for x in pair if x.draws is not None}
    if len(sizes) > 1:
        raise ValueError(f"paired interval: arms with different resample counts {sizes}")
    full = sum(w * (b.full - a.full) for w, (a, b) in zip(weights, pairs, strict=True))
    if not sizes:
        return full, None
    draws = 0.0
    for w, (a, b) in zip(weights, pairs, strict=True):
        da = a.draws if a.draws is not None else a.full[None, :]
        db = b.draws if b.draws is not None else b.full[None, :]
        draws = draws + w * (db - da)
    return full, draws


def paired_interval(pairs: Sequence[tuple[Arm, Arm]], weights: Sequence[float] | None = None,
                    *, confidence: float = 0.95, min_runs: int = MIN_RUNS) -> Interval:
    """Hierarchical paired bootstrap interval of the weighted mean over cells of b − a.

    Units: runs (run k of ``a`` paired with run k of ``b``), crossed with the test examples of
    each cell (shared by all runs and both arms). The estimate is the mean over runs of
    d_k = sum_c w_c (b_kc − a_kc). Its variance has three parts: run effects, example effects
    shared by all runs, and per-run example noise. The run-level bootstrap variance is the
    closed form var_ddof0(d) / K (the statistic is a mean over runs), inflated by K / (K − 1)
    to s²/K, which holds run effects and per-run noise; the example-level part comes from
    bootstrap resamples of the examples: with v̄ the mean over runs of each run's resample
    variance and V that of the run mean, (K V − v̄) / (K − 1) estimates the shared-example
    part alone (resampling both levels would count the per-run noise twice; Owen 2007, "The
    pigeonhole bootstrap"). SE² is their sum; the interval is estimate ± t_{K−1} SE and p the
    two-sided t p-value. df = K − 1 is exact when the run part dominates and conservative
    otherwise; Welch–Satterthwaite df (more than K − 1 when the example part is large) covered
    about 2 points less than nominal in the simulation, because a spuriously positive example
    part raised the df.
    """
    if not pairs:
        raise ValueError("paired interval: no cells")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a number in (0, 1)")
    w = np.ones(len(pairs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(pairs),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"paired interval: weights {list(w)}: expected {len(pairs)} "
                         f"non-negative numbers with a positive sum")
    full, draws = _differences(pairs, w / w.sum())
    runs = full.size
    estimate = float(full.mean())
    if runs < max(min_runs, 2):
        return Interval(estimate, runs, confidence=confidence)
    run_part = float(full.var(ddof=1)) / runs
    example_part = 0.0
    if draws is not None and draws.shape[0] > 1:
        per_run = float(draws.var(axis=0, ddof=1).mean())
        of_mean = float(draws.mean(axis=1).var(ddof=1))
        example_part = max(0.0, (runs * of_mean - per_run) / (runs - 1))
    se = math.sqrt(run_part + example_part)
    df = float(runs - 1)
    if se == 0:
        return Interval(estimate, runs, estimate, estimate, 0.0, df,
                        1.0 if estimate == 0 else 0.0, confidence)
    half = t_ppf(0.5 + confidence / 2, df) * se
    p = min(1.0, t_two_sided(estimate / se, df))
    return Interval(estimate, runs, estimate - half, estimate + half, se, df, p, confidence)
