"""The journal on a real nats-server: bad input, retries, conflicts, foreign messages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import nats
import nats.errors
import numpy as np
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, OperationalError

from journal.codec import encode
from journal.connection import Connection, JournalUnavailable
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from journal.persistence import JetStreamStore, PayloadTooLarge
from journal.subjects import journal_prefix, subject_token
from tests.support import publish_raw

MINI = Embedder("test-embedder@1", 8)


def perception(prose: str = "hello", originator: str = "source:user", version: int = 1) -> BifocalEvent:
    vector = np.random.default_rng(len(prose)).standard_normal(8)
    return BifocalEvent("perception", prose, vector, MINI, originator, version)


@pytest.fixture
def journal(nats_url: str, app_name: str) -> Iterator[Journal]:
    with Journal(app=app_name, env={"SOUL_NATS_URL": nats_url}) as j:
        yield j


def test_append_and_read_back_equal_events(journal: Journal) -> None:
    events = [perception(f"event {i}", version=i + 1) for i in range(5)]
    assert journal.append(events[:1]) == [1]
    assert journal.append(events[1:]) == [2, 3, 4, 5]
    entries = list(journal.read())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.event for e in entries] == events


def test_the_journal_names_its_soul_stream_and_subjects(nats_url: str, app_name: str) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal(app_name, env) as journal:
        seq, event = journal.add(perception("kept", "conversation:a"))
        assert (journal.app, journal.stream, journal.replicas) == (app_name, f"SOUL_{app_name}", 1)
        assert journal.subject("conversation:a") == f"{journal_prefix(app_name)}.e.{subject_token('conversation:a')}"
        assert journal.bus.nc.is_connected
        journal.delete()  # the stream and everything in it
    with Journal(app_name, env) as again:
        assert again.last_seq() == 0 and list(again.read()) == []


def test_add_assigns_the_next_version(journal: Journal, nats_url: str, app_name: str) -> None:
    journal.add(perception("one"))
    with Journal(app=app_name, env={"SOUL_NATS_URL": nats_url}) as other:
        other.add(perception("two"))  # another process appended meanwhile
    _, third = journal.add(perception("three"))
    assert third.originator_version == 3
    assert [e.event.originator_version for e in journal.read()] == [1, 2, 3]


def test_oversized_prose_is_refused_naming_the_limit(journal: Journal) -> None:
    limit = journal.bus.nc.max_payload
    with pytest.raises(PayloadTooLarge, match=f"max_payload of {limit:,} bytes"):
        journal.append([perception("x" * limit)])
    assert list(journal.read()) == []


def test_atomic_insert_stores_nothing_when_one_version_conflicts(journal: Journal) -> None:
    journal.append([perception("first", "a", 1)])
    with pytest.raises(IntegrityError):
        journal.append([perception("b1", "b", 1), perception("a1 again", "a", 1)])
    assert [e.event.prose for e in journal.read()] == ["first"]


def test_two_writers_on_one_aggregate_one_wins(nats_url: str, app_name: str) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal(app_name, env) as first, Journal(app_name, env) as second:
        first.append([perception("v1", "agg", 1)])
        second.next_version("agg")  # both have seen version 1
        first.append([perception("first's v2", "agg", 2)])
        with pytest.raises(IntegrityError, match="version conflict"):
            second.append([perception("second's v2", "agg", 2)])
        assert [e.event.prose for e in second.read()] == ["v1", "first's v2"]


def test_a_fresh_writer_cannot_overwrite_a_stored_version(nats_url: str, app_name: str) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal(app_name, env) as first:
        first.append([perception("v1", "agg", 1)])
    with Journal(app_name, env) as fresh:  # knows nothing: its first publish guesses an empty subject
        with pytest.raises(IntegrityError):
            fresh.append([perception("another v1", "agg", 1)])
        assert len(list(fresh.read())) == 1


@pytest.mark.parametrize("count", [1, 3])
def test_publish_whose_ack_was_lost_is_stored_once(journal: Journal, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    store = journal.recorder.store
    real_publish = JetStreamStore._publish
    lost = []

    async def ack_lost_once(self: JetStreamStore, messages, expected):  # type: ignore[no-untyped-def]
        seq = await real_publish(self, messages, expected)  # the server stores it...
        if not lost:
            lost.append(seq)
            raise nats.errors.TimeoutError  # ...but the answer never arrives
        return seq

    monkeypatch.setattr(JetStreamStore, "_publish", ack_lost_once)
    ids = journal.append([perception(f"p{i}", version=i + 1) for i in range(count)])
    assert lost, "the fault was not injected"
    assert ids == list(range(1, count + 1))
    assert len(list(journal.read())) == count
    assert store.last  # and the writer knows where the subject stands


def test_foreign_and_garbage_messages_are_kept_and_reported(journal: Journal, nats_url: str) -> None:
    journal.add(perception("before"))
    prefix = journal_prefix(journal.app)
    publish_raw(nats_url, f"{prefix}.e.not-a-uuid", b"hello from elsewhere")
    publish_raw(nats_url, f"{prefix}.e.{uuid.uuid4()}", b"\xb1F garbage", {"Es-Topic": "perception", "Es-Version": "1"})
    journal.add(perception("after"))
    entries = list(journal.read())
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[1].event is None and "foreign message" in entries[1].error
    assert entries[2].event is None and entries[2].error
    assert entries[3].event.prose == "after"
    assert journal.stats()["undecodable"] == 2


def test_unknown_schema_version_is_reported_not_crashing(journal: Journal, nats_url: str) -> None:
    newer = encode(perception("from the future")).replace(b'"schema":1', b'"schema":7')
    publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.{uuid.uuid4()}", newer, {"Es-Topic": "perception", "Es-Version": "1"})
    (entry,) = journal.read()
    assert entry.event is None and "schema version 7 is newer" in entry.error


def test_follow_sees_new_events_live(journal: Journal) -> None:
    journal.add(perception("old"))
    followed = journal.follow(since=1)
    assert next(followed).event.prose == "old"
    journal.add(perception("new"))
    assert next(followed).event.prose == "new"
    followed.close()


def test_seq_at_time(journal: Journal) -> None:
    journal.add(perception("a"))
    assert journal.seq_at(datetime.now(timezone.utc) - timedelta(hours=1)) == 1
    assert journal.seq_at(datetime.now(timezone.utc) + timedelta(hours=1)) == 2


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(JournalUnavailable, match=r"cannot reach NATS at nats://127\.0\.0\.1:1 "):
        Connection(["nats://127.0.0.1:1"], timeout=1.0)


def test_credentials_never_appear_in_errors() -> None:
    with pytest.raises(JournalUnavailable) as caught:
        Connection(["nats://alice:s3cret@127.0.0.1:1"], timeout=1.0)
    assert "s3cret" not in str(caught.value) and "alice:***@127.0.0.1:1" in str(caught.value)


def test_each_application_name_is_its_own_journal(nats_url: str) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal("t" + uuid.uuid4().hex[:8], env) as a, Journal("t" + uuid.uuid4().hex[:8], env) as b:
        a.add(perception("only in a"))
        assert list(b.read()) == [] and len(list(a.read())) == 1


class Note(Aggregate):
    @event("Written")
    def __init__(self, prose: str) -> None:
        self.prose = prose

    @event("Revised")
    def revise(self, prose: str) -> None:
        self.prose = prose


def test_an_eventsourcing_application_runs_on_the_journal(nats_url: str, app_name: str) -> None:
    env = {"PERSISTENCE_MODULE": "journal.persistence", "SOUL_NATS_URL": nats_url}
    app = type("Notes", (Application,), {"name": app_name})(env=env)
    note = Note("first")
    note.revise("second")
    app.save(note)
    assert app.repository.get(note.id).prose == "second"
    assert [n.originator_version for n in app.notification_log.select(start=1, limit=10)] == [1, 2]
    stale = app.repository.get(note.id, version=1)
    stale.revise("conflicting")
    with pytest.raises(IntegrityError):
        app.save(stale)
    app.close()


def test_a_dead_server_mid_session_is_an_operational_error(tmp_path, app_name: str) -> None:  # type: ignore[no-untyped-def]
    from journal.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path)
    url = server.start()
    journal = Journal(app_name, {"SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "0.5"})
    journal.add(perception("stored"))
    server.stop()
    with pytest.raises(OperationalError, match="did not accept the write|closed|unavailable|NATS"):
        journal.add(replace(perception("lost?"), originator_id="other"))
    journal.close()
    server.start()  # same store: the stored event is still there, the failed one is not
    with Journal(app_name, {"SOUL_NATS_URL": url}) as again:
        assert [e.event.prose for e in again.read()] == ["stored"]
    server.stop()


@pytest.fixture
def guarded_server(tmp_path) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """A nats-server that wants user alice with password s3cret, on a free port."""
    import socket
    import subprocess

    from journal.embedded import nats_server_binary

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [str(nats_server_binary()), "-js", "-sd", str(tmp_path), "-a", "127.0.0.1", "-p", str(port),
         "--user", "alice", "--pass", "s3cret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline, "nats-server did not start"
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


def test_credentials_in_the_url_and_several_servers(guarded_server: int, app_name: str) -> None:
    url = f"nats://127.0.0.1:1,nats://alice:s3cret@127.0.0.1:{guarded_server}"  # first one is dead
    with Journal(app_name, {"SOUL_NATS_URL": url}) as journal:
        journal.add(perception("behind a password"))
        assert len(list(journal.read())) == 1
    with pytest.raises(JournalUnavailable, match="refused the credentials") as refused:
        Journal(app_name, {"SOUL_NATS_URL": f"nats://alice:wrong@127.0.0.1:{guarded_server}", "SOUL_NATS_TIMEOUT": "1"})
    assert "wrong" not in str(refused.value)


def test_a_stream_made_by_another_tool_gets_what_the_journal_needs(nats_url: str, app_name: str) -> None:
    async def make_plain_stream() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().add_stream(name=f"SOUL_{app_name}", subjects=[f"soul.{app_name}.>"])
        await nc.close()

    asyncio.run(make_plain_stream())
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        assert journal.append([perception("a", "x", 1), perception("b", "x", 2)]) == [1, 2]


def make_tls_files(folder) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=soul test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    return str(folder / "ca.pem"), str(folder / "server.pem"), str(folder / "server.key")


def test_tls_with_the_ca_from_the_environment(tmp_path, app_name: str) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from journal.embedded import free_port, nats_server_binary, port_open

    ca, cert, key = make_tls_files(tmp_path)
    port = free_port()
    config = tmp_path / "tls.conf"
    config.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                      f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n')
    server = subprocess.Popen([str(nats_server_binary()), "-c", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert time.monotonic() < deadline and server.poll() is None, "nats-server with TLS did not start"
            time.sleep(0.05)
        url = f"tls://127.0.0.1:{port}"
        with Journal(app_name, {"SOUL_NATS_URL": url, "SOUL_NATS_TLS_CA": ca}) as journal:
            journal.add(perception("over TLS"))
            assert [e.event.prose for e in journal.read()] == ["over TLS"]
        with pytest.raises(JournalUnavailable, match="cannot reach NATS at tls://127.0.0.1"):
            Journal(app_name, {"SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "1"})  # no CA: not trusted
    finally:
        server.terminate()
        server.wait(10)
