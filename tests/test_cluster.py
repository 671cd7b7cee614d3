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

CLUSTER = [sys.executable, str(Path(__file__).parent.parent / "ops" / "nats_cluster.py")]


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
    store = journal.factory.store
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


def test_appends_survive_the_kill_of_the_stream_leader(cluster: tuple[str, Path], app_name: str) -> None:
    url, folder = cluster
    assert len(url.split(",")) == 3
    journal = open_journal(url, app_name)
    assert stream_info(journal).config.num_replicas == 3

    total, written, errors = 300, [], []

    def write() -> None:
        for i in range(total):
            try:
                journal.add(BifocalEvent("perception", f"event {i}", [], originator_id="source:test"))
                written.append(i)
            except Exception as e:  # recorded: the test fails on any write that did not land
                errors.append(f"{i}: {e}")

    writer = threading.Thread(target=write)
    writer.start()
    while len(written) < 100:
        time.sleep(0.01)
    leader = stream_info(journal).cluster.leader
    os.kill(int(nodes(folder)[leader]["pid"]), signal.SIGKILL)
    writer.join(timeout=240)

    assert not writer.is_alive() and errors == [], errors
    assert not nodes(folder)[leader]["running"]
    proses = [e.event.prose for e in journal.read()]
    assert len(proses) == total  # none doubled
    assert sorted(proses, key=lambda p: int(p.split()[1])) == [f"event {i}" for i in range(total)]  # none lost
    assert stream_info(journal).cluster.leader != leader
    journal.close()
