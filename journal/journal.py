"""The soul's journal: bifocal events in, entries out, over the JetStream application recorder.

Each bifocal event is one eventsourcing StoredEvent: its originator (the aggregate it belongs
to: a conversation, a corpus, the self, the lineage) and version, topic = event type, state =
the codec's bytes. Reading never stops at a bad message: an entry either holds the event or
says why it could not be decoded.

The journal is append-only but for one door, `Journal.erase` (`soul forget --erase`): an erased
event leaves a gap in the sequence numbers, which reading, following and catching up step over.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Notification, StoredEvent
from eventsourcing.utils import Environment

from journal import codec
from journal.connection import Connection
from journal.event import BifocalEvent
from journal.persistence import FOREIGN_TOPIC, Factory, JetStreamApplicationRecorder
from journal.secrets import redact_secrets
from journal.subjects import subject_token

PAGE = 1000


@dataclass(frozen=True)
class Entry:
    seq: int
    originator_id: uuid.UUID | str
    topic: str
    size: int  # payload bytes
    event: BifocalEvent | None  # None when undecodable
    error: str | None = None


def entry_json(entry: Entry, vectors: bool = False) -> dict[str, Any]:
    """An entry as `soul tail --json` and the soul's page show it; its vector only with `vectors`."""
    event = entry.event
    if event is None:
        return {"seq": entry.seq, "undecodable": True, "error": entry.error,
                "originator": str(entry.originator_id), "topic": entry.topic}
    out = {
        "seq": entry.seq,
        "time": event.timestamp.isoformat(),
        "type": event.type,
        "schema": event.schema,
        "id": str(event.id),
        "originator": str(event.originator_id),
        "version": event.originator_version,
        "prose": event.prose,
        "embedder": event.embedder.name,
        "dim": event.embedder.dim,
        "norm": round(event.norm, 6),
        "corpus": event.corpus,
        "causation": str(event.causation_id) if event.causation_id else None,
        "correlation": str(event.correlation_id) if event.correlation_id else None,
        "data": event.data,
    }
    if vectors:
        out["vector"] = event.vector.tolist()
    return out


def to_stored_event(event: BifocalEvent) -> StoredEvent:
    return StoredEvent(
        originator_id=event.originator_id,
        originator_version=event.originator_version,
        topic=event.type,
        state=codec.encode(event),
    )


def to_entry(n: Notification) -> Entry:
    def broken(reason: str) -> Entry:
        return Entry(n.id, n.originator_id, n.topic, len(n.state), None, reason)

    if n.topic == FOREIGN_TOPIC:
        return broken(f"foreign message on {n.originator_id}: no soul headers")
    try:
        event = codec.decode(n.state, n.originator_id, n.originator_version)
    except (codec.DecodeError, ValueError) as e:
        return broken(str(e))
    if event.type != n.topic:
        return broken(f"payload says {event.type!r} but the message topic says {n.topic!r}")
    return Entry(n.id, n.originator_id, n.topic, len(n.state), event)


def _redacted(event: BifocalEvent) -> BifocalEvent:
    prose, found = redact_secrets(event.prose)
    return replace(event, prose=prose) if found else event


