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
window never shows it again; a summary written before the redaction keeps its own words.

Token counts live beside the view, in `_token_counts` (ensure_counts makes it): (seq, counter)
-> tokens, and `joined`, the tokens when another block follows. The counter
(soul/agent/context.py's Counter.key) stands for a tokenizer and the form a row is rendered in,
so another tokenizer or a changed form is counted afresh and never meets a stale count. A seq's
event never changes, so its count stays right: through a rebuild, which replays the same events
under the same seqs (and leaves this table alone: it is no projection's), and past a redaction,
whose row is not read any more, nor then its count: a number for a seq, no words, which
`soul forget --erase` leaves too.

Every read of the view is a function here (after the projection), so its queries stay next to
the indexes they are written for.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Entry
from projections.base import Projection, schema_for

log = logging.getLogger("soul.projections.turns")

TURNS = ("perception", "thought", "tool_result")
PINNED = ("self_defined", "notebook_written")
COLUMNS = ("seq", "id", "conversation", "type", "prose", "first_seq", "last_seq")
PAGE = 64  # turns read per round trip
COUNTS = "_token_counts"
NEWEST = 2**63 - 1  # above every seq
SPAN = 8  # counts are read by range while a page's seqs span fewer than SPAN seqs a turn
UNCOUNTED = (None, None)


class Turns(Projection):
    name = "turns"
    version = 2
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


# -- reads -----------------------------------------------------------------------------------
# `db` is a connection, or the cursor of a `snapshot` when reads must agree with each other.


@contextmanager
def snapshot(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor whose reads (and those of `conn` meanwhile) all see one snapshot of the projections."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield cur


def latest_pinned(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, kind: str,
                  max_seq: int | None = None) -> str | None:
    """The prose of the latest `kind` (one of PINNED) journaled up to `max_seq`, or None."""
    # The type as a literal: a generic plan for `type = $1` could not use the partial index.
    row = db.execute(sql.SQL("SELECT prose FROM {} WHERE type = {} AND seq <= %s ORDER BY seq DESC LIMIT 1").format(
        Turns.view(app), sql.Literal(kind)), [NEWEST if max_seq is None else max_seq]).fetchone()
    return row[0] if row else None


def latest_summary(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str,
                   conversation: str) -> tuple[int, str, int, int] | None:
    """(seq, prose, first_seq, last_seq) of the conversation's latest summary, or None."""
    return db.execute(sql.SQL(
        "SELECT seq, prose, first_seq, last_seq FROM {} WHERE conversation = %s AND type = 'summary'"
        " ORDER BY seq DESC LIMIT 1").format(Turns.view(app)), [conversation]).fetchone()


def newest_first(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str,
                 after: int) -> Iterator[tuple[int, str, str]]:
    """(seq, type, prose) of the conversation's turns with seq > `after`, newest first, a PAGE per query."""
    query = sql.SQL("SELECT seq, type, prose FROM {} WHERE conversation = %s AND seq > %s AND seq < %s"
                    " AND type = ANY(%s) ORDER BY seq DESC LIMIT %s").format(Turns.view(app))
    before = NEWEST
    while True:
        page = db.execute(query, [conversation, after, before, list(TURNS), PAGE]).fetchall()
        yield from page
        if len(page) < PAGE:
            return
        before = page[-1][0]


Columns = tuple[list[int], list[str], list[str], list[int | None], list[int | None]]


def counted_turns(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str, after: int,
                  before: int, limit: int, counter: int | None) -> Columns:
    """Columns (seqs, types, proses, tokens, joined) of up to `limit` of the conversation's turns
    with `after` < seq < `before`, newest first: tokens and joined as stored under `counter`
    (None when not counted yet). `_token_counts` must exist (ensure_counts)."""
    rows = db.execute(sql.SQL(
        "SELECT seq, type, prose FROM {} WHERE conversation = %s AND seq > %s AND seq < %s AND type = ANY(%s)"
        " ORDER BY seq DESC LIMIT %s").format(Turns.view(app)),
        [conversation, after, before, list(TURNS), limit]).fetchall()
    if not rows:
        return [], [], [], [], []
    seqs, kinds, proses = map(list, zip(*rows))
    stored: dict[int, tuple[int, int]] = {}
    if counter is not None:
        stored = _counts_of(db, app, counter, seqs)
    counts = [stored.get(seq, UNCOUNTED) for seq in seqs]
    return seqs, kinds, proses, [n for n, _ in counts], [j for _, j in counts]


def _counts_of(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, counter: int,
               seqs: list[int]) -> dict[int, tuple[int, int]]:
    """seq -> (tokens, joined) stored under `counter` for those of `seqs` (newest first) counted."""
    if seqs[0] - seqs[-1] < SPAN * len(seqs):
        # One range scan: a tenth of the time of a lookup per row (3,600 turns of a 128k window),
        # while the other conversations' turns between them are few.
        rows = db.execute(sql.SQL("SELECT seq, tokens, joined FROM {} WHERE counter = %s AND seq BETWEEN %s AND %s")
                          .format(_counts(app)), [counter, seqs[-1], seqs[0]]).fetchall()
    else:  # a lookup per row: OFFSET 0 keeps the planner from making it a join over every count stored
        rows = db.execute(sql.SQL(
            "SELECT c.seq, c.tokens, c.joined FROM unnest(%s::bigint[]) s(seq) JOIN LATERAL"
            " (SELECT seq, tokens, joined FROM {} WHERE seq = s.seq AND counter = %s OFFSET 0) c ON true"
        ).format(_counts(app)), [seqs, counter]).fetchall()
    return {seq: (tokens, joined) for seq, tokens, joined in rows}


# -- token counts (see the module doc) -----------------------------------------------------

_ensured: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = weakref.WeakKeyDictionary()


def _counts(app: str) -> sql.Identifier:
    return sql.Identifier(schema_for(app), COUNTS)


def ensure_counts(conn: psycopg.Connection[Any], app: str) -> None:
    """Create `_token_counts` in the app's schema unless it is there; once per connection (a
    schema dropped under a live connection is not noticed: only benchmarks and tests drop one)."""
    done = _ensured.setdefault(conn, set())
    if app in done:
        return
    with conn.transaction(), conn.cursor() as cur:
        # The runner's setup lock: CREATE ... IF NOT EXISTS races with itself.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [schema_for(app)])
        # joined: the row's tokens when another block follows it (soul/agent/context.py's Counter).
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (seq bigint NOT NULL, counter bigint NOT NULL,"
                            " tokens integer NOT NULL, joined integer NOT NULL, PRIMARY KEY (seq, counter))").format(
            _counts(app)))
    done.add(app)


def stored_counts(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, counter: int | None,
                  seqs: Sequence[int]) -> dict[int, tuple[int, int]]:
    """seq -> (tokens, joined) stored under `counter`, for those of `seqs` counted already."""
    rows = db.execute(sql.SQL("SELECT seq, tokens, joined FROM {} WHERE counter = %s AND seq = ANY(%s)").format(
        _counts(app)), [counter, list(seqs)]).fetchall()
    return {seq: (tokens, joined) for seq, tokens, joined in rows}


def store_counts(conn: psycopg.Connection[Any], app: str, counts: Sequence[tuple[int, int, int, int]]) -> None:
    """Store (seq, counter, tokens, joined) rows; one stored already (by another assembly) stays."""
    with conn.pipeline(), conn.transaction():  # one round trip
        # A count lost in a crash is counted again: not worth waiting for the disk.
        conn.execute("SET LOCAL synchronous_commit TO off")
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::integer[],"
                             " %s::integer[]) ON CONFLICT DO NOTHING").format(_counts(app)),
                     [list(column) for column in zip(*counts)])


