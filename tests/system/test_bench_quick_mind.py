"""The --quick modes of the benchmarks that think, train or merge: each runs end to end in
seconds on the tiny model (and the real servers, for those that journal) and reports figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def quick(bench: str, model: Path, home: Path) -> dict[str, Any]:
    """The bench's `--quick --json` report, run as a user runs it; its own servers, not the suite's."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOUL_NATS_URL", "SOUL_PG_URL")}
    command = [sys.executable, str(ROOT / "ops/bench" / bench), "--quick", "--json", "--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**env, "SOUL_HOME": str(home)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def test_daemon_quick_streams_the_same_reply_as_in_process_and_carries_packets(tiny: Path, tmp_path: Path) -> None:
    report = quick("daemon_bench.py", tiny, tmp_path)
    turns = report["turns"]
    assert set(turns["median"]) == {"in-process", "daemon"}
    for row in turns["median"].values():
        assert row["tokens"] > 0 and row["chars_per_s"] > 0 and 0 < row["first_token_s"] <= row["turn_s"]
    assert turns["same_reply_length"] and turns["stream_ratio"] > 0
    packets = report["packets"]
    assert all(packets[k] > 0 for k in ("send_per_s", "raw_publish_per_s", "take_per_s", "raw_fetch_ack_per_s"))
    assert report["pass"] is None  # a quick run judges no target


def test_lora_quick_trains_the_same_adapter_as_mlx_lm(tiny: Path, tmp_path: Path) -> None:
    report = quick("lora_bench.py", tiny, tmp_path)
    assert (report["settings"]["iters"], report["settings"]["batch_size"]) == (2, 2)
    assert report["tokens"] > 0 and {v: len(s) for v, s in report["seconds"].items()} == {"raw": 1, "soul": 1}
    assert all(rate > 0 for rate in report["tokens_per_second"].values())
    assert report["identical_adapters"] is True and report["pass"] is None


def test_summary_quick_covers_each_fact_with_two_summaries(tiny: Path, tmp_path: Path) -> None:
    report = quick("summary_bench.py", tiny, tmp_path)
    results = report["results"]
    assert report["facts"] == 2 and [r["word"] for r in results] == ["Ingrid", "4817"]
    for r in results:
        assert r["range"][0] <= r["fact_seq"] <= r["range"][1] and r["by"] in ("mind", "extract")
        assert r["summary_tokens"] > 0 and r["summary_exchange_s"] >= 0
    # The placeholder keeps first sentences: the first fact opens its turn, the second does not.
    assert [r["placeholder"] for r in results] == [True, False]
    assert report["kept"] == {k: sum(r[k] for r in results) for k in ("placeholder", "mind", "summary", "later", "window")}


def test_turn_quick_answers_as_raw_mlx_lm_does_and_summarises_a_long_conversation(tiny: Path, tmp_path: Path) -> None:
    report = quick("turn_bench.py", tiny, tmp_path)
    assert report["max_tokens"] == 8 and len(report["speed"]["runs"]) == 2
    assert all(r["soul_tokens"] > 0 and r["raw_tokens"] > 0 and r["ratio"] > 0 for r in report["speed"]["runs"])
    ttft = report["ttft"]
    assert ttft["turns"] == 10 and 0 < ttft["first5_s"] and 0 < ttft["last5_s"]
    assert ttft["summaries"] >= 1 and ttft["prompt_tokens_last5"] <= report["budget"]  # the window evicted
    assert report["overhead"]["median_ms"] > 0 and report["overhead"]["turn_median_s"] > 0
    assert report["pass"] is None


def test_evolution_evidence_quick_trains_merges_and_grows_a_lineage(tiny: Path, tmp_path: Path) -> None:
    report = quick("evolution_evidence.py", tiny, tmp_path)
    assert report["iters"] == 2 and (report["curated_rows"], report["held_out_rows"]) == (24, 8)
    [run] = report["runs"]
    assert run["learning_rate"] == 5e-5 and run["first_loss"] > 0 and len(run["adapter"]) == 64
    [merge] = run["merges"]
    assert (merge["density"], merge["lambda"]) == (1.0, 1.0) and merge["max_drift"] > 0 and "answer" in merge
    assert all(merge[k] > 0 for k in ("curated", "held_out", "anchor")) and isinstance(report["base"]["answer"], str)
    generations = report["lineage"]["generations"]
    assert list(generations) == ["W0", "gen-1", "gen-2"]
    assert all(len(row) == 5 and all(v > 0 for v in row.values()) for row in generations.values())
    assert generations["gen-1"]["curated A"] != generations["W0"]["curated A"]  # the merge changed the weights


def test_cold_start_quick_times_each_command_against_raw_mlx_lm(tiny: Path, tmp_path: Path) -> None:
    report = quick("cold_start_bench.py", tiny, tmp_path)
    medians = report["median_s"]
    assert set(medians) == {"python", "raw_first_token", "say_first_token", "say_exit", "message_exit", "help_exit"}
    assert 0 < medians["python"] < medians["help_exit"] and medians["say_first_token"] <= medians["say_exit"]
    assert report["say_over_raw"] > 0 and report["pass"] is None
