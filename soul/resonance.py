"""Resonance: how much a moment mattered, from 0 to 1 (design §2, issue 4).

Three judges score an event, each with a `resonance` event (data: event, score, judge,
rationale): the user (`/rate 0.9`, `soul rate EVENT SCORE`), the soul itself, and similarity
to the centroid of past high-resonance vectors. `combine` is the one rule that turns the
latest score of each judge into the score memory shows and curation selects by: a weighted
mean over the judges that have spoken, the user counting three times as much as each of the
others. A user's rating alone therefore decides; without one, self and similarity share.
"""

from __future__ import annotations

from collections.abc import Mapping

JUDGE_WEIGHTS: dict[str, float] = {"user": 3.0, "self": 1.0, "similarity": 1.0}


def combine(scores: Mapping[str, float]) -> float | None:
    """The combined score of an event from each judge's latest score; None when no judge spoke.

    Judges outside JUDGE_WEIGHTS are ignored, so an older or foreign judge cannot skew it.
    """
    known = {judge: score for judge, score in scores.items() if judge in JUDGE_WEIGHTS}
    if not known:
        return None
    for judge, score in known.items():
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"{judge} scored {score}; resonance scores lie between 0 and 1")
    total = sum(JUDGE_WEIGHTS[j] for j in known)
    return sum(JUDGE_WEIGHTS[j] * s for j, s in known.items()) / total
