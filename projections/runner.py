"""Keeps one projection caught up with the journal: tracked, exactly once, rebuildable.

Modelled on eventsourcing's ProjectionRunner with a PostgresTrackingRecorder: the position
(the last journal seq consumed) is one row per table in `_tracking`, written in the same
transaction as the rows it accounts for, so a crash at any point loses nothing and doubles
nothing. Unlike eventsourcing's runner this one works a page of entries per transaction
(`apply` may bulk-load with COPY) and keeps going past events it cannot decode or the view cannot
hold (a NUL in text, a value of the wrong kind in `data`): those go to `_dead_letters` with the
reason. `run` outlives its servers: when Postgres restarts or NATS stops answering it waits,
reconnects and catches up from the committed position.

Per app schema:
    _projections   name -> version, active table, shadow table being rebuilt (if any)
    _tracking      table -> position; locked FOR UPDATE by each page, so two runners on one
                   table take turns and skip what the other applied
    _dead_letters  (table, seq) -> originator, topic, error
    <name>         the view readers use, over the active table
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import OperationalError
from psycopg import sql

from journal.errors import one_line
from journal.journal import Entry, Journal
from projections.base import Projection, schema_for
from projections.postgres import PostgresUnavailable, connect, pg_url

log = logging.getLogger("soul.projections")

Progress = Callable[[int, int], None]  # (position, journal end)

# What one event's data can make `apply` raise: data the view's columns cannot hold (class 22 or
# 23 errors in Postgres) or facts of the wrong kind. Not SQL mistakes (ProgrammingError): those
# are bugs in the projection, and would fail every event alike.
UNAPPLICABLE = (psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError, LookupError, AttributeError)
# What a restart of Postgres or an election in the NATS cluster looks like: worth waiting out.
OUTAGES = (psycopg.OperationalError, PostgresUnavailable, OperationalError)

_META = """
CREATE TABLE IF NOT EXISTS {schema}._projections (
    name text PRIMARY KEY, version int NOT NULL, active text NOT NULL,
    shadow text, shadow_version int, builds int NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}._tracking (table_name text PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}._dead_letters (
    table_name text, seq bigint, originator text NOT NULL, topic text NOT NULL, error text NOT NULL,
    recorded timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, seq));
