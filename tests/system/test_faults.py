"""Fault tests with real processes: servers restarted under a running projection, a process
running every projection killed with SIGKILL, events whose data a view cannot hold.

The promise under test (docs/reliability.md): a projection's rows and its position are
committed in one transaction, so whatever dies and whenever, the projection after a restart
equals a clean rebuild from the journal; an event that cannot be applied is a dead letter with
its reason, never a stuck projection.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from journal.embedded import EmbeddedNats
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from projections.base import schema_for
from projections.postgres import EmbeddedPostgres, connect
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner
from tests.projections.contract import clean_rebuild, snapshot
from tests.projections.test_projections import Ledger, append
from tests.support import ROOT, drop_schema

MINILM = Embedder("test-minilm@1", 384)


def soul_like(count: int, seed: int) -> list[BifocalEvent]:
    """`count` events of every kind the projections read, as a living soul journals them (seq =
    position + 1 in a fresh journal): turns of three conversations, corpus chunks and their
    removal, mounts, resonance judgements, summaries, tasks and their steps, and now and then a
    perception whose prose holds a NUL, which Postgres text cannot hold."""
    rng = random.Random(seed)
    vectors = np.random.default_rng(seed).standard_normal((count, MINILM.dim)).astype("<f4")
    versions: dict[str, int] = {}
    events: list[BifocalEvent] = []
    chunks: list[BifocalEvent] = []
    task: str | None = None  # the task open now, whose steps some turns are

    def add(kind: str, prose: str, origin: str, **fields: Any) -> None:
        versions[origin] = versions.get(origin, 0) + 1
        events.append(BifocalEvent(kind, prose, vectors[len(events)], MINILM, origin, versions[origin], **fields))

    while len(events) < count:
        seq, roll = len(events) + 1, rng.random()
        conversation = f"conversation:{rng.randrange(3)}"
        if roll < 0.02:
            if task is None:
                task = str(uuid.UUID(int=seq))
                add("task_started", f"goal {seq}: find the retry", f"task:{task}", data={"task": task, "max_steps": 9})
            else:
                add("task_finished", f"found it at {seq}", f"task:{task}", data={"task": task, "status": "done"})
                task = None
        elif roll < 0.45:
            kind = rng.choice(("perception", "thought", "tool_result"))
            if task is not None and kind != "perception" and rng.random() < 0.3:
                add(kind, f"step {seq} of the task", f"task:{task}", data={"task": task, "step": seq})
            else:
                add(kind, f"turn {seq}: retries and the journal", conversation)
        elif roll < 0.65:
            add("chunk_ingested", f"def handler_{seq}(): pass", "corpus:lib", corpus="lib",
                data={"path": f"src/f{seq % 40}.py", "sha256": f"{seq:064x}", "chunks": 1})
            chunks.append(events[-1])
        elif roll < 0.70 and chunks:
            gone = chunks.pop(rng.randrange(len(chunks)))
            add("document_removed", gone.data["path"], "corpus:lib", corpus="lib",
                data={"path": gone.data["path"], "chunk_ids": [str(gone.id)]})
        elif roll < 0.85 and len(events) > 1:
            judged = events[rng.randrange(len(events))]
            add("resonance", "a judgement", "judge:self", data={"event": str(judged.id), "score": rng.random(), "judge": "self"})
        elif roll < 0.92 and seq > 10:
            add("summary", f"what happened before {seq}", conversation, data={"first_seq": seq - 10, "last_seq": seq - 5})
        elif roll < 0.97:
            add(rng.choice(("corpus_mounted", "corpus_unmounted")), "lib", "corpus:lib", corpus="lib")
        else:
            add("perception", f"a binary tool output \x00 at {seq}", conversation)
    return events


def journal_all(journal: Journal, events: list[BifocalEvent]) -> None:
    for k in range(0, len(events), 1000):
        journal.append(events[k : k + 1000])


@pytest.fixture
def said() -> Iterator[list[str]]:
    """What the runner logs at WARNING and above (pytest's caplog is off under `-p no:logging`)."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("soul.projections")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own, to stop and start (see conftest.pg_home for the folder)."""
    home = Path(tempfile.mkdtemp(prefix="soul-pg-"))
    server = EmbeddedPostgres(home)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["fast shutdown", "kill -9"])