def of_conversation(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str,
                    seqs: Sequence[int], after: int) -> set[int]:
    """Those of `seqs` that are rows of `conversation` with seq > `after`."""
    return {seq for (seq,) in db.execute(sql.SQL(
        "SELECT seq FROM {} WHERE seq = ANY(%s) AND conversation = %s AND seq > %s").format(Turns.view(app)),
        [list(seqs), conversation, after])}


def first_turn(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str,
               after: int) -> int | None:
    """The seq of the conversation's oldest turn with seq > `after`, or None."""
    return db.execute(sql.SQL(
        "SELECT min(seq) FROM {} WHERE conversation = %s AND seq > %s AND type = ANY(%s)").format(Turns.view(app)),
        [conversation, after, list(TURNS)]).fetchone()[0]  # type: ignore[index]


def prose_between(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str,
                  first: int, last: int, limit: int) -> list[tuple[str, str]]:
    """(type, prose) of the conversation's turns with seq in first..last, oldest first, at most `limit`."""
    return db.execute(sql.SQL(
        "SELECT type, prose FROM {} WHERE conversation = %s AND seq BETWEEN %s AND %s AND type = ANY(%s)"
        " ORDER BY seq LIMIT %s").format(Turns.view(app)), [conversation, first, last, list(TURNS), limit]).fetchall()


def last_thought(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str, conversation: str) -> int | None:
    """The seq of the conversation's newest thought, or None."""
    row = db.execute(sql.SQL(
        "SELECT seq FROM {} WHERE conversation = %s AND type = 'thought' ORDER BY seq DESC LIMIT 1"
    ).format(Turns.view(app)), [conversation]).fetchone()
    return row[0] if row else None


def unanswered(db: psycopg.Connection[Any] | psycopg.Cursor[Any], app: str,
               conversation: str | None = None) -> list[tuple[str, int]]:
    """(conversation, seq) of each perception that is its conversation's newest turn: a turn a
    process died in. With `conversation`, that conversation's alone; without, every
    conversation's but the `source:*` originators', which hold bare perceptions (`soul
    perceive`), not conversations."""
    view = Turns.view(app)
    if conversation is not None:  # through the (conversation, seq DESC) index: one row read
        row = db.execute(sql.SQL(
            "SELECT seq, type FROM {} WHERE conversation = %s AND type = ANY(%s) ORDER BY seq DESC LIMIT 1"
        ).format(view), [conversation, list(TURNS)]).fetchone()
        return [(conversation, row[0])] if row is not None and row[1] == "perception" else []
    rows = db.execute(sql.SQL(
        "SELECT DISTINCT ON (conversation) conversation, seq, type FROM {} WHERE type = ANY(%s)"
        " ORDER BY conversation, seq DESC").format(view), [list(TURNS)]).fetchall()
    return [(c, seq) for c, seq, kind in rows if kind == "perception" and not c.startswith("source:")]
