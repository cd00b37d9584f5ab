"""Verdicts decided by intervals: does a replication agree with a paper's claim?

A claim is tested through an interval (95% unless stated) on the quantity the claim is
about, e.g. the paired change in accuracy that a reduction brings. The verdict is

    agrees        the whole interval lies on the claim's side of the threshold
    disagrees     the whole interval lies on the other side (the threshold included)
    inconclusive  the interval admits both
    not testable  the data cannot test the claim (e.g. the model is at chance before any
                  intervention); the reason is carried with it

Never decided by a point estimate alone: a verdict can only come out ``agrees`` when the
data rule out the opposite.

A claim with a number is tested against the paper's own effect (``versus_paper``): its
smallest effect of interest, fixed before the data, is the least effect that still counts as
the paper's finding, so a replication that finds nothing can disagree. A claim without a
number gets a direction test (``direction``); "unchanged / holds" claims a non-inferiority
test with a margin stated in advance (``non_inferior``). A "not testable" verdict names its
cause, one of ``CAUSES``.
"""

from __future__ import annotations

import math

AGREES, DISAGREES, INCONCLUSIVE, NOT_TESTABLE = "agrees", "disagrees", "inconclusive", "not testable"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE, NOT_TESTABLE)
# why a claim cannot be tested here: the data are absent, the unmodified model is at chance,
# the grid run here has no point that could falsify it, or the reference it is judged against is noise
CAUSES = ("no data", "model at chance", "grid cannot falsify", "truth too noisy")
# a claim this profile leaves out (its grid never runs what the claim needs): not a verdict, so
# it is in no count; the comparison page lists it under what the full profile adds
NOT_RUN = "not run"


def above(lo: float, hi: float, threshold: float = 0.0) -> str:
    """The claim "the quantity exceeds ``threshold``", judged on its interval [lo, hi]."""
    if any(math.isnan(x) for x in (lo, hi)):
        return INCONCLUSIVE
    if lo > hi:
        raise ValueError(f"interval: lo {lo} > hi {hi}")
    if lo > threshold:
        return AGREES
    if hi <= threshold:
        return DISAGREES
    return INCONCLUSIVE


def below(lo: float, hi: float, threshold: float = 0.0) -> str:
    """The claim "the quantity is below ``threshold``", judged on its interval [lo, hi]."""
    return above(-hi, -lo, -threshold)


def word(verdict: str) -> str:
    """The one of ``VERDICTS`` (or ``NOT_RUN``) a verdict string starts with ("not testable:
    <reason>" -> "not testable"); ValueError for anything else (a verdict that parses to no word
    would drop out of every count)."""
    for w in (*VERDICTS, NOT_RUN):
        if verdict == w or verdict.startswith(f"{w}: "):
            return w
    raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)} (optionally 'word: reason')")


def not_testable(reason: str, cause: str | None = None) -> str:
    """The verdict of a claim the data or the grid cannot test, with its reason, led by its
    cause (one of ``CAUSES``) where given: "not testable: model at chance: unmodified 24% of 80"."""
    if cause is None:
        return f"{NOT_TESTABLE}: {reason}"
    if cause not in CAUSES:
        raise ValueError(f"cause: {cause!r} is not one of {', '.join(CAUSES)}")
    return f"{NOT_TESTABLE}: {cause}: {reason}"


def not_run(what: str) -> str:
    """The row of a claim this profile does not run, with what would run it ("not run:
    attention matrices: the quick grid sweeps mlp_in, mlp_out"). ``word`` gives ``NOT_RUN``;
    the comparison page leaves such rows out of every count (``is_not_run``)."""
    return f"{NOT_RUN}: {what}"


def is_not_run(verdict: str) -> bool:
    return verdict == NOT_RUN or verdict.startswith(f"{NOT_RUN}: ")


def cause(verdict: str) -> str | None:
    """The cause a "not testable" verdict names (one of ``CAUSES``), else None."""
    for c in CAUSES:
        if verdict.startswith(f"{NOT_TESTABLE}: {c}"):
            return c
    return None


def _fmt(x: float, unit: str, scale: float) -> str:
    return f"{scale * x:+.3g} {unit}".rstrip()


def _check(lo: float, hi: float) -> bool:
    """True when the interval is usable; ValueError when it is reversed."""
    if any(math.isnan(x) for x in (lo, hi)):
        return False
    if lo > hi:
        raise ValueError(f"interval: lo {lo} > hi {hi}")
    return True


def _with(verdict: str, reason: str, power_note: str = "") -> str:
    return f"{verdict}: {reason}" + (f"; {power_note}" if power_note else "")


