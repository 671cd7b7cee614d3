"""Projections on a real nats-server and a real Postgres (pgserver): tracked, exactly once,
rebuildable, and never stopped by an event they cannot read."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from journal.codec import encode
from journal.event import BifocalEvent, Embedder
from journal.journal import Entry, Journal
from journal.subjects import journal_prefix
from projections import postgres
from projections.base import Projection, schema_for
from projections.counts import EventCounts
from projections.postgres import EmbeddedPostgres, PostgresUnavailable, connect
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner
from soul.cli import main
from tests.support import ROOT, drop_schema, publish_raw

TINY = Embedder("test@1", 2)
TYPES = ("perception", "thought", "tool_call")


class Ledger(Projection):
    """One row per applied entry, loaded with COPY and deliberately *not* idempotent: only the
    runner's tracking stands between a crash and a doubled row, which is what these tests check."""

    name = "ledger"
    version = 1

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL("CREATE TABLE {} (seq bigint NOT NULL, type text NOT NULL, prose text NOT NULL)").format(table))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        with cur.copy(sql.SQL("COPY {} (seq, type, prose) FROM STDIN").format(table)) as copy:
            for e in entries:
                copy.write_row((e.seq, e.topic, e.event.prose))  # type: ignore[union-attr]


def event(kind: str, i: int) -> BifocalEvent:
    return BifocalEvent(kind, f"{kind} {i}", np.array([1.0, float(i)]), TINY, f"source:{kind}", i + 1)


def append(journal: Journal, kinds: Sequence[str]) -> None:
    """Journal one event per kind, each as the next version of its kind's originator."""
    start = journal.last_seq()
    events = [event(kind, start + i) for i, kind in enumerate(kinds)]
    for k in range(0, len(events), 1000):
        journal.append(events[k : k + 1000])


def publish_undecodable(journal: Journal, nats_url: str) -> None:
    """A message from a newer soul: a schema version this code does not know."""
    newer = encode(event("perception", 0)).replace(b'"schema":1', b'"schema":9')
    publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.{uuid.uuid4()}", newer, {"Es-Topic": "perception", "Es-Version": "1"})


def rows(conn: psycopg.Connection[Any], app: str, projection: type[Projection]) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(projection.view(app))).fetchall()


# -- Postgres ----------------------------------------------------------------------------


def test_embedded_postgres_outlives_the_command_that_started_it() -> None:
    home = Path(tempfile.mkdtemp(prefix="soul-pg-"))  # not under pytest's tree: see conftest.pg_home
    server = EmbeddedPostgres(home)
    assert server.status()["running"] is False and server.status()["url"] is None
    code = f"from pathlib import Path; from projections.postgres import EmbeddedPostgres; print(EmbeddedPostgres(Path({str(home)!r})).start())"
    try:
        started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        assert started.stderr == ""  # no warnings from pgserver's imports
        status = server.status()  # the process that started it has exited: pgserver did not stop it
        assert status["running"] and status["url"] == started.stdout.strip()
        assert status["store"] == str(home / "pg")
        assert server.start() == status["url"] and server.status()["pid"] == status["pid"]  # reused
        with connect(status["url"]) as c:
            assert c.execute("SELECT '[1,2,3]'::vector").fetchone()[0].to_list() == [1, 2, 3]  # pgvector registered
            # A fresh server was restarted once into its settings (shared buffers for HNSW's pages).
            wanted = postgres.settings()
            assert dict(c.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(wanted)]).fetchall()) == wanted
            assert int(wanted["shared_buffers"]) >= 128 * 128  # never below Postgres' default 128 MB (8 kB pages)
        assert server.stop() is True
        assert server.status()["running"] is False and server.stop() is False
    finally:
        server.stop()
        shutil.rmtree(home)


def test_unreachable_postgres_is_one_line_naming_the_url_without_its_password() -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        connect("postgresql://alice:s3cret@127.0.0.1:1/soul")
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message
    assert "cannot reach Postgres at postgresql://alice:***@127.0.0.1:1/soul" in message


def test_a_database_without_pgvector_is_one_line_naming_it(conn: psycopg.Connection[Any], pg_url: str) -> None:
    if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        pytest.skip("needs a superuser to make a role that may not create extensions")
    role = "t" + uuid.uuid4().hex[:10]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(role)))
    try:
        limited = psycopg.conninfo.make_conninfo(pg_url, user=role, dbname=role)
        with pytest.raises(PostgresUnavailable, match=r"pgvector extension \('vector'\) is not created") as caught:
            connect(limited)
        assert "\n" not in str(caught.value)
    finally:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_projection_names_must_be_usable_as_table_names() -> None:
    with pytest.raises(ValueError, match="must match"):
        type("Bad", (Ledger,), {"name": "Has-Dashes"})


