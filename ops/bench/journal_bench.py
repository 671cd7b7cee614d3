#!/usr/bin/env python
"""Journal throughput against raw nats-py, in one run, on one server, with the same bytes.

    python ops/bench/journal_bench.py [--events N] [--singles M] [--repeats R] [--json]
    python ops/bench/journal_bench.py --quick     # 200 events, 20 singles, 1 repeat: seconds, no target judged

Starts its own embedded nats-server under a temporary SOUL_HOME (unless SOUL_NATS_URL is
set), and measures, for a payload of 1 KB prose + a 384-d float32 vector encoded as real
BifocalEvents by journal.codec (the raw baselines publish exactly those encoded bytes):

  1. single-event writes: an eventsourcing Application saving one aggregate after each
     trigger, and Journal.append([event]), each against raw `await js.publish()`;
  2. 100-event atomic inserts: recorder.insert_events and Journal.append of 100 events,
     against raw `js.publish_async` of the same 100 payloads then awaiting every ack;
  3. reading N events: recorder.select_notifications paged, Journal.read (decoding), and
     `soul tail --no-follow --json --since 1` in a subprocess, against a raw nats-py
     ordered push consumer reading the same N messages.

The Application path models a soul's turn loop: one Conversation aggregate, kept in
memory, triggered once per perception and saved after each trigger (one event per save,
so one JetStream publish); a new aggregate per save is also shown, for information.
Rows marked "diag:" are raw nats-py variants that locate where the journal's time goes
(a synchronous call in place and one through the background loop thread, a raw ADR-50 atomic batch, raw
DIRECT.GET reads); they carry no target.

Every path is warmed up first, measured `--repeats` times (interleaved with its baseline)
and reported as the median. Each path writes to its own fresh stream; streams are deleted
at the end. The exit status is 1 if any ratio misses its target: benchmarks assert
performance, unit tests do not. --quick judges no ratio (at its sizes they mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import numpy as np  # noqa: E402
from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402
from eventsourcing.persistence import JSONTranscoder, StoredEvent, Transcoding  # noqa: E402
from nats.js.api import DeliverPolicy  # noqa: E402

from journal import codec  # noqa: E402
from journal.embedded import EmbeddedNats  # noqa: E402
from journal.event import BifocalEvent, Embedder  # noqa: E402
from journal.journal import Journal  # noqa: E402
from journal.subjects import app_token  # noqa: E402

BATCH = 100
PAGE = 1000  # notifications per select_notifications call (Journal.read's page size too)
EMBEDDER = Embedder("all-MiniLM-L6-v2@bench", 384)
TOPIC = "perception"

T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- the payload -----------------------------------------------------------------------

WORDS = (
    "the soul keeps every perception as an immutable event with both halves of a thought "
    "prose for what was said and a vector for what was meant so nothing is embedded twice "
    "memory context and weights are projections of the journal rebuilt from sequence zero"
).split()


def make_prose(rng: np.random.Generator, size: int = 1024) -> str:
    words = [WORDS[i] for i in rng.integers(len(WORDS), size=size // 3).tolist()]
    return " ".join(words)[:size]


def make_events(count: int, seed: int = 7) -> list[BifocalEvent]:
    """`count` distinct perceptions: 1,024 characters of prose and a unit 384-d vector."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, EMBEDDER.dim)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    origin = uuid.uuid4()
    return [
        BifocalEvent(TOPIC, make_prose(rng), vectors[i], EMBEDDER, origin, i + 1, data={"source": "user"})
        for i in range(count)
    ]


