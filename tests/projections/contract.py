"""What every projection promises, as a reusable test case in eventsourcing's style
(eventsourcing.tests.persistence): a subclass names the projection and a realistic history of
the events it reads; the contract journals that history through the real Journal onto NATS,
with a foreign message and one from a newer soul among it, projects it into the real Postgres,
and checks that

- incremental equals rebuild: catching up batch by batch gives the rows (and dead letters) of a
  rebuild from seq 1, whether that reads the journal in one page or an entry at a time;
- crash and resume equals uninterrupted: a runner that dies once a page's rows are written but
  before its position is (in catch_up, then in a rebuild), resumed, ends where an uninterrupted
  run does, nothing lost, nothing doubled;
- re-applying is idempotent: entries the table already reflects, delivered again to a runner
  (as to one that read a stale position), all at once, any page, or any one entry, change
  nothing;
- undecodable events become dead letters: with their seq and reason, and the projection goes on
  to the events after them.

The base class is not collected (pytest collects `Test*` classes); its tests take the fixtures
of tests/conftest.py.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg import sql

from journal.event import BifocalEvent
from journal.journal import Entry, Journal
from journal.subjects import journal_prefix
from projections.base import Projection, schema_for
from projections.runner import ProjectionRunner
from tests.projections.test_projections import publish_undecodable
from tests.support import publish_raw

Snapshot = tuple[list[str], list[tuple[int, str]]]


def rows(conn: psycopg.Connection[Any], relation: sql.Identifier, table: sql.Identifier | None = None) -> list[str]:
    """Every row of `relation` as text (vectors and tsvectors included), in the primary-key order
    of `table` (by default `relation` itself), then of the text: a table may have no key."""
    key = [name for (name,) in conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n", [(table or relation).as_string(conn)])]
    order = sql.SQL(", ").join([*(sql.Identifier("v", name) for name in key), sql.SQL("v::text")])
    return [r[0] for r in conn.execute(sql.SQL("SELECT v::text FROM {} v ORDER BY {}").format(relation, order))]


def snapshot(conn: psycopg.Connection[Any], app: str, projection: type[Projection]) -> Snapshot:
    """Every row of the projection's view as text, in a stable order, and its dead letters."""
    schema = sql.Identifier(schema_for(app))
    (active,) = conn.execute(sql.SQL("SELECT active FROM {}._projections WHERE name = %s").format(schema),
                             [projection.name]).fetchone()  # type: ignore[misc]
    letters = conn.execute(sql.SQL(
        "SELECT d.seq, d.error FROM {schema}._dead_letters d JOIN {schema}._projections p ON d.table_name = p.active"
        " WHERE p.name = %s ORDER BY d.seq").format(schema=schema), [projection.name]).fetchall()
    return rows(conn, projection.view(app), sql.Identifier(schema_for(app), active)), letters


def clean_rebuild(journal: Journal, conn: psycopg.Connection[Any], pg_url: str, projection: type[Projection],
                  page: int = 500) -> Snapshot:
    with ProjectionRunner(journal, projection(), pg_url, page=page) as runner:
        runner.rebuild()
    return snapshot(conn, journal.app, projection)


def changes(expected: Snapshot, got: Snapshot) -> str:
    """What `got` has that `expected` has not and the reverse, vectors elided: a failure's message."""
    def short(row: object) -> str:
        return re.sub(r'"\[[^]]*\]"', "[…]", str(row))

    lines = [f"{sign} {short(r)}" for sign, a, b in (("-", expected, got), ("+", got, expected))
             for part in (0, 1) for r in a[part] if r not in b[part]]
    return "\n".join(lines) or "the same rows in another order"


class Redelivering:
    """The journal as a runner that read a stale position sees it: whatever seq it asks for, it
    gets `entries`, which the table already reflects."""

    def __init__(self, journal: Journal, entries: Sequence[Entry]):
        self.journal, self.entries = journal, entries

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    def read(self, since: int = 1, types: Any = (), limit: int | None = None) -> Any:
        return iter(self.entries)


class Crash(BaseException):
    """The process dying: nothing the runner may take for an event's fault and dead-letter."""


def crashing(projection: type[Projection], after: int) -> Projection:
    """`projection`, dying in the `after`-th page it applies: its rows written, its position not yet."""

    class Crashing(projection):  # type: ignore[valid-type, misc]
        pages = 0

        def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
            super().apply(cur, table, entries)
            self.pages += 1
            if self.pages == after:
                raise Crash(f"in page {after}, after its rows")

    return Crashing()


def wanted(projection: type[Projection], entries: Sequence[Entry], dead: set[int]) -> list[Entry]:
    """What the runner hands `apply` of `entries`: decoded, of the projection's types, not dead letters."""
    types = projection.types
    return [e for e in entries if e.event is not None and (not types or e.topic in types) and e.seq not in dead]


