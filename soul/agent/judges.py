"""The judges: who scores how much a moment mattered (design §2).

Three judges score an event, each with a `resonance` event (data: event, score, judge,
rationale): the user (`/rate 0.9`, `soul rate EVENT SCORE`), the soul itself, and similarity
to the centroid of past high-resonance vectors. How their latest scores combine into the one
memory shows is the resonance rule, `projections.resonance.combine`: only the user's counts
with the embedded SmolLM2, since neither the self judge nor similarity tells good replies from
bad (ops/bench/judge_bench.py measures them); their scores are journaled all the same.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from journal.event import BifocalEvent
from journal.journal import Entry, Journal
from projections.memory import high_resonance_centroid, seq_of

if TYPE_CHECKING:
    from soul.agent.mind import Mind

CENTROID_WINDOW = 1000  # the similarity judge averages the newest this many high-resonance vectors
SELF_QUESTION = "Was your last reply helpful, honest and on topic? Answer yes or no."


class RatingError(ValueError):
    """A rating that cannot be journaled (no such event, a score outside 0..1); says which."""


def self_judgement(mind: Mind, messages: list[dict[str, Any]], reply: str) -> tuple[float, str] | None:
    """The self judge: the mind's probability of answering "yes" (against "no") when asked
    SELF_QUESTION right after its reply, in the same context. One forward pass over the
    question's few tokens, the rest coming from the KV cache; deterministic. None when the
    question does not fit in the model's context after the reply."""
    asked = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": SELF_QUESTION}]
    if len(mind.encode(asked)) > mind.max_context:
        return None
    score = round(mind.probability(asked), 4)
    return score, f"self: P(yes) = {score:.4f} when asked: {SELF_QUESTION}"


def similarity_judgement(conn: Any, app: str, vector: np.ndarray,
                         max_seq: int | None = None) -> tuple[float, str] | None:
    """The similarity judge: cosine similarity (negative counts as 0) of `vector` to the
    centroid of the newest CENTROID_WINDOW remembered vectors with resonance >= HIGH; None
    while there are none."""
    found = high_resonance_centroid(conn, app, CENTROID_WINDOW, max_seq)
    if found is None:
        return None
    centroid, n = found
    if centroid.shape != vector.shape:  # a vector of another embedder: not comparable
        return None
    score = cosine_score(vector, centroid)
    return score, f"similarity: cosine {score:.4f} to the centroid of {n} high-resonance memories"


def cosine_score(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two vectors as a score: negative counts as 0, 0 for a zero vector; 4 decimals."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.dot(a, b)) / norms if norms else 0.0
    return round(min(max(cosine, 0.0), 1.0), 4)


def judgement(target: BifocalEvent, score: float, judge: str, rationale: str, embedder: Any) -> BifocalEvent:
    """A resonance event for `target`, kept with it (same originator); prose is the rationale."""
    if not 0.0 <= score <= 1.0:
        raise RatingError(f"a resonance score lies between 0 and 1, not {score}")
    return BifocalEvent("resonance", rationale, embedder.embed([rationale])[0], embedder.id, target.originator_id,
                        causation_id=target.id, correlation_id=target.correlation_id or target.id,
                        data={"event": str(target.id), "score": score, "judge": judge, "rationale": rationale})


def find_event(journal: Journal, conn: Any, app: str, ref: str) -> Entry:
    """The journal entry `ref` names: a sequence number, or an event id held in memory."""
    if ref.isdigit():
        seq = int(ref)
    else:
        try:
            event_id = uuid.UUID(ref)
        except ValueError:
            raise RatingError(f"{ref!r} is neither a journal sequence number nor an event id") from None
        found = seq_of(conn, app, event_id)
        if found is None:
            raise RatingError(f"no remembered event has id {ref}")
        seq = found
    entry = next(journal.read(since=seq, limit=1), None)
    if entry is None or entry.seq != seq or entry.event is None:
        raise RatingError(f"no readable event at sequence {seq}")
    return entry


def rate(journal: Journal, conn: Any, app: str, ref: str, score: float, embedder: Any,
         judge: str = "user", rationale: str | None = None) -> tuple[int, Entry]:
    """Journal `judge`'s rating of the event `ref` names (see find_event); the resonance
    event's seq and the rated entry."""
    target = find_event(journal, conn, app, ref)
    assert target.event is not None
    seq, _ = journal.add(judgement(target.event, score, judge, rationale or f"{judge} rated {score:g}", embedder))
    return seq, target
