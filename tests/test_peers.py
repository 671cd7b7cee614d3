"""Souls talking to souls over a real nats-server: packets, durable inboxes, exactly-once journaling."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from journal.event import Embedder
from journal.journal import Journal
from soul.peers import Inbox, inbox, journal_once, packet, send
from support import publish_raw

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
    [msg] = receiver.factory.connection.run(box.subscription.fetch(1, timeout=5))
    assert journal_once(receiver, box.read(msg.data)) is not None
    receiver.factory.connection.run(msg.nak())

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
    from soul.embedder import load_default_embedder

    a, sender, b, receiver = pair
    embedder = load_default_embedder()
    leaky = "the key is AKIAIOSFODNN7EXAMPLE"
    send(sender, b, packet(a, leaky, embedder.embed([leaky])[0], embedder.id))
    Inbox(receiver, b, embedder).take(timeout=5)
    [got] = perceptions(receiver)
    assert "AKIAIOSFODNN7EXAMPLE" not in got.prose and got.data["redacted"]
    assert got.vector.tobytes() == embedder.embed([got.prose])[0].tobytes()
