"""Intervals and tests a referee accepts (DESIGN.md, "Statistics a referee accepts").

- ``paired_proportion``: Tango's (1998) score interval for the difference of two paired
  proportions, with a half-item continuity correction. Its coverage, simulated in
  tests/test_stats.py, is at least 95% from 20 to 1000 items, also when few items change;
  the percentile bootstrap of 0/1 differences (far too narrow with few discordant items,
  [0, 0] when none changed) and Newcombe's hybrid score interval (method 10: 68% at n = 20
  when no item is lost) fall short. With 4 items gained and none lost of 80 it reaches
  below 0, as the exact McNemar test (p = 0.125) does.
- ``paired_t``: the paired t interval (t quantile, n - 1 degrees of freedom) of a mean
  difference of continuous paired values, e.g. per-chunk losses.
- ``holm``: Holm's step-down adjustment of p-values, for claims that are a union of comparisons.
- ``informative``: the floor a benchmark must clear before any claim is judged on it.
- ``undefined_share``: the share of bootstrap draws where a statistic is undefined.

Every interval is (lo, hi) at ``confidence`` (0.95 unless stated), in the units of its input.
"""

from __future__ import annotations

import math

import numpy as np

MAX_UNDEFINED = 0.01      # above this share of undefined bootstrap draws a claim is not testable
FLOOR_MARGIN = 0.02       # the unmodified model's Wilson lower bound must exceed chance by this much
CONTINUITY = 0.5          # items by which the paired score statistic is shrunk towards 0
MIN_CORRECT_GENERATION = 20  # generation tasks (chance 0): at least this many items solved


