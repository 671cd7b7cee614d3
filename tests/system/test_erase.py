"""`soul forget --erase`: the event's bytes are gone, by a grep of every file under the NATS store
and the Postgres data directory for a marker from its prose and a slice of its vector; the views
keep working across the gap it leaves."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from journal.embedded import EmbeddedNats
from journal.event import NO_EMBEDDER, BifocalEvent, Embedder
from journal.journal import Journal
from projections.memory import Memory
from projections.postgres import connect
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner
from soul.cli import main
from tests.support import drop_schema
from tests.system.test_cluster import cluster, open_journal  # noqa: F401  (cluster is a fixture)

MINILM = Embedder("synthetic@1", 384)  # the memory view's dimension: the vector is stored there too


def holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose bytes contain `needle`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def secret() -> tuple[str, np.ndarray]:
    """A marker no other test writes (lower case: it is its own lexeme in `words` too) and a vector."""
    vector = np.random.default_rng().standard_normal(384).astype(np.float32)
    return f"zq{uuid.uuid4().hex}", vector / np.linalg.norm(vector)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A nats-server of this test's own, so that its store holds this test's streams alone."""
    server = EmbeddedNats(tmp_path / "nats-home")
    url = server.start()
    try:
        yield url, server.dir / "store"
    finally:
        server.stop()


@pytest.fixture
def pg_data(pg_url: str) -> Path:
    with connect(pg_url) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        data = Path(conn.execute("SHOW data_directory").fetchone()[0]) if superuser else None
    if data is None or not data.is_dir():
        pytest.skip("needs a local Postgres whose data directory this process can read, as a superuser")
    return data


def conversation(journal: Journal, marker: str, vector: np.ndarray) -> tuple[int, BifocalEvent]:
    """Talk around one secret perception: before it, a thought answering it, a judgement of it, after it."""
    rng = np.random.default_rng(1)
    for i in range(20):
        journal.add(BifocalEvent("perception", f"small talk {i}", rng.standard_normal(384), MINILM, "main"))
    seq, said = journal.add(BifocalEvent("perception", f"my passport number is {marker}, keep it", vector, MINILM,
                                         "main", data={"source": "user"}))
    _, answer = journal.add(BifocalEvent("thought", "noted, I will keep it safe", rng.standard_normal(384), MINILM,
                                         "main", causation_id=said.id))
    journal.add(BifocalEvent("resonance", "user rates 0.95", [], NO_EMBEDDER, "main",
                             data={"event": str(answer.id), "score": 0.95, "judge": "user"}))
    for i in range(20):
        journal.add(BifocalEvent("perception", f"more small talk {i}", rng.standard_normal(384), MINILM, "main"))
    return seq, said


def test_erase_leaves_no_byte_of_the_event_in_nats_or_postgres(own_nats: tuple[str, Path], pg_url: str, pg_data: Path,
                                                              app_name: str, soul_home: Path) -> None:
    url, store = own_nats
    marker, vector = secret()
    needles = {"prose": marker.encode(), "vector": vector.astype("<f4").tobytes()[64:128]}
    with Journal(app_name, {"SOUL_NATS_URL": url}) as journal:
        seq, said = conversation(journal, marker, vector)
        for projection in PROJECTIONS.values():
            with ProjectionRunner(journal, projection(), pg_url) as runner:
                runner.catch_up()
        with connect(pg_url) as conn:
            conn.execute("CHECKPOINT")  # the rows on disk, not only in shared buffers
        for what, needle in needles.items():  # the grep finds what is there
            assert holding(store, needle), what
            assert holding(pg_data, needle), what

        result = CliRunner().invoke(main, ["--app", app_name, "forget", "--erase", str(seq)],
                                    env={"SOUL_NATS_URL": url, "SOUL_PG_URL": pg_url})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0] == f"redaction journaled at seq {journal.last_seq()}: perception {said.id} (seq {seq}) " \
                           "is forgotten and erased"
        assert lines[1] == f"journal: seq {seq} erased (1 replica)"
        assert lines[2] == "views rebuilt without it: event_counts, memory, turns; Postgres cleared (statistics, WAL)"

        for what, needle in needles.items():
            assert holding(store, needle) == [], what
            assert holding(pg_data, needle) == [], what
        assert seq not in [e.seq for e in journal.read()]
        with connect(pg_url) as conn:
            remembered = conn.execute(f"SELECT count(*) FROM {Memory.view(app_name).as_string(conn)}").fetchone()[0]
        assert remembered == 41  # 40 small talk and the thought

        again = CliRunner().invoke(main, ["--app", app_name, "forget", "--erase", str(said.id)],
                                   env={"SOUL_NATS_URL": url, "SOUL_PG_URL": pg_url})
        assert again.exit_code == 0, again.output
        assert again.stdout.splitlines()[:2] == [f"{said.id} was already erased (seq {seq}); finishing the erase",
                                                 "journal: nothing left to erase"]
        journal.delete()
    drop_schema(pg_url, app_name)


