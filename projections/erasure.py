"""After `soul forget --erase`: the views derived again without the erased events, and Postgres
made to let go of the bytes their old rows left behind.

A deleted row, even a dropped table, leaves its bytes where Postgres only overwrites them later
(measured in tests/system/test_erase.py, PostgreSQL 16):

- the column statistics ANALYZE sampled (`pg_statistic`: prose, words), whose old tuples a
  plain VACUUM prunes but does not clear from the page;
- the WAL segments that logged the inserts, until a checkpoint removes them;
- WAL segments already recycled for reuse: renamed to a future name, their old bytes kept.

`let_go` clears each: VACUUM FULL of `pg_statistic` and of the app's dead letters, then, with
`wal_recycle` off for the while, a WAL switch (which fills the rest of its segment with zeros)
until every segment that was present has been passed, and a checkpoint that deletes them. That
takes a superuser (the embedded Postgres is one); elsewhere it says what stays.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Journal
from projections.base import Projection, schema_for
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner

_SEGMENT = re.compile(r"[0-9A-F]{24}")


def holding(topics: Iterable[str] | None) -> list[type[Projection]]:
    """The projections that take events of any of `topics` (those that take every type included);
    all of them for None."""
    wanted = None if topics is None else set(topics)
    return [p for p in PROJECTIONS.values() if wanted is None or not p.types or wanted & set(p.types)]


def rebuild(journal: Journal, topics: Iterable[str] | None, url: str | None = None) -> list[str]:
    """Rebuild every projection that took events of `topics` (None: every projection) from the
    journal as it is now, dropping its old table (readers keep it until the swap); their names."""
    rebuilt = []
    for projection in holding(topics):
        with ProjectionRunner(journal, projection(), url) as runner:
            if runner.status()["rebuild"] is not None:  # begun before the erase, it may hold the events:
                runner.rebuild()  # finish it, then build afresh
            runner.rebuild()
        rebuilt.append(projection.name)
    return rebuilt


def let_go(conn: psycopg.Connection[Any], app: str) -> list[str]:
    """Clear what Postgres keeps of rows deleted and tables dropped before; what it could not
    clear, one sentence each (empty: nothing of them is left in the data directory)."""
    if conn.execute("SHOW is_superuser").fetchone()[0] != "on":  # type: ignore[index]
        return ["Postgres: not a superuser here, so its statistics and WAL keep the erased rows' bytes "
                "until Postgres reuses that space (VACUUM FULL pg_statistic and a WAL switch with a "
                "checkpoint, as a superuser, clear them)"]
    limits = []
    dead_letters = sql.Identifier(schema_for(app), "_dead_letters")
    (exists,) = conn.execute("SELECT to_regclass(%s)", [dead_letters.as_string(conn)]).fetchone()  # type: ignore[misc]
    if exists is not None:
        conn.execute(sql.SQL("VACUUM FULL {}").format(dead_letters))
    conn.execute("VACUUM FULL pg_catalog.pg_statistic")
    if conn.execute("SHOW archive_mode").fetchone()[0] != "off":  # type: ignore[index]
        limits.append("Postgres archives its WAL (archive_mode): the archive holds copies of the erased rows")
    if conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]:  # type: ignore[index]
        limits.append("Postgres has replication slots: standbys and the WAL kept for them hold copies")
    return limits + _cycle_wal(conn)


def _cycle_wal(conn: psycopg.Connection[Any]) -> list[str]:
    """Pass every WAL segment present with switches, then delete them with a checkpoint."""
    recycling = conn.execute("SHOW wal_recycle").fetchone()[0] == "on"  # type: ignore[index]
    try:
        if recycling and not _stop_recycling(conn):
            return ["Postgres did not take wal_recycle = off within 10 s: its recycled WAL segments "
                    "keep the erased rows"]
        present = [name for (name,) in conn.execute("SELECT name FROM pg_ls_waldir()") if _SEGMENT.fullmatch(name)]
        for _ in range(len(present) + 1):
            (current,) = conn.execute(  # type: ignore[misc]
                "SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()
            if current > max(present, default=""):
                break
            # A switch does nothing after no WAL: a message (at any wal_level) makes sure there is some.
            conn.execute("SELECT pg_logical_emit_message(false, 'soul', 'erase')")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        return []
    finally:
        if recycling:
            conn.execute("ALTER SYSTEM RESET wal_recycle")
            conn.execute("SELECT pg_reload_conf()")


def _stop_recycling(conn: psycopg.Connection[Any]) -> bool:
    """Set `wal_recycle` off; whether this backend sees it within 10 s. Then the postmaster has
    signalled the checkpointer too, which reloads before it takes the next checkpoint request."""
    conn.execute("ALTER SYSTEM SET wal_recycle = off")
    conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while conn.execute("SHOW wal_recycle").fetchone()[0] != "off":  # type: ignore[index]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
