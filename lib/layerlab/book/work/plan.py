"""A plan's chapters and their counted work: ``CHAPTERS`` (technique -> its counting
function), ``chapter_work`` (one chapter of a plan) and ``plan_work`` (a whole plan, points an
earlier chapter stored counted once)."""

from __future__ import annotations

from collections.abc import Sequence

from .beyond import criteria_chapter, healing_chapter, spectrum_chapter, sublayers_chapter
from .counts import Work
from .inputs import Context
from .laser import laser_chapter, sokoban_chapter
from .painters import painters_chapter
from .prune import prune_chapter


CHAPTERS = {"laser": laser_chapter, "laser_sokoban": sokoban_chapter, "prune": prune_chapter,
            "painters": painters_chapter, "beyond_criteria": criteria_chapter, "beyond_sublayers": sublayers_chapter,
            "beyond_healing": healing_chapter, "beyond_laser": spectrum_chapter}


def chapter_work(technique: str, model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """The counted work of one chapter of a plan (one ``Work`` per model it runs)."""
    if technique not in CHAPTERS:
        raise ValueError(f"technique: {technique!r} is not one of {', '.join(CHAPTERS)}")
    return CHAPTERS[technique](model, dict(extra), profile, ctx)


def plan_work(plan: Sequence[tuple[str, str, dict]], profile: str, ctx: Context | None = None) -> list[dict]:
    """Per chapter of ``plan`` (``build.PLANS[profile]``), in order: {chapter, model, work:
    [Work, ...]}; points an earlier chapter of the plan stored are not counted again."""
    ctx = ctx or Context()
    return [{"chapter": t, "model": m, "work": chapter_work(t, m, extra, profile, ctx)} for t, m, extra in plan]
