"""Turns: the rows the context window is assembled from (design §4), read O(window) at a time.

One row per perception, thought, tool result and summary, under its conversation (the event's
originator; a summary names its conversation in `data`), and one per self-definition and
notebook rewrite. Assembly reads a conversation's turns newest first through the
(conversation, seq DESC) index and stops when the token budget is full, so its cost does not
grow with the journal. Two partial indexes find the latest summary of a conversation and the
latest self-definition and notebook without walking the turns: the pinned rows live in this
same table (a projection keeps one table) but are never read by a scan.

A summary's `first_seq`/`last_seq` are the journal range it stands for (soul/agent/context.py
writes them). A `redaction` (`soul forget`) removes the row of the event it names, so the
window never shows it again; a summary written before the redaction keeps its own words. Token counts are not stored: they belong to the active model's tokenizer,
which may change while the journal does not.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Entry
from projections.base import Projection

log = logging.getLogger("soul.projections.turns")

TURNS = ("perception", "thought", "tool_result")
PINNED = ("self_defined", "notebook_written")
COLUMNS = ("seq", "id", "conversation", "type", "prose", "first_seq", "last_seq")


class Turns(Projection):
    name = "turns"
    version = 2  # 2: event ids, so a redaction can remove its event's row
    types = (*TURNS, "summary", *PINNED, "redaction")

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE {} (seq bigint PRIMARY KEY, id uuid NOT NULL, conversation text NOT NULL,"
            " type text NOT NULL, prose text NOT NULL, first_seq bigint, last_seq bigint)").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (id)").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (conversation, seq DESC)").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (conversation, seq DESC) WHERE type = 'summary'").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (type, seq DESC) WHERE type IN ({})").format(
            table, sql.SQL(", ").join(map(sql.Literal, PINNED))))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        # Rows are only ever added, in journal order: the highest seq held marks what is applied.
        applied = cur.execute(sql.SQL("SELECT coalesce(max(seq), 0) FROM {}").format(table)).fetchone()[0]  # type: ignore[index]
        rows = [row for e in entries if e.seq > applied and e.topic != "redaction" and (row := self._row(e)) is not None]
        if rows:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as copy:
                for row in rows:
                    copy.write_row(row)
        forgotten = [i for e in entries if e.topic == "redaction" and (i := _forgotten(e)) is not None]
        if forgotten:
            cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table), [forgotten])

    @staticmethod
    def _row(e: Entry) -> tuple[Any, ...] | None:
        event = e.event
        assert event is not None  # the runner passes decoded entries only
        conversation = str(event.originator_id)
        if event.type != "summary":
            return (e.seq, event.id, conversation, event.type, event.prose, None, None)
        data = event.data
        try:
            first, last = int(data["first_seq"]), int(data["last_seq"])
        except (KeyError, TypeError, ValueError):
            log.warning("turns: summary at seq %d names no first_seq and last_seq: %r", e.seq, data)
            return None
        if not 1 <= first <= last < e.seq:
            log.warning("turns: summary at seq %d cites %d..%d, not a range before it", e.seq, first, last)
            return None
        return (e.seq, event.id, str(data.get("conversation", conversation)), "summary", event.prose, first, last)


def _forgotten(e: Entry) -> uuid.UUID | None:
    """The id of the event a redaction names, or None (logged) when it names none."""
    try:
        return uuid.UUID(str(e.event.data.get("event")))  # type: ignore[union-attr]
    except ValueError:
        log.warning("turns: redaction at seq %d names no event id: %r", e.seq, e.event.data)  # type: ignore[union-attr]
        return None
