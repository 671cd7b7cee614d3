"""Souls talking to souls: bifocal packets over NATS (design §7).

A packet is the perception its receiver will journal, in the journal's own codec
(journal/codec.py: an orjson header, then the vector as raw float32), so prose, vector and
embedder arrive bit for bit; its event id is the packet id and `data.sender` names the soul
that sent it. The sender publishes it into the receiver's inbox: a JetStream stream of its
own, `SOULINBOX_<app>` on subject `soulinbox.<app>` (outside every journal stream's
`soul.<app>.>`), work-queue retention, file storage. The sender creates the inbox when the
receiver never ran, so nothing is lost while it is down; `Nats-Msg-Id` is the packet id, so
a publish retried after a lost answer is stored once.

The receiver's daemon takes one packet at a time from the inbox's durable consumer, journals
it as a perception in the conversation `agent:<sender>` together with a `packet_received`
receipt whose originator is the packet, in one atomic append, and only then acks it. A packet
redelivered after a crash between the append and the ack finds its receipt: the append is
refused and the packet is acked, so it is journaled once.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors
from eventsourcing.persistence import IntegrityError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from journal import codec
from journal.connection import JournalUnavailable
from journal.errors import one_line
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from journal.secrets import redact_secrets
from journal.subjects import inbox
from soul.agent.tools import Tool, ToolHost, register, required

log = logging.getLogger("soul.peers")

CONSUMER = "daemon"
ACK_WAIT = 60.0  # seconds a taken packet may stay unacknowledged before it is offered again


class PeerError(RuntimeError):
    """A packet could not be sent or read; the message says why."""


def conversation(sender: str) -> str:
    """The conversation a soul's messages arrive in: one per sender."""
    return f"agent:{sender}"


def packet(sender: str, prose: str, vector: Any, embedder: Any) -> BifocalEvent:
    return BifocalEvent("perception", prose, vector, embedder, conversation(sender),
                        data={"source": conversation(sender), "sender": sender})


def _js(journal: Journal) -> Any:
    """JetStream on the client of the loop running the caller (call it inside a coroutine)."""
    return journal.bus.nc.jetstream(timeout=journal.bus.timeout)


def _run(journal: Journal, coro: Any) -> Any:
    """Run `coro` on the connection's background loop, where subscriptions live; a NATS that
    does not answer becomes the journal's one-line JournalUnavailable."""
    connection = journal.bus
    try:
        return connection.run(coro)
    except (nats.errors.NoServersError, nats.errors.ConnectionClosedError, nats.js.errors.NoStreamResponseError) as e:
        raise JournalUnavailable(f"NATS at {connection.where}: {one_line(e)}") from None


async def _ensure_inbox(journal: Journal, app: str) -> None:
    stream, subject = inbox(app)
    js = _js(journal)
    config = StreamConfig(name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.FILE, num_replicas=journal.replicas,
                          duplicate_window=120.0)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != 10058:  # 10058: it exists already
            raise PeerError(f"cannot create the inbox {stream}: {e.description}") from None


def send(journal: Journal, to: str, message: BifocalEvent) -> None:
    """Store `message` in soul `to`'s inbox (creating it if needed); returns once it is stored."""
    stream, subject = inbox(to)

    async def publish() -> None:
        payload, headers = codec.encode(message), {"Nats-Msg-Id": message.id.hex}
        try:
            await _js(journal).publish(subject, payload, stream=stream, headers=headers)
        except nats.js.errors.NoStreamResponseError:  # no inbox yet: the receiver never ran
            await _ensure_inbox(journal, to)
            await _js(journal).publish(subject, payload, stream=stream, headers=headers)

    try:
        _run(journal, publish())
    except nats.js.errors.APIError as e:
        raise PeerError(f"the inbox of {to!r} refused the packet: {e.description}") from None


