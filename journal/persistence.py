"""eventsourcing persistence on NATS JetStream: `PERSISTENCE_MODULE=journal.persistence`.

One stream per application, `SOUL_<APP>`, file storage, holding three subject spaces:

    soul.<app>.e.<originator>   stored events (the application sequence)
    soul.<app>.s.<originator>   snapshots
    soul.<app>.t.<upstream>     tracking records of a process recorder

Notification id = stream sequence. Each message carries the event's topic and originator
version in headers and its state as the payload, so the journal is readable by any NATS
tool. Writes are guarded per aggregate with `Nats-Expected-Last-Subject-Sequence` (the
server checks the *stream* sequence of the subject's last message, so we keep a map from
subject to its last (sequence, version)); a call that writes several messages is one
JetStream atomic batch (ADR-50), so it is stored whole or not at all and its notification
ids are contiguous. `Nats-Msg-Id` is `<nonce of the insert call>:<index>`, so a publish retried
after a timeout is stored once, and a write is recognised as ours only if it is (another
writer's event at the same version has another id).

Versions of one aggregate must increase (gaps are allowed); eventsourcing only ever
appends the next version, so this is the same contract its SQL recorders enforce.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import nats.errors
import orjson
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, resolve_topic, strtobool
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from journal.connection import Connection, JournalUnavailable, options_from_env
from journal.embedded import EmbeddedNats, soul_home
from journal.subjects import app_token, journal_prefix, journal_stream, originator_from_token, subject_token

FOREIGN_TOPIC = "soul:foreign"  # topic given to a message on our subjects that we did not write
H_TOPIC, H_VERSION, H_TRACKING = "Es-Topic", "Es-Version", "Es-Tracking"
MAX_BATCH = 1000  # the server's limit on one atomic batch
WRONG_LAST_SEQUENCE = {10071, 10164}
DUPLICATE_IN_PROCESS = 10158  # "duplicate message id is in process": the same Nats-Msg-Id not yet stored
SEQUENCE_NOT_FOUND = 10043  # a message delete of a sequence the stream no longer holds
# How long writes and reads keep retrying a server that does not answer: long enough for a
# cluster to elect a new stream leader (seconds), short enough to report a dead server.
_PATIENCE = 6  # times the connection's timeout


def retries(timeout: float) -> Iterator[int]:
    """Attempt numbers until the retry budget is spent."""
    deadline = time.monotonic() + _PATIENCE * timeout
    attempt = 0
    while attempt == 0 or time.monotonic() < deadline:
        yield attempt
        attempt += 1


def backoff(attempt: int) -> float:
    return min(0.05 * 2 ** min(attempt, 5), 1.0)
_CACHE_SIZE = 100_000


class PayloadTooLarge(DataError):
    """An event bigger than the NATS server accepts."""


@dataclass(frozen=True)
class _Last:
    seq: int  # stream sequence of the subject's last message, 0 if the subject is empty
    version: int | None  # its originator version (or tracking id)
    msg_id: str | None


@dataclass(frozen=True)
class _Message:
    subject: str
    headers: dict[str, str]
    payload: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as the stream holds it, whichever way it was read."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


def stream_sequence(ack_subject: str) -> int:
    """The stream sequence in a consumer message's ack subject. nats-py's `msg.metadata` builds
    a dataclass with a datetime for every message; skipping it made large reads ~20% faster."""
    tokens = ack_subject.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>... or, v2, $JS.ACK.<domain>.<account>.<stream>...
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def _is_direct_message(msg: Any) -> bool:
    """A DIRECT.GET reply that holds a stored message (the server adds Nats-Stream), not a status."""
    return "Nats-Stream" in (msg.headers or {})


def _direct(msg: Any) -> Stored:
    headers = msg.headers or {}
    return Stored(int(headers["Nats-Sequence"]), headers.get("Nats-Subject", ""), headers, msg.data)


class _WrongLastSequence(Exception):
    pass


class _Retry(Exception):
    pass


class JetStreamStore:
    """The stream of one application on one connection, shared by that factory's recorders."""

    def __init__(self, connection: Connection, app: str, replicas: int = 1):
        self.connection = connection
        self.stream = journal_stream(app)
        self.prefix = journal_prefix(app)
        self.replicas = replicas
        # subject -> what we know of its last message. Only a hint: the server checks every
        # write, and a stale entry costs one refresh, so threads may race on it.
        self.last: OrderedDict[str, _Last] = OrderedDict()
        self._last_lock = threading.Lock()

    def run(self, coro: Any) -> Any:
        """Run `coro` on the connection's background thread (what must keep listening lives
        there); NATS failures become eventsourcing's OperationalError."""
        return self._unavailable_as_operational(self.connection.run, coro)

    def call(self, coro: Any) -> Any:
        """Run one of this store's own coroutines on the calling thread's client: no thread hop.
        They look up `connection.nc` as they run, so it is the client of the loop driving them."""
        return self._unavailable_as_operational(self.connection.call, coro)

    def _unavailable_as_operational(self, runner: Any, coro: Any) -> Any:
        try:
            return runner(coro)
        except (nats.errors.ConnectionClosedError, nats.errors.NoServersError):
            raise JournalUnavailable(f"the connection to NATS at {self.connection.where} is closed") from None
        except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError):
            raise JournalUnavailable(
                f"NATS at {self.connection.where} did not answer within {self.connection.timeout:g}s; "
                "is it running? (`soul services status`)"
            ) from None

    def ensure_stream(self) -> None:
        self.call(self._ensure_stream())

    async def _ensure_stream(self) -> None:
        js = self.connection.nc.jetstream(timeout=self.connection.timeout)
        try:
            config = (await js.stream_info(self.stream)).config
        except nats.js.errors.NotFoundError:
            pass
        else:
            self.replicas = config.num_replicas or 1  # the stream's, whatever this process asked for
            if not (config.allow_atomic and config.allow_direct):  # made by other tools: enable what we use
                config.allow_atomic = config.allow_direct = True
                await js.update_stream(config)
            return
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            allow_direct=True,
            allow_atomic=True,
            duplicate_window=120.0,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            if e.err_code != 10058:  # created meanwhile by another process: fine
                raise DatabaseError(f"cannot create JetStream stream {self.stream}: {e.description}") from None

    def subject(self, kind: str, token: str) -> str:
        return f"{self.prefix}.{kind}.{token}"

    def remember(self, subject: str, last: _Last) -> None:
        with self._last_lock:
            self.last[subject] = last
            self.last.move_to_end(subject)
            if len(self.last) > _CACHE_SIZE:
                self.last.popitem(last=False)

    @property
    def max_payload(self) -> int:
        return self.connection.nc.max_payload

    # -- writing ---------------------------------------------------------------------

    async def write(self, messages: list[_Message]) -> list[int]:
        """Store `messages` all-or-nothing; their stream sequences, in order."""
        if len(messages) > MAX_BATCH:
            raise ProgrammingError(
                f"{len(messages)} events in one call; JetStream stores at most {MAX_BATCH} atomically"
            )
        limit = self.max_payload
        for m in messages:
            size = len(m.payload) + sum(len(k) + len(v) + 4 for k, v in m.headers.items()) + 64
            if size > limit:
                raise PayloadTooLarge(
                    f"an event of {size:,} bytes exceeds the NATS server's max_payload of {limit:,} bytes; "
                    "shorten its prose (or chunk it into several events), or raise max_payload on the server"
                )
        first_of: dict[str, _Message] = {}
        last_of: dict[str, _Message] = {}
        for m in messages:
            previous = last_of.get(m.subject)
            if previous is not None and m.version <= previous.version:
                raise IntegrityError(f"versions for {m.subject} must increase within one insert")
            first_of.setdefault(m.subject, m)
            last_of[m.subject] = m

        for attempt in retries(self.connection.timeout):
            known = {s: self.last.get(s) for s in first_of}
            conflicts = [s for s, last in known.items() if last and last.version is not None
                         and last.version >= first_of[s].version]  # fmt: skip
            if conflicts:
                if all(known[s] and known[s].msg_id == last_of[s].headers["Nats-Msg-Id"] for s in first_of):
                    # Our earlier attempt was stored before its answer was lost: not a conflict.
                    end = max(known[s].seq for s in first_of)
                    return list(range(end - len(messages) + 1, end + 1))
                raise IntegrityError(
                    f"version conflict on {conflicts[0]}: version {first_of[conflicts[0]].version} "
                    f"is not after the stored {known[conflicts[0]].version}"
                )
            expected = {s: str(last.seq if last else 0) for s, last in known.items()}
            try:
                end = await self._publish(messages, expected)
            except _WrongLastSequence:
                await self._look_again(list(first_of))
                if all(self.last.get(s) == known[s] for s in first_of):
                    # The server refuses what it says is the last: a leader cut off from its quorum that
                    # still holds our earlier attempt. Not another writer: wait rather than spin.
                    await asyncio.sleep(backoff(attempt))
                continue
            except (nats.errors.TimeoutError, asyncio.TimeoutError, _Retry, nats.errors.NoRespondersError):
                # No answer (it may still have been stored), or no leader yet (election, restart).
                await asyncio.sleep(backoff(attempt))
                await self._look_again(list(first_of))
                continue
            sequences = list(range(end - len(messages) + 1, end + 1))
            for seq, m in zip(sequences, messages):
                if last_of[m.subject] is m:  # only where each subject now ends matters
                    self.remember(m.subject, _Last(seq, m.version, m.headers["Nats-Msg-Id"]))
            return sequences
        raise OperationalError(
            f"NATS at {self.connection.where} did not confirm the write after {attempt + 1} attempts "
            "(it may have been stored: check with `soul tail`); check `soul services status` or the cluster"
        )

    async def _publish(self, messages: list[_Message], expected: dict[str, str]) -> int:
        nc = self.connection.nc
        timeout = self.connection.timeout
        if len(messages) == 1:
            m = messages[0]
            headers = {**m.headers, "Nats-Expected-Last-Subject-Sequence": expected[m.subject]}
            reply = await nc.request(m.subject, m.payload, timeout=timeout, headers=headers)
            return int(self._ack(reply.data)["seq"])
        batch_id = uuid.uuid4().hex
        guarded: set[str] = set()
        for n, m in enumerate(messages, 1):
            headers = {**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
            if m.subject not in guarded:  # the server checks the stream as it was before the batch
                guarded.add(m.subject)
                headers["Nats-Expected-Last-Subject-Sequence"] = expected[m.subject]
            if n < len(messages):
                await nc.publish(m.subject, m.payload, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(m.subject, m.payload, timeout=timeout, headers=headers)
                ack = self._ack(reply.data)
                if ack.get("count") != len(messages):
                    raise DatabaseError(f"JetStream stored {ack.get('count')} of a batch of {len(messages)}")
                return int(ack["seq"])
        raise AssertionError("unreachable")

    def _ack(self, data: bytes) -> dict[str, Any]:
        """The publish ack, or the exception that says what to do about it."""
        try:
            ack = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise DatabaseError(f"NATS answered a publish with {data[:80]!r}, not a JetStream ack") from None
        error = ack.get("error")
        if error is None:
            if ack.get("duplicate"):  # same (subject, version) stored before: decide after a refresh
                raise _WrongLastSequence()
            return ack
        if error.get("err_code") in WRONG_LAST_SEQUENCE:
            raise _WrongLastSequence()
        # No leader (500, 503), or our own earlier attempt still being proposed (a leader cut
        # off from its quorum holds it until it steps down): either way, look again shortly.
        if error.get("code") in (500, 503) or error.get("err_code") == DUPLICATE_IN_PROCESS:
            raise _Retry()
        raise DatabaseError(f"JetStream refused the write: {error.get('description')} ({error.get('err_code')})")

    async def erase(self, seq: int, subject_filter: str) -> bool:
        """Delete the message at `seq` (on `subject_filter`) and overwrite its bytes with random
        data, on every replica: JetStream's message delete with erase, proposed through the
        stream's raft group so each replica's store erases it too. False if no such message is
        stored there (an erase already done); ProgrammingError if `seq` is not on the filter."""
        js = self.connection.nc.jetstream(timeout=self.connection.timeout)
        try:  # from the stream's leader (not DIRECT.GET, which a lagging replica may answer)
            found = await self._patiently(lambda: js.get_msg(self.stream, seq))
        except nats.js.errors.NotFoundError:
            return False
        prefix = subject_filter.removesuffix(">")
        if not found.subject.startswith(prefix):
            raise ProgrammingError(f"seq {seq} is on {found.subject}, not on {subject_filter}: not ours to erase")
        # Explicitly no_erase false, whatever a client library's default is.
        request = orjson.dumps({"seq": seq, "no_erase": False})
        timeout = self.connection.timeout
        for attempt in retries(timeout):
            try:
                reply = await self.connection.nc.request(f"$JS.API.STREAM.MSG.DELETE.{self.stream}", request,
                                                         timeout=timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(backoff(attempt))  # it may have been erased: the next attempt finds out
                continue
            answer = orjson.loads(reply.data)
            error = answer.get("error")
            if error is None and answer.get("success"):
                break
            if error is not None and error.get("code") == 503:  # no leader right now
                await asyncio.sleep(backoff(attempt))
                continue
            if error is not None and error.get("err_code") == SEQUENCE_NOT_FOUND:
                break  # an earlier attempt (whose answer was lost) or another process erased it meanwhile
            raise DatabaseError(f"JetStream did not erase seq {seq}: {answer}")
        else:
            raise OperationalError(f"NATS at {self.connection.where} did not confirm erasing seq {seq}")
        with self._last_lock:  # a later write would expect the erased message to be its subject's last
            self.last.pop(found.subject, None)
        return True

    async def _look_again(self, subjects: list[str]) -> None:
        """`refresh`, but a server still without a leader is left to the write's next attempt (the
        error at the end of its budget says it may have been stored)."""
        try:
            await self.refresh(subjects)
        except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError, JournalUnavailable):
            pass

    async def refresh(self, subjects: list[str]) -> None:
        """Ask the server what each subject's last message is now."""
        for subject in subjects:
            last = await self.last_message(subject)
            if last is None:
                self.remember(subject, _Last(0, None, None))
            else:
                version = last.headers.get(H_VERSION) or last.headers.get(H_TRACKING)
                self.remember(subject, _Last(last.seq, int(version) if version else None, last.headers.get("Nats-Msg-Id")))

    # -- reading ---------------------------------------------------------------------

    async def last_message(self, subject: str) -> Stored | None:
        """The last message on `subject` (wildcards allowed), as the stream's leader has it.

        Not DIRECT.GET: on a replicated stream any replica answers that, and a lagging one
        would give optimistic concurrency a stale sequence again and again.
        """
        js = self.connection.nc.jetstream(timeout=self.connection.timeout)
        try:
            msg = await self._patiently(lambda: js.get_last_msg(self.stream, subject))
        except nats.js.errors.NotFoundError:
            return None
        return Stored(msg.seq, msg.subject, msg.headers or {}, msg.data or b"")

    async def first_seq_at(self, when: datetime, subject_filter: str) -> int:
        """The sequence of the first message on `subject_filter` stored at or after `when`."""
        if when <= datetime.now(timezone.utc):  # (the server's clock also overflows past 2262)
            request = orjson.dumps({"start_time": when.astimezone(timezone.utc).isoformat(), "next_by_subj": subject_filter})
            reply = await self.connection.nc.request(
                f"$JS.API.DIRECT.GET.{self.stream}", request, timeout=self.connection.timeout
            )
            if _is_direct_message(reply):
                return _direct(reply).seq
            status = (reply.headers or {}).get("Status")
            if status != "404":
                raise DatabaseError(f"JetStream direct get failed: {status} {reply.headers.get('Description')}")
        last = await self.last_message(subject_filter)
        return 1 if last is None else last.seq + 1

    async def read(self, start: int, count: int, subject_filter: str) -> tuple[list[Stored], bool]:
        """Up to `count` messages on `subject_filter` from sequence `start`, and whether more follow.

        Small reads are one DIRECT.GET batch request. Large ones go through a short-lived pull
        consumer, whose messages carry no per-message server headers: measured here, 1.3-1.8x
        faster than DIRECT.GET for pages of 1,000 (the headers cost more to parse than the
        consumer costs to create).
        """
        # DIRECT.GET is cheaper for a few messages, but any replica may answer it: only a
        # single-replica stream is sure to include the latest write.
        read = self._read_direct if count <= 100 and self.replicas == 1 else self._read_consumer
        return await self._patiently(lambda: read(start, count, subject_filter))

    async def read_as_stored(self, start: int, count: int, subject_filter: str) -> tuple[list[Stored], bool]:
        """`read`, always through a consumer: each message's headers exactly as stored, without
        the ones DIRECT.GET adds to its replies (what a backup keeps, journal/archive.py)."""
        return await self._patiently(lambda: self._read_consumer(start, count, subject_filter))

    async def _patiently(self, attempt: Any) -> Any:
        """`await attempt()`, again while the server answers nothing or has no stream leader (a
        cluster electing one), for the retry budget; only for what is safe to repeat (reads)."""
        error: Exception | None = None
        for n in retries(self.connection.timeout):
            try:
                return await attempt()
            except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError,
                    nats.js.errors.ServiceUnavailableError, _Retry) as e:
                error = e
                await asyncio.sleep(backoff(n))
        if isinstance(error, (_Retry, nats.js.errors.ServiceUnavailableError)):
            raise JournalUnavailable(f"the stream {self.stream} at {self.connection.where} has had no leader for "
                                     f"{_PATIENCE * self.connection.timeout:g}s; check the cluster (`soul services status`)")
        raise error  # type: ignore[misc]  # the first attempt always runs

    async def _collect(self, subject: str, request: bytes, count: int, parse: Any, is_stored: Any) -> tuple[list[Stored], bool]:
        """Send `request` to `subject` and gather the replies until `count` or a status message.

        `is_stored(msg)` tells a stored message from the server's status replies by what only
        the server sets, never by a `Status` header, which a stored message may carry too."""
        nc = self.connection.nc
        stored: list[Stored] = []
        more: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def collect(msg: Any) -> None:  # a callback: next_msg() costs a task per message
            status = None if is_stored(msg) else (msg.headers or {}).get("Status", "?")
            if status is None:
                stored.append(parse(msg))
                if len(stored) == count and not more.done():
                    more.set_result(True)
            elif more.done():
                return
            elif status == "204":  # DIRECT.GET's end of batch
                more.set_result(int(msg.headers.get("Nats-Num-Pending", 0)) > 0)
            elif status in ("404", "408"):  # nothing (more) to read
                more.set_result(False)
            elif status == "503":  # no leader right now (a cluster electing one): read() retries
                more.set_exception(_Retry())
            else:
                more.set_exception(DatabaseError(f"JetStream read failed: {status} {msg.headers.get('Description')}"))

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(subject, request, reply=inbox)
            return stored, await asyncio.wait_for(more, self.connection.timeout)
        finally:
            await sub.unsubscribe()

    async def _read_direct(self, start: int, count: int, subject_filter: str) -> tuple[list[Stored], bool]:
        request = orjson.dumps({"seq": start, "batch": count, "next_by_subj": subject_filter})
        return await self._collect(f"$JS.API.DIRECT.GET.{self.stream}", request, count + 1, _direct, _is_direct_message)

    async def _read_consumer(self, start: int, count: int, subject_filter: str) -> tuple[list[Stored], bool]:
        js = self.connection.nc.jetstream(timeout=self.connection.timeout)
        consumer = await js.add_consumer(
            self.stream,
            ConsumerConfig(
                filter_subject=subject_filter,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=30.0,  # removed by the server should the delete below be lost
            ),
        )
        try:
            if not consumer.num_pending:
                return [], False

            def parse(msg: Any) -> Stored:
                return Stored(stream_sequence(msg.reply), msg.subject, msg.headers or {}, msg.data)

            request = orjson.dumps({"batch": count, "no_wait": True})
            stored, _ = await self._collect(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{consumer.name}", request, min(count, consumer.num_pending), parse,
                lambda msg: (msg.reply or "").startswith("$JS.ACK."),
            )
            return stored, consumer.num_pending > len(stored)
        finally:
            await self.connection.nc.publish(f"$JS.API.CONSUMER.DELETE.{self.stream}.{consumer.name}", b"")


def to_notification(stored: Stored, prefix_len: int) -> Notification:
    """A Notification for a stored message; one we did not write is kept, as FOREIGN_TOPIC."""
    headers = stored.headers
    try:
        return Notification(
            id=stored.seq,
            originator_id=originator_from_token(stored.subject[prefix_len:]),
            originator_version=int(headers[H_VERSION]),
            topic=headers[H_TOPIC],
            state=stored.data,
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return Notification(id=stored.seq, originator_id=stored.subject, originator_version=0, topic=FOREIGN_TOPIC, state=stored.data)


class JetStreamRecorder:
    kind = "e"

    def __init__(self, store: JetStreamStore):
        self.store = store
        self.subject_filter = store.subject(self.kind, ">")
        self._prefix_len = len(store.subject(self.kind, ""))

    def _messages(self, stored_events: Sequence[StoredEvent], nonce: str) -> list[_Message]:
        return [
            _Message(
                subject=self.store.subject(self.kind, subject_token(s.originator_id)),
                headers={H_TOPIC: s.topic, H_VERSION: str(s.originator_version), "Nats-Msg-Id": f"{nonce}:{i}"},
                payload=bytes(s.state),
                version=s.originator_version,
            )
            for i, s in enumerate(stored_events)
        ]

    def _tracking_message(self, tracking: Tracking, msg_id: str) -> _Message:
        return _Message(
            subject=self.store.subject("t", app_token(tracking.application_name)),
            headers={H_TRACKING: str(tracking.notification_id), "Nats-Msg-Id": msg_id},
            payload=b"",
            version=tracking.notification_id,
        )

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None = None) -> list[int]:
        nonce = uuid.uuid4().hex  # one per call: its retries carry the same ids, no other write does
        messages = self._messages(stored_events, nonce)
        if tracking is not None:
            messages.append(self._tracking_message(tracking, f"{nonce}:t"))
        if not messages:
            return []
        sequences = self.store.call(self.store.write(messages))
        return sequences[: len(stored_events)]


class JetStreamAggregateRecorder(JetStreamRecorder, AggregateRecorder):
    def __init__(self, store: JetStreamStore, purpose: str = "events"):
        self.kind = "e" if purpose == "events" else "s"
        super().__init__(store)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events)
        return None

    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self.store.call(self._select_events(originator_id, gt, lte, desc, limit))

    async def _select_events(
        self, originator_id: uuid.UUID | str, gt: int | None, lte: int | None, desc: bool, limit: int | None
    ) -> list[StoredEvent]:
        subject = self.store.subject(self.kind, subject_token(originator_id))
        if desc and limit == 1 and lte is None:  # the latest event (or snapshot): one direct get
            last = await self.store.last_message(subject)
            found = [] if last is None else [self._stored_event(last, originator_id)]
        else:
            found, start, more = [], 1, True
            while more:
                batch, more = await self.store.read(start, 4096, subject)
                found.extend(self._stored_event(m, originator_id) for m in batch)
                if batch:
                    start = batch[-1].seq + 1
        selected = [
            s for s in found
            if s is not None
            and (gt is None or s.originator_version > gt)
            and (lte is None or s.originator_version <= lte)
        ]  # fmt: skip
        if desc:
            selected.reverse()
        return selected[:limit] if limit is not None else selected

    @staticmethod
    def _stored_event(stored: Stored, originator_id: uuid.UUID | str) -> StoredEvent | None:
        headers = stored.headers
        if H_VERSION not in headers or H_TOPIC not in headers:
            return None  # a foreign message has no place in an aggregate's sequence
        return StoredEvent(
            originator_id=originator_id,
            originator_version=int(headers[H_VERSION]),
            topic=headers[H_TOPIC],
            state=stored.data,
        )


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    def __init__(self, store: JetStreamStore):
        super().__init__(store, "events")

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        return self.store.call(self._select_notifications(start, limit, stop, topics, inclusive_of_start))

    async def _select_notifications(
        self, start: int | None, limit: int, stop: int | None, topics: Sequence[str], inclusive: bool
    ) -> list[Notification]:
        seq = 1 if start is None else max(start if inclusive else start + 1, 1)
        found: list[Notification] = []
        while len(found) < limit:
            count = min(4096, limit - len(found) if not topics else 4096)
            if stop is not None:
                count = min(count, stop - seq + 1)
            if count <= 0:
                break
            batch, more = await self.store.read(seq, count, self.subject_filter)
            for stored in batch:
                n = to_notification(stored, self._prefix_len)
                if stop is not None and n.id > stop:
                    return found
                if not topics or n.topic in topics:
                    found.append(n)
                    if len(found) == limit:
                        return found
            if not batch or not more:
                break
            seq = batch[-1].seq + 1
        return found

    def max_notification_id(self) -> int | None:
        last = self.store.call(self.store.last_message(self.subject_filter))
        return None if last is None else last.seq

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> JetStreamSubscription:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class JetStreamSubscription(ListenNotifySubscription[JetStreamApplicationRecorder]):
    """eventsourcing's page-pulling subscription, woken by a headers-only ordered consumer.

    A consumer only delivers what the stream has stored, so a wake-up always finds the new
    event; pages keep memory bounded however far behind the subscriber starts.
    """

    def __init__(self, recorder: JetStreamApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()):
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        store = recorder.store
        self._consumer = store.run(self._watch(store, recorder.subject_filter))
        self._has_been_notified.set()  # pull once more: an event may have landed before the watch began

    async def _watch(self, store: JetStreamStore, subject_filter: str) -> Any:
        async def wake(_: Any) -> None:
            self._has_been_notified.set()

        js = store.connection.nc.jetstream()
        return await js.subscribe(
            subject_filter,
            stream=store.stream,
            cb=wake,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
            config=ConsumerConfig(mem_storage=True),
        )

    def stop(self) -> None:
        super().stop()
        consumer, self._consumer = getattr(self, "_consumer", None), None
        if consumer is not None and not self._recorder.store.connection.nc.is_closed:
            try:
                self._recorder.store.run(consumer.unsubscribe())
            except Exception:  # the server is gone: its ephemeral consumer goes with it
                pass


