#!/usr/bin/env python
"""Soak: appends, every projection, hybrid searches and turns running together for a bounded time.

    python ops/bench/soak_bench.py [--seconds 60] [--rate 50] [--searches 10] [--turn-every 30]
                                   [--model DIR] [--sample S] [--quick] [--json]

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers; then only its own stream and schema are used and
dropped afterwards, and those servers' memory is not tracked). After a warm-up journal of 2,000
memories (384-d vectors, prose from a vocabulary of made-up words) it measures, in the same run:

  1. alone: Journal.append in batches of 10 as fast as it goes (the append capacity), the
     memory projection catching up with those appends (its capacity, HNSW index in place; beside
     it its ceiling, a raw binary COPY of the same rows into a table with the same indexes and the
     same rows before, in pages of the runner's size), and hybrid search latency with nothing else
     running: the baselines;
  2. together, for --seconds: appends at --rate events/s (batches of 10), a ProjectionRunner
     `run` for every projection of the registry, --searches hybrid searches a second, and a
     soul (soul.agent.loop.Soul: the embedded SmolLM2, or --model) taking a turn every
     --turn-every seconds in one long conversation (so its window evicts and summarises), every
     fifth turn a `/recall`; each in its own thread. Sampled every 0.5 s: projection lag in
     events (journal end - the least committed position of the projections) and in seconds
     (since the first unapplied event was stored). Every --sample seconds: the memory of every
     process, RSS, USS (private) and PSS (shared pages split between their users), from psutil:
     this python (which holds the mind and the embedder), nats-server, and Postgres summed over
     the postmaster and all its backends. Postgres' shared memory is one segment of a fixed
     size allocated at its start (shared_memory_size, mostly shared_buffers; both reported):
     its PSS grows as backends touch that segment's pages, up to its size, and its summed RSS
     counts each page once per backend that touched it. Only its private memory (USS) can
     grow without bound, so that is what is judged for Postgres; PSS and RSS are shown.

Memory levels off when the growth over the last half of the samples (the least-squares slope
times that half's length) is at most 8 MB plus two standard errors of that growth (a
garbage-collected process swings); memory given back (a negative slope) is levelled. Judged for
soaks of 600 s and more; shorter ones report the slopes, unjudged. --quick: a 10 s soak after a
200-memory warm-up, sampled every second with a turn every 2 s, for tests (give it a small --model).

Exit status 1 if a target is missed: no errors (appends, searches, projections, dead letters,
turns), achieved rate >= 0.95 of the requested one, lag at most 30 s and drained to 0 within
30 s once appends stop, at least one turn taken, (when judged) every process's memory levelled,
and without turns this process grows by < 64 MB (with them, the mind's buffers grow with the
conversation until its window is full).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from psycopg import sql  # noqa: E402

from journal.embedded import EmbeddedNats  # noqa: E402
from journal.errors import one_line  # noqa: E402
from journal.event import BifocalEvent, Embedder  # noqa: E402
from journal.journal import Journal  # noqa: E402
from projections.base import schema_for  # noqa: E402
from projections.memory import COLUMNS, COPY_TYPES, Memory  # noqa: E402
from projections.postgres import EmbeddedPostgres, connect  # noqa: E402
from projections.registry import PROJECTIONS  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402
from projections.search import search  # noqa: E402

MINILM = Embedder("soak@1", 384)
BATCH = 10
WARM_UP = 2000
TARGETS = {"rate_ratio": 0.95, "drain_s": 30.0, "lag_s_max": 30.0, "rss_growth_mb": 64.0}
LEVEL_MB, LEVEL_MIN_S = 8.0, 600.0  # see the docstring: what "levelled" means
UNJUDGED = {("postgres", "rss"), ("postgres", "pss")}  # bounded by the shared segment (docstring)
QUESTIONS = ("What did I just tell you?", "Say it back in one sentence.", "Which word was new?",
             "Why would anyone remember that?")
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


# -- memory of processes -----------------------------------------------------------------


def process_tree(pid: int | None) -> list[int]:
    """`pid` and its children (a postmaster's backends), as they are now; [] without one."""
    if pid is None:
        return []
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children())]
    except psutil.Error:
        return []