class ProjectionContract(ABC):
    projection: ClassVar[type[Projection]]
    page: ClassVar[int] = 3  # a few dozen events make a dozen pages: page boundaries fall everywhere

    @abstractmethod
    def history(self) -> list[BifocalEvent]:
        """A few dozen events, in journal order, as a living soul journals those this projection
        reads (and some it does not); originator versions are numbered when journaled."""

    def journal_history(self, journal: Journal, nats_url: str, between: Callable[[], object] = lambda: None) -> dict[int, str]:
        """Journal the history in four batches, calling `between` after each; a foreign message
        after the first, one from a newer soul after the second. What each of those two is
        refused for, by seq."""
        events = self.history()
        n = len(events)
        versions: dict[Any, int] = {}
        garbage: dict[int, str] = {}
        for k, batch in enumerate((events[: n // 5], events[n // 5 : n // 2], events[n // 2 : 4 * n // 5], events[4 * n // 5 :])):
            numbered = []
            for e in batch:
                versions[e.originator_id] = versions.get(e.originator_id, 0) + 1
                numbered.append(replace(e, originator_version=versions[e.originator_id]))
            journal.append(numbered)
            if k == 0:
                publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.not-ours", b"hello from elsewhere")
                garbage[journal.last_seq()] = "foreign message"
            elif k == 1:
                publish_undecodable(journal, nats_url)
                garbage[journal.last_seq()] = "schema version 9 is newer"
            between()
        return garbage

    def test_incremental_equals_a_rebuild(self, journal: Journal, conn: psycopg.Connection[Any], pg_url: str, nats_url: str) -> None:
        with ProjectionRunner(journal, self.projection(), pg_url, page=self.page) as runner:
            garbage = self.journal_history(journal, nats_url, runner.catch_up)
            assert runner.status()["position"] == journal.last_seq()
        incremental = snapshot(conn, journal.app, self.projection)
        assert incremental[0] and [seq for seq, _ in incremental[1]] == sorted(garbage)
        in_one_page = clean_rebuild(journal, conn, pg_url, self.projection, page=journal.last_seq())  # one apply
        entry_by_entry = clean_rebuild(journal, conn, pg_url, self.projection, page=1)
        assert in_one_page == incremental, changes(incremental, in_one_page)
        assert entry_by_entry == incremental, changes(incremental, entry_by_entry)

    def test_a_crash_mid_way_then_resume_equals_an_uninterrupted_run(
            self, journal: Journal, conn: psycopg.Connection[Any], pg_url: str, nats_url: str) -> None:
        self.journal_history(journal, nats_url)
        end = journal.last_seq()
        crashed_at: list[int] = []
        while True:  # a fresh process each time, dying in its third page until the journal runs out first
            with ProjectionRunner(journal, crashing(self.projection, 3), pg_url, page=self.page) as runner:
                try:
                    assert runner.catch_up() == end
                    break
                except Crash:
                    crashed_at.append(runner.status()["position"])
        assert len(crashed_at) >= 2 and 0 < crashed_at[0] and crashed_at == sorted(set(crashed_at)) and crashed_at[-1] < end, crashed_at
        resumed = snapshot(conn, journal.app, self.projection)

        with ProjectionRunner(journal, crashing(self.projection, 3), pg_url, page=self.page) as runner:
            with pytest.raises(Crash):
                runner.rebuild()
            shadow = runner.status()["rebuild"]
        assert shadow is not None and 0 < shadow["position"] < end, shadow
        assert (meanwhile := snapshot(conn, journal.app, self.projection)) == resumed, changes(resumed, meanwhile)  # still served
        with ProjectionRunner(journal, self.projection(), pg_url, page=self.page) as runner:
            runner.rebuild()  # resumes the shadow
            assert runner.status()["table"] == shadow["table"]
        rebuilt = snapshot(conn, journal.app, self.projection)

        uninterrupted = clean_rebuild(journal, conn, pg_url, self.projection)
        assert resumed == uninterrupted, f"crashed at {crashed_at}:\n{changes(uninterrupted, resumed)}"
        assert rebuilt == uninterrupted, changes(uninterrupted, rebuilt)

    def test_reapplying_what_the_table_reflects_changes_nothing(
            self, journal: Journal, conn: psycopg.Connection[Any], pg_url: str, nats_url: str) -> None:
        self.journal_history(journal, nats_url)
        with ProjectionRunner(journal, self.projection(), pg_url, page=self.page) as runner:
            end = runner.catch_up()
        before = snapshot(conn, journal.app, self.projection)
        entries = list(journal.read())
        attempts = {"the whole journal at once": entries,  # and each of the runner's pages, and each entry alone
                    **{f"the page of seqs {entries[k].seq}..{entries[min(k + self.page, len(entries)) - 1].seq}":
                       entries[k : k + self.page] for k in range(0, len(entries), self.page)},
                    **{f"seq {e.seq} ({e.topic}) alone": [e] for e in entries}}
        changed: dict[str, Snapshot] = {}
        for what, again in attempts.items():
            with ProjectionRunner(Redelivering(journal, again), self.projection(), pg_url, page=len(again)) as runner:
                position = runner.catch_up()
            if (now := snapshot(conn, journal.app, self.projection)) != before or position != end:
                changed[what] = now
                break  # the rows are no longer the runner's: later attempts would start elsewhere
        assert not changed, "\n".join(
            f"{what} delivered again changed the rows:\n{changes(before, now)}" for what, now in changed.items())

    def test_undecodable_events_become_dead_letters_and_the_projection_goes_on(
            self, journal: Journal, conn: psycopg.Connection[Any], pg_url: str, nats_url: str) -> None:
        garbage = self.journal_history(journal, nats_url)
        with ProjectionRunner(journal, self.projection(), pg_url, page=self.page) as runner:
            assert runner.catch_up() == journal.last_seq()
        projected, letters = snapshot(conn, journal.app, self.projection)
        assert [seq for seq, _ in letters] == sorted(garbage)
        assert all(garbage[seq] in error for seq, error in letters), letters
        entries = list(journal.read())
        assert max(garbage) < entries[-1].seq  # the history goes on after them
        # What the rows would be had the two never been published: the rest applied in one go.
        scratch = sql.Identifier(schema_for(journal.app), f"{self.projection.name}_scratch")
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            projection = self.projection()
            projection.create(cur, scratch)
            projection.apply(cur, scratch, wanted(self.projection, entries, set(garbage)))
            expected = rows(conn, scratch)
            assert projected == expected, changes((expected, []), (projected, []))
