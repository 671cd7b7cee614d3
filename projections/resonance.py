"""The resonance rule: how the judges' scores of an event combine into the one memory shows.

Resonance is how much a moment mattered, from 0 to 1. Judges (soul/agent/judges.py) journal
`resonance` events; memory keeps each judge's latest score and shows `combine` of them, which
curation selects by. The user's rating, when there is one, decides alone: the person the soul
lives with is the authority on what mattered, and a rating of 0.95 must be able to reach
curation's 0.9 whatever a small model thinks of its own reply. Without one, self and
similarity count equally.
"""

from __future__ import annotations

from collections.abc import Mapping

HIGH = 0.9  # a combined resonance this high makes an event "high-resonance" (curation's seed threshold)
JUDGES = ("user", "self", "similarity")


def combine(scores: Mapping[str, float]) -> float | None:
    """The combined score of an event from each judge's latest score; None when no judge spoke.

    Judges outside JUDGES are ignored, so an older or foreign judge cannot skew it.
    """
    known = {judge: score for judge, score in scores.items() if judge in JUDGES}
    for judge, score in known.items():
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"{judge} scored {score}; resonance scores lie between 0 and 1")
    if "user" in known:
        return known["user"]
    return sum(known.values()) / len(known) if known else None