def measure(pids: list[int]) -> dict[str, float]:
    """RSS, USS and PSS in MB summed over those of `pids` still running, and how many."""
    totals = {"rss": 0.0, "uss": 0.0, "pss": 0.0, "processes": 0}
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()  # smaps: USS and PSS tell private from shared
        except psutil.Error:  # a backend that ended meanwhile
            continue
        for key in ("rss", "uss", "pss"):
            totals[key] += getattr(info, key) / 2**20
        totals["processes"] += 1
    return totals


def level(samples: list[tuple[float, float]], judge: bool) -> dict[str, Any]:
    """first, peak and last of (seconds, MB) samples; the least-squares slope over the last half
    (MB/h), the growth it amounts to over that half, and whether that is within the tolerance."""
    t, v = np.array([s[0] for s in samples]), np.array([s[1] for s in samples])
    half = t >= t[-1] / 2
    span = t[-1] - t[half][0] if half.any() else 0.0
    slope, error = 0.0, 0.0  # MB/s, and the standard error of the growth it gives
    if half.sum() >= 4:
        (slope, _), covariance = np.polyfit(t[half], v[half], 1, cov=True)
        error = float(np.sqrt(covariance[0, 0])) * span
    growth = float(slope) * span
    tolerance = LEVEL_MB + 2 * error
    return {"first": float(v[0]), "peak": float(v.max()), "last": float(v[-1]), "slope_mb_per_h": 3600 * float(slope),
            "growth_last_half_mb": growth, "tolerance_mb": tolerance,
            "levelled": bool(growth <= tolerance) if judge and half.sum() >= 6 else None}