def versioned(events: Sequence[BifocalEvent], originators: Sequence[uuid.UUID], start: int, per: int) -> list[BifocalEvent]:
    """The same events re-homed: `per` consecutive versions on each originator in turn, from `start`."""
    out = []
    for i, e in enumerate(events):
        group = i // per
        origin = originators[group % len(originators)]
        version = start + (group // len(originators)) * per + i % per
        out.append(dataclasses.replace(e, originator_id=origin, originator_version=version))
    return out


# -- an eventsourcing application, as a real one is written -------------------------------


class BytesAsBase64(Transcoding):
    type = bytes
    name = "b64"

    def encode(self, obj: bytes) -> str:
        return base64.b64encode(obj).decode()

    def decode(self, data: str) -> bytes:
        return base64.b64decode(data)


class Conversation(Aggregate):
    """One conversation: every perception is a new event of the same aggregate."""

    def __init__(self) -> None:
        self.turns = 0

    @event("Perceived")
    def perceive(self, prose: str, vector: bytes) -> None:
        self.turns += 1


class Perception(Aggregate):
    """One aggregate per perception (the other way an app could model it)."""

    def __init__(self, prose: str, vector: bytes) -> None:
        self.prose = prose
        self.vector = vector


class BenchApp(Application):
    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(BytesAsBase64())


def make_app(name: str, url: str) -> BenchApp:
    cls = type(f"BenchApp_{name}", (BenchApp,), {"name": name})
    return cls(env={"PERSISTENCE_MODULE": "journal.persistence", "SOUL_NATS_URL": url})


# -- raw nats-py, on the main thread's own event loop -------------------------------------


class Raw:
    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.nc = self.run(nats.connect(url, max_reconnect_attempts=0))
        self.js = self.nc.jetstream(timeout=10)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.nc.drain())
        self.loop.close()

    async def single(self, subject: str, payloads: Sequence[bytes]) -> float:
        js = self.js
        t = time.perf_counter()
        for p in payloads:
            await js.publish(subject, p)
        return time.perf_counter() - t

    async def batches(self, subjects: Sequence[str], payloads: Sequence[bytes]) -> float:
        js = self.js
        t = time.perf_counter()
        for b in range(0, len(payloads), BATCH):
            futures = [await js.publish_async(subjects[i], payloads[i]) for i in range(b, b + BATCH)]
            for ack in await asyncio.gather(*futures):
                assert ack.seq
        return time.perf_counter() - t

    async def atomic_batches(self, subjects: Sequence[str], payloads: Sequence[bytes]) -> float:
        """ADR-50 atomic batches of BATCH messages, bare headers: what the protocol itself costs."""
        nc = self.nc
        t = time.perf_counter()
        for b in range(0, len(payloads), BATCH):
            batch_id = uuid.uuid4().hex
            for n, i in enumerate(range(b, b + BATCH), 1):
                headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
                if n < BATCH:
                    await nc.publish(subjects[i], payloads[i], headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await nc.request(subjects[i], payloads[i], timeout=10, headers=headers)
                    ack = json.loads(reply.data)
                    assert ack.get("count") == BATCH, ack
        return time.perf_counter() - t

    async def direct_read(self, stream: str, subject: str, count: int) -> float:
        """DIRECT.GET batches of 4096 (the journal's read request), collected by a callback."""
        nc = self.nc
        t = time.perf_counter()
        seq, seen = 1, 0
        while seen < count:
            done: asyncio.Future[None] = self.loop.create_future()
            got: list[Any] = []

            async def cb(msg: Any) -> None:
                if (msg.headers or {}).get("Status"):
                    if not done.done():
                        done.set_result(None)
                else:
                    got.append(msg)

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=cb)
            request = json.dumps({"seq": seq, "batch": min(4096, count - seen), "next_by_subj": subject}).encode()
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
            await asyncio.wait_for(done, 30)
            await sub.unsubscribe()
            seen += len(got)
            seq = int(got[-1].headers["Nats-Sequence"]) + 1
        elapsed = time.perf_counter() - t
        assert seen == count, (seen, count)
        return elapsed

    async def ordered_read(self, stream: str, subject: str, count: int) -> float:
        done = asyncio.Event()
        seen = 0

        async def cb(msg: Any) -> None:
            nonlocal seen
            seen += 1
            if seen == count:
                done.set()

        t = time.perf_counter()
        sub = await self.js.subscribe(
            subject, stream=stream, cb=cb, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - t
        await sub.unsubscribe()
        assert seen >= count, (seen, count)  # more arrive until unsubscribe when reading a prefix
        return elapsed

    async def messages(self, stream: str) -> int:
        return (await self.js.stream_info(stream)).state.messages

    async def delete(self, stream: str) -> None:
        try:
            await self.js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass


# -- the benchmark ------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    group: str
    path: str
    events: int
    seconds: list[float]
    baseline: str | None = None
    baseline_events: int = 0
    baseline_seconds: list[float] = dataclasses.field(default_factory=list)
    target: float | None = None
    note: str = ""
    rate_override: float | None = None  # a derived rate (e.g. net of start-up)

    @property
    def rate(self) -> float:
        if self.rate_override is not None:
            return self.rate_override
        return self.events / statistics.median(self.seconds)

    @property
    def baseline_rate(self) -> float | None:
        if not self.baseline_seconds:
            return None
        return self.baseline_events / statistics.median(self.baseline_seconds)

    @property
    def ratio(self) -> float | None:
        b = self.baseline_rate
        return None if b is None else self.rate / b

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return "info"
        return "PASS" if self.ratio >= self.target else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "path": self.path,
            "events": self.events,
            "seconds": [round(s, 4) for s in self.seconds],
            "events_per_s": round(self.rate, 1),
            "baseline": self.baseline,
            "baseline_events": self.baseline_events or None,
            "baseline_seconds": [round(s, 4) for s in self.baseline_seconds] or None,
            "baseline_events_per_s": None if self.baseline_rate is None else round(self.baseline_rate, 1),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target,
            "verdict": self.verdict,
            "note": self.note,
        }


