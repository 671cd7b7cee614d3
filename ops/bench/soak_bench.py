#!/usr/bin/env python
"""Soak: appends, the memory projection and hybrid searches running together for a bounded time.

    python ops/bench/soak_bench.py [--seconds 60] [--rate 50] [--searches 10] [--json]

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers; then only its own stream and schema are used and
dropped afterwards). After a warm-up journal of 2,000 memories (384-d vectors, prose from a
vocabulary of made-up words) it measures, in the same run:

  1. alone: Journal.append in batches of 10 as fast as it goes (the append capacity), the
     memory projection catching up with those appends (its capacity, HNSW index in place), and
     hybrid search latency with nothing else running: the baselines;
  2. together, for --seconds: appends at --rate events/s (batches of 10), a ProjectionRunner
     keeping the memory projection up (`run`), and --searches hybrid searches a second, each in
     its own thread. Sampled every 0.5 s: projection lag in events (journal end - the runner's
     committed position) and in seconds (since the first unapplied event was stored), and the
     memory of this process (RSS), of nats-server (RSS) and of Postgres (PSS summed over the
     postmaster and its backends, so shared buffers count once).

Printed: the achieved append rate against the requested one, search p50/p99 together against
alone, lag max/p99, memory at the start and end of the soak, errors, and the time to drain the
lag once appends stop. Exit status 1 if a target is missed: no errors, achieved rate >= 0.95 of
the requested one, lag drained to 0 within 30 s, this process grows by < 64 MB.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import numpy as np  # noqa: E402
from psycopg import sql  # noqa: E402

from journal.embedded import EmbeddedNats  # noqa: E402
from journal.errors import one_line  # noqa: E402
from journal.event import BifocalEvent, Embedder  # noqa: E402
from journal.journal import Journal  # noqa: E402
from projections.base import schema_for  # noqa: E402
from projections.memory import Memory  # noqa: E402
from projections.postgres import EmbeddedPostgres, connect  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402
from projections.search import search  # noqa: E402

MINILM = Embedder("soak@1", 384)
BATCH = 10
WARM_UP = 2000
TARGETS = {"rate_ratio": 0.95, "drain_s": 30.0, "rss_growth_mb": 64.0}
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class Memories:
    """Random unit vectors and prose of made-up words, so keyword search finds something."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.words = [f"{self.rng.choice('bdfgklmnprstvz')}{self.rng.choice('aeiou')}{self.rng.choice('rnlk')}{i}"
                      for i in range(500)]

    def vector(self) -> np.ndarray:
        v = self.np_rng.standard_normal(MINILM.dim).astype("<f4")
        return v / np.linalg.norm(v)

    def text(self, words: int) -> str:
        return " ".join(self.rng.choices(self.words, k=words))

    def batch(self, conversation: str, start: int) -> list[BifocalEvent]:
        return [BifocalEvent("perception", self.text(30), self.vector(), MINILM, conversation, start + i)
                for i in range(BATCH)]


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else 0.0


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process `pid` in kB from /proc (0 where there is no /proc)."""
    path = Path(f"/proc/{pid}/smaps_rollup" if field == "Pss" else f"/proc/{pid}/status")
    try:
        line = next(line for line in path.read_text().splitlines() if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1])


def postgres_pss_kb(postmaster: int | None) -> int:
    if postmaster is None:
        return 0
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(postmaster):
                pids.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return sum(rss_kb(pid, "Pss") for pid in pids)


class Soak:
    def __init__(self, journal: Journal, pg_url: str, nats_pid: int | None, pg_pid: int | None):
        self.journal, self.pg_url = journal, pg_url
        self.app = journal.app
        self.nats_pid, self.pg_pid = nats_pid, pg_pid
        self.memories = Memories()
        self.conversation = str(uuid.uuid4())
        self.version = 1
        self.stored: list[tuple[float, int]] = []  # (time, last seq) of each append
        self.errors: list[str] = []
        self.error_count = 0

    def failed(self, where: str, e: Exception) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(f"{where}: {one_line(e)}")

    def append(self) -> None:
        seqs = self.journal.append(self.memories.batch(self.conversation, self.version))
        self.version += BATCH
        self.stored.append((time.perf_counter(), seqs[-1]))

    def query(self, conn: Any) -> float:
        start = time.perf_counter()
        search(conn, self.app, self.memories.text(2), self.memories.vector(), mode="hybrid", limit=10)
        return time.perf_counter() - start

    def position(self, conn: Any) -> int:
        row = conn.execute(sql.SQL(
            "SELECT t.position FROM {s}._tracking t JOIN {s}._projections p ON t.table_name = p.active WHERE p.name = %s"
        ).format(s=sql.Identifier(schema_for(self.app))), [Memory.name]).fetchone()
        return row[0] if row else 0

    def lag(self, conn: Any) -> tuple[int, float]:
        """(events, seconds) the projection is behind the journal's end, as of now."""
        position, now = self.position(conn), time.perf_counter()
        stored = list(self.stored)
        end = stored[-1][1] if stored else 0
        if position >= end:
            return 0, 0.0
        first_unapplied = bisect.bisect_right([seq for _, seq in stored], position)
        return end - position, now - stored[first_unapplied][0]

    def memory(self) -> dict[str, float]:
        return {"bench_rss_mb": rss_kb(os.getpid()) / 1024,
                "nats_rss_mb": rss_kb(self.nats_pid) / 1024 if self.nats_pid else 0.0,
                "postgres_pss_mb": postgres_pss_kb(self.pg_pid) / 1024}

    # -- phases ----------------------------------------------------------------------------

    def alone(self, seconds: float, searches: int) -> dict[str, Any]:
        for _ in range(WARM_UP // BATCH):
            self.append()
        with ProjectionRunner(self.journal, Memory(), self.pg_url) as runner:
            runner.catch_up()
        with connect(self.pg_url) as conn:
            for _ in range(20):
                self.query(conn)  # warm caches and plans
            latencies = [self.query(conn) for _ in range(searches)]
        start, appended = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            self.append()
            appended += BATCH
        appending = time.perf_counter() - start
        start = time.perf_counter()
        with ProjectionRunner(self.journal, Memory(), self.pg_url) as runner:
            runner.catch_up()  # the soak starts with nothing behind
        return {"append_capacity_per_s": appended / appending, "projection_capacity_per_s": appended / (time.perf_counter() - start),
                "search_p50_ms": 1000 * statistics.median(latencies), "search_p99_ms": 1000 * percentile(latencies, 99)}

    def together(self, seconds: float, rate: float, searches_per_s: float) -> dict[str, Any]:
        stop_appends, stop_all = threading.Event(), threading.Event()
        latencies: list[float] = []
        samples: list[tuple[int, float]] = []
        appended = [0]

        def appender() -> None:
            start = time.perf_counter()
            while not stop_appends.is_set():
                due = start + appended[0] / rate  # paced: a batch whenever the schedule says
                if (wait := due - time.perf_counter()) > 0:
                    stop_appends.wait(wait)
                    continue
                try:
                    self.append()
                    appended[0] += BATCH
                except Exception as e:
                    self.failed("append", e)
                    time.sleep(0.1)

        def searcher() -> None:
            with connect(self.pg_url) as conn:
                while not stop_all.is_set():
                    try:
                        latencies.append(self.query(conn))
                    except Exception as e:
                        self.failed("search", e)
                    stop_all.wait(1 / searches_per_s)

        runner = ProjectionRunner(self.journal, Memory(), self.pg_url)

        def project() -> None:
            try:
                runner.run(stop_all, poll=0.05)
            except Exception as e:  # run() waits out outages itself: anything here is a failure
                self.failed("projection", e)

        threads = [threading.Thread(target=t) for t in (appender, searcher, project)]
        with connect(self.pg_url) as conn:
            memory_start = self.memory()
            began = time.perf_counter()
            for t in threads:
                t.start()
            while time.perf_counter() - began < seconds:
                time.sleep(0.5)
                try:
                    samples.append(self.lag(conn))
                except Exception as e:
                    self.failed("sample", e)
                if len(samples) % 20 == 0:
                    say(f"{time.perf_counter() - began:5.0f}s  appended {appended[0]:,}  lag {samples[-1][0]} events "
                        f"/ {samples[-1][1]:.2f}s  searches {len(latencies)}  errors {self.error_count}")
            stop_appends.set()
            elapsed = time.perf_counter() - began
            threads[0].join()
            memory_end = self.memory()
            drained = time.perf_counter()
            while self.lag(conn)[0] and time.perf_counter() - drained < 2 * TARGETS["drain_s"]:
                time.sleep(0.05)
            drain_s = time.perf_counter() - drained
            final_lag = self.lag(conn)[0]
        stop_all.set()
        for t in threads[1:]:
            t.join()
        runner.close()
        events, delays = [s[0] for s in samples], [s[1] for s in samples]
        return {
            "seconds": elapsed, "appended": appended[0], "append_per_s": appended[0] / elapsed, "searches": len(latencies),
            "search_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "search_p99_ms": 1000 * percentile(latencies, 99),
            "lag_events_max": max(events, default=0), "lag_events_p99": percentile(events, 99),
            "lag_s_max": max(delays, default=0.0), "lag_s_p99": percentile(delays, 99),
            "drain_s": drain_s, "final_lag_events": final_lag,
            "memory_start": memory_start, "memory_end": memory_end,
            "errors": self.error_count, "first_errors": self.errors,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the soak runs (default 60)")
    parser.add_argument("--rate", type=float, default=50.0, help="events appended per second during the soak (default 50)")
    parser.add_argument("--searches", type=float, default=10.0, help="hybrid searches per second during the soak (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    with common.real_parts() as (home, nats_url, pg_url):
        nats = EmbeddedNats(home).status()
        postgres = EmbeddedPostgres(home).status()
        journal = Journal("soak" + uuid.uuid4().hex[:8], {"SOUL_NATS_URL": nats_url})
        try:
            soak = Soak(journal, pg_url, nats["pid"] if nats["running"] else None,
                        postgres["pid"] if postgres["running"] else None)
            say(f"warm-up: {WARM_UP:,} memories, then append capacity and search latency alone")
            alone = soak.alone(min(10.0, args.seconds / 4), searches=200)
            say(f"soak: {args.seconds:g}s at {args.rate:g} events/s and {args.searches:g} searches/s")
            together = soak.together(args.seconds, args.rate, args.searches)
        finally:
            common.forget(journal, pg_url)
    growth = together["memory_end"]["bench_rss_mb"] - together["memory_start"]["bench_rss_mb"]
    report: dict[str, Any] = {
        "machine": common.machine(), "args": vars(args), "alone": alone, "together": together,
        "ratios": {"append_rate": together["append_per_s"] / args.rate,
                   "search_p50": (together["search_p50_ms"] or 0) / alone["search_p50_ms"],
                   "search_p99": together["search_p99_ms"] / alone["search_p99_ms"]},
        "bench_rss_growth_mb": growth,
    }
    report["pass"] = (together["errors"] == 0 and report["ratios"]["append_rate"] >= TARGETS["rate_ratio"]
                      and together["final_lag_events"] == 0 and together["drain_s"] <= TARGETS["drain_s"]
                      and growth < TARGETS["rss_growth_mb"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["pass"] else 1
    m, t = report["machine"], together
    print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}")
    print(f"alone:    append capacity {alone['append_capacity_per_s']:,.0f} events/s (batches of {BATCH}), projection "
          f"{alone['projection_capacity_per_s']:,.0f} events/s; "
          f"hybrid search p50 {alone['search_p50_ms']:.2f} ms, p99 {alone['search_p99_ms']:.2f} ms")
    print(f"together: {t['seconds']:.0f}s, {t['appended']:,} events at {t['append_per_s']:.1f}/s "
          f"(ratio {report['ratios']['append_rate']:.3f} of {args.rate:g}/s, target >= {TARGETS['rate_ratio']}), "
          f"{t['searches']:,} searches p50 {t['search_p50_ms'] or 0:.2f} ms (x{report['ratios']['search_p50']:.2f} alone), "
          f"p99 {t['search_p99_ms']:.2f} ms (x{report['ratios']['search_p99']:.2f})")
    print(f"lag:      max {t['lag_events_max']} events / {t['lag_s_max']:.2f}s, p99 {t['lag_events_p99']:.0f} events / "
          f"{t['lag_s_p99']:.2f}s; drained to {t['final_lag_events']} in {t['drain_s']:.2f}s (target <= {TARGETS['drain_s']:g}s)")
    for part in ("bench_rss_mb", "nats_rss_mb", "postgres_pss_mb"):
        print(f"memory:   {part:<16} {t['memory_start'][part]:8.1f} MB -> {t['memory_end'][part]:8.1f} MB")
    print(f"growth:   this process {growth:+.1f} MB (target < {TARGETS['rss_growth_mb']:g}); errors {t['errors']}"
          + (f": {t['first_errors']}" if t["errors"] else ""))
    print("pass" if report["pass"] else "MISS")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