def test_a_quote_of_the_event_is_named_and_kept(journal: Journal, soul_home: Path) -> None:
    marker, vector = secret()
    seq, said = conversation(journal, marker, vector)
    quote, _ = journal.add(BifocalEvent("tool_result", f"recalled: my passport number is {marker}, keep it", [],
                                        NO_EMBEDDER, "main", data={"tool": "recall"}))
    result = CliRunner().invoke(main, ["--app", journal.app, "forget", "--erase", str(seq)])
    assert result.exit_code == 0, result.output
    assert f"seq {quote} quote it word for word and stay: erase them too with `soul forget --erase SEQ`" \
        in result.stderr
    assert [e.seq for e in journal.read(since=seq - 1, limit=3)] == [seq - 1, seq + 1, seq + 2]
    assert any(e.seq == quote for e in journal.read(since=quote))


def test_views_catch_up_and_rebuild_across_the_gap(journal: Journal, pg_url: str) -> None:
    marker, vector = secret()
    with ProjectionRunner(journal, Memory(), pg_url) as runner:
        runner.catch_up()  # nothing yet: the runner's position is before the gap to come
        seq, _ = conversation(journal, marker, vector)
        assert journal.erase([seq]) == [seq]
        runner.catch_up()  # incremental, over the gap
        view = Memory.view(journal.app).as_string(runner.conn)
        incremental = runner.conn.execute(f"SELECT seq, prose FROM {view} ORDER BY seq").fetchall()
        runner.rebuild()  # from seq 1, over the gap
        rebuilt = runner.conn.execute(f"SELECT seq, prose FROM {view} ORDER BY seq").fetchall()
        assert runner.status()["position"] == journal.last_seq()
    assert incremental == rebuilt and len(rebuilt) == 41 and seq not in [s for s, _ in rebuilt]


def test_erase_reaches_every_replica_of_a_cluster(cluster: tuple[str, Path], app_name: str) -> None:  # noqa: F811
    """Every replica's stream store at once; each node's raft log at its next snapshot of the
    stream, 2-3 minutes later (nats-server's compaction timer): waited for with SOUL_RAFT_WAIT_S=240."""
    url, folder = cluster
    marker, vector = secret()
    with open_journal(url, app_name) as journal:
        assert journal.replicas == 3
        seq, _ = conversation(journal, marker, vector)
        deadline = time.monotonic() + 10  # each node writes its store a moment after it acknowledges
        while len({Path(p).parts[0] for p in holding(folder, marker.encode())}) < 3:  # on n1, n2 and n3
            assert time.monotonic() < deadline, holding(folder, marker.encode())
            time.sleep(0.1)
        assert journal.erase([seq]) == [seq]
        deadline = time.monotonic() + 10  # the leader answers; each follower erases as it applies the delete
        while streams := [p for p in holding(folder, marker.encode()) if "/streams/" in p]:
            assert time.monotonic() < deadline, streams
            time.sleep(0.05)
        assert seq not in [e.seq for e in journal.read()]
        deadline = time.monotonic() + float(os.environ.get("SOUL_RAFT_WAIT_S", 0))
        while time.monotonic() < deadline and holding(folder, marker.encode()):
            time.sleep(5)
        if os.environ.get("SOUL_RAFT_WAIT_S"):
            assert holding(folder, marker.encode()) == []  # the raft logs too: nothing anywhere
