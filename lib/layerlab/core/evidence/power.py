"""The power to tell: how large an effect a test can detect with the items it has, and how
many items it would need to detect the effect a claim is about.

Two tests, the two the claims use:

- the paired t test of a mean difference of continuous per-item values (``stats.paired_t``):
  exact power from the noncentral t distribution (``power_paired_t``);
- the paired comparison of 0/1 outcomes (``stats.paired_proportion``, Tango's score
  interval with a half-item continuity correction): power from the normal approximation of
  the score statistic, with the observed share of discordant items (items whose outcome
  changes) as the nuisance parameter (``power_paired_binary``). tests/test_power.py checks
  both against simulations of the intervals themselves.

Every power is two-sided at ``confidence`` (0.95): the chance that the interval excludes 0
when the true effect is ``effect``. ``mde_*`` is the smallest effect detected with
``power`` (0.8) at n items; ``n_for_effect_*`` the fewest items that detect ``effect`` with it.
Effects are in the units of the values (proportions for 0/1 outcomes).
"""

from __future__ import annotations

import math

from layerlab.core.evidence.stats import CONTINUITY

POWER = 0.8
MAX_ITEMS = 10_000_000  # the searches stop here: an effect that needs more is reported as "more than"


def _z(p: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(p))


def power_paired_t(n: int, sd: float, effect: float, confidence: float = 0.95) -> float:
    """Power of the two-sided paired t test on ``n`` differences with standard deviation ``sd``
    when their true mean is ``effect`` (noncentral t, n - 1 degrees of freedom)."""
    from scipy.stats import nct, t

    if n < 2 or not sd > 0:
        return float("nan")
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = float(t.ppf(0.5 + confidence / 2, df))
    upper, lower = float(nct.sf(crit, df, abs(nc))), float(nct.cdf(-crit, df, abs(nc)))
    # far from 0 scipy's tails underflow to NaN: there the power is 1 and the far tail 0
    return min(1.0, (1.0 if math.isnan(upper) else upper) + (0.0 if math.isnan(lower) else lower))


def mde_paired_t(n: int, sd: float, confidence: float = 0.95, power: float = POWER) -> float:
    """The smallest |mean difference| the paired t test detects with ``power`` at ``n``
    differences of standard deviation ``sd`` (NaN when n < 2 or sd is 0)."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return float("nan")
    upper = sd
    while power_paired_t(n, sd, upper, confidence) < power:  # nct is NaN far out: bracket from below
        upper *= 2
    return float(brentq(lambda e: power_paired_t(n, sd, e, confidence) - power, 0.0, upper, xtol=sd * 1e-6))


def n_for_effect_paired_t(effect: float, sd: float, confidence: float = 0.95, power: float = POWER) -> int | None:
    """The fewest differences at which the paired t test detects ``effect`` with ``power``
    (None when sd is not positive or effect is 0)."""
    if not sd > 0 or effect == 0 or math.isnan(effect):
        return None
    return _smallest_n(lambda n: power_paired_t(n, sd, abs(effect), confidence) >= power, start=2)


def power_paired_binary(n: int, discordance: float, effect: float, confidence: float = 0.95,
                        cc: float = CONTINUITY) -> float:
    """Power of the paired 0/1 comparison (Tango's score interval, ``cc`` items continuity
    correction) at ``n`` items when the true difference of proportions is ``effect`` and a
    share ``discordance`` of items changes outcome. The discordance must be at least
    |effect| (an effect needs that many changed items), so it is raised to |effect|."""
    if n < 1:
        return float("nan")
    e = abs(effect)
    psi = min(1.0, max(discordance, e))
    var = psi - e * e
    if var <= 0:
        return 1.0 if e * n > cc else 0.0
    sd0, sd1 = math.sqrt(psi / n), math.sqrt(var / n)  # under 0 (the score test's variance) and under the effect
    from scipy.stats import norm

    crit = _z(0.5 + confidence / 2) * sd0 + cc / n  # |difference| beyond which the interval excludes 0
    return float(norm.sf((crit - e) / sd1) + norm.cdf((-crit - e) / sd1))


def mde_paired_binary(n: int, discordance: float, confidence: float = 0.95, power: float = POWER) -> float:
    """The smallest |difference of proportions| detected with ``power`` at ``n`` items with the
    observed share ``discordance`` of changed items."""
    from scipy.optimize import brentq

    if n < 1:
        return float("nan")
    f = lambda e: power_paired_binary(n, discordance, e, confidence) - power  # noqa: E731
    if f(1.0) < 0:
        return float("nan")
    return float(brentq(f, 0.0, 1.0, xtol=1e-7))


def n_for_effect_paired_binary(effect: float, discordance: float, confidence: float = 0.95,
                               power: float = POWER) -> int | None:
    """The fewest items at which the paired 0/1 comparison detects ``effect`` with ``power``,
    if the same share ``discordance`` of items changed (None for a zero effect)."""
    if effect == 0 or math.isnan(effect):
        return None
    return _smallest_n(lambda n: power_paired_binary(n, discordance, abs(effect), confidence) >= power, start=1)


def _smallest_n(ok, start: int) -> int | None:
    """The least n >= start with ok(n) (ok monotone in n): doubling, then bisection."""
    hi = start
    while not ok(hi):
        if hi > MAX_ITEMS:
            return None
        hi *= 2
    lo = max(start, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def note(n: int, mde: float, n_needed: int | None, smallest: float | None = None, unit: str = "pp",
         scale: float = 100.0) -> str:
    """The power in words, for an inconclusive verdict: "MDE (80% power) 7.1 pp at n = 80;
    about 900 items would detect the smallest effect of interest (1.2 pp)"."""
    parts = []
    if not math.isnan(mde):
        parts.append(f"MDE (80% power) {scale * mde:.3g} {unit} at n = {n}")
    if n_needed is not None and smallest is not None:
        parts.append(f"about {round_items(n_needed)} items would detect {scale * abs(smallest):.3g} {unit}"
                     + (f" (this run has {n})" if n else ""))
    elif smallest is not None and n_needed is None:
        parts.append(f"more than {MAX_ITEMS:,} items would be needed for {scale * abs(smallest):.3g} {unit}")
    return "; ".join(parts)


def round_items(n: int) -> str:
    """An item count to two significant figures, as a reader plans with it (1234 -> "1,200")."""
    if n < 100:
        return str(n)
    digits = len(str(n)) - 2
    return f"{int(round(n, -digits)):,}"


def paired_binary_columns(before, after, smallest: float | None) -> dict:
    """The power columns of a claim row judged by a paired 0/1 comparison of items [n]:
    n, the statistic, the MDE at 80% power with the observed discordance (text, pp), the
    items that would detect ``smallest`` (None without one) and the note for an inconclusive
    verdict."""
    import numpy as np

    a, b = np.asarray(before, bool), np.asarray(after, bool)
    n, psi = len(a), float((a != b).mean()) if len(a) else 0.0
    mde = mde_paired_binary(n, psi) if n else float("nan")
    needed = n_for_effect_paired_binary(smallest, psi) if smallest else None
    return {"n": n, "statistic": "paired Tango score interval, accuracy",
            "mde": "" if math.isnan(mde) else f"{100 * mde:.3g} pp", "n_needed": needed,
            "power_note": note(n, mde, needed, smallest)}
