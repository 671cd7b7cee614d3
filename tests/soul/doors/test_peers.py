"""Souls talking to souls over a real nats-server: packets, durable inboxes, exactly-once journaling."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from journal import codec
from journal.event import Embedder
from journal.journal import Journal
from journal.secrets import redact_secrets
from journal.subjects import inbox
from soul.doors.peers import Inbox, PeerError, journal_once, packet, send, unpack
from tests.soul.doors.test_daemon import SOUL, Daemons, tiny  # noqa: F401  (tiny is a fixture)
from tests.support import drop_schema, publish_raw

EMBEDDER = Embedder("test@1", 8)


@pytest.fixture
def pair(nats_url: str) -> Iterator[tuple[str, Journal, str, Journal]]:
    """Two souls' names and journals: a sender and a receiver."""
    a, b = "a" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    with Journal(a, {"SOUL_NATS_URL": nats_url}) as sender, Journal(b, {"SOUL_NATS_URL": nats_url}) as receiver:
        yield a, sender, b, receiver


def odd_vector(seed: int) -> np.ndarray:
    """Floats whose bits a lossy path would change: subnormals, negative zero, extremes."""
    vector = np.random.default_rng(seed).standard_normal(8).astype("<f4")
    vector[:3] = [np.float32(1e-45), np.float32(-0.0), np.finfo("<f4").max]
    return vector


def perceptions(journal: Journal) -> list:
    return [e.event for e in journal.read(types=["perception"])]


floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@given(sender=st.text(min_size=1, max_size=40), prose=st.text(max_size=300),
       vector=st.lists(floats32, min_size=1, max_size=64))
@settings(max_examples=200, deadline=None)
def test_a_packet_unpacks_to_exactly_what_was_sent(sender: str, prose: str, vector: list[float]) -> None:
    assume(not redact_secrets(prose)[1])
    sent = packet(sender, prose, vector, Embedder("any@1", len(vector)))
    got = unpack(codec.encode(sent))
    assert (got.id, got.prose, got.embedder, got.timestamp) == (sent.id, sent.prose, sent.embedder, sent.timestamp)
    assert got.vector.tobytes() == sent.vector.tobytes()
    assert got.originator_id == f"agent:{sender}" and got.data == {"source": f"agent:{sender}", "sender": sender}