def versus_paper(lo: float, hi: float, *, smallest: float, unit: str = "pp", scale: float = 100.0,
                 power_note: str = "") -> str:
    """The claim "the effect has the paper's sign and is at least ``smallest``", judged on the
    effect's interval [lo, hi] (in the claim's units before ``scale``, e.g. proportions).
    ``smallest`` is the smallest effect of interest, signed like the paper's effect and fixed
    before the data. Disagrees when the interval excludes it (smaller than the paper's, or
    opposite); agrees when it excludes 0 on the paper's side; inconclusive when it admits both
    0 and ``smallest`` (with ``power_note``, what it would take to tell)."""
    if not smallest or math.isnan(smallest):
        raise ValueError(f"smallest: {smallest!r}; the smallest effect of interest must be a nonzero number")
    if not _check(lo, hi):
        return _with(INCONCLUSIVE, "no interval", power_note)
    sign = 1.0 if smallest > 0 else -1.0
    near, far = (hi, lo) if sign > 0 else (lo, hi)  # the bound towards 0 and the one away from it
    s = _fmt(smallest, unit, scale)
    if sign * near < sign * smallest:
        bound = "upper" if sign > 0 else "lower"
        if sign * near < 0:
            return f"{DISAGREES}: opposite to the paper's: {bound} bound {_fmt(near, unit, scale)} beyond 0"
        return f"{DISAGREES}: smaller than the paper's: {bound} bound {_fmt(near, unit, scale)} short of {s}"
    if sign * far > 0:
        return f"{AGREES}: {'lower' if sign > 0 else 'upper'} bound {_fmt(far, unit, scale)} excludes 0, admits {s}"
    return _with(INCONCLUSIVE, f"admits 0 and {s}", power_note)


def direction(lo: float, hi: float, sign: int = 1, unit: str = "pp", scale: float = 100.0,
              power_note: str = "") -> str:
    """A claim with no number: "the effect has sign ``sign``" (+1 or -1). Agrees when the
    interval excludes 0 on that side, disagrees when it excludes 0 on the other side,
    inconclusive otherwise; the reason says the paper states no number."""
    if sign not in (1, -1):
        raise ValueError(f"sign: {sign!r}; allowed: 1, -1")
    if not _check(lo, hi):
        return _with(INCONCLUSIVE, "direction only (the paper states no number): no interval", power_note)
    low, high = (lo, hi) if sign > 0 else (-hi, -lo)
    if low > 0:
        return f"{AGREES}: direction only (the paper states no number): interval excludes 0"
    if high < 0:
        return f"{DISAGREES}: direction only (the paper states no number): interval excludes 0 on the other side"
    return _with(INCONCLUSIVE, "direction only (the paper states no number): admits 0", power_note)


def non_inferior(lo: float, hi: float, margin: float, unit: str = "pp", scale: float = 100.0,
                 power_note: str = "") -> str:
    """A "holds / unchanged" claim on a change (after - before): agrees when the change is
    shown to be no worse than ``-margin`` (lo > -margin), disagrees when it is shown to be
    worse (hi < -margin), inconclusive otherwise. ``margin`` > 0, stated in advance."""
    if not margin > 0:
        raise ValueError(f"margin: {margin!r}; a non-inferiority margin must be positive")
    if not _check(lo, hi):
        return _with(INCONCLUSIVE, "no interval", power_note)
    m = _fmt(-margin, unit, scale)
    if lo > -margin:
        return f"{AGREES}: lower bound {_fmt(lo, unit, scale)} above the margin {m}"
    if hi < -margin:
        return f"{DISAGREES}: upper bound {_fmt(hi, unit, scale)} below the margin {m}"
    return _with(INCONCLUSIVE, f"admits a loss beyond the margin {m}", power_note)


def both(*verdicts: str) -> str:
    """A claim made of several parts that must all hold: disagrees if any part
    disagrees (even when another part is not testable: one falsified part falsifies the
    claim), otherwise not testable if any part is (with its reason), not run if a part is
    not run, agrees only if every part agrees, otherwise inconclusive."""
    if not verdicts:
        raise ValueError("both: needs at least one verdict")
    words = [word(v) for v in verdicts]
    if DISAGREES in words:
        return DISAGREES
    if NOT_TESTABLE in words:
        return next(v for v in verdicts if word(v) == NOT_TESTABLE)
    if NOT_RUN in words:
        return next(v for v in verdicts if word(v) == NOT_RUN)
    return AGREES if all(w == AGREES for w in words) else INCONCLUSIVE