"""


class _Swapped(Exception):
    """The table this runner was filling was swapped out by a rebuild in another process."""


def _storable(value: object) -> str:
    """`value` as Postgres text, which cannot hold NUL: a foreign message may carry one anywhere."""
    return str(value).replace("\x00", "\\x00")


def _pages(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    page: list[Entry] = []
    for entry in entries:
        page.append(entry)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


class ProjectionRunner:
    def __init__(self, journal: Journal, projection: Projection, url: str | None = None, page: int = 500):
        self.journal = journal
        self.projection = projection
        self.page = page
        self.schema = schema_for(journal.app)
        self.url = url or pg_url()
        self.conn = connect(self.url)
        self._finished: set[str] = set()  # tables this runner has called projection.finish on
        self._setup()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ProjectionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _id(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def _setup(self) -> None:
        """The schema, the bookkeeping tables, and this projection's first table and view."""
        p = self.projection
        with self.conn.transaction(), self.conn.cursor() as cur:
            # One setup at a time per schema: CREATE ... IF NOT EXISTS races with itself.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.schema])
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            cur.execute(sql.SQL(_META).format(schema=sql.Identifier(self.schema)))
            if cur.execute(sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(self._id("_projections")), [p.name]).fetchone():
                return
            table = self._create_table(cur, p.version, 1)
            cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, NULL, NULL, 1)").format(self._id("_projections")),
                        [p.name, p.version, table])
            self._point_view(cur, table)

    def _create_table(self, cur: psycopg.Cursor[Any], version: int, build: int) -> str:
        table = f"{self.projection.name}_v{version}_{build}"
        self.projection.create(cur, self._id(table))
        cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, 0)").format(self._id("_tracking")), [table])
        return table

    def _drop_table(self, cur: psycopg.Cursor[Any], table: str) -> None:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._id(table)))
        for bookkeeping in ("_tracking", "_dead_letters"):
            cur.execute(sql.SQL("DELETE FROM {} WHERE table_name = %s").format(self._id(bookkeeping)), [table])

    def _point_view(self, cur: psycopg.Cursor[Any], table: str) -> None:
        # DROP + CREATE, not CREATE OR REPLACE: a new version may have other columns.
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {0}; CREATE VIEW {0} AS SELECT * FROM {1}").format(
            self._id(self.projection.name), self._id(table)))

    def _registry(self, db: psycopg.Cursor[Any] | psycopg.Connection[Any], lock: bool = False) -> tuple[int, str, str | None, int | None]:
        query = "SELECT version, active, shadow, shadow_version FROM {} WHERE name = %s" + (" FOR UPDATE" if lock else "")
        row = db.execute(sql.SQL(query).format(self._id("_projections")), [self.projection.name]).fetchone()
        assert row is not None, "set up in __init__"
        return row

    # -- applying ------------------------------------------------------------------------

    def _locked_position(self, cur: psycopg.Cursor[Any], table: str) -> int:
        """`table`'s position, row-locked until the transaction ends: one writer at a time."""
        row = cur.execute(sql.SQL("SELECT position FROM {} WHERE table_name = %s FOR UPDATE").format(
            self._id("_tracking")), [table]).fetchone()
        if row is None:
            raise _Swapped(table)
        return int(row[0])

    def _apply(self, cur: psycopg.Cursor[Any], table: str, entries: Sequence[Entry]) -> int:
        """Apply what `table` has not seen of `entries` and move its position, in the caller's
        transaction; the position after."""
        position = self._locked_position(cur, table)
        fresh = [e for e in entries if e.seq > position]  # another runner may have applied the rest
        if not fresh:
            return position
        types = self.projection.types
        wanted = [e for e in fresh if e.event is not None and (not types or e.topic in types)]
        # Undecodable entries are dead letters whatever their type: it may be one we want.
        dead = [(e, e.error) for e in fresh if e.event is None] + self._apply_or_isolate(cur, table, wanted)
        for e, reason in dead:
            log.warning("projection %s: journal entry %d is a dead letter: %s", self.projection.name, e.seq, reason)
        if dead:
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(
                self._id("_dead_letters")), [(table, e.seq, *map(_storable, (e.originator_id, e.topic, r))) for e, r in dead])
        cur.execute(sql.SQL("UPDATE {} SET position = %s WHERE table_name = %s").format(self._id("_tracking")),
                    [fresh[-1].seq, table])
        return fresh[-1].seq

    def _apply_or_isolate(self, cur: psycopg.Cursor[Any], table: str, entries: Sequence[Entry]) -> list[tuple[Entry, str]]:
        """Apply `entries` in a savepoint; if their data cannot be applied, halve them until the
        entries at fault are found, apply the rest in order, and return those with the reason."""
        if not entries:
            return []
        try:
            with self.conn.transaction():
                self.projection.apply(cur, self._id(table), entries)
            return []
        except UNAPPLICABLE as e:
            if len(entries) == 1:
                return [(entries[0], f"cannot be applied: {type(e).__name__}: {one_line(e)}")]
        half = len(entries) // 2
        return self._apply_or_isolate(cur, table, entries[:half]) + self._apply_or_isolate(cur, table, entries[half:])

    def _fill(self, table: str, progress: Progress | None) -> int:
        """Apply the journal to `table` from its position to the journal's current end."""
        with self.conn.cursor() as cur:
            row = cur.execute(sql.SQL("SELECT position FROM {} WHERE table_name = %s").format(
                self._id("_tracking")), [table]).fetchone()
        if row is None:
            raise _Swapped(table)
        position = int(row[0])
        entries = self.journal.read(since=position + 1)
        first = list(itertools.islice(entries, self.page))
        if len(first) < self.page:  # the whole backlog in one page: the usual poll, one request
            end = first[-1].seq if first else position
            pages: Iterable[list[Entry]] = [first] if first else []
        else:
            # The end as of now: while events arrive faster than this projection applies them, a
            # caller (a turn catching its window up) must get an answer, not chase the end forever.
            end = self.journal.last_seq()
            pages = _pages(itertools.chain(first, itertools.takewhile(lambda e: e.seq <= end, entries)), self.page)
        for page in pages:
            with self.conn.transaction(), self.conn.cursor() as cur:
                position = self._apply(cur, table, page)
            if progress:
                progress(position, max(end, position))
        return position

    def _finish(self, table: str) -> None:
        """Let the projection build what it deferred, once per table per runner, holding the
        table's tracking lock so that no page is applied meanwhile."""
        if table in self._finished:
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            self._locked_position(cur, table)
            self.projection.finish(cur, self._id(table))
        self._finished.add(table)

    # -- the runner's API ------------------------------------------------------------------

    def catch_up(self, progress: Progress | None = None) -> int:
        """Apply everything the journal holds now; the position reached. If the stored version
        is not the code's, rebuild first (the old table serves reads meanwhile)."""
        while True:
            version, active, _, _ = self._registry(self.conn)
            if version != self.projection.version:
                self.rebuild(progress)
                continue
            try:
                position = self._fill(active, progress)
                self._finish(active)
                return position
            except _Swapped:  # another process swapped in a rebuild: look again
                continue

    def run(self, stop: threading.Event, poll: float = 0.1, retry: float = 1.0) -> None:
        """Catch up, then keep up with new entries (checking every `poll` s) until `stop` is set.

        An outage (Postgres restarting, NATS unreachable) is logged and waited out: every `retry`
        seconds it reconnects to Postgres if needed and catches up from the committed position,
        so the page that was in flight is applied once, after the outage."""
        while not stop.is_set():
            try:
                if self.conn.closed:
                    self.conn = connect(self.url)
                self.catch_up()
            except OUTAGES as e:
                log.warning("projection %s waits for its servers: %s", self.projection.name, one_line(e))
                stop.wait(retry)
                continue
            stop.wait(poll)

    def rebuild(self, progress: Progress | None = None) -> None:
        """Rebuild from seq 1 into a shadow table, then swap it in: the view keeps serving the
        old table until then. An interrupted rebuild of the same version resumes where it stopped."""
        shadow = self._shadow()
        try:
            self._fill(shadow, progress)
            self._finish(shadow)
            self._swap(shadow)
        except _Swapped:  # another process finished this same rebuild
            pass

    def _shadow(self) -> str:
        version = self.projection.version
        with self.conn.transaction(), self.conn.cursor() as cur:
            _, _, shadow, shadow_version = self._registry(cur, lock=True)
            if shadow is not None and shadow_version == version:
                return shadow
            if shadow is not None:  # a rebuild for a version this code does not have
                self._drop_table(cur, shadow)
            builds = cur.execute(sql.SQL("UPDATE {} SET builds = builds + 1 WHERE name = %s RETURNING builds").format(
                self._id("_projections")), [self.projection.name]).fetchone()[0]  # type: ignore[index]
            shadow = self._create_table(cur, version, builds)
            cur.execute(sql.SQL("UPDATE {} SET shadow = %s, shadow_version = %s WHERE name = %s").format(
                self._id("_projections")), [shadow, version, self.projection.name])
            return shadow

    def _swap(self, shadow: str) -> None:
        """In one transaction: bring the shadow to the journal's end, point the view at it,
        drop the old table. Readers wait for the commit at most; they never see a gap."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            _, active, current_shadow, _ = self._registry(cur, lock=True)
            if current_shadow != shadow:
                raise _Swapped(shadow)
            self._locked_position(cur, active)  # its runner (if any) waits for us, then finds it gone
            position = self._locked_position(cur, shadow)
            for page in _pages(self.journal.read(since=position + 1), self.page):
                self._apply(cur, shadow, page)
            self._point_view(cur, shadow)
            self._drop_table(cur, active)
            cur.execute(sql.SQL(
                "UPDATE {} SET version = shadow_version, active = shadow, shadow = NULL, shadow_version = NULL "
                "WHERE name = %s").format(self._id("_projections")), [self.projection.name])

    def status(self) -> dict[str, Any]:
        return status(self.conn, self.journal, self.projection)


def status(conn: psycopg.Connection[Any], journal: Journal, projection: Projection) -> dict[str, Any]:
    """Where `projection` stands, without creating anything: for `soul projections status`."""
    app = journal.app
    schema = sql.Identifier(schema_for(app))
    last_seq = journal.last_seq()
    figures: dict[str, Any] = {
        "name": projection.name, "version": projection.version, "stored_version": None, "table": None,
        "position": 0, "last_seq": last_seq, "lag": last_seq, "rows": 0, "dead_letters": 0, "rebuild": None,
    }

    def row(query: str, *args: Any) -> Any:
        return conn.execute(sql.SQL(query).format(schema=schema, view=projection.view(app)), args).fetchone()

    with conn.transaction():  # one snapshot: a swap committing meanwhile is seen whole or not at all
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if row("SELECT to_regclass(%s)", f'"{schema_for(app)}"._projections')[0] is None:
            return figures  # never run
        registry = row("SELECT version, active, shadow, shadow_version FROM {schema}._projections WHERE name = %s",
                       projection.name)
        if registry is None:
            return figures
        version, active, shadow, shadow_version = registry
        (position,) = row("SELECT position FROM {schema}._tracking WHERE table_name = %s", active)
        figures.update(
            stored_version=version, table=active, position=position, lag=max(last_seq - position, 0),
            rows=row("SELECT count(*) FROM {view}")[0],
            dead_letters=row("SELECT count(*) FROM {schema}._dead_letters WHERE table_name = %s", active)[0],
        )
        if shadow is not None:
            (shadow_position,) = row("SELECT position FROM {schema}._tracking WHERE table_name = %s", shadow)
            figures["rebuild"] = {"version": shadow_version, "table": shadow, "position": shadow_position}
    return figures
