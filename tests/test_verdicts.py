import math

import pytest

from layerlab.core.evidence import verdicts as v


def test_above_decides_by_the_whole_interval():
    assert v.above(0.01, 0.2) == v.AGREES
    assert v.above(-0.3, -0.01) == v.DISAGREES
    assert v.above(-0.1, 0.1) == v.INCONCLUSIVE
    assert v.above(-0.1, 0.0) == v.DISAGREES  # "no change" at the edge rules out an increase
    assert v.above(0.0, 0.0) == v.DISAGREES
    assert v.above(0.3, 0.5, threshold=0.25) == v.AGREES and v.above(0.2, 0.3, threshold=0.25) == v.INCONCLUSIVE
    assert v.above(math.nan, 1.0) == v.INCONCLUSIVE
    with pytest.raises(ValueError, match="lo 1 > hi 0"):
        v.above(1, 0)


def test_below_mirrors_above():
    assert v.below(-0.2, -0.01) == v.AGREES
    assert v.below(0.01, 0.2) == v.DISAGREES
    assert v.below(-0.1, 0.1) == v.INCONCLUSIVE
    assert v.below(0.2, 0.24, threshold=0.25) == v.AGREES


def test_both_needs_every_part():
    assert v.both(v.AGREES, v.AGREES) == v.AGREES
    assert v.both(v.AGREES, v.INCONCLUSIVE) == v.INCONCLUSIVE
    assert v.both(v.AGREES, v.DISAGREES, v.INCONCLUSIVE) == v.DISAGREES
    assert v.both(v.AGREES, f"{v.NOT_TESTABLE}: at chance unpruned") == f"{v.NOT_TESTABLE}: at chance unpruned"


def test_both_checks_disagrees_before_not_testable():
    assert v.both(v.DISAGREES, f"{v.NOT_TESTABLE}: GSM8K not run") == v.DISAGREES
    assert v.both(v.INCONCLUSIVE, f"{v.NOT_TESTABLE}: GSM8K not run") == f"{v.NOT_TESTABLE}: GSM8K not run"


def test_every_verdict_parses_to_one_word():
    assert v.word("not testable: at chance") == v.NOT_TESTABLE and v.word(v.AGREES) == v.AGREES
    assert v.not_testable("no grid") == "not testable: no grid"
    for bad in ("not testable (the unmodified agent solves no test level)", "agree", "holds"):
        with pytest.raises(ValueError, match="is not one of"):
            v.word(bad)


def test_a_claim_not_run_parses_but_is_no_verdict():
    row = v.not_run("no attention matrix was swept")
    assert v.word(row) == v.NOT_RUN and v.is_not_run(row) and v.NOT_RUN not in v.VERDICTS
    assert not v.is_not_run(v.not_testable("no data", cause="no data"))
    assert v.both(v.AGREES, row) == row and v.both(v.DISAGREES, row) == v.DISAGREES
    assert v.both(row, v.not_testable("x")) == v.not_testable("x")
