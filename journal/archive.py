"""A journal's every message out to a file, and back into an empty stream: the journal's part of
`soul backup` and `soul restore` (soul/backup.py). No `nats` CLI: nats-py's JetStream API only.

A dump holds each message of the journal's stream as the server stores it, in sequence order:
its sequence, subject, headers and payload (the codec's bytes), for events, snapshots, tracking
records and foreign messages alike. Its layout:

    MAGIC, a u32 length, a JSON header {"stream", "prefix", "last_seq"}
    per message: b"M", its seq (u64) and the lengths (u32) of subject, headers (JSON), payload; those bytes
    b"E", the message count and their payload bytes (u64 each): a dump cut short lacks it

`load` publishes the messages in order into an empty stream and checks that each is stored at
its own sequence again, since events and seals cite sequences: a sequence the dump lacks (an
erased event, `soul forget --erase`) is filled with a placeholder message that is deleted once
all are stored, and a journal whose first messages are gone starts where its first one is (a
purge up to that sequence moves an empty stream's start). Headers travel as stored but for the
`Nats-` ones that instructed the server when the message was first written (`Nats-Expected-*`,
`Nats-Batch-*`): it would check them again, and fail where an erased message was. Only
`Nats-Msg-Id` stays (the journal reads it back). The server's own timestamps cannot be set: a
restored message is stored at restore time (an event keeps its own time in its bytes).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import nats.errors
import nats.js.errors
import orjson

from journal.errors import one_line
from journal.journal import Journal
from journal.persistence import JetStreamStore, backoff, retries

MAGIC = b"soul-journal-dump\n\x01"  # the last byte is the format's version
_LENGTH = struct.Struct(">I")
_RECORD = struct.Struct(">QIII")  # seq, subject, headers and payload lengths
_TRAILER = struct.Struct(">QQ")  # messages, payload bytes
_MAX_PART = 64 << 20  # no message part is larger (NATS payloads are at most 64 MB): a bigger length is corruption
PAGE = 1000  # messages read per request
WINDOW = 512  # messages published before their acks are awaited
KEPT_SERVER_HEADERS = {"Nats-Msg-Id"}
Progress = Callable[[int, int], None]  # (sequence reached, last sequence)


class DumpError(ValueError):
    """A file that is not a journal dump, or one cut short or damaged; the message says which."""


class RestoreError(RuntimeError):
    """A dump that cannot be loaded here: the stream is not empty, or NATS refused a message."""


@dataclass(frozen=True)
class Message:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


@dataclass(frozen=True)
class Summary:
    """What a dump holds."""

    stream: str
    prefix: str  # of its subjects: `soul.<app>`
    first_seq: int | None  # of its first message (None: it holds none)
    last_seq: int  # the stream's last sequence when dumped (erased messages included)
    messages: int
    bytes: int  # of payload

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- the stream ----------------------------------------------------------------------------


def _store(journal: Journal) -> JetStreamStore:
    return journal.factory.store


def last_sequence(journal: Journal) -> int:
    """The stream's last sequence: 0 for a stream that never held a message (of any kind)."""
    store = _store(journal)

    async def info() -> int:
        js = store.connection.nc.jetstream(timeout=store.connection.timeout)
        return (await js.stream_info(store.stream)).state.last_seq

    return store.call(info())


# -- out -----------------------------------------------------------------------------------


def dump(journal: Journal, out: BinaryIO, progress: Progress | None = None) -> Summary:
    """Write every message the journal's stream holds up to its last sequence now (later
    appends are left out: the dump is of one moment) to `out`; what it wrote."""
    store = _store(journal)
    last = last_sequence(journal)
    header = orjson.dumps({"stream": store.stream, "prefix": store.prefix, "last_seq": last})
    out.write(MAGIC + _LENGTH.pack(len(header)) + header)
    count = size = 0
    seq, first = 1, None
    while seq <= last:
        batch, more = store.call(store.read_as_stored(seq, PAGE, f"{store.prefix}.>"))
        for m in batch:
            if m.seq > last:
                break
            subject, headers = m.subject.encode(), orjson.dumps(dict(m.headers))
            out.write(b"M" + _RECORD.pack(m.seq, len(subject), len(headers), len(m.data)))
            out.write(subject + headers + m.data)
            count, size, first = count + 1, size + len(m.data), first or m.seq
        if not batch or not more:
            break
        seq = batch[-1].seq + 1
        if progress is not None:
            progress(min(seq - 1, last), last)
    out.write(b"E" + _TRAILER.pack(count, size))
    if progress is not None:
        progress(last, last)
    return Summary(store.stream, store.prefix, first, last, count, size)


# -- reading a dump ------------------------------------------------------------------------