@given(payload=st.binary(max_size=400), position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
@settings(max_examples=300, deadline=None)
def test_hostile_bytes_are_refused_as_not_a_packet_and_nothing_else(payload: bytes, position: int, flip: int) -> None:
    genuine = bytearray(codec.encode(packet("a", "hello", [0.5, -1.0], Embedder("e@1", 2))))
    genuine[position % len(genuine)] ^= flip  # a packet damaged on the way
    for candidate in (payload, bytes(genuine)):
        try:
            unpack(candidate)
        except PeerError:
            pass


def test_a_packet_sent_before_the_receiver_ever_ran_arrives_bit_identical(pair: tuple[str, Journal, str, Journal]) -> None:
    a, sender, b, receiver = pair
    sent = packet(a, "the tests pass on a clean clone", odd_vector(1), EMBEDDER)
    send(sender, b, sent)  # b has no inbox yet: the sender makes it, and it keeps the packet

    taken = Inbox(receiver, b).take(timeout=5)
    assert taken is not None and taken[0] is not None
    [got] = perceptions(receiver)
    assert got.id == sent.id and got.prose == sent.prose and got.embedder == EMBEDDER
    assert got.vector.tobytes() == sent.vector.tobytes()
    assert got.originator_id == f"agent:{a}" and got.data["source"] == f"agent:{a}" and got.data["sender"] == a
    assert Inbox(receiver, b).take(timeout=0.5) is None  # taken once: the inbox is empty


def test_a_redelivered_packet_is_journaled_once(pair: tuple[str, Journal, str, Journal]) -> None:
    a, sender, b, receiver = pair
    sent = packet(a, "remember this once", odd_vector(2), EMBEDDER)
    send(sender, b, sent)
    send(sender, b, sent)  # a publish retried after a lost answer: stored once (Nats-Msg-Id)

    box = Inbox(receiver, b)
    # A receiver that journals the packet and dies before its ack: the server offers it again.
    [msg] = receiver.bus.run(box.subscription.fetch(1, timeout=5))
    assert journal_once(receiver, unpack(msg.data)) is not None
    receiver.bus.run(msg.nak())

    again = box.take(timeout=5)
    assert again is not None and again[0] is None and again[1].id == sent.id
    assert box.take(timeout=0.5) is None
    assert [e.id for e in perceptions(receiver)] == [sent.id]
    assert [e.event.data["packet"] for e in receiver.read(types=["packet_received"])] == [str(sent.id)]


def test_packets_join_the_senders_conversation_in_order(pair: tuple[str, Journal, str, Journal]) -> None:
    a, sender, b, receiver = pair
    for i in range(3):
        send(sender, b, packet(a, f"message {i}", odd_vector(i), EMBEDDER))
    box = Inbox(receiver, b)
    while box.take(timeout=1) is not None:
        pass
    got = perceptions(receiver)
    assert [e.prose for e in got] == ["message 0", "message 1", "message 2"]
    assert [e.originator_version for e in got] == [1, 2, 3]


def test_a_foreign_message_is_dropped_and_the_next_packet_still_arrives(pair: tuple[str, Journal, str, Journal],
                                                                        nats_url: str) -> None:
    a, sender, b, receiver = pair
    box = Inbox(receiver, b)
    publish_raw(nats_url, inbox(b)[1], b"not a packet")
    send(sender, b, packet(a, "after the noise", odd_vector(3), EMBEDDER))
    assert box.take(timeout=5) is None  # the foreign message: logged and terminated, not journaled
    taken = box.take(timeout=5)
    assert taken is not None and taken[1].prose == "after the noise"
    assert box.take(timeout=0.5) is None and [e.prose for e in perceptions(receiver)] == ["after the noise"]


def test_secrets_from_a_peer_are_redacted_and_embedded_again(pair: tuple[str, Journal, str, Journal]) -> None:
    from soul.agent.embedder import load_default_embedder

    a, sender, b, receiver = pair
    embedder = load_default_embedder()
    leaky = "the key is AKIAIOSFODNN7EXAMPLE"
    send(sender, b, packet(a, leaky, embedder.embed([leaky])[0], embedder.id))
    Inbox(receiver, b, embedder).take(timeout=5)
    [got] = perceptions(receiver)
    assert "AKIAIOSFODNN7EXAMPLE" not in got.prose and got.data["redacted"]
    assert got.vector.tobytes() == embedder.embed([got.prose])[0].tobytes()


def test_two_souls_exchange_messages_through_their_daemons_even_when_one_is_down(
        tmp_path: Path, nats_url: str, pg_url: str, tiny: Path) -> None:
    from soul.agent.embedder import load_default_embedder

    a, b = "a" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    env = {name: {**os.environ, "SOUL_HOME": str(tmp_path / name), "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
                  "SOUL_APP": name, "SOUL_MODEL": str(tiny)} for name in (a, b)}
    daemons = {name: Daemons(env[name], tmp_path) for name in (a, b)}
    try:
        # b is down: a's message waits in b's inbox. No daemon of a's runs: a thinks in-process.
        sent = subprocess.run([*SOUL, "message", b, "the bridge opens at noon"], env=env[a], capture_output=True,
                              text=True, timeout=180)
        assert sent.returncode == 0, sent.stderr
        packet_id = uuid.UUID(sent.stdout.split("(packet ")[1].rstrip(")\n"))

        daemons[b].start()
        answered = wait_for(b, nats_url, lambda events: any(e.type == "thought" for e in events))
        perception, thought = (e for e in answered if e.type in ("perception", "thought"))
        assert perception.id == packet_id and perception.prose == "the bridge opens at noon"
        assert perception.vector.tobytes() == load_default_embedder().embed([perception.prose])[0].tobytes()
        assert perception.data["source"] == f"agent:{a}" and str(perception.originator_id) == f"agent:{a}"
        assert thought.causation_id == perception.id and str(thought.originator_id) == f"agent:{a}"

        # b answers through its running daemon; a's daemon takes it in when it starts.
        replied = subprocess.run([*SOUL, "message", a, "noted: noon"], env={**env[b], "SOUL_MODEL": "/no/such/model"},
                                 capture_output=True, text=True, timeout=180)
        assert replied.returncode == 0, replied.stderr
        daemons[a].start()
        got = wait_for(a, nats_url, lambda events: any(e.type == "perception" for e in events))
        [call, result] = [e for e in got if e.type in ("tool_call", "tool_result")]
        assert call.data["tool"] == "message" and result.data["outcome"] == "ok" and str(packet_id) in result.prose
        [reply] = [e for e in got if e.type == "perception"]
        assert reply.prose == "noted: noon" and reply.data["sender"] == b
    finally:
        for started in daemons.values():
            started.stop_all()
        for name in (a, b):
            drop_schema(pg_url, name)


def wait_for(app: str, nats_url: str, done: Callable[[list], bool], timeout: float = 120) -> list:
    """The events of `app`'s journal once `done(events)` holds."""
    deadline = time.monotonic() + timeout
    with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal:
        while not done(events := [e.event for e in journal.read()]):
            assert time.monotonic() < deadline, [(e.type, e.prose[:40]) for e in events]
            time.sleep(0.2)
    return events