class Soak:
    def __init__(self, journal: Journal, pg_url: str, nats_pid: int | None, pg_pid: int | None):
        self.journal, self.pg_url = journal, pg_url
        self.app = journal.app
        self.processes = {"bench": lambda: [os.getpid()], "nats-server": lambda: process_tree(nats_pid)[:1],
                          "postgres": lambda: process_tree(pg_pid)}
        self.memories = Memories()
        self.conversation = str(uuid.uuid4())
        self.version = 1
        self.stored: deque[tuple[float, int]] = deque()  # (time, last seq) of each append not yet projected
        self.errors: list[str] = []
        self.error_count = 0
        self.turns = 0

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
        """The least position of the projections (the one furthest behind)."""
        row = conn.execute(sql.SQL(
            "SELECT min(t.position) FROM {s}._tracking t JOIN {s}._projections p ON t.table_name = p.active"
        ).format(s=sql.Identifier(schema_for(self.app)))).fetchone()
        return row[0] or 0

    def dead_letters(self, conn: Any) -> int:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema_for(self.app), "_dead_letters"))).fetchone()[0]

    def lag(self, conn: Any) -> tuple[int, float]:
        """(events, seconds) the projections are behind the appends, as of now; forgets the
        appends they have applied (so this stays bounded however long the soak)."""
        position, now = self.position(conn), time.perf_counter()
        while self.stored and self.stored[0][1] <= position:
            self.stored.popleft()
        stored = list(self.stored)
        if not stored:
            return 0, 0.0
        return stored[-1][1] - position, now - stored[0][0]

    def memory(self) -> dict[str, dict[str, float]]:
        return {name: measure(pids()) for name, pids in self.processes.items()}

    # -- phases ----------------------------------------------------------------------------

    def alone(self, seconds: float, searches: int, warm_up: int) -> dict[str, Any]:
        for _ in range(warm_up // BATCH):
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
            projecting, page = time.perf_counter() - start, runner.page
        return {"append_capacity_per_s": appended / appending, "projection_capacity_per_s": appended / projecting,
                "raw_copy_per_s": appended / self.raw_copy(warm_up, page), "projected": appended,
                "search_p50_ms": 1000 * statistics.median(latencies), "search_p99_ms": 1000 * percentile(latencies, 99)}

    def raw_copy(self, warm_up: int, page: int) -> float:
        """The projection's ceiling: seconds to binary COPY the rows of the events after the first
        `warm_up` into a table of Memory's layout and indexes holding the first `warm_up` rows, a
        transaction per `page` rows, as the runner commits."""
        memory, rows = Memory(), [Memory()._row(e) for e in self.journal.read()]
        table = sql.Identifier(schema_for(self.app), "raw_ceiling")
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))

        def copy(cur: Any, part: list[tuple[Any, ...]]) -> None:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, columns)) as c:
                c.set_types(COPY_TYPES)
                for row in part:
                    c.write_row(row)

        with connect(self.pg_url) as conn:
            with conn.transaction(), conn.cursor() as cur:
                memory.create(cur, table)
                copy(cur, rows[:warm_up])
                memory.finish(cur, table)  # the indexes the runner's table has: HNSW, GIN
            start = time.perf_counter()
            for k in range(warm_up, len(rows), page):
                with conn.transaction(), conn.cursor() as cur:
                    copy(cur, rows[k : k + page])
            seconds = time.perf_counter() - start
            conn.execute(sql.SQL("DROP TABLE {}").format(table))
        return seconds

    def talker(self, model: Path | None, max_tokens: int, every: float, ready: threading.Event,
               stop: threading.Event) -> None:
        """Turns in one conversation every `every` s until `stop`: the soul is opened (and its
        first turn taken) in this thread, which then sets `ready`."""
        from soul.agent.loop import Soul, SoulConfig  # loads MLX: only when there are turns

        try:
            soul = Soul.open(self.app, model_dir=model, config=SoulConfig(max_tokens=max_tokens))
        except Exception as e:
            self.failed("open the soul", e)
            ready.set()
            return
        with soul:
            n, start = 0, None
            while not stop.is_set():
                if start is not None and (wait := start + n * every - time.perf_counter()) > 0:
                    stop.wait(wait)
                    continue
                words = (f"/recall {self.memories.text(2)}" if n % 5 == 4 else
                         f"Remember {self.memories.text(3)}. {QUESTIONS[n % len(QUESTIONS)]}")
                try:
                    soul.turn(words, conversation="soak")
                    self.turns += 1
                except Exception as e:
                    self.failed("turn", e)
                n += 1
                if start is None:  # the first turn warms the mind up before the soak begins
                    start, n = time.perf_counter(), 0
                    ready.set()

    def together(self, seconds: float, rate: float, searches_per_s: float, sample_s: float,
                 turns: dict[str, Any] | None) -> dict[str, Any]:
        stop_appends, stop_all = threading.Event(), threading.Event()
        latencies: list[float] = []
        samples: list[tuple[int, float]] = []
        timeline: list[dict[str, Any]] = []
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

        runners = [ProjectionRunner(self.journal, p(), self.pg_url) for p in PROJECTIONS.values()]

        def project(runner: ProjectionRunner) -> None:
            try:
                runner.run(stop_all, poll=0.05)
            except Exception as e:  # run() waits out outages itself: anything here is a failure
                self.failed(f"projection {runner.projection.name}", e)

        for runner in runners:
            runner.catch_up()  # every projection starts level with the journal
        threads = [threading.Thread(target=appender), threading.Thread(target=searcher),
                   *(threading.Thread(target=project, args=(r,)) for r in runners)]
        talking = None
        if turns is not None:
            ready = threading.Event()
            talking = threading.Thread(target=self.talker, kwargs={**turns, "ready": ready, "stop": stop_all})
            say("opening the soul (converting the model the first time) and taking a first turn")
            talking.start()
            ready.wait()
        with connect(self.pg_url) as conn:
            shared = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in ("shared_buffers", "shared_memory_size")}
            turns_before = self.turns
            began = time.perf_counter()
            timeline.append({"t": 0.0, **self.memory()})
            for t in threads:
                t.start()
            while (now := time.perf_counter() - began) < seconds:
                time.sleep(0.5)
                try:
                    samples.append(self.lag(conn))
                except Exception as e:
                    self.failed("sample", e)
                if now - timeline[-1]["t"] >= sample_s:
                    timeline.append({"t": now, **self.memory()})
                    m = timeline[-1]
                    say(f"{now:5.0f}s  appended {appended[0]:,}  lag {samples[-1][0]} events / {samples[-1][1]:.2f}s  "
                        f"searches {len(latencies)}  turns {self.turns - turns_before}  errors {self.error_count}  "
                        f"MB: bench {m['bench']['rss']:.0f}  nats {m['nats-server']['rss']:.0f}  "
                        f"postgres pss {m['postgres']['pss']:.0f} uss {m['postgres']['uss']:.0f}")
            stop_appends.set()
            elapsed = time.perf_counter() - began
            threads[0].join()
            timeline.append({"t": elapsed, **self.memory()})
            turned = self.turns - turns_before
            drained = time.perf_counter()
            while self.lag(conn)[0] and time.perf_counter() - drained < 2 * TARGETS["drain_s"]:
                time.sleep(0.05)
            drain_s = time.perf_counter() - drained
            final_lag = self.lag(conn)[0]
            stop_all.set()
            for t in [*threads[1:], *([talking] if talking else [])]:
                t.join()
            dead_letters = self.dead_letters(conn)
        for runner in runners:
            runner.close()
        judged = elapsed >= LEVEL_MIN_S
        memory = {name: {metric: level([(s["t"], s[name][metric]) for s in timeline],
                                       judged and (name, metric) not in UNJUDGED)
                         for metric in ("rss", "uss", "pss")} for name in self.processes
                  if any(s[name]["processes"] for s in timeline)}
        events, delays = [s[0] for s in samples], [s[1] for s in samples]
        return {
            "seconds": elapsed, "appended": appended[0], "append_per_s": appended[0] / elapsed, "searches": len(latencies),
            "search_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "search_p99_ms": 1000 * percentile(latencies, 99), "turns": turned,
            "lag_events_max": max(events, default=0), "lag_events_p99": percentile(events, 99),
            "lag_s_max": max(delays, default=0.0), "lag_s_p99": percentile(delays, 99),
            "drain_s": drain_s, "final_lag_events": final_lag, "dead_letters": dead_letters,
            **shared, "memory": memory, "timeline": timeline,
            "levelled": None if not judged else all(m["levelled"] is not False for p in memory.values()
                                                    for m in p.values()),
            "errors": self.error_count + dead_letters, "first_errors": self.errors,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="how long the soak runs (default 60; --quick: 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="events appended per second during the soak (default 50)")
    parser.add_argument("--searches", type=float, default=10.0, help="hybrid searches per second during the soak (default 10)")
    parser.add_argument("--turn-every", type=float, help="seconds between the soul's turns; 0: no turns (default 30; --quick: 2)")
    parser.add_argument("--max-tokens", type=int, default=48, help="a turn's reply tokens at most (default 48)")
    parser.add_argument("--model", type=Path, help="an MLX model directory to think with (default: the embedded SmolLM2)")
    parser.add_argument("--sample", type=float, help="seconds between memory samples (default: seconds / 40, 1 to 30)")
    parser.add_argument("--quick", action="store_true", help="a 10 s soak after a small warm-up: for tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    turn_every = args.turn_every if args.turn_every is not None else (2.0 if args.quick else 30.0)
    sample_s = args.sample or min(30.0, max(1.0, seconds / 40))
    warm_up = 200 if args.quick else WARM_UP
    turns = {"model": args.model, "max_tokens": args.max_tokens, "every": turn_every} if turn_every > 0 else None

    with common.real_parts() as (home, nats_url, pg_url):
        nats = EmbeddedNats(home).status()
        postgres = EmbeddedPostgres(home).status()
        journal = Journal("soak" + uuid.uuid4().hex[:8], {"SOUL_NATS_URL": nats_url})
        try:
            soak = Soak(journal, pg_url, nats["pid"] if nats["running"] else None,
                        postgres["pid"] if postgres["running"] else None)
            say(f"warm-up: {warm_up:,} memories, then append capacity and search latency alone")
            alone = soak.alone(1.0 if args.quick else min(10.0, seconds / 4), 20 if args.quick else 200, warm_up)
            say(f"soak: {seconds:g}s at {args.rate:g} events/s, {args.searches:g} searches/s, "
                + (f"a turn every {turn_every:g}s" if turns else "no turns") + f"; memory sampled every {sample_s:g}s")
            together = soak.together(seconds, args.rate, args.searches, sample_s, turns)
        finally:
            common.forget(journal, pg_url)
    timeline = together["timeline"]
    growth = timeline[-1]["bench"]["rss"] - timeline[0]["bench"]["rss"]
    report: dict[str, Any] = {
        "machine": common.machine(), "args": {**vars(args), "seconds": seconds, "turn_every": turn_every,
                                              "sample": sample_s, "warm_up": warm_up, "model": str(args.model or "")},
        "alone": alone, "together": together,
        "ratios": {"append_rate": together["append_per_s"] / args.rate,
                   "search_p50": (together["search_p50_ms"] or 0) / alone["search_p50_ms"],
                   "search_p99": together["search_p99_ms"] / alone["search_p99_ms"]},
        "bench_rss_growth_mb": growth,
    }
    report["pass"] = (together["errors"] == 0 and report["ratios"]["append_rate"] >= TARGETS["rate_ratio"]
                      and together["final_lag_events"] == 0 and together["drain_s"] <= TARGETS["drain_s"]
                      and together["lag_s_max"] <= TARGETS["lag_s_max"]
                      and (turns is not None or growth < TARGETS["rss_growth_mb"])
                      and together["levelled"] is not False and (turns is None or together["turns"] > 0))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["pass"] else 1
    m, t = report["machine"], together
    print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}")
    print(f"alone:    append capacity {alone['append_capacity_per_s']:,.0f} events/s (batches of {BATCH}), projection "
          f"{alone['projection_capacity_per_s']:,.0f} events/s (raw COPY of the same rows into the same indexes "
          f"{alone['raw_copy_per_s']:,.0f}/s: ratio {alone['projection_capacity_per_s'] / alone['raw_copy_per_s']:.2f}); "
          f"hybrid search p50 {alone['search_p50_ms']:.2f} ms, p99 {alone['search_p99_ms']:.2f} ms")
    print(f"together: {t['seconds']:.0f}s, {t['appended']:,} events at {t['append_per_s']:.1f}/s "
          f"(ratio {report['ratios']['append_rate']:.3f} of {args.rate:g}/s, target >= {TARGETS['rate_ratio']}), "
          f"{t['searches']:,} searches p50 {t['search_p50_ms'] or 0:.2f} ms (x{report['ratios']['search_p50']:.2f} alone), "
          f"p99 {t['search_p99_ms']:.2f} ms (x{report['ratios']['search_p99']:.2f}), {t['turns']} turns")
    print(f"lag:      max {t['lag_events_max']} events / {t['lag_s_max']:.2f}s (target <= {TARGETS['lag_s_max']:g}s), "
          f"p99 {t['lag_events_p99']:.0f} events / {t['lag_s_p99']:.2f}s; drained to {t['final_lag_events']} in "
          f"{t['drain_s']:.2f}s (target <= {TARGETS['drain_s']:g}s); dead letters {t['dead_letters']}")
    print(f"memory:   {len(timeline)} samples; Postgres shared_buffers {t['shared_buffers']}, shared memory "
          f"{t['shared_memory_size']}; MB first / peak / last, "
          "slope and growth over the last half against its tolerance (the docstring says how)")
    for name, metrics in t["memory"].items():
        for metric, f in metrics.items():
            verdict = {True: "levelled", False: "GROWING", None: "(not judged)"}[f["levelled"]]
            print(f"          {name:<12} {metric:<4} {f['first']:8.1f} {f['peak']:8.1f} {f['last']:8.1f}  "
                  f"{f['slope_mb_per_h']:+8.1f} MB/h  {f['growth_last_half_mb']:+7.1f} MB (<= {f['tolerance_mb']:.1f})  "
                  f"{verdict}")
    print(f"growth:   this process {growth:+.1f} MB (target < {TARGETS['rss_growth_mb']:g} without turns); "
          f"errors {t['errors']}" + (f": {t['first_errors']}" if t["errors"] else ""))
    print("pass" if report["pass"] else "MISS")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