def _z(confidence: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_arrays(k: np.ndarray, n: int | np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Wilson score limits of k / n (arrays of any shape; n > 0)."""
    z = _z(confidence)
    k, n = np.asarray(k, float), np.asarray(n, float)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return np.minimum(p, np.maximum(0.0, centre - half)), np.maximum(p, np.minimum(1.0, centre + half))


def tango_counts(n11, n10, n01, n00, confidence: float = 0.95, cc: float = CONTINUITY,
                 iters: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tango's (1998) score interval for after − before from the paired 2x2 counts (arrays
    broadcast): n11 right both times, n10 right before only, n01 right after only, n00 wrong
    both times. The score statistic's numerator is shrunk towards 0 by ``cc`` items (a
    continuity correction; 0 gives Tango's plain interval). The limits are where the
    statistic crosses -+z, found by bisection (``iters`` halvings: 2^-50 precision).
    Returns (difference, lo, hi) as proportions in [-1, 1]."""
    b, c = np.asarray(n01, float), np.asarray(n10, float)
    n = np.asarray(n11, float) + b + c + np.asarray(n00, float)
    b, c, n = np.broadcast_arrays(b, c, n)
    z, d = _z(confidence), (b - c) / n

    def score(delta: np.ndarray) -> np.ndarray:
        w = -b - c + (2 * n - b + c) * delta
        q = (np.sqrt(np.maximum(w * w + 8 * n * c * delta * (1 - delta), 0.0)) - w) / (4 * n)
        var = n * (2 * q + delta * (1 - delta))
        x = b - c - n * delta
        x = np.sign(x) * np.maximum(np.abs(x) - cc, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(var > 0, x / np.sqrt(np.where(var > 0, var, 1.0)), -np.sign(delta - d) * np.inf)

    def crossing(target: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        for _ in range(iters):
            mid = (lo + hi) / 2
            up = score(mid) > target
            lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
        return (lo + hi) / 2

    return d, crossing(z, np.full_like(d, -1.0), d.copy()), crossing(-z, d.copy(), np.full_like(d, 1.0))


def paired_proportion(before, after, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of paired proportions mean(after) − mean(before) over items [n] of 0/1
    outcomes, with Tango's score interval (``tango_counts``): (difference, lo, hi)."""
    a, b = np.asarray(before, bool), np.asarray(after, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired_proportion: {a.shape} before vs {b.shape} after")
    if not len(a):
        return (float("nan"),) * 3
    d, lo, hi = tango_counts((a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum(), confidence)
    return float(d), float(lo), float(hi)


def is_binary(*arrays) -> bool:
    """Every value of every array is 0 or 1 (NaN excluded)."""
    return all(np.isin(np.asarray(x, float), (0.0, 1.0)).all() for x in arrays)


def paired_t(before, after, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of after − before over paired values [n] with the paired t interval:
    (difference, lo, hi). Never a zero-width interval: 0/1 values get Tango's score interval
    (``paired_proportion``, which admits both sides of a tie), and continuous differences
    that are all equal (no spread to estimate) or fewer than 2 get NaN limits, which every
    verdict reads as inconclusive."""
    from scipy.stats import t

    diff = np.asarray(after, float) - np.asarray(before, float)
    if len(diff) and is_binary(before, after):
        return paired_proportion(before, after, confidence)
    if len(diff) < 2 or not diff.std() > 0:
        return (float(diff.mean()) if len(diff) else float("nan"), float("nan"), float("nan"))
    m, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))
    half = float(t.ppf(0.5 + confidence / 2, len(diff) - 1)) * se
    return m, m - half, m + half


def secondary(before, after, label: str, unit: str = "nats", sign: int = 1) -> str:
    """A continuous statistic shown beside a claim's primary one and never judged (#29: the
    primary is declared before the run; this one cannot change a verdict): ``label``, the
    paired mean of ``sign`` x (after − before) over the items [n] with its paired t interval,
    and z = mean / standard error. "" when there are fewer than 2 pairs or no spread."""
    diff = sign * (np.asarray(after, float) - np.asarray(before, float))
    # no spread (up to float round-off of the subtraction): no interval and no z to give
    if len(diff) < 2 or not np.isfinite(diff).all() or not diff.std() > 1e-9 * max(1.0, float(np.abs(diff).max())):
        return ""
    m, lo, hi = paired_t(np.zeros(len(diff)), diff)
    z = m / (diff.std(ddof=1) / math.sqrt(len(diff)))
    return f"{label}: Δ {m:+.3f} {unit} [{lo:+.3f}, {hi:+.3f}] (paired t, z {z:+.1f}, n = {len(diff)}; not judged)"


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (same order as given; each in [0, 1])."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def holm_confidence(m: int, confidence: float = 0.95) -> float:
    """The per-comparison confidence of simultaneous intervals for ``m`` comparisons that
    keep the family-wise level (Bonferroni, Holm's first step: the most conservative one)."""
    return 1 - (1 - confidence) / max(m, 1)


def informative(correct: int, n: int, chance: float, margin: float = FLOOR_MARGIN) -> tuple[bool, str]:
    """Is a benchmark informative for the unmodified model with ``correct`` of ``n`` items?
    Multiple choice: its Wilson 95% lower bound exceeds chance + ``margin``; generation
    (chance 0): at least ``MIN_CORRECT_GENERATION`` items correct. Returns (ok, reason)."""
    if n <= 0:
        return False, "no items"
    if chance == 0:
        ok = correct >= MIN_CORRECT_GENERATION
        return ok, f"{correct} of {n} correct unmodified" + ("" if ok else f" (< {MIN_CORRECT_GENERATION})")
    lo = float(wilson_arrays(correct, n)[0])
    ok = lo > chance + margin
    return ok, (f"unmodified {100 * correct / n:.1f}% of {n}, Wilson lower bound {100 * lo:.1f}% "
                f"{'>' if ok else '<='} chance {100 * chance:.0f}% + {100 * margin:.0f} pp")


def undefined_share(draws: np.ndarray) -> float:
    """Share of NaN entries among bootstrap draws [n_boot]."""
    d = np.asarray(draws, float)
    return float(np.isnan(d).mean()) if d.size else 1.0
