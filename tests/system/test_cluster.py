"""The journal on a 3-node JetStream cluster (ops/nats_cluster.py): R3 survives a node's kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal.event import BifocalEvent
from journal.journal import Journal
from tests.support import ROOT

CLUSTER = [sys.executable, str(ROOT / "ops" / "nats_cluster.py")]


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


def failover_figures(done: list[float], killed: float) -> dict[str, float]:
    """Appends/s before the kill (its last 2 s) and after it (to the last append), and the longest
    wait for an append from the kill on."""
    before = [t for t in done if killed - 2 <= t < killed]
    after = [t for t in done if t >= killed]
    gaps = [b - a for a, b in zip([killed, *after], after)]
    return {
        "appends_per_s_before": round(len(before) / 2, 1),
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
    figures = failover_figures(done, killed)
    print(f"FAILOVER {role}: {figures}")  # `pytest -s` shows it; docs/reliability.md records them
    assert figures["max_stall_s"] < 30
    journal.close()