# -- the runner --------------------------------------------------------------------------


def test_event_counts_do_not_count_a_seq_twice(conn: psycopg.Connection[Any]) -> None:
    table = sql.Identifier("counts_" + uuid.uuid4().hex[:8])
    entries = [Entry(seq, "source:x", kind, 10, event(kind, seq)) for seq, kind in enumerate(["thought", "perception", "thought"], 1)]
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        EventCounts().create(cur, table)
        EventCounts().apply(cur, table, entries[:2])
        EventCounts().apply(cur, table, entries)  # seqs 1 and 2 again, 3 is new
        counted = cur.execute(sql.SQL("SELECT type, events, bytes, last_seq FROM {} ORDER BY type").format(table)).fetchall()
    assert counted == [("perception", 1, 10, 2), ("thought", 2, 20, 3)]


def test_catch_up_applies_each_event_once_and_resumes_from_its_position(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    append(journal, ["perception", "thought", "perception"])
    seen: list[tuple[int, int]] = []
    with ProjectionRunner(journal, EventCounts(), pg_url, page=2) as runner:
        assert runner.catch_up(lambda position, end: seen.append((position, end))) == 3
        assert seen == [(2, 3), (3, 3)]
        assert [r[:2] for r in rows(conn, app, EventCounts)] == [("perception", 2), ("thought", 1)]
        append(journal, ["thought", "tool_call"])
        assert runner.catch_up() == 5
        assert runner.catch_up() == 5  # nothing new: nothing changes
    counts = {r[0]: (r[1], r[3]) for r in rows(conn, app, EventCounts)}
    assert counts == {"perception": (2, 3), "thought": (2, 4), "tool_call": (1, 5)}
    with ProjectionRunner(journal, EventCounts(), pg_url) as runner:  # a new runner starts where the last stopped
        status = runner.status()
        assert (status["position"], status["lag"], status["rows"], status["stored_version"]) == (5, 0, 3, 1)


def test_undecodable_events_become_dead_letters_and_the_projection_goes_on(journal: Journal, conn: psycopg.Connection[Any], pg_url: str, nats_url: str) -> None:
    app = journal.app
    append(journal, ["perception"])
    publish_undecodable(journal, nats_url)
    publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.not-ours", b"hello from elsewhere")
    append(journal, ["thought"])
    with ProjectionRunner(journal, EventCounts(), pg_url) as runner:
        assert runner.catch_up() == 4
        status = runner.status()
    assert (status["dead_letters"], status["lag"]) == (2, 0)
    assert [r[:2] for r in rows(conn, app, EventCounts)] == [("perception", 1), ("thought", 1)]
    letters = conn.execute(sql.SQL("SELECT seq, topic, error FROM {} ORDER BY seq").format(
        sql.Identifier(schema_for(app), "_dead_letters"))).fetchall()
    assert [(seq, topic) for seq, topic, _ in letters] == [(2, "perception"), (3, "soul:foreign")]
    assert "schema version 9 is newer" in letters[0][2] and "foreign message" in letters[1][2]


def test_two_runners_on_one_projection_apply_each_entry_once(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    append(journal, [TYPES[i % 3] for i in range(2000)])
    runners = [ProjectionRunner(journal, Ledger(), pg_url, page=100) for _ in range(2)]
    threads = [threading.Thread(target=r.catch_up) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runners:
        r.close()
    seqs = [r[0] for r in rows(conn, journal.app, Ledger)]
    assert seqs == list(range(1, 2001))


def test_run_keeps_up_with_new_events_until_stopped(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    stop = threading.Event()
    with ProjectionRunner(journal, Ledger(), pg_url) as runner:
        thread = threading.Thread(target=runner.run, args=(stop,), kwargs={"poll": 0.02})
        thread.start()
        append(journal, ["perception", "thought"])
        deadline = time.monotonic() + 10
        while len(rows(conn, journal.app, Ledger)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert [r[:2] for r in rows(conn, journal.app, Ledger)] == [(1, "perception"), (2, "thought")]


def test_a_new_version_is_rebuilt_in_a_shadow_while_reads_keep_working(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    append(journal, [TYPES[i % 3] for i in range(1500)])
    old = ProjectionRunner(journal, EventCounts(), pg_url)
    old.catch_up()
    old_table = old.status()["table"]

    class EventCountsV2(EventCounts):
        version = 2

    totals: list[int] = []
    failures: list[BaseException] = []
    rebuilt = threading.Event()

    def read_all_along() -> None:
        with connect(pg_url) as reader:
            while not rebuilt.is_set():
                try:
                    totals.append(reader.execute(sql.SQL("SELECT sum(events) FROM {}").format(EventCounts.view(app))).fetchone()[0])
                except BaseException as e:
                    failures.append(e)
                    return

    def meanwhile_the_old_table_moves_on(position: int, end: int) -> None:
        if position == 50:  # the first page of the rebuild
            append(journal, ["thought"] * 30)
            old.catch_up()

    reading = threading.Thread(target=read_all_along)
    reading.start()
    with ProjectionRunner(journal, EventCountsV2(), pg_url, page=50) as runner:
        runner.rebuild(meanwhile_the_old_table_moves_on)
        status = runner.status()
    rebuilt.set()
    reading.join()
    old.close()
    assert failures == [] and len(totals) > 10
    assert totals == sorted(totals) and set(totals) == {1500, 1530}  # never a gap, never back
    assert (status["stored_version"], status["table"], status["position"], status["rebuild"]) == (2, "event_counts_v2_2", 1530, None)
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema_for(app)}.{old_table}"]).fetchone()[0] is None  # dropped


def test_an_interrupted_rebuild_resumes_its_shadow(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    append(journal, [TYPES[i % 3] for i in range(600)])

    def stop_after_two_pages(position: int, end: int) -> None:
        if position >= 200:
            raise KeyboardInterrupt

    with ProjectionRunner(journal, Ledger(), pg_url, page=100) as runner:
        runner.catch_up()
        with pytest.raises(KeyboardInterrupt):
            runner.rebuild(stop_after_two_pages)
        status = runner.status()
        assert status["rebuild"] == {"version": 1, "table": "ledger_v1_2", "position": 200}
        assert status["table"] == "ledger_v1_1" and status["rows"] == 600  # reads still see the old table
        resumed: list[int] = []
        runner.rebuild(lambda position, end: resumed.append(position))
        assert resumed[0] == 300  # went on from 200, did not start over
        status = runner.status()
    assert (status["table"], status["rebuild"]) == ("ledger_v1_2", None)
    assert [r[0] for r in rows(conn, app, Ledger)] == list(range(1, 601))


KILLABLE_RUNNER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.projections.test_projections import Ledger
from journal.journal import Journal
from projections.runner import ProjectionRunner

class SlowLedger(Ledger):
    def apply(self, cur, table, entries):
        super().apply(cur, table, entries)
        time.sleep(0.02)  # widen the window in which the kill lands inside a transaction

with Journal({app!r}) as journal, ProjectionRunner(journal, SlowLedger(), page=100) as runner:
    runner.catch_up()
"""


def test_kill_9_mid_catch_up_resumes_with_no_lost_and_no_doubled_rows(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    total = 3000
    append(journal, [TYPES[i % 3] for i in range(total)])
    code = KILLABLE_RUNNER.format(root=str(ROOT), app=app)
    schema = sql.Identifier(schema_for(app))

    def progress(what: str) -> int:  # 0 until the subprocess has set the tables up
        if conn.execute("SELECT to_regclass(%s)", [f"{schema_for(app)}.ledger_v1_1"]).fetchone()[0] is None:
            return 0
        query = {"rows": "SELECT count(*) FROM {}.ledger_v1_1",
                 "position": "SELECT position FROM {}._tracking WHERE table_name = 'ledger_v1_1'"}[what]
        return conn.execute(sql.SQL(query).format(schema)).fetchone()[0]

    # Kill the moment one side of a commit shows (rows, then the position): were the two
    # written apart, the kill would land between them, doubling or losing a page.
    killed_at = []
    for what, low, high in (("rows", 300, 1400), ("position", 1500, 2700)):
        threshold = random.randrange(low, high)
        process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while progress(what) < threshold:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
        killed_at.append(progress("position"))
    assert all(0 < at < total for at in killed_at), killed_at  # both kills landed mid-catch-up
    with ProjectionRunner(journal, Ledger(), pg_url) as runner:
        assert runner.catch_up() == total
        resumed = rows(conn, app, Ledger)
        runner.rebuild()  # a clean, uninterrupted run from seq 1
        clean = rows(conn, app, Ledger)
    assert [r[0] for r in resumed] == list(range(1, total + 1)), f"killed at {killed_at}"
    assert resumed == clean


# -- properties --------------------------------------------------------------------------

# A journal grows in chunks; "undecodable" stands for a message from a newer soul.
chunks = st.lists(st.lists(st.sampled_from((*TYPES, "undecodable")), max_size=12), min_size=1, max_size=5)


def grow(journal: Journal, nats_url: str, kinds: list[str]) -> None:
    for kind in kinds:
        if kind == "undecodable":
            publish_undecodable(journal, nats_url)
        else:
            append(journal, [kind])


@settings(max_examples=15, deadline=None)
@given(chunks=chunks, page=st.integers(1, 7))
def test_incremental_projection_equals_a_full_rebuild(nats_url: str, pg_url: str, chunks: list[list[str]], page: int) -> None:
    app = "p" + uuid.uuid4().hex[:12]
    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal, connect(pg_url) as conn:
            runners = [ProjectionRunner(journal, p(), pg_url, page=page) for p in (EventCounts, Ledger)]
            for chunk in chunks:
                grow(journal, nats_url, chunk)
                for runner in runners:
                    runner.catch_up()
            incremental = [(rows(conn, app, p), r.status()["dead_letters"]) for p, r in zip((EventCounts, Ledger), runners)]
            for runner in runners:
                runner.rebuild()
            rebuilt = [(rows(conn, app, p), r.status()["dead_letters"]) for p, r in zip((EventCounts, Ledger), runners)]
            for runner in runners:
                runner.close()
            assert incremental == rebuilt
            assert incremental[1][1] == sum(chunk.count("undecodable") for chunk in chunks)
    finally:
        drop_schema(pg_url, app)


class CrashingLedger(Ledger):
    """Dies in the middle of applying the entry with seq `crash_at`, after writing part of its page."""

    def __init__(self, crash_at: int):
        self.crash_at = crash_at

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        super().apply(cur, table, [e for e in entries if e.seq < self.crash_at])
        if any(e.seq == self.crash_at for e in entries):
            raise SystemExit("crash")


@settings(max_examples=15, deadline=None)
@given(kinds=st.lists(st.sampled_from(TYPES), min_size=1, max_size=40), page=st.integers(1, 9), data=st.data())
def test_a_crash_at_any_point_then_resume_equals_an_uninterrupted_run(
    nats_url: str, pg_url: str, kinds: list[str], page: int, data: st.DataObject
) -> None:
    app = "p" + uuid.uuid4().hex[:12]
    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal, connect(pg_url) as conn:
            append(journal, kinds)
            crash_at = data.draw(st.integers(1, len(kinds)), label="crash_at")
            with ProjectionRunner(journal, CrashingLedger(crash_at), pg_url, page=page) as runner:
                with pytest.raises(SystemExit):
                    runner.catch_up()
                assert runner.status()["position"] < crash_at
            with ProjectionRunner(journal, Ledger(), pg_url, page=page) as runner:
                runner.catch_up()
            uninterrupted = [(e.seq, e.topic, e.event.prose) for e in journal.read()]  # type: ignore[union-attr]
            assert rows(conn, app, Ledger) == uninterrupted
    finally:
        drop_schema(pg_url, app)


# -- the command line --------------------------------------------------------------------


def test_status_and_rebuild_commands(journal: Journal, pg_url: str, nats_url: str) -> None:
    env = {"SOUL_APP": journal.app, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url}
    append(journal, ["perception", "thought"])
    publish_undecodable(journal, nats_url)
    fresh = CliRunner().invoke(main, ["projections", "status"], env=env)
    assert fresh.exit_code == 0, fresh.output
    assert fresh.output.split()[:2] == ["event_counts", "v1"] and "(not built yet)" in fresh.output

    rebuilt = CliRunner().invoke(main, ["projections", "rebuild", "event_counts"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "event_counts rebuilt: v1, position 3, rows 2, dead letters 1" in rebuilt.output

    lines = CliRunner().invoke(main, ["projections", "status", "--json"], env=env).output.splitlines()
    figures = next(f for f in map(json.loads, lines) if f["name"] == "event_counts")
    assert {k: figures[k] for k in ("name", "version", "stored_version", "position", "lag", "rows", "dead_letters")} == {
        "name": "event_counts", "version": 1, "stored_version": 1, "position": 3, "lag": 0, "rows": 2, "dead_letters": 1}


def test_user_mistakes_are_one_line_errors(journal: Journal, nats_url: str) -> None:
    env = {"SOUL_APP": journal.app, "SOUL_NATS_URL": nats_url}
    unknown = CliRunner().invoke(main, ["projections", "rebuild", "nope"], env=env)
    assert unknown.exit_code == 1 and unknown.output == f"Error: unknown projection 'nope'; known: {', '.join(PROJECTIONS)}\n"
    unreachable = CliRunner().invoke(main, ["projections", "status"], env={**env, "SOUL_PG_URL": "postgresql://bob:hunter2@127.0.0.1:1/x"})
    assert unreachable.exit_code == 1 and len(unreachable.output.splitlines()) == 1
    assert "bob:***@127.0.0.1:1" in unreachable.output and "hunter2" not in unreachable.output
