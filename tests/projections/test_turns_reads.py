"""The turns projection's reads that assembly does not already exercise, on a real nats-server and Postgres."""

from __future__ import annotations

from typing import Any

import psycopg

from journal.event import BifocalEvent
from journal.journal import Journal
from projections.runner import ProjectionRunner
from projections.turns import Turns, unanswered


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
