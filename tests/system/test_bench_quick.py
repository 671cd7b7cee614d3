"""The benchmarks' --quick modes: each runs end to end in seconds against real parts and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops" / "bench"))  # the benchmarks import their folder's `common`

import judge_bench  # noqa: E402
import soak_bench  # noqa: E402


def test_soak_quick_tracks_every_process_and_passes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SOUL_NATS_URL", "SOUL_PG_URL")}  # its own servers
    model = build_tiny_model(tmp_path / "tiny")
    command = [sys.executable, str(ROOT / "ops/bench/soak_bench.py"), "--quick", "--json", "--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    together = report["together"]
    assert together["errors"] == 0 and together["turns"] >= 1 and together["appended"] >= 200
    assert together["shared_buffers"].endswith(("MB", "GB", "kB")) and together["shared_memory_size"].endswith("MB")
    timeline = together["timeline"]
    assert len(timeline) >= 5 and timeline[0]["t"] == 0 and timeline[-1]["t"] >= 10
    assert all(s["postgres"]["processes"] > 1 and s["nats-server"]["processes"] == 1 for s in timeline)  # backends too
    memory = together["memory"]
    assert set(memory) == {"bench", "nats-server", "postgres"}
    for metrics in memory.values():
        assert set(metrics) == {"rss", "uss", "pss"}
        assert all(0 < m["first"] <= m["peak"] and m["levelled"] is None for m in metrics.values())  # 10 s: not judged
        assert metrics["uss"]["peak"] <= metrics["pss"]["peak"] <= metrics["rss"]["peak"]
    assert together["levelled"] is None and report["pass"]


@pytest.mark.parametrize("growth, levelled", [(0.0, True), (6.0, True), (40.0, False), (-40.0, True)])
def test_memory_is_levelled_when_the_last_half_grows_within_the_noise(growth: float, levelled: bool) -> None:
    # 100 MB, rising by 50 MB over the first half hour (filling caches), then by `growth` MB, with noise.
    noise = [1.5, -1.0, 0.5, -1.5, 1.0, 0.0]
    samples = [(t, 100 + 50 * min(t, 1800) / 1800 + growth * max(t - 1800, 0) / 1800 + noise[i % 6])
               for i, t in enumerate(range(0, 3601, 30))]
    figures = soak_bench.level(samples, judge=True)
    assert figures["levelled"] is levelled and figures["first"] == pytest.approx(101.5)
    assert figures["growth_last_half_mb"] == pytest.approx(growth, abs=2.0)
    assert soak_bench.level(samples, judge=False)["levelled"] is None


def test_learning_quick_tells_evolves_asks_and_forgets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SOUL_NATS_URL", "SOUL_PG_URL")}
    model = build_tiny_model(tmp_path / "tiny")
    config = tmp_path / "evolution.yaml"  # a few steps at a high rate, guards open: the tiny model's recipe
    config.write_text("min_events: 1\nrank: 4\niters: 3\nbatch_size: 2\nmax_seq_length: 128\nlearning_rate: 1.0e-2\n"
                      "max_drift: 10.0\nmax_perplexity_ratio: 100.0\n")
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench/learning_bench.py"), "--quick", "--json",
                           "--model", str(model), "--config", str(config), "--max-tokens", "4"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [row["generation"] for row in report["table"]] == ["W0", "gen-1", "gen-2"]
    assert [g["status"] for g in report["generations"]] == ["promoted", "promoted"]
    assert all(g["stages_s"]["train"] > 0 for g in report["generations"])  # where each evolve's time went
    assert all(len(g["answers"]["g1"]) == 4 for g in report["generations"])  # 2 facts, 2 questions each
    changes = report["forget"]["changes"]
    assert [(c["was"], c["changed"]) for c in changes] == [("gen-1", False), ("gen-2", True)]
    assert set(report["summary"]) >= {"taught_mean", "retained_g1_at_last", "general_last", "perplexity_ratio_last"}


def test_judge_quick_scores_each_judge_as_the_soul_does(tmp_path: Path) -> None:
    from projections.resonance import JUDGES
    from soul.agent.embedder import load_default_embedder
    from soul.agent.judges import cosine_score, self_judgement
    from soul.agent.mind import Mind

    model = build_tiny_model(tmp_path / "tiny")
    command = [sys.executable, str(ROOT / "ops/bench/judge_bench.py"), "--quick", "--json", "--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SOUL_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["rows"], report["good"], report["pass"]) == (8, 4, None)  # a quick run judges no target
    assert report["counted"] == [j for j in JUDGES if j != "user"] and ("combined" in report["judges"]) == bool(report["counted"])
    for name, scores in report["scores"].items():
        assert len(scores) == 8 and all(s != s or 0.0 <= s <= 1.0 for s in scores), name  # NaN: the judge did not speak
        assert 0.0 <= report["judges"][name]["auc"] <= 1.0, name
    first = judge_bench.load_rows(judge_bench.LABELS)[0]
    asked = judge_bench.conversation(first)
    assert report["scores"]["self"][0] == pytest.approx(self_judgement(Mind(model), asked, first["reply"])[0], abs=1e-4)
    message, reply = load_default_embedder().embed([first["message"], first["reply"]])
    assert report["scores"]["relevance"][0] == pytest.approx(cosine_score(message, reply), abs=1e-4)


def test_auc_is_the_share_of_good_bad_pairs_in_order_ties_half() -> None:
    assert judge_bench.auc([0.1, 0.4, 0.5, 0.8], [False, True, False, True]) == 0.75
    assert judge_bench.auc([0.5, 0.5, 0.9], [True, False, False]) == 0.25
    assert judge_bench.auc([0.2, float("nan"), 0.1], [True, False, False]) == 1.0  # a judge that did not speak
    assert judge_bench.auc([0.3, 0.7], [True, True]) != judge_bench.auc([0.3, 0.7], [True, True])  # NaN: no bad row


def test_the_labelled_set_is_balanced_and_says_what_is_wrong() -> None:
    rows = judge_bench.load_rows(judge_bench.LABELS)
    good = [r for r in rows if r["rating"] >= judge_bench.GOOD]
    assert 60 <= len(rows) and len(good) == len(rows) / 2 and sum(r["source"] == "smollm2" for r in rows) >= 40
    assert all(r["flaw"] == "none" for r in good) and all(r["flaw"] != "none" for r in rows if r not in good)
    assert len({r["id"] for r in rows}) == len(rows)


def test_levers_quick_trains_merges_and_asks(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench/levers_bench.py"), "--quick", "--json", "--model",
                           str(model), "--rehearse", "2", "--lams", "1.0", "--learning-rate", "1e-2", "--rank", "4",
                           "--max-tokens", "4"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [(g["generation"], g["rows"] > 2) for g in report["generations"]] == [(1, True), (2, True)]
    last = report["generations"][-1]["merges"]
    assert [m["lambda"] for m in last] == [0.8, 1.0] and {"g1", "g2", "perplexity_ratio"} <= set(last[0])


def test_levers_joint_learns_every_group_in_one_adapter(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench/levers_bench.py"), "--quick", "--json", "--joint",
                           "--model", str(model), "--learning-rate", "1e-2", "--rank", "4", "--max-tokens", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (joint,) = json.loads(done.stdout)["generations"]
    assert joint["groups"] == [1, 2] and joint["iters"] == 6  # the two generations' 3 quick iterations each
    assert {"g1", "g2", "perplexity_ratio"} <= set(joint["merges"][0])