class Reader:
    """A dump's header (read at once) and its messages (`messages()`, checked as they are read:
    order, bounds, subjects, headers, and the trailer's counts at the end)."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.summary: Summary | None = None  # once `messages()` has been read to the end
        if self._take(len(MAGIC), "its start") != MAGIC:
            raise DumpError("not a soul journal dump (or one of another format version)")
        (length,) = _LENGTH.unpack(self._take(_LENGTH.size, "its header"))
        try:
            header = orjson.loads(self._take(min(length, _MAX_PART), "its header"))
            self.stream, self.prefix = str(header["stream"]), str(header["prefix"])
            self.last_seq = int(header["last_seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DumpError("the journal dump's header is damaged") from None

    def _take(self, n: int, what: str) -> bytes:
        data = self.source.read(n)
        if len(data) != n:
            raise DumpError(f"the journal dump is cut short (in {what})")
        return data

    def messages(self) -> Iterator[Message]:
        count = size = previous = 0
        first = None
        while True:
            tag = self._take(1, "a record")
            if tag == b"E":
                break
            if tag != b"M":
                raise DumpError(f"the journal dump is damaged after seq {previous}")
            seq, *lengths = _RECORD.unpack(self._take(_RECORD.size, f"the record after seq {previous}"))
            if not previous < seq <= self.last_seq or max(lengths) > _MAX_PART:
                raise DumpError(f"the journal dump is damaged after seq {previous}")
            subject, headers, data = (self._take(n, f"seq {seq}") for n in lengths)
            yield Message(seq, self._subject(subject, seq), self._headers(headers, seq), data)
            count, size, previous, first = count + 1, size + len(data), seq, first or seq
        if _TRAILER.unpack(self._take(_TRAILER.size, "its end")) != (count, size) or self.source.read(1):
            raise DumpError("the journal dump is damaged: its end does not match what it holds")
        self.summary = Summary(self.stream, self.prefix, first, self.last_seq, count, size)

    def _subject(self, raw: bytes, seq: int) -> str:
        try:
            subject = raw.decode()
        except UnicodeDecodeError:
            subject = ""
        if not subject.startswith(self.prefix + "."):
            raise DumpError(f"the journal dump is damaged at seq {seq}: a subject outside {self.prefix}.>")
        return subject

    @staticmethod
    def _headers(raw: bytes, seq: int) -> dict[str, str]:
        try:
            headers = orjson.loads(raw)
        except orjson.JSONDecodeError:
            headers = None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise DumpError(f"the journal dump is damaged at seq {seq}: its headers")
        return headers


def check(source: BinaryIO) -> Summary:
    """Read a whole dump, checking everything `load` relies on; what it holds."""
    reader = Reader(source)
    for _ in reader.messages():
        pass
    assert reader.summary is not None
    return reader.summary


# -- back in -------------------------------------------------------------------------------


def load(journal: Journal, source: BinaryIO, progress: Progress | None = None) -> Summary:
    """Publish a dump's messages into the journal's stream, which must never have held one,
    each at its own sequence (see the module's docstring); under the journal's own app name,
    whatever the dump's was. On any failure the stream is deleted again: nothing is restored."""
    store = _store(journal)
    if (last := last_sequence(journal)) != 0:
        raise RestoreError(f"the stream {store.stream} at {store.connection.where} is not empty (last sequence "
                           f"{last}): restore into a soul that has never journaled anything")
    reader = Reader(source)
    placeholders: list[int] = []
    items = _in_order(reader, store.prefix, placeholders)
    try:
        first = next(items, None)
        start = reader.last_seq + 1 if first is None else first[0]
        if start > 1:
            store.call(_start_at(store, start))
        if first is not None:
            store.call(_publish_first(store, first))
            store.call(_publish(store, items, reader.last_seq, progress))
        for seq in placeholders:
            store.call(_delete(store, seq))
    except BaseException as failure:
        try:
            store.run(store.connection.nc.jetstream().delete_stream(store.stream))
        except Exception as e:
            raise RestoreError(f"{one_line(failure)}; the stream {store.stream} holds part of the dump and could not "
                               f"be deleted ({one_line(e)}): delete it before restoring again") from failure
        raise
    assert reader.summary is not None
    return reader.summary


def _in_order(reader: Reader, prefix: str, placeholders: list[int]) -> Iterator[tuple[int, str, dict[str, str], bytes]]:
    """(seq, subject, headers, payload) to publish, for every sequence from the first message's
    to the dump's last: a placeholder (noted in `placeholders`) where a message is gone. Nothing
    when the dump holds no message."""
    gap = f"{prefix}.restore.gap"  # on no subject soul reads
    expected = None
    for m in reader.messages():
        expected = m.seq if expected is None else expected
        while expected < m.seq:
            placeholders.append(expected)
            yield expected, gap, {}, b""
            expected += 1
        headers = {k: v for k, v in m.headers.items() if not k.startswith("Nats-") or k in KEPT_SERVER_HEADERS}
        yield m.seq, prefix + m.subject[len(reader.prefix):], headers, m.data
        expected = m.seq + 1
    while expected is not None and expected <= reader.last_seq:
        placeholders.append(expected)
        yield expected, gap, {}, b""
        expected += 1


async def _start_at(store: JetStreamStore, seq: int) -> None:
    """Make the empty stream's next sequence `seq`: a purge up to it moves the start of a stream."""
    await _api(store, f"STREAM.PURGE.{store.stream}", {"seq": seq}, f"start the stream at seq {seq}")


async def _delete(store: JetStreamStore, seq: int) -> None:
    """Delete a placeholder (it holds nothing: no need to overwrite its bytes)."""
    await _api(store, f"STREAM.MSG.DELETE.{store.stream}", {"seq": seq, "no_erase": True},
               f"delete the placeholder at seq {seq}")


async def _api(store: JetStreamStore, subject: str, request: dict[str, Any], what: str) -> None:
    for attempt in retries(store.connection.timeout):
        try:  # no responders: the request reached no one (a stream just created in a cluster), so again
            reply = await store.connection.nc.request(f"$JS.API.{subject}", orjson.dumps(request),
                                                      timeout=store.connection.timeout)
            break
        except nats.errors.NoRespondersError:
            await asyncio.sleep(backoff(attempt))
    else:
        raise RestoreError(f"JetStream at {store.connection.where} did not {what}: nothing answered; "
                           "check the cluster (`soul services status`)")
    answer = orjson.loads(reply.data)
    if answer.get("error") or not answer.get("success"):
        raise RestoreError(f"JetStream did not {what}: {answer.get('error', answer)}")


async def _publish_first(store: JetStreamStore, item: tuple[int, str, dict[str, str], bytes]) -> None:
    """Publish the first message alone, again while no one answers: a stream just created in a
    cluster takes a moment to elect its leader, and until then a publish reaches no one (the
    window of `_publish` would have moved on). A lost answer is looked up, not published again."""
    seq, subject, headers, data = item
    nc, timeout = store.connection.nc, store.connection.timeout
    for attempt in retries(timeout):
        try:
            reply = await nc.request(subject, data, timeout=timeout, headers=headers or None)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(backoff(attempt))
            continue
        except nats.errors.TimeoutError:
            js = nc.jetstream(timeout=timeout)
            try:
                if (await js.stream_info(store.stream)).state.last_seq == seq:
                    return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                pass
            await asyncio.sleep(backoff(attempt))
            continue
        answer = _parsed_ack(reply.data)
        if (answer.get("error") or {}).get("code") in (500, 503):  # no leader yet
            await asyncio.sleep(backoff(attempt))
            continue
        if problem := _ack_problem(seq, answer):
            raise RestoreError(problem)
        return
    raise RestoreError(f"NATS at {store.connection.where} did not store seq {seq} within "
                       f"{attempt + 1} attempts; check the cluster (`soul services status`)")


def _parsed_ack(data: bytes) -> dict[str, Any]:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"error": {"description": data[:80].decode(errors="replace")}}


