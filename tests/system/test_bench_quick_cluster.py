"""cluster_bench.py's --quick mode: R1 and R3 appends, journal and raw, measured end to end on
servers of its own (an embedded nats-server and a 3-node loopback cluster), and said what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["raw js.publish R1", "Journal.append([event]) R1", "raw js.publish R3", "Journal.append([event]) R3"]


def test_cluster_quick_measures_r1_and_r3_appends_against_raw_nats() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SOUL_NATS_URL", "SOUL_PG_URL")}  # its own servers
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench/cluster_bench.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)

    config = report["config"]
    assert (config["quick"], config["singles"], config["repeats"], config["via"]) == (True, 30, 1, "follower")
    assert report["pass"] is None  # a quick run judges no target
    assert config["r3_leader"] in ("n1", "n2", "n3") and config["r3_node"] != config["r3_leader"]
    results = {r["path"]: r for r in report["results"]}
    assert [p for p in results if not p.startswith("diag:")] == PATHS
    assert all(r["events"] == 30 and r["events_per_s"] > 0 for r in results.values())
    for stream, target in (("R1", None), ("R3", 0.6)):  # each journal path against raw publishes to its stream
        journal = results[f"Journal.append([event]) {stream}"]
        assert journal["baseline"] == f"raw js.publish {stream}" and journal["ratio"] > 0
        assert journal["target"] == target  # R1's is journal_bench's to judge
    ratio = report["r3_over_r1"]
    assert ratio["raw"] > 0 and ratio["journal"] > 0 and ratio["aim"] == 0.5

    # What an append asks NATS: one publish request, nothing else (no read of the last message, no consumer).
    profiles = {p["stream"]: p for p in report["profile"]}
    assert set(profiles) == {"R1", "R3"}
    for p in profiles.values():
        assert p["appends"] == 30 and p["calls_per_append"] == 1.0
        assert list(p["by_kind"]) == ["request journal subject (the publish)"]
        assert 0 < p["append_p50_ms"] <= p["append_p99_ms"] and 0 < p["in_nats_share"] <= 1

    degraded = report["degraded"]  # a follower killed: R3 goes on, on the two nodes left
    assert degraded["killed"] not in (config["r3_leader"], config["r3_node"])
    assert [r["path"] for r in degraded["rows"]] == PATHS and all(r["events_per_s"] > 0 for r in degraded["rows"])