class Inbox:
    """This soul's inbox: packets in, perceptions journaled once, then acknowledged."""

    def __init__(self, journal: Journal, app: str, embedder: Any = None):
        self.journal = journal
        self.embedder = embedder  # re-embeds a packet whose prose had to be redacted
        stream, subject = inbox(app)

        async def subscribe() -> Any:
            await _ensure_inbox(journal, app)
            config = ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT)
            return await _js(journal).pull_subscribe(subject, durable=CONSUMER, stream=stream, config=config)

        self.subscription = _run(journal, subscribe())

    def close(self) -> None:
        """Stop taking packets (the durable consumer stays: the inbox keeps what comes meanwhile)."""
        _run(self.journal, self.subscription.unsubscribe())

    def take(self, timeout: float) -> tuple[int | None, BifocalEvent] | None:
        """`fetch` then `settle`: one packet journaled (once) and acknowledged, or None."""
        msg = self.fetch(timeout)
        return None if msg is None else self.settle(msg)

    def fetch(self, timeout: float) -> Any:
        """The next message of the inbox, waiting up to `timeout` seconds; None if none came."""
        try:
            return _run(self.journal, self.subscription.fetch(1, timeout=timeout))[0]
        except (nats.errors.TimeoutError, TimeoutError):
            return None

    def working(self, msg: Any) -> None:
        """Tell the server `msg` is still being worked on, so it is not offered again meanwhile."""
        _run(self.journal, msg.in_progress())

    def settle(self, msg: Any) -> tuple[int | None, BifocalEvent] | None:
        """Journal the packet `msg` holds (once) and acknowledge it. Returns (sequence, perception),
        with sequence None for a packet journaled before; None for a message that is not a packet."""
        try:
            event = unpack(msg.data, self.embedder)
        except PeerError as e:
            # Not a packet: it can never be journaled, and must not block the ones behind it.
            log.warning("inbox: dropped an unreadable message (%d bytes): %s", len(msg.data), e)
            _run(self.journal, msg.term())
            return None
        seq = journal_once(self.journal, event)
        _run(self.journal, msg.ack_sync())
        return seq, event


def unpack(payload: bytes, embedder: Any = None) -> BifocalEvent:
    """The perception a packet's bytes hold, as its receiver journals it: in the sender's
    conversation, secrets redacted (then embedded again by `embedder`). PeerError for anything
    that is not a packet."""
    try:
        event = codec.decode(payload, "inbox", 0)
    except (codec.DecodeError, ValueError) as e:
        raise PeerError(str(e)) from None
    sender = event.data.get("sender") if isinstance(event.data, dict) else None
    if event.type != "perception" or not isinstance(sender, str) or not sender:
        raise PeerError(f"a {event.type} without a sender is not a packet")
    prose, redacted = redact_secrets(event.prose)  # the journal is immutable: no secrets from peers either
    event = replace(event, originator_id=conversation(sender), data={**event.data, "source": conversation(sender)})
    if redacted:
        if embedder is None:
            raise PeerError("the packet holds secrets and no embedder is at hand to embed it redacted")
        return replace(event, prose=prose, vector=embedder.embed([prose])[0], embedder=embedder.id,
                       data={**event.data, "redacted": redacted})
    return event


def journal_once(journal: Journal, event: BifocalEvent) -> int | None:
    """Append packet `event` to its sender's conversation with its receipt, atomically; None if
    its receipt is journaled already (a redelivery)."""
    sender, origin = event.data["sender"], event.originator_id
    receipt_origin = f"packet:{event.id}"
    receipt = BifocalEvent("packet_received", f"packet {event.id} from {sender}", [], NO_EMBEDDER,
                           receipt_origin, causation_id=event.id, data={"packet": str(event.id), "sender": sender})
    version = journal.next_version(origin)
    for _ in range(3):
        try:
            return journal.append([replace(event, originator_version=version), receipt])[0]
        except IntegrityError:
            if journal.recorder.select_events(receipt_origin, limit=1):
                return None
            # else the conversation moved on under us (another writer): ask where it ends now
            last = journal.recorder.select_events(origin, desc=True, limit=1)
            version = last[0].originator_version + 1 if last else 1
    raise IntegrityError(f"could not journal packet {event.id}: conversation {origin} keeps changing")


def message(soul: ToolHost, arguments: dict[str, Any]) -> str:
    """The `message` tool: send text to another soul, embedded by this one."""
    to, text = required(arguments, "to"), required(arguments, "text")
    prose, redacted = redact_secrets(text)  # what leaves the soul leaves without secrets
    event = packet(soul.app, prose, soul.embedder.embed([prose])[0], soul.embedder.id)
    if redacted:
        event = replace(event, data={**event.data, "redacted": redacted})
    send(soul.journal, to, event)
    return f"sent to {to} (packet {event.id})"


register(Tool(
    "message",
    "Send a message to another soul (by its name) over NATS; it arrives as a perception from this soul.",
    {"type": "object",
     "properties": {"to": {"type": "string", "description": "the other soul's name (its app name)"},
                    "text": {"type": "string", "description": "what to say"}},
     "required": ["to", "text"]},
    message,
))
