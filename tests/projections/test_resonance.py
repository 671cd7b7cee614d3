"""The resonance rule (projections/resonance.py) and memory showing it: the combination of each
judge's latest score, whatever order and however often judgements are applied."""

import uuid
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from journal.journal import Entry
from projections.memory import Memory
from projections.resonance import JUDGES, combine
from tests.soul.agent.test_judges import remembered, unit, verdict

scores = st.floats(min_value=0.0, max_value=1.0)


def test_no_judge_no_score() -> None:
    assert combine({}) is None
    assert combine({"oracle": 1.0}) is None


def test_the_users_rating_decides_and_judges_that_do_not_discriminate_do_not_count() -> None:
    assert combine({"user": 0.95, "self": 0.25, "similarity": 0.0}) == 0.95
    assert combine({"user": 0.0, "self": 1.0}) == 0.0
    assert combine({"self": 0.8, "similarity": 0.4}) is None  # measured by ops/bench/judge_bench.py: not counted


@given(st.dictionaries(st.sampled_from(["user", "self", "similarity", "oracle"]), scores), st.randoms(use_true_random=False))
def test_combined_lies_between_the_counted_judges_whatever_their_order(judged: dict[str, float], shuffle: Any) -> None:
    combined = combine(judged)
    counted = [score for judge, score in judged.items() if judge in JUDGES]
    assert (combined is None) == (not counted)
    if counted:
        assert min(counted) - 1e-12 <= combined <= max(counted) + 1e-12
    reordered = list(judged.items())
    shuffle.shuffle(reordered)
    assert combine(dict(reordered)) == combined  # bit for bit


def test_out_of_range_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        combine({"user": 1.5})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # rolled back each time
@given(st.lists(st.tuples(st.sampled_from(["user", "self", "similarity", None, "oracle"]), scores), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_memory_shows_the_combination_of_each_judges_latest_score(conn: psycopg.Connection[Any], judged: list[Any],
                                                                   shuffle: Any) -> None:
    thought = remembered("thought", "a thought", unit(np.ones(Memory.dim)))
    entries = [Entry(1, "o", "thought", 0, thought)]
    entries += [Entry(seq, "o", "resonance", 0, verdict(thought, judge, score)) for seq, (judge, score) in enumerate(judged, 2)]
    latest: dict[str, float] = {}
    for judge, score in judged:  # journal order: the last word of each judge counts
        latest[judge or "user"] = score
    memory = Memory()
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        in_order, shuffled = (sql.Identifier(f"memory_{uuid.uuid4().hex[:8]}") for _ in range(2))
        for table in (in_order, shuffled):
            memory.create(cur, table)
        memory.apply(cur, in_order, entries)
        memory.apply(cur, shuffled, entries[:1])
        late = entries[1:]
        shuffle.shuffle(late)
        for entry in late:  # one page each, in any order, some twice: the same end state
            memory.apply(cur, shuffled, [entry])
        memory.apply(cur, shuffled, late[: len(late) // 2])
        rows = [cur.execute(sql.SQL("SELECT resonance, judges, resonance_seq FROM {}").format(t)).fetchone()
                for t in (in_order, shuffled)]
    assert rows[0] == rows[1]
    resonance, judges, newest = rows[0]
    expected = combine(latest)
    assert (resonance is None) if expected is None else resonance == pytest.approx(expected, abs=1e-6)
    assert {judge: score for judge, (score, _) in judges.items()} == latest and newest == len(judged) + 1