class Journal:
    """Append and read bifocal events of one application (`app`) on NATS JetStream."""

    def __init__(self, app: str = "soul", env: dict[str, str] | None = None):
        settings = {"PERSISTENCE_MODULE": "journal.persistence", **(env or {})}
        self.factory: Factory = InfrastructureFactory.construct(Environment(name=app, env=settings))  # type: ignore[assignment]
        try:
            self.recorder: JetStreamApplicationRecorder = self.factory.application_recorder()  # type: ignore[assignment]
        except BaseException:  # e.g. JetStream not ready yet: do not leave the connection behind
            self.factory.close()
            raise
        self._next_version: dict[uuid.UUID | str, int] = {}

    def close(self) -> None:
        self.factory.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def app(self) -> str:
        """The soul's name: which stream, which Postgres schema, which generations."""
        return self.factory.env.name

    @property
    def bus(self) -> Connection:
        """The NATS connection under the journal, for what is not the journal: request-reply
        (the daemon's turns), inboxes (souls messaging souls)."""
        return self.factory.connection

    @property
    def stream(self) -> str:
        return self.factory.store.stream

    @property
    def replicas(self) -> int:
        """The journal stream's replicas: a soul's other streams (its inbox) take as many."""
        return self.factory.store.replicas

    @property
    def where(self) -> str:
        return f"{self.bus.where} stream {self.stream}"

    def subject(self, originator_id: uuid.UUID | str) -> str:
        """The subject an originator's events are stored on."""
        return self.factory.store.subject("e", subject_token(originator_id))

    def delete(self) -> None:
        """Remove this journal's stream and everything in it (benchmarks and tests clean up so);
        the journal is closed."""
        store = self.factory.store
        try:
            store.run(store.connection.nc.jetstream().delete_stream(store.stream))
        finally:
            self.close()

    # -- writing ---------------------------------------------------------------------

    def append(self, events: Sequence[BifocalEvent]) -> list[int]:
        """Store `events` all-or-nothing, at the versions they carry; their sequence numbers.

        Each prose is redacted once more (journal/secrets.py): what a caller forgot to redact
        would otherwise stay in the immutable journal for good."""
        events = [_redacted(e) for e in events]
        ids = self.recorder.insert_events([to_stored_event(e) for e in events]) or []
        for e in events:
            self._next_version[e.originator_id] = e.originator_version + 1
        return list(ids)

    def add(self, event: BifocalEvent) -> tuple[int, BifocalEvent]:
        """Store `event` as the next event of its originator, whatever version it carries."""
        for _ in range(3):
            event = replace(event, originator_version=self.next_version(event.originator_id))
            try:
                return self.append([event])[0], event
            except IntegrityError:  # another writer took that version: look again
                self._next_version.pop(event.originator_id, None)
        raise IntegrityError(f"could not append to {event.originator_id}: it keeps changing under us")

    def erase(self, seqs: Iterable[int]) -> list[int]:
        """Delete the events at `seqs` for good: the one exception to an immutable journal (`soul
        forget --erase`). Each message is deleted with JetStream's erase, which overwrites its
        bytes in the store with random data on every replica; its sequence stays a gap that every
        reader skips. The caller journals why (a `redaction`) and names everything that goes with
        an event (what was derived from it) in `seqs`. Returns the sequences erased now; one that
        held no event any more is left out."""
        store = self.factory.store
        return [seq for seq in sorted(set(seqs)) if store.call(store.erase(seq, self.recorder.subject_filter))]

    def next_version(self, originator_id: uuid.UUID | str) -> int:
        if originator_id not in self._next_version:
            last = self.recorder.select_events(originator_id, desc=True, limit=1)
            self._next_version[originator_id] = last[0].originator_version + 1 if last else 1
        return self._next_version[originator_id]

    # -- reading ---------------------------------------------------------------------

    def read(self, since: int = 1, types: Iterable[str] = (), limit: int | None = None) -> Iterator[Entry]:
        """Entries from sequence `since` on, in journal order, until the current end."""
        topics, start, left = list(types), since, limit
        while left is None or left > 0:
            page = self.recorder.select_notifications(start, PAGE if left is None else min(PAGE, left), topics=topics)
            for n in page:
                yield to_entry(n)
            if len(page) < PAGE:
                return
            if left is not None:
                left -= len(page)
            start = page[-1].id + 1

    def follow(self, since: int = 1, types: Iterable[str] = ()) -> Iterator[Entry]:
        """Entries from `since` on, then each new one as it is stored; blocks until closed."""
        with self.recorder.subscribe(gt=since - 1, topics=list(types)) as subscription:
            for n in subscription:
                yield to_entry(n)

    def last_seq(self) -> int:
        return self.recorder.max_notification_id() or 0

    def seq_at(self, when: datetime) -> int:
        """The first sequence stored at or after `when` (one past the end if none)."""
        return self.factory.store.call(self.factory.store.first_seq_at(when, self.recorder.subject_filter))

    def stats(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Figures over the whole journal; `progress(seq)` is called as it reads."""
        count = size = undecodable = 0
        first = last = None
        by_type: dict[str, int] = {}
        for entry in self.read():
            if progress is not None and entry.seq % PAGE == 0:
                progress(entry.seq)
            count += 1
            size += entry.size
            first = first or entry.seq
            last = entry.seq
            if entry.event is None:
                undecodable += 1
            else:
                by_type[entry.topic] = by_type.get(entry.topic, 0) + 1
        return {
            "stream": self.stream,
            "events": count,
            "bytes": size,
            "first_seq": first,
            "last_seq": last,
            "undecodable": undecodable,
            "by_type": dict(sorted(by_type.items())),
        }
