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
"""

from __future__ import annotations

import math

AGREES, DISAGREES, INCONCLUSIVE, NOT_TESTABLE = "agrees", "disagrees", "inconclusive", "not testable"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE, NOT_TESTABLE)


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
    """The one of ``VERDICTS`` a verdict string starts with ("not testable: <reason>" ->
    "not testable"); ValueError for anything else (a verdict that parses to no word
    would drop out of every count)."""
    for w in VERDICTS:
        if verdict == w or verdict.startswith(f"{w}: "):
            return w
    raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)} (optionally 'word: reason')")


def not_testable(reason: str) -> str:
    """The verdict of a claim the data or the grid cannot test, with its reason."""
    return f"{NOT_TESTABLE}: {reason}"


def both(*verdicts: str) -> str:
    """A claim made of several parts that must all hold: disagrees if any part
    disagrees (even when another part is not testable: one falsified part falsifies the
    claim), otherwise not testable if any part is (with its reason), agrees only if every
    part agrees, otherwise inconclusive."""
    if not verdicts:
        raise ValueError("both: needs at least one verdict")
    words = [word(v) for v in verdicts]
    if DISAGREES in words:
        return DISAGREES
    if NOT_TESTABLE in words:
        return next(v for v in verdicts if word(v) == NOT_TESTABLE)
    return AGREES if all(w == AGREES for w in words) else INCONCLUSIVE