class Bench:
    def __init__(self, url: str, events: int, singles: int, repeats: int):
        self.url = url
        self.n = events
        self.singles = singles
        self.repeats = repeats
        self.run_id = uuid.uuid4().hex[:8]
        self.streams: list[str] = []
        self.raw = Raw(url)
        self.rows: list[Row] = []
        say(f"encoding {events:,} bifocal events (1 KB prose + {EMBEDDER.dim}-d float32)")
        self.pool = make_events(max(events, singles))
        self.payloads = [codec.encode(e) for e in self.pool]

    # names and streams

    def app_name(self, path: str) -> str:
        name = f"bench{self.run_id}_{path}"
        self.streams.append(f"SOUL_{app_token(name)}")
        return name

    def fresh_stream(self, path: str) -> tuple[str, str]:
        """A stream made by the journal itself (same config) for a raw path: (stream, subject prefix)."""
        name = self.app_name(path)
        Journal(name, env={"SOUL_NATS_URL": self.url}).close()
        return f"SOUL_{app_token(name)}", f"soul.{app_token(name)}.e"

    def interleave(self, measure: Callable[[int], float], baseline: Callable[[int], float]) -> tuple[list[float], list[float]]:
        # The bench's own pools (tens of thousands of events) are not part of any path: keep
        # the collector from rescanning them during a measurement, whichever path allocates more.
        gc.collect()
        gc.freeze()
        ours, theirs = [], []
        for r in range(self.repeats):
            if r % 2 == 0:
                ours.append(measure(r))
                theirs.append(baseline(r))
            else:
                theirs.append(baseline(r))
                ours.append(measure(r))
        return ours, theirs

    def check(self, stream: str, expected: int) -> None:
        stored = self.raw.run(self.raw.messages(stream))
        if stored != expected:
            raise SystemExit(f"benchmark bug: {stream} holds {stored} messages, expected {expected}")

    # 1. single-event writes

    def bench_singles(self) -> None:
        m = self.singles
        warm = max(m // 10, min(50, m))
        payloads = self.payloads[:m]
        say(f"single-event writes: {m:,} per repeat, {self.repeats} repeats")

        # raw js.publish: all on one subject, like one aggregate
        raw_stream, raw_prefix = self.fresh_stream("raw1")
        raw_subject = f"{raw_prefix}.{uuid.uuid4()}"
        self.raw.run(self.raw.single(raw_subject, payloads[:warm]))

        def raw(_: int) -> float:
            return self.raw.run(self.raw.single(raw_subject, payloads))

        # eventsourcing Application: one conversation triggered and saved per perception
        app = make_app(self.app_name("app1"), self.url)
        convo = Conversation()
        app.save(convo)
        texts = [e.prose for e in self.pool[:m]]
        vectors = [e.vector.tobytes() for e in self.pool[:m]]
        for i in range(warm):
            convo.perceive(texts[i], vectors[i])
            app.save(convo)
        state_size = len(app.recorder.select_events(convo.id, desc=True, limit=1)[0].state)

        def app_save(_: int) -> float:
            t = time.perf_counter()
            for i in range(m):
                convo.perceive(texts[i], vectors[i])
                app.save(convo)
            return time.perf_counter() - t

        ours, theirs = self.interleave(app_save, raw)
        raw_seconds = list(theirs)
        self.rows.append(Row("1 single", "Application.save (1 aggregate, 1 event/save)", m, ours,
                             "js.publish", m, theirs, 0.6,
                             f"stored state {state_size:,} B (JSON+base64) vs {len(payloads[0]):,} B codec bytes"))
        app_stream = f"SOUL_{app_token(app.name)}"
        self.check(app_stream, 1 + warm + m * self.repeats)
        app.close()

        # eventsourcing Application: a new aggregate per perception (information only)
        app2 = make_app(self.app_name("app2"), self.url)
        for i in range(warm):
            app2.save(Perception(texts[i], vectors[i]))

        def app_new(_: int) -> float:
            t = time.perf_counter()
            for i in range(m):
                app2.save(Perception(texts[i], vectors[i]))
            return time.perf_counter() - t

        ours, theirs = self.interleave(app_new, raw)
        raw_seconds += theirs
        self.rows.append(Row("1 single", "Application.save (new aggregate per save)", m, ours,
                             "js.publish", m, theirs, None, "information only"))
        app2.close()

        # Journal.append([event]) on one originator
        journal = Journal(self.app_name("jsingle"), env={"SOUL_NATS_URL": self.url})
        origin = uuid.uuid4()
        warm_events = versioned(self.pool[:warm], [origin], 1, warm)
        rounds = [versioned(self.pool[:m], [origin], warm + 1 + r * m, m) for r in range(self.repeats)]
        for e in warm_events:
            journal.append([e])

        def journal_single(r: int) -> float:
            batch = rounds[r]
            t = time.perf_counter()
            for e in batch:
                journal.append([e])
            return time.perf_counter() - t

        ours, theirs = self.interleave(journal_single, raw)
        raw_seconds += theirs
        self.rows.append(Row("1 single", "Journal.append([event])", m, ours, "js.publish", m, theirs, 0.6))
        self.check(journal.stream, warm + m * self.repeats)
        journal.close()

        # diagnostics: the same raw js.publish called synchronously through the journal's
        # Connection, in place on this thread's own client (`call`, the journal's path) and
        # through the background loop thread (`run`, two thread wake-ups a call)
        hop = Journal(self.app_name("hop1"), env={"SOUL_NATS_URL": self.url})
        conn = hop.bus
        hop_subject = hop.subject(uuid.uuid4())

        async def publish(p: bytes) -> Any:  # looks the client up as it runs, as the journal's coroutines do
            return await conn.nc.jetstream().publish(hop_subject, p)

        for how, note in (("call", "raw nats-py called in place on this thread's own client: the journal's path"),
                          ("run", "raw nats-py on the background loop thread: the cost of crossing threads")):
            runner = getattr(conn, how)

            def called(_: int) -> float:
                t = time.perf_counter()
                for p in payloads:
                    runner(publish(p))
                return time.perf_counter() - t

            for p in payloads[:warm]:
                runner(publish(p))
            ours, theirs = self.interleave(called, raw)
            raw_seconds += theirs
            self.rows.append(Row("1 single", f"diag: js.publish via Connection.{how}", m, ours, "js.publish", m, theirs,
                                 None, note))
        self.check(hop.stream, 2 * (warm + m * self.repeats))
        hop.close()
        self.check(raw_stream, warm + m * len(raw_seconds))

    # 2. 100-event atomic inserts

    def bench_batches(self) -> None:
        n = self.n
        warm = min(10 * BATCH, n)
        originators_per_batch = 10
        per = BATCH // originators_per_batch
        say(f"100-event atomic inserts: {n:,} events ({n // BATCH} batches of {originators_per_batch} originators "
            f"x {per}) per repeat, {self.repeats} repeats")
        payloads = self.payloads[:n]

        raw_stream, raw_prefix = self.fresh_stream("raw2")
        raw_subjects_of = [f"{raw_prefix}.{uuid.uuid4()}" for _ in range(originators_per_batch)]
        subjects = [raw_subjects_of[(i // per) % originators_per_batch] for i in range(n)]
        self.raw.run(self.raw.batches(subjects[:warm], payloads[:warm]))

        def raw(_: int) -> float:
            return self.raw.run(self.raw.batches(subjects, payloads))

        # recorder.insert_events: StoredEvents holding the codec bytes
        journal = Journal(self.app_name("rbatch"), env={"SOUL_NATS_URL": self.url})
        recorder = journal.recorder
        originators = [uuid.uuid4() for _ in range(originators_per_batch)]

        def stored(count: int, start_version: int) -> list[StoredEvent]:
            out = []
            for i in range(count):
                group = i // per
                version = start_version + (group // originators_per_batch) * per + i % per
                out.append(StoredEvent(originators[group % originators_per_batch], version, TOPIC, payloads[i]))
            return out

        warm_stored = stored(warm, 1)
        for b in range(0, warm, BATCH):
            recorder.insert_events(warm_stored[b : b + BATCH])
        versions_per_round = n // originators_per_batch
        first = 1 + warm // originators_per_batch
        rounds = [stored(n, first + r * versions_per_round) for r in range(self.repeats)]

        def insert(r: int) -> float:
            events = rounds[r]
            t = time.perf_counter()
            for b in range(0, n, BATCH):
                ids = recorder.insert_events(events[b : b + BATCH])
                assert ids and len(ids) == BATCH
            return time.perf_counter() - t

        ours, theirs = self.interleave(insert, raw)
        raw_seconds = list(theirs)
        self.rows.append(Row("2 batch100", "recorder.insert_events(100)", n, ours, "js.publish_async x100", n, theirs, 0.7))
        self.check(journal.stream, warm + n * self.repeats)
        journal.close()

        # Journal.append of 100 BifocalEvents (encodes them)
        journal = Journal(self.app_name("jbatch"), env={"SOUL_NATS_URL": self.url})
        originators = [uuid.uuid4() for _ in range(originators_per_batch)]
        warm_events = versioned(self.pool[:warm], originators, 1, per)
        for b in range(0, warm, BATCH):
            journal.append(warm_events[b : b + BATCH])
        rounds_e = [versioned(self.pool[:n], originators, first + r * versions_per_round, per) for r in range(self.repeats)]

        def append(r: int) -> float:
            events = rounds_e[r]
            t = time.perf_counter()
            for b in range(0, n, BATCH):
                journal.append(events[b : b + BATCH])
            return time.perf_counter() - t

        ours, theirs = self.interleave(append, raw)
        raw_seconds += theirs
        self.rows.append(Row("2 batch100", "Journal.append(100 events)", n, ours, "js.publish_async x100", n, theirs, 0.7,
                             "includes codec.encode"))
        self.check(journal.stream, warm + n * self.repeats)
        journal.close()

        # diagnostic: raw nats-py ADR-50 atomic batches of the same 100 payloads
        atomic_stream, atomic_prefix = self.fresh_stream("atomic2")
        atomic_subjects_of = [f"{atomic_prefix}.{uuid.uuid4()}" for _ in range(originators_per_batch)]
        atomic_subjects = [atomic_subjects_of[(i // per) % originators_per_batch] for i in range(n)]
        self.raw.run(self.raw.atomic_batches(atomic_subjects[:warm], payloads[:warm]))
        ours, theirs = self.interleave(lambda _: self.raw.run(self.raw.atomic_batches(atomic_subjects, payloads)), raw)
        raw_seconds += theirs
        self.rows.append(Row("2 batch100", "diag: raw atomic batch (nats-py)", n, ours, "js.publish_async x100", n, theirs,
                             None, "ADR-50 batch on the caller's loop, no journal: the ceiling of an atomic insert"))
        self.check(atomic_stream, warm + n * self.repeats)
        self.check(raw_stream, warm + n * len(raw_seconds))

    # 3. reading

    def bench_reads(self) -> None:
        n = self.n
        name = self.app_name("read")
        journal = Journal(name, env={"SOUL_NATS_URL": self.url})
        stream = journal.stream
        say(f"reading: filling {stream} with {n:,} events")
        originators = [uuid.uuid4() for _ in range(10)]
        events = versioned(self.pool[:n], originators, 1, 10)
        for b in range(0, n, BATCH):
            journal.append(events[b : b + BATCH])
        self.check(stream, n)
        subject = journal.recorder.subject_filter
        recorder = journal.recorder
        say(f"reading {n:,} events, {self.repeats} repeats per path")

        def raw(_: int) -> float:
            return self.raw.run(self.raw.ordered_read(stream, subject, n))

        def select(_: int) -> float:
            t = time.perf_counter()
            start, seen = 1, 0
            while True:
                page = recorder.select_notifications(start, PAGE)
                seen += len(page)
                if len(page) < PAGE:
                    break
                start = page[-1].id + 1
            elapsed = time.perf_counter() - t
            assert seen == n, (seen, n)
            return elapsed

        def read(_: int) -> float:
            t = time.perf_counter()
            seen = decoded = 0
            for entry in journal.read():
                seen += 1
                decoded += entry.event is not None
            elapsed = time.perf_counter() - t
            assert seen == decoded == n, (seen, decoded, n)
            return elapsed

        soul = Path(sys.executable).parent / "soul"
        command = [str(soul)] if soul.exists() else [sys.executable, "-c", "from soul.cli import main; main()"]
        command += ["--app", name, "tail", "--no-follow", "--json", "--since"]

        def tail(since: str, expect: int) -> float:
            t = time.perf_counter()
            done = subprocess.run(command + [since], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
            elapsed = time.perf_counter() - t
            if done.returncode != 0:
                raise SystemExit(f"soul tail failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
            lines = done.stdout.count(b"\n")
            if lines != expect:
                raise SystemExit(f"soul tail printed {lines} lines, expected {expect}")
            return elapsed

        # warm-ups: a small raw read, a page of each journal path, a start-up of the CLI
        self.raw.run(self.raw.ordered_read(stream, subject, min(n, 2000)))
        recorder.select_notifications(1, PAGE)
        for _ in zip(range(PAGE), journal.read()):
            pass
        tail("999999999", 0)

        ours, theirs = self.interleave(select, raw)
        self.rows.append(Row("3 read", f"recorder.select_notifications (pages of {PAGE})", n, ours,
                             "ordered consumer", n, theirs, 0.7))
        ours, theirs = self.interleave(read, raw)
        self.rows.append(Row("3 read", "Journal.read (decoded)", n, ours, "ordered consumer", n, theirs, 0.7))

        self.raw.run(self.raw.direct_read(stream, subject, min(n, 2000)))
        ours, theirs = self.interleave(lambda _: self.raw.run(self.raw.direct_read(stream, subject, n)), raw)
        self.rows.append(Row("3 read", "diag: raw DIRECT.GET batches (callback)", n, ours, "ordered consumer", n, theirs,
                             None, "the journal's read request on the caller's loop, no journal"))

        startup = [tail("999999999", 0) for _ in range(self.repeats)]
        ours, theirs = self.interleave(lambda _: tail("1", n), raw)
        gross = statistics.median(ours)
        net = gross - statistics.median(startup)
        self.rows.append(Row("3 read", "soul tail --json (process, gross)", n, ours, "ordered consumer", n, theirs, None,
                             f"includes start-up {statistics.median(startup):.2f}s (information only)"))
        self.rows.append(Row("3 read", "soul tail --json (net of start-up)", n, ours, "ordered consumer", n, theirs, 0.7,
                             f"N / (median {gross:.2f}s - start-up median {statistics.median(startup):.2f}s)",
                             rate_override=n / net if net > 0 else float("inf")))
        self.startup = startup
        journal.close()

    def cleanup(self) -> None:
        for stream in self.streams:
            self.raw.run(self.raw.delete(stream))
        self.raw.close()


# -- report -------------------------------------------------------------------------------


def machine(raw: Raw) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or platform.machine()
    from importlib.metadata import version

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": raw.nc._server_info.get("version"),
        "nats_py": version("nats-py"),
        "eventsourcing": version("eventsourcing"),
    }


def table(rows: list[Row]) -> str:
    head = ("path", "events/s", "baseline", "baseline/s", "ratio", "target", "result")
    body = []
    for r in rows:
        body.append((
            f"{r.group:<10} {r.path}",
            f"{r.rate:,.0f}",
            r.baseline or "-",
            "-" if r.baseline_rate is None else f"{r.baseline_rate:,.0f}",
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            "-" if r.target is None else f">= {r.target:.1f}",
            r.verdict,
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    right = {1, 3, 4}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    notes = [f"  {r.group} {r.path}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + ["notes:"] + notes if notes else []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, help="events read and written in batches (default 20000; --quick: 200)")
    parser.add_argument("--singles", type=int, help="single-event writes per repeat (default 3000; --quick: 20)")
    parser.add_argument("--repeats", type=int, help="measurements per path, median reported (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no ratio judged: that every path runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    events = args.events or (200 if args.quick else 20_000)
    events = max(BATCH, (events + BATCH - 1) // BATCH * BATCH)
    singles = max(args.singles or (20 if args.quick else 3000), 10)
    repeats = args.repeats or (1 if args.quick else 3)

    home = None
    server = None
    url = os.environ.get("SOUL_NATS_URL")
    if not url:
        home = Path(tempfile.mkdtemp(prefix="soul-bench-"))
        os.environ["SOUL_HOME"] = str(home)
        server = EmbeddedNats(home)
        url = server.start()
        os.environ["SOUL_NATS_URL"] = url
        say(f"embedded nats-server at {url} (store {home})")
    else:
        say("external NATS at SOUL_NATS_URL (streams are deleted afterwards)")
    bench = None
    try:
        bench = Bench(url, events, singles, repeats)
        bench.bench_singles()
        bench.bench_batches()
        bench.bench_reads()
        payload = len(bench.payloads[0])
        report = {
            "machine": machine(bench.raw),
            "config": {
                "events": events,
                "singles": singles,
                "repeats": repeats,
                "quick": args.quick,
                "batch": BATCH,
                "page": PAGE,
                "payload_bytes": payload,
                "prose_chars": len(bench.pool[0].prose),
                "vector": f"{EMBEDDER.dim}-d float32",
                "server": "embedded" if server else "SOUL_NATS_URL",
                "soul_tail_startup_s": [round(s, 3) for s in bench.startup],
            },
            "results": [r.as_json() for r in bench.rows],
        }
        report["pass"] = None if args.quick else all(r.verdict != "FAIL" for r in bench.rows)  # tiny sizes: unjudged
        say(f"done in {time.perf_counter() - T0:.1f}s")
    finally:
        if bench is not None:
            bench.cleanup()
        if server is not None:
            server.stop()
            shutil.rmtree(home, ignore_errors=True)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(f"machine: {m['nproc']} CPUs, {m['cpu']}; {m['platform']}")
        print(f"python {m['python']}, nats-server {m['nats_server']}, nats-py {m['nats_py']}, "
              f"eventsourcing {m['eventsourcing']}")
        c = report["config"]
        print(f"payload {c['payload_bytes']:,} B ({c['prose_chars']} chars prose + {c['vector']}); "
              f"{c['events']:,} events for batches and reads, {c['singles']:,} single writes; "
              f"median of {c['repeats']}; server: {c['server']}")
        print()
        print(table(bench.rows))
        print()
        print({True: "PASS", False: "FAIL: at least one ratio misses its target",
               None: "not judged (--quick)"}[report["pass"]])
    return 1 if report["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