def _ack_problem(seq: int, answer: dict[str, Any]) -> str | None:
    """What is wrong with the ack of the message published for `seq`, if anything."""
    if answer.get("error"):
        return f"JetStream refused seq {seq}: {answer['error'].get('description')}"
    if answer.get("duplicate"):
        return f"JetStream took seq {seq} for a duplicate of seq {answer.get('seq')} (the same Nats-Msg-Id)"
    if answer.get("seq") != seq:
        return (f"seq {seq} was stored at seq {answer.get('seq')}: something else writes to the stream "
                "(stop it while restoring)")
    return None


async def _publish(store: JetStreamStore, items: Iterable[tuple[int, str, dict[str, str], bytes]], last: int,
                   progress: Progress | None) -> None:
    """Publish `items` in order, with up to WINDOW acks outstanding; each ack must name its
    message's own sequence (another writer on the stream would shift them)."""
    nc = store.connection.nc
    timeout = 6 * store.connection.timeout  # as patient as the journal's own writes (a cluster electing a leader)
    window = asyncio.Semaphore(WINDOW)
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def acked(msg: Any) -> None:
        seq = int(msg.subject.rsplit(".", 1)[1])
        if (msg.headers or {}).get("Status") == "503":
            problem = f"JetStream did not answer seq {seq}: no responders (the stream lost its leader?)"
        else:
            problem = _ack_problem(seq, _parsed_ack(msg.data))
        if problem and not failed.done():
            failed.set_exception(RestoreError(problem))
        window.release()

    async def take() -> None:
        """A free place in the window, or the failure an ack reported."""
        if window.locked():
            waiting = asyncio.ensure_future(window.acquire())
            done, _ = await asyncio.wait({waiting, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                waiting.cancel()
                raise RestoreError(f"NATS at {store.connection.where} did not confirm a message within {timeout:g}s")
            if waiting not in done:
                waiting.cancel()
        else:
            await window.acquire()
        if failed.done():
            failed.result()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*", cb=acked)
    try:
        for seq, subject, headers, data in items:
            await take()
            try:
                await nc.publish(subject, data, reply=f"{inbox}.{seq}", headers=headers or None)
            except nats.errors.MaxPayloadError:
                raise RestoreError(f"seq {seq} ({len(data):,} bytes) exceeds the server's max_payload "
                                   f"({nc.max_payload:,} bytes); raise it there") from None
            if progress is not None and seq % PAGE == 0:
                progress(seq, last)
        for _ in range(WINDOW):  # every ack is in once the whole window is free again
            await take()
    finally:
        await sub.unsubscribe()
    if progress is not None:
        progress(last, last)
