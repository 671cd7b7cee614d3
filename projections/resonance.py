"""The resonance rule: how the judges' scores of an event combine into the one memory shows.

Resonance is how much a moment mattered, from 0 to 1. Judges (soul/agent/judges.py) journal
`resonance` events; memory keeps each judge's latest score and shows `combine` of them, which
curation selects by. The user's rating decides alone: the person the soul lives with is the
authority on what mattered, and a rating of 0.95 must be able to reach curation's 0.9 whatever
a small model thinks of its own reply.

A judge counts only when it tells good replies from bad: `ops/bench/judge_bench.py` measures
each against a person's ratings (AUC over tests/data/judge_labels.jsonl; a judge counts from
0.65). With the embedded SmolLM2-135M none does (docs/evolution.md, "Judges: which one
decides"; the self judge is below chance), so an event nobody rated has no resonance. The self
and similarity judges still journal their scores, to be measured again on other weights.
"""

from __future__ import annotations

from collections.abc import Mapping

HIGH = 0.9  # a combined resonance this high makes an event "high-resonance" (curation's seed threshold)
JUDGES = ("user",)  # the judges that count: the user alone, until a measured judge discriminates


def combine(scores: Mapping[str, float]) -> float | None:
    """The combined score of an event from each judge's latest score: the user's rating; None
    without one. Judges outside JUDGES are ignored, so a judge that does not discriminate, or a
    foreign one, cannot skew it."""
    score = scores.get("user")
    if score is not None and not 0.0 <= score <= 1.0:
        raise ValueError(f"user scored {score}; resonance scores lie between 0 and 1")
    return score
