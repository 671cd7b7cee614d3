"""The storage benchmarks' --quick modes: each runs end to end in seconds against real parts and says what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def quick(bench: str, *extra: str) -> dict[str, Any]:
    """Run ops/bench/`bench` with --quick --json and its own servers; its report, once it exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOUL_NATS_URL", "SOUL_PG_URL")}
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench" / bench), "--quick", "--json", *extra],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def test_context_quick_assembles_windows_over_turns_the_projection_wrote(tmp_path: Path) -> None:
    report = quick("context_bench.py", "--model", str(build_tiny_model(tmp_path / "tiny")))
    assert (report["quick"], report["pass"], report["budget"]) == (True, None, 2048)  # a quick run judges no target
    path = report["projection_path"]
    assert path["ok"] is True and path["events"] == 200 and 0 < path["window_turns"] < 99 and path["tokens"] <= 2048
    assert set(report["sizes"]) == {"1000", "5000"}
    for events, size in report["sizes"].items():
        assert size["summary"] is True and size["window_turns"] > 0 and 0 < size["tokens"] <= 2048, events
        assert 0 < size["p50_ms"] <= size["p99_ms"], events
    assert report["ratio"] > 0


def test_corpus_quick_ingests_a_tree_then_finds_it_unchanged() -> None:
    report = quick("corpus_bench.py")
    ingest, again = report["ingest"], report["reingest_unchanged"]
    assert report["tree"]["files"] == 2 and report["tree"]["bytes"] > 0
    assert (ingest["files"], ingest["ingested"], ingest["skipped"]) == (2, 2, {})
    assert 0 < ingest["chunks"] <= ingest["events"] and ingest["embed_seconds"] > 0 and ingest["chunks_per_s"] > 0
    assert (again["files"], again["unchanged"], again["events"]) == (2, 2, 0)


def test_memory_quick_rebuilds_and_searches_the_memory_projection() -> None:
    report = quick("memory_bench.py")
    assert report["config"]["memories"] == 2000 and report["config"]["queries"] == 20 and report["pass"] is None
    rebuild = report["rebuild"]
    assert rebuild["rows"] == 2000 < rebuild["events"] == rebuild["journal_read_events"]  # memories and judgements
    assert rebuild["table"].startswith("memory_v") and rebuild["rebuild_s"] > 0 and rebuild["raw_s"] > 0
    results = report["search"]["results"]
    assert {r["mode"] for r in results} == {"hybrid", "semantic", "keyword", "hybrid --corpus"}
    assert all(r["p50_ms"] > 0 and (r["recall"] is None or 0 <= r["recall"] <= 1) for r in results)
    hybrid = next(r for r in results if r["mode"] == "hybrid" and r["default"])
    assert hybrid["recall"] > 0.5  # the search finds what exact search finds, even unjudged
    assert next(r for r in results if r["mode"] == "hybrid --corpus")["short_or_foreign"] == 0
    live = report["live"]  # applied into the finished table, against raw COPY into the same indexes
    assert live["events"] >= report["config"]["live"] and live["events_per_s"] > 0 and live["raw_rows_per_s"] > 0
    assert live["ratio"] > 0 and live["target_per_s"] == 1000
    assert [name for name, *_ in report["verdicts"]] == ["rebuild: raw / rebuild time", "hybrid p50 ms",
                                                         "hybrid p99 ms", "hybrid recall@10"]


def test_journal_quick_measures_every_path_against_raw_nats() -> None:
    report = quick("journal_bench.py")
    config = report["config"]
    assert (config["events"], config["singles"], config["repeats"], config["quick"]) == (200, 20, 1, True)
    assert report["pass"] is None and len(config["soul_tail_startup_s"]) == 1
    results = report["results"]
    assert [r["group"] for r in results] == ["1 single"] * 5 + ["2 batch100"] * 3 + ["3 read"] * 5
    assert all(r["events"] > 0 and r["events_per_s"] > 0 and r["ratio"] > 0 for r in results)
    judged = [r["path"] for r in results if r["target"] is not None]
    assert "Journal.append([event])" in judged and "Journal.read (decoded)" in judged and len(judged) == 7


def test_replay_quick_replays_each_generation_from_cached_adapters(tmp_path: Path) -> None:
    report = quick("replay_bench.py", "--model", str(build_tiny_model(tmp_path / "tiny")))
    assert (report["generations"], report["iters"], report["repeats"], report["ok"]) == (2, 1, 1, None)
    assert set(report["seconds"]) == {"replay gen-1", "replay gen-2", "raw merge 1", "raw merge 2"}
    assert all(s > 0 for s in report["seconds"].values()) and report["evolve_seconds_median"] > 0
    assert report["ratio_last_over_first"] > 0 and set(report["replay_over_raw_merge"]) == {"gen-1", "gen-2"}


def test_ties_quick_streaming_and_in_memory_merges_seal_the_same_root() -> None:
    report = quick("ties_bench.py")
    config = report["config"]
    assert (config["layers"], config["dim"], config["quick"]) == (2, 64, True) and config["model_bytes"] > 0
    assert report["same_root"] is True and len(report["root"]) == 64 and report["pass"] is None
    results = report["results"]
    assert set(results) == {"imports", "streaming", "in-memory", "shared"}
    assert all(results[v]["seconds"] > 0 and results[v]["gb_per_s"] > 0 for v in ("streaming", "in-memory", "shared"))
    assert all(r["peak_rss_mib"] > 0 for r in results.values()) and report["rss_ratio"] > 0
    shared = report["shared"]  # a second generation writes only what its adapters change: q, k and v here
    assert 0.25 < shared["written_share"] < 0.35 and shared["copy_gb_per_s"] > 0 and shared["of_copy_rate"] > 0


def test_redact_quick_times_the_working_tree_against_head() -> None:
    report = quick("redact_bench.py")
    assert report["repeats"] == 3 and report["pass"] is None
    assert all(report["kb"][kind] > 0 for kind in ("prose", "code", "mix"))
    assert set(report["us_per_kb"]) == {"working tree", "HEAD"}
    assert all(set(figures) == {"prose", "code", "mix"} and all(us > 0 for us in figures.values())
               for figures in report["us_per_kb"].values())
