"""The turns projection's reads that assembly does not already exercise, on a real nats-server and Postgres."""

from __future__ import annotations

from typing import Any

import psycopg

from journal.event import BifocalEvent
from journal.journal import Journal
from projections.runner import ProjectionRunner
from projections.turns import SPAN, Turns, counted_turns, ensure_counts, store_counts, unanswered


def test_unanswered_lists_each_conversation_whose_newest_turn_is_a_perception(
        journal: Journal, pg_url: str, conn: psycopg.Connection[Any]) -> None:
    seqs = {}
    for conversation, kinds in {"main": ["perception", "thought", "perception"], "done": ["perception", "thought"],
                                "tooled": ["perception", "tool_result"], "source:cli": ["perception"],
                                "pinned": ["perception"]}.items():
        for kind in kinds:
            seqs[conversation], _ = journal.add(BifocalEvent(kind, f"{kind} in {conversation}", [], originator_id=conversation))
    journal.add(BifocalEvent("self_defined", "I am", [], originator_id="pinned"))  # not a turn: the perception stays newest
    with ProjectionRunner(journal, Turns(), pg_url) as runner:
        runner.catch_up()
    app = journal.app
    # Bare perceptions (`source:*`) are not conversations waiting for an answer.
    assert sorted(unanswered(conn, app)) == [("main", seqs["main"]), ("pinned", seqs["pinned"])]
    assert unanswered(conn, app, "main") == [("main", seqs["main"])]
    assert unanswered(conn, app, "source:cli") == [("source:cli", seqs["source:cli"])]  # asked for by name
    assert unanswered(conn, app, "done") == unanswered(conn, app, "tooled") == unanswered(conn, app, "nobody") == []


def test_counted_turns_reads_the_stored_counts_of_dense_and_of_sparse_conversations(
        journal: Journal, pg_url: str, conn: psycopg.Connection[Any]) -> None:
    # "dense" holds every other event; "sparse" one in 3 * SPAN, the rest "others": its counts
    # are looked up row by row, not read by the range of seqs its page spans.
    seqs: dict[str, list[int]] = {"dense": [], "sparse": [], "others": []}
    for i in range(12 * SPAN):
        talk = "dense" if i % 2 else ("sparse" if i % (3 * SPAN) == 0 else "others")
        seqs[talk].append(journal.add(BifocalEvent("perception", f"turn {i}", [], originator_id=talk))[0])
    with ProjectionRunner(journal, Turns(), pg_url) as runner:
        runner.catch_up()
    app = journal.app
    ensure_counts(conn, app)
    every = [seq for talk in seqs.values() for seq in talk]
    counter, other = 7, 8
    store_counts(conn, app, [(seq, counter, seq + 1, seq + 2) for seq in every if seq % 3])  # a third uncounted
    store_counts(conn, app, [(seq, other, 0, 0) for seq in every])  # another tokenizer's: never read
    for talk in ("dense", "sparse"):
        newest = seqs[talk][::-1]
        assert counted_turns(conn, app, talk, 0, 2**62, 100, counter) == (
            newest, ["perception"] * len(newest), [f"turn {seq - 1}" for seq in newest],
            [seq + 1 if seq % 3 else None for seq in newest], [seq + 2 if seq % 3 else None for seq in newest])
        assert counted_turns(conn, app, talk, 0, 2**62, 100, None)[3] == [None] * len(newest)
    assert counted_turns(conn, app, "nobody", 0, 2**62, 100, counter) == ([], [], [], [], [])