class JetStreamTrackingRecorder(JetStreamRecorder, TrackingRecorder):
    def insert_tracking(self, tracking: Tracking) -> None:
        self._insert([], tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        subject = self.store.subject("t", app_token(application_name))
        last = self.store.call(self.store.last_message(subject))
        return None if last is None else int(last.headers[H_TRACKING])


class JetStreamProcessRecorder(JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder):
    def __init__(self, store: JetStreamStore):
        JetStreamApplicationRecorder.__init__(self, store)


class Factory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Connects to SOUL_NATS_URL (comma-separated servers), or starts the embedded server."""

    def __init__(self, env: Environment | dict[str, str] | None):
        super().__init__(env)
        url = self.setting("SOUL_NATS_URL") or EmbeddedNats(soul_home(self.setting)).start()
        servers = [u.strip() for u in url.split(",") if u.strip()]
        self.connection = Connection(
            servers, options_from_env(self.setting), timeout=float(self.setting("SOUL_NATS_TIMEOUT") or 5)
        )
        self.store = JetStreamStore(self.connection, self.env.name, int(self.setting("SOUL_NATS_REPLICAS") or 1))
        self._stream_ready = False

    def setting(self, key: str) -> str | None:
        """From the application's environment first, then the process environment."""
        return self.env.get(key) or os.environ.get(key)

    def _store(self) -> JetStreamStore:
        if not self._stream_ready and strtobool(self.env.get("CREATE_TABLE") or "yes"):
            self.store.ensure_stream()
            self._stream_ready = True
        return self.store

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return JetStreamAggregateRecorder(self._store(), purpose)

    def application_recorder(self) -> ApplicationRecorder:
        return JetStreamApplicationRecorder(self._store())

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else JetStreamTrackingRecorder
        assert tracking_recorder_class is not None
        return tracking_recorder_class(self._store())

    def process_recorder(self) -> ProcessRecorder:
        return JetStreamProcessRecorder(self._store())

    def close(self) -> None:
        self.connection.close()