def test_postgres_restarted_under_a_running_projection(
    journal: Journal, own_postgres: EmbeddedPostgres, said: list[str], how: str
) -> None:
    """Appends go on while Postgres goes down and comes back; the runner waits, reconnects and
    ends with every entry applied exactly once (Ledger doubles a row if a page is applied twice)."""
    url = own_postgres.status()["url"]
    app = journal.app
    append(journal, ["perception"] * 200)
    stop, failures = threading.Event(), []
    runner = ProjectionRunner(journal, Ledger(), url, page=20)

    def run() -> None:
        try:
            runner.run(stop, poll=0.02, retry=0.1)
        except BaseException as e:  # the test fails on it below
            failures.append(e)

    def position() -> int:
        with connect(url) as conn:
            return conn.execute(sql.SQL("SELECT position FROM {}._tracking WHERE table_name = 'ledger_v1_1'").format(
                sql.Identifier(schema_for(app)))).fetchone()[0]

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while position() < 100:
            assert time.monotonic() < deadline and thread.is_alive(), failures
            time.sleep(0.01)
        pid = own_postgres.status()["pid"]
        if how == "kill -9":
            backends = children(pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while any(map(alive, backends)):  # they notice and exit; until then no new server starts
                assert time.monotonic() < deadline, "backends outlived their postmaster"
                time.sleep(0.05)
            assert (own_postgres.dir / "postmaster.pid").exists()  # a crash leaves it: the next start copes
        else:
            own_postgres.stop()
        append(journal, ["thought"] * 300)  # the journal goes on while the view cannot
        time.sleep(0.5)
        assert thread.is_alive(), failures
        assert own_postgres.start() == url
        deadline = time.monotonic() + 60
        while position() < 500:
            assert time.monotonic() < deadline and thread.is_alive(), failures
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == [] and not thread.is_alive()
    assert any("waits for its servers" in line for line in said)  # said, not silent
    with connect(url) as conn:
        seqs = [r[0] for r in conn.execute(sql.SQL("SELECT seq FROM {} ORDER BY seq").format(Ledger.view(app)))]
        assert seqs == list(range(1, 501))  # none lost, none doubled
        resumed = snapshot(conn, app, Ledger)
        runner.rebuild()
        assert snapshot(conn, app, Ledger) == resumed
    runner.close()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except OSError:  # ended meanwhile
            continue
        if fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def test_nats_restarted_under_a_running_projection(own_nats: EmbeddedNats, pg_url: str, app_name: str, said: list[str]) -> None:
    url = own_nats.status()["url"]
    stop, failures = threading.Event(), []
    try:
        with Journal(app_name, {"SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "1"}) as journal, connect(pg_url) as conn:
            append(journal, ["perception"] * 50)
            runner = ProjectionRunner(journal, Ledger(), pg_url, page=10)

            def run() -> None:
                try:
                    runner.run(stop, poll=0.02, retry=0.1)
                except BaseException as e:
                    failures.append(e)

            thread = threading.Thread(target=run)
            thread.start()
            own_nats.stop()
            deadline = time.monotonic() + 30  # reads retry for 6 timeouts first, then the runner waits
            while not any("waits for its servers" in line for line in said):
                assert time.monotonic() < deadline and thread.is_alive(), failures
                time.sleep(0.1)
            assert own_nats.start() == url  # same port, same store
            deadline = time.monotonic() + 60
            while True:  # the client reconnects by itself; appends work again once it has
                try:
                    append(journal, ["thought"] * 50)
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            while len(snapshot(conn, app_name, Ledger)[0]) < 100:
                assert time.monotonic() < deadline and thread.is_alive(), failures
                time.sleep(0.05)
            stop.set()
            thread.join(timeout=30)
            runner.close()
            seqs = [r[0] for r in conn.execute(sql.SQL("SELECT seq FROM {} ORDER BY seq").format(Ledger.view(app_name)))]
    finally:
        stop.set()
        drop_schema(pg_url, app_name)
    assert failures == [] and seqs == list(range(1, 101))


def test_events_a_view_cannot_hold_are_dead_letters_and_the_rest_is_applied(
    journal: Journal, conn: psycopg.Connection[Any], pg_url: str
) -> None:
    app = journal.app
    vector = np.full(MINILM.dim, 0.1)
    journal_all(journal, [
        BifocalEvent("perception", "before", vector, MINILM, "c", 1),
        BifocalEvent("perception", "a NUL \x00 from a binary file", vector, MINILM, "c", 2),
        BifocalEvent("chunk_ingested", "x = 1", vector, MINILM, "corpus:lib", 1, corpus="lib",
                     data={"path": "a.py", "sha256": "0" * 64, "chunks": "many"}),  # not a count
        BifocalEvent("chunk_ingested", "y = 2", vector, MINILM, "corpus:lib", 2, corpus="lib",
                     data={"path": "b.py", "sha256": "1" * 64, "chunks": 1}),
        BifocalEvent("document_removed", "b.py", vector, MINILM, "corpus:lib", 3, corpus="lib",
                     data={"path": "b.py", "chunk_ids": "not a list of ids"}),
        BifocalEvent("perception", "after", vector, MINILM, "c", 3),
    ])
    expected = {"event_counts": [], "memory": [2, 5], "corpora": [3], "turns": [2], "tasks": []}
    for name, projection in PROJECTIONS.items():
        with ProjectionRunner(journal, projection(), pg_url, page=4) as runner:
            assert runner.catch_up() == 6, name
            incremental = snapshot(conn, app, projection)
        assert [seq for seq, _ in incremental[1]] == expected[name], name
        assert all(error.startswith("cannot be applied: ") and "\n" not in error for _, error in incremental[1])
        assert incremental == clean_rebuild(journal, conn, pg_url, projection), name
    prose = [r[0] for r in conn.execute(sql.SQL("SELECT prose FROM {} ORDER BY seq").format(PROJECTIONS["memory"].view(app)))]
    assert prose == ["before", "x = 1", "y = 2", "after"]  # the others applied, in order


EVERY_PROJECTION = """
import sys
sys.path.insert(0, {root!r})
from journal.journal import Journal
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner

with Journal({app!r}) as journal:
    for projection in PROJECTIONS.values():
        with ProjectionRunner(journal, projection(), page=100) as runner:
            runner.catch_up()
"""


def test_kill_9_of_a_process_running_every_projection(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    """SIGKILL lands at random points while the real projections (COPY into pgvector, resonance
    updates, deletions, upserts) catch up page by page; after each restart, and at the end, every
    projection equals a clean rebuild from the journal."""
    app = journal.app
    total = 2500
    journal_all(journal, soul_like(total, seed=6))
    code = EVERY_PROJECTION.format(root=str(ROOT), app=app)
    schema = sql.Identifier(schema_for(app))

    def applied() -> int:  # entries applied over all projections' active tables
        if conn.execute("SELECT to_regclass(%s)", [f"{schema_for(app)}._tracking"]).fetchone()[0] is None:
            return 0
        return conn.execute(sql.SQL("SELECT coalesce(sum(position), 0) FROM {}._tracking").format(schema)).fetchone()[0]

    rng = random.Random(total)
    killed_at = []
    for low, high in ((0.05, 0.45), (0.5, 0.95)):
        threshold = int(rng.uniform(low, high) * total * len(PROJECTIONS))
        process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while applied() < threshold:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
        killed_at.append(applied())
    assert all(0 < at < total * len(PROJECTIONS) for at in killed_at), killed_at
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    for projection in PROJECTIONS.values():
        resumed = snapshot(conn, app, projection)
        assert resumed[0], projection.name
        assert resumed == clean_rebuild(journal, conn, pg_url, projection), f"{projection.name}, killed at {killed_at}"
    poisoned = [seq for seq, _ in snapshot(conn, app, PROJECTIONS["memory"])[1]]
    assert poisoned and all("\x00" in e.event.prose for e in journal.read() if e.seq in poisoned)  # type: ignore[union-attr]
