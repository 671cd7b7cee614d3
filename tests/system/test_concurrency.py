"""Concurrent writers in separate processes, each with its own connection, on one journal.

Optimistic concurrency: when two writers append the same version of one aggregate, exactly one
wins and the other gets eventsourcing's IntegrityError, after which it can look again and
retry. Atomic inserts: a batch of hundreds of events is stored whole, with contiguous
notification ids, or not at all, however many writers insert at once (eventsourcing's
NonInterleavingNotificationIDsBaseCase checks two threads and two events; here three
processes insert batches of 400 events at once).

Nats-Msg-Id is unique to each insert call, so another writer's event at the same version is
never taken for one's own: neither for a duplicate in a batch nor for a write whose answer was lost.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from collections import defaultdict
from typing import Any

import nats.errors
import numpy as np
import pytest
from eventsourcing.persistence import IntegrityError

from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from journal.persistence import JetStreamStore

TINY = Embedder("test@1", 4)
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: no NATS loop thread inherited


def event(prose: str, originator: str, version: int, **data: Any) -> BifocalEvent:
    return BifocalEvent("perception", prose, np.ones(TINY.dim), TINY, originator, version, data=data)


def gather(processes: list[Any], results: Any, timeout: float = 300) -> list[Any]:
    """One result from each process, failing at once (not at the timeout) if one dies."""
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(found) < len(processes):
        try:
            found.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            assert not dead and time.monotonic() < deadline, f"a writer failed (exit codes {dead}); see its stderr"
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    return found


def last_version(journal: Journal, originator: str) -> int:
    """What the server holds now, not what this writer last saw."""
    last = journal.recorder.select_events(originator, desc=True, limit=1)
    return last[0].originator_version if last else 0


# -- two writers, one aggregate ------------------------------------------------------------


def contend(name: str, app: str, url: str, rounds: int, barrier: Any, results: Any) -> None:
    """Each round: both writers append version 2r-1 at the same moment; the loser looks again
    and appends its event as the next version (2r) before the next round starts."""
    outcomes = []
    with Journal(app, {"SOUL_NATS_URL": url}) as journal:
        for r in range(1, rounds + 1):
            barrier.wait()
            try:
                journal.append([event(f"{name} {r}", "agg", 2 * r - 1)])
                outcomes.append((r, "won", None))
            except IntegrityError as e:
                outcomes.append((r, "lost", f"{type(e).__name__}: {e}"))
                _, stored = journal.add(event(f"{name} {r} retried", "agg", 1))
                assert stored.originator_version == last_version(journal, "agg") == 2 * r
            barrier.wait()
    results.put((name, outcomes))


def test_two_processes_on_one_aggregate_one_wins_each_version_the_other_retries(nats_url: str, app_name: str) -> None:
    rounds = 25
    barrier, results = SPAWN.Barrier(2, timeout=60), SPAWN.Queue()
    writers = [SPAWN.Process(target=contend, args=(name, app_name, nats_url, rounds, barrier, results)) for name in "ab"]
    for w in writers:
        w.start()
    outcomes = dict(gather(writers, results))
    for r in range(1, rounds + 1):
        a, b = outcomes["a"][r - 1], outcomes["b"][r - 1]
        assert {a[1], b[1]} == {"won", "lost"}, (a, b)  # exactly one winner
        loser = a if a[1] == "lost" else b
        assert loser[2].startswith("IntegrityError: version conflict on soul.")  # a clear conflict
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        stored = [e.event for e in journal.read()]
    assert [e.originator_version for e in stored] == list(range(1, 2 * rounds + 1))  # each version once
    for r in range(1, rounds + 1):
        winner = "a" if outcomes["a"][r - 1][1] == "won" else "b"
        loser = "b" if winner == "a" else "a"
        assert stored[2 * r - 2].prose == f"{winner} {r}" and stored[2 * r - 1].prose == f"{loser} {r} retried"


# -- large atomic inserts from several processes -----------------------------------------


def insert_batches(writer: int, app: str, url: str, batches: int, size: int, results: Any) -> None:
    """`batches` atomic inserts of `size` events, spread over eight aggregates of the writer."""
    with Journal(app, {"SOUL_NATS_URL": url}) as journal:
        for b in range(batches):
            journal.append([event(f"w{writer} b{b} e{i}", f"w{writer}:{i % 8}", b * size // 8 + i // 8 + 1,
                                  writer=writer, batch=b, i=i) for i in range(size)])
    results.put(writer)


def test_concurrent_atomic_inserts_keep_notification_ids_contiguous(nats_url: str, app_name: str) -> None:
    processes, batches, size = 3, 4, 400
    results = SPAWN.Queue()
    writers = [SPAWN.Process(target=insert_batches, args=(w, app_name, nats_url, batches, size, results))
               for w in range(processes)]
    for w in writers:
        w.start()
    gather(writers, results)
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        entries = list(journal.read())
    assert [e.seq for e in entries] == list(range(1, processes * batches * size + 1))
    seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for e in entries:
        data = e.event.data  # type: ignore[union-attr]
        assert data["i"] == len(seqs[data["writer"], data["batch"]])  # in the order given
        seqs[data["writer"], data["batch"]].append(e.seq)
    assert len(seqs) == processes * batches
    for key, ids in seqs.items():
        assert ids == list(range(ids[0], ids[0] + size)), f"batch {key} interleaved with another"


# -- one writer's event is never taken for another's ---------------------------------------


def test_a_batch_that_conflicts_is_an_integrity_error_and_can_be_retried(nats_url: str, app_name: str) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal(app_name, env) as first, Journal(app_name, env) as second:
        first.append([event("first's v1", "hot", 1)])
        try:
            second.append([event("mine", "mine", 1), event("second's v1", "hot", 1)])
            outcome = "stored"
        except Exception as e:
            outcome = type(e).__name__
        assert outcome == "IntegrityError"
        assert second.append([event("mine", "mine", 1), event("second's v2", "hot", 2)]) == [2, 3]


def test_a_timed_out_write_is_not_mistaken_for_another_writers_event(
    nats_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"SOUL_NATS_URL": nats_url}
    with Journal(app_name, env) as first, Journal(app_name, env) as second:
        real_publish, lost = JetStreamStore._publish, []

        async def lost_on_the_way(self: JetStreamStore, messages, expected):  # type: ignore[no-untyped-def]
            if self is second.recorder.store and not lost:
                lost.append(True)  # the request never reached the server, and meanwhile...
                await asyncio.to_thread(first.append, [event("first's v1", "agg", 1)])
                raise nats.errors.TimeoutError
            return await real_publish(self, messages, expected)

        monkeypatch.setattr(JetStreamStore, "_publish", lost_on_the_way)
        try:
            second.append([event("second's v1", "agg", 1)])
            outcome = "reported stored"
        except IntegrityError:
            outcome = "conflict"
        stored = [e.event.prose for e in second.read()]  # type: ignore[union-attr]
        assert lost and stored == ["first's v1"]
        assert outcome == "conflict", f"second's event was {outcome}, but the journal holds {stored}"
