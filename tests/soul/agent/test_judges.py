"""The judges (soul/agent/judges.py): similarity to the centroid of high-resonance memories, and
ratings of events named by seq or id."""

import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from projections.memory import Memory
from projections.runner import ProjectionRunner
from soul.agent.embedder import load_default_embedder
from soul.agent.judges import RatingError, find_event, judgement, rate, similarity_judgement


def remembered(kind: str, prose: str, vector: np.ndarray) -> BifocalEvent:
    return BifocalEvent(kind, prose, vector, Embedder("synthetic@1", Memory.dim))


def verdict(target: BifocalEvent, judge: str | None, score: float) -> BifocalEvent:
    data = {"event": str(target.id), "score": score, **({"judge": judge} if judge else {})}
    return BifocalEvent("resonance", f"{judge} judged", np.zeros(0), data=data)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype("<f4")


def test_similarity_is_the_cosine_to_the_centroid_of_high_resonance_memories(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    rng = np.random.default_rng(7)
    high = [remembered("thought", f"loved {i}", unit(rng.normal(size=Memory.dim))) for i in range(3)]
    low = remembered("thought", "shrugged at", unit(rng.normal(size=Memory.dim)))
    for e in (*high, low):
        journal.add(e)
    probe = unit(rng.normal(size=Memory.dim))
    with ProjectionRunner(journal, Memory(), pg_url) as runner:
        runner.catch_up()
        assert similarity_judgement(conn, app, probe) is None  # no high-resonance memory yet
        for e in high:
            journal.add(verdict(e, "user", 0.95))
        journal.add(verdict(low, "user", 0.5))
        journal.add(verdict(high[0], "user", 0.1))  # changed its mind about the first
        runner.catch_up()
    centroid = np.mean([e.vector for e in high[1:]], axis=0)
    score, rationale = similarity_judgement(conn, app, probe)
    cosine = float(probe @ centroid / np.linalg.norm(centroid))
    assert score == pytest.approx(max(cosine, 0.0), abs=1e-4)
    assert rationale == f"similarity: cosine {score:.4f} to the centroid of 2 high-resonance memories"
    aligned, _ = similarity_judgement(conn, app, unit(centroid))
    assert aligned == pytest.approx(1.0, abs=1e-4)
    # A past self sees the memories journaled by its cut (with the judgements memory holds now).
    assert similarity_judgement(conn, app, probe, max_seq=1) is None  # only the first, no longer high
    assert similarity_judgement(conn, app, unit(high[1].vector), max_seq=2)[0] == pytest.approx(1.0, abs=1e-4)
    assert similarity_judgement(conn, app, np.ones(8, dtype="<f4")) is None  # another embedder's vector


def test_judgements_refuse_scores_outside_0_to_1_and_name_unknown_events(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    embedder = load_default_embedder()
    thought = remembered("thought", "a remembered thought", unit(np.ones(Memory.dim)))
    seq, thought = journal.add(thought)
    with pytest.raises(RatingError, match="between 0 and 1, not 1.5"):
        judgement(thought, 1.5, "user", "too much", embedder)
    app = journal.app
    with ProjectionRunner(journal, Memory(), pg_url) as runner:
        runner.catch_up()
        assert find_event(journal, conn, app, str(seq)).event.id == thought.id
        assert find_event(journal, conn, app, str(thought.id)).seq == seq
        rated, target = rate(journal, conn, app, str(seq), 0.8, embedder)
        assert target.seq == seq and rated == seq + 1
        for ref, reason in (("77", "no readable event at sequence 77"), ("x1", "neither"),
                            (str(uuid.uuid4()), "no remembered event")):
            with pytest.raises(RatingError, match=reason):
                find_event(journal, conn, app, ref)
