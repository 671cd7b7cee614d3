"""The journal on a 3-node JetStream cluster (ops/nats_cluster.py): R3 survives a node's kill -9
and a partition of its leader."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from journal.event import BifocalEvent
from journal.journal import Journal
from tests.support import ROOT

CLUSTER = [sys.executable, str(ROOT / "ops" / "nats_cluster.py")]
NODES = ("n1", "n2", "n3")  # as ops/nats_cluster.py names them


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    started = subprocess.run([*CLUSTER, "start", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip(), tmp_path
    finally:
        subprocess.run([*CLUSTER, "stop", str(tmp_path)], timeout=60)


def nodes(folder: Path) -> dict[str, dict]:
    out = subprocess.run([*CLUSTER, "status", str(folder)], capture_output=True, text=True, timeout=30).stdout
    return {n["node"]: n for n in map(json.loads, out.splitlines())}


def stream_info(journal: Journal):  # type: ignore[no-untyped-def]
    """The stream's info, once the cluster's meta layer answers again (it re-elects too)."""
    store = journal.recorder.store
    deadline = time.monotonic() + 30
    while True:
        try:
            return store.run(store.connection.js.stream_info(store.stream))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def open_journal(url: str, app: str) -> Journal:
    deadline = time.monotonic() + 30
    while True:  # the cluster elects its JetStream meta leader after the ports open
        try:
            return Journal(app, {"SOUL_NATS_URL": url, "SOUL_NATS_REPLICAS": "3"})
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def failover_figures(done: list[float], started: float, killed: float) -> dict[str, float]:
    """Appends/s before the kill (its last 2 s, or from the writer's start if that came later)
    and after it (to the last append), and the longest wait for an append from the kill on."""
    since = max(started, killed - 2)
    before = [t for t in done if since <= t < killed]
    after = [t for t in done if t >= killed]
    gaps = [b - a for a, b in zip([killed, *after], after)]
    return {
        "appends_per_s_before": round(len(before) / (killed - since), 1),
        "appends_per_s_after_kill": round(len(after) / (after[-1] - killed), 1) if after else 0.0,
        "max_stall_s": round(max(gaps, default=0.0), 3),
    }


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_appends_survive_the_kill_of_a_node(cluster: tuple[str, Path], app_name: str, role: str) -> None:
    """kill -9 of the stream's leader or of a follower while one writer appends through
    Journal.add: no append fails, and reading back every event id finds each exactly once."""
    url, folder = cluster
    assert len(url.split(",")) == 3
    journal = open_journal(url, app_name)
    info = stream_info(journal)
    assert info.config.num_replicas == 3

    total, written, done, errors = 400, [], [], []

    def write() -> None:
        for i in range(total):
            try:
                _, event = journal.add(BifocalEvent("perception", f"event {i}", [], originator_id="source:test"))
                written.append(event.id)
                done.append(time.monotonic())
            except Exception as e:  # recorded: the test fails on any write that did not land
                errors.append(f"{i}: {e}")

    writer = threading.Thread(target=write)
    started = time.monotonic()
    writer.start()
    while len(written) < 150:
        assert writer.is_alive(), errors
        time.sleep(0.01)
    info = stream_info(journal)
    victim = info.cluster.leader if role == "leader" else info.cluster.replicas[0].name
    killed = time.monotonic()
    os.kill(int(nodes(folder)[victim]["pid"]), signal.SIGKILL)
    writer.join(timeout=240)

    assert not writer.is_alive() and errors == [], errors
    assert not nodes(folder)[victim]["running"]
    assert sum(t > killed for t in done) > 0, "the kill came after the last append"
    ids = [e.event.id for e in journal.read()]
    assert len(ids) == total and set(ids) == set(written)  # none lost, none doubled
    assert [e.event.prose for e in journal.read()] == [f"event {i}" for i in range(total)]  # in order
    if role == "leader":
        assert stream_info(journal).cluster.leader != victim
    figures = failover_figures(done, started, killed)
    print(f"FAILOVER {role}: {figures}")  # `pytest -s` shows it; docs/reliability.md records them
    assert figures["max_stall_s"] < 30
    journal.close()


@dataclass
class Attempt:
    """One append as its writer saw it: acknowledged with a sequence, or failed with an error."""

    event: BifocalEvent
    began: float
    ended: float
    seq: int | None = None
    error: str | None = None


def keep_appending(journal: Journal, originator: str, stop: threading.Event) -> tuple[threading.Thread, list[Attempt]]:
    """A thread appending events to `originator` one at a time through `journal` until `stop`."""
    attempts: list[Attempt] = []

    def write() -> None:
        while not stop.is_set():
            event = BifocalEvent("perception", f"{originator} {len(attempts)}", [], originator_id=originator)
            began = time.monotonic()
            try:
                seq, event = journal.add(event)
                attempts.append(Attempt(event, began, time.monotonic(), seq=seq))
            except Exception as e:  # recorded: the test checks that it says what happened
                attempts.append(Attempt(event, began, time.monotonic(), error=f"{type(e).__name__}: {e}"))

    thread = threading.Thread(target=write)
    thread.start()
    return thread, attempts


def acked_since(attempts: list[Attempt], since: float) -> int:
    return sum(a.seq is not None and a.began >= since for a in attempts)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `condition` until true; the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g}s"
        time.sleep(0.05)
    return time.monotonic()


def stream_leader(journal: Journal) -> str | None:
    """The stream's leader as the node `journal` is connected to sees it (None while electing)."""
    store = journal.recorder.store
    try:
        return store.run(store.connection.js.stream_info(store.stream)).cluster.leader
    except OperationalError:
        return None


def caught_up(journal: Journal, node: str) -> bool:
    """Whether the stream's leader counts `node` a current replica, nothing behind."""
    store = journal.recorder.store
    try:
        info = store.run(store.connection.js.stream_info(store.stream))
    except OperationalError:
        return False
    return any(p.name == node and p.current and not p.lag for p in info.cluster.replicas or [])


class Routes:
    """A TCP proxy on each route between two nodes (`ops/nats_cluster.py start(via=...)`) that the
    test can cut: a partition while every node lives. A cut node's links are closed, and new ones
    refused, until the heal; the nodes reconnect on their own then."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="routes", daemon=True).start()
        self.cut_off: set[str] = set()
        self.links: list[tuple[set[str], asyncio.StreamWriter]] = []
        self.servers: list[asyncio.Server] = []

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def via(self, node: str, other: str, port: int) -> int:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ends = {node, other}
            try:
                if ends & self.cut_off:
                    return
                far_reader, far_writer = await asyncio.open_connection("127.0.0.1", port)
                links = [(ends, writer), (ends, far_writer)]
                self.links += links
                try:
                    await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))
                finally:
                    for link in links:
                        self.links.remove(link)
            except OSError:  # the far node is down or the link was cut: the node sees a closed route
                pass
            finally:
                writer.transport.abort()

        server = self.run(asyncio.start_server(forward, "127.0.0.1", 0))
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def cut(self, node: str) -> None:
        async def cut() -> None:
            self.cut_off.add(node)
            for ends, writer in list(self.links):
                if node in ends:
                    writer.transport.abort()

        self.run(cut())

    def heal(self) -> None:
        self.loop.call_soon_threadsafe(self.cut_off.clear)

    def close(self) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
            for _, writer in self.links:
                writer.transport.abort()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@pytest.fixture
def routed_cluster(tmp_path: Path) -> Iterator[tuple[str, Path, Routes]]:
    """The cluster of ops/nats_cluster.py with its routes through a Routes proxy."""
    spec = importlib.util.spec_from_file_location("nats_cluster", ROOT / "ops" / "nats_cluster.py")
    ops = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(ops)  # type: ignore[union-attr]
    routes = Routes()
    try:
        yield ops.start(tmp_path, via=routes.via), tmp_path, routes
    finally:
        ops.stop(tmp_path)
        routes.close()


@pytest.mark.parametrize("how", ["sigstop", "routes cut"])
def test_appends_through_a_partition_of_the_stream_leader(request: pytest.FixtureRequest, app_name: str,
                                                          how: str) -> None:
    """The stream leader is cut off from the other two while its clients stay connected to it:
    stopped (SIGSTOP, then SIGCONT) or alive with its routes cut (then restored). One writer
    appends through the isolated node, one through the majority, each one event at a time:
    every acknowledged append is stored exactly once at its sequence, in the writer's order;
    every other one failed with an error that says it may have been stored, and is stored at
    most once; nothing is acknowledged through the isolated node while it is cut off."""
    if how == "sigstop":
        url, folder = request.getfixturevalue("cluster")
    else:
        url, folder, routes = request.getfixturevalue("routed_cluster")
    journal = open_journal(url, app_name)  # creates the R3 stream
    victim = stream_info(journal).cluster.leader
    where = nodes(folder)
    pid = int(where[victim]["pid"])
    isolate, heal = ((lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT)) if how == "sigstop"
                     else (lambda: routes.cut(victim), routes.heal))
    isolated, majority = (Journal(app_name, {"SOUL_NATS_URL": f"nats://127.0.0.1:{where[name]['port']}",
                                             "SOUL_NATS_TIMEOUT": "1"})
                          for name in (victim, next(n for n in NODES if n != victim)))
    stop = threading.Event()
    writers = {"isolated": keep_appending(isolated, "source:isolated", stop),
               "majority": keep_appending(majority, "source:majority", stop)}
    try:
        wait_for(lambda: all(acked_since(a, 0) >= 50 for _, a in writers.values()), 60, "50 appends each")
        cut = time.monotonic()
        isolate()
        try:
            elected = wait_for(lambda: stream_leader(majority) not in (None, victim), 60, "a new leader")
            wait_for(lambda: time.monotonic() > elected + 3, 10, "3 s on the new leader")
            # The new leader stops counting the cut-off node current once it misses appends (the
            # majority keeps writing); how soon depends on the server's activity window.
            wait_for(lambda: not caught_up(majority, victim), 30, "the new leader to see the cut-off node fall behind")
        finally:
            healed = time.monotonic()
            heal()
        rejoined = wait_for(lambda: caught_up(majority, victim), 60, "the healed node catching up")
        wait_for(lambda: all(acked_since(a, healed) >= 20 for _, a in writers.values()), 60, "appends after the heal")
    finally:
        if how == "sigstop":
            os.kill(pid, signal.SIGCONT)
        stop.set()
        for thread, _ in writers.values():
            thread.join(timeout=120)

    stored = list(journal.read())
    assert len({e.event.id for e in stored}) == len(stored)  # nothing doubled
    figures: dict[str, Any] = {"new_leader_s": round(elected - cut, 2), "partition_s": round(healed - cut, 2),
                               "healed_node_caught_up_s": round(rejoined - healed, 2)}
    for name, (_, attempts) in writers.items():
        mine = [e for e in stored if e.originator_id == f"source:{name}"]
        at = {e.event.id: e.seq for e in mine}
        acked = [a for a in attempts if a.seq is not None]
        failed = [a for a in attempts if a.error is not None]
        assert all(at.get(a.event.id) == a.seq for a in acked)  # every acknowledged append, at its sequence
        assert all("may have been stored" in str(a.error) for a in failed), {a.error for a in failed}
        assert set(at) <= {a.event.id for a in attempts}  # nothing but what was attempted
        order = {a.event.id: n for n, a in enumerate(attempts)}
        assert [order[e.event.id] for e in mine] == sorted(order[e.event.id] for e in mine)  # in the writer's order
        during = [a for a in attempts if a.began < healed and a.ended > cut]  # in flight while cut off
        figures[name] = {"attempted_during": len(during),
                         "acked_during": sum(a.seq is not None and a.ended < healed for a in during),
                         "failed": len(failed), "failed_but_stored": sum(a.event.id in at for a in failed),
                         "longest_append_s": round(max(a.ended - a.began for a in attempts), 2),
                         "first_ack_after_heal_s": round(min(a.ended for a in acked if a.ended >= healed) - healed, 2)}
    # Nothing is acknowledged through a node while it is cut off; the majority goes on meanwhile.
    assert not [a for a in writers["isolated"][1] if a.seq is not None and cut <= a.began and a.ended < healed]
    assert figures["majority"]["acked_during"] > 0
    print(f"PARTITION {how}: {figures}")  # `pytest -s` shows it; docs/reliability.md records them
    for j in (isolated, majority, journal):
        j.close()
