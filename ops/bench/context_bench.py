#!/usr/bin/env python
"""Context window assembly at 10k and at 1M journal events: its cost must not grow with the journal.

    python ops/bench/context_bench.py [--small N] [--large N] [--assemblies A] [--budget T] [--wide T]
                                      [--model DIR] [--json]
    python ops/bench/context_bench.py --quick --model DIR     # seconds: the tests

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers; then only its own streams and schemas are used and
dropped afterwards). Tokens are counted with SmolLM2's tokenizer (the embedded model, converted
into the temporary home first: ~1 minute), or `--model`'s.

1. The projection path, on a small journal: 2,000 events (a self-definition, a notebook, two
   interleaved conversations) journaled, the `turns` projection caught up by its runner, a
   window assembled and checked (the newest turns, oldest evicted), a summary journaled for the
   eviction and shown by the next assembly.
2. Assembly latency over `turns` tables of N = 10k and 1M rows. Journaling and projecting 1M
   events is not affordable here (~1 hour), so these events are handed straight to the
   projection's own `Turns.apply` (which writes its table with COPY), not journaled: one
   self-definition, one notebook, then turns of which every second belongs to the measured
   conversation (so it grows with the journal too: 5k or 500k turns), the rest to 100 others,
   and one summary standing for all but the measured conversation's newest 4,500 turns, as
   summaries written on eviction leave it. Assemblies of the two sizes and two budgets
   alternate (A each, after warm-up): budget T tokens (default 8192: the window holds ~220
   turns) and the wide budget (default 131072, the largest window: ~3,600 of the 4,500 turns
   no summary covers), notebook cap 2048, no retrievals (memory search is measured by
   memory_bench.py). Each turn is counted once per tokenizer and its count stored
   (soul/agent/context.py): the first assembly of each size and budget (its time is shown as
   `first`) counts the turns it reads that none before it did; the warm-up and measured ones
   add stored counts. The heap loaded before (modules, the tokenizer) is frozen out of garbage
   collection first (`gc.freeze()`).
   Each assembly is followed by its floor: the same window's rows read in one SELECT and
   their text joined (`floor_*`), what any assembly over this projection must pay.
   Targets: p50 <= 3 ms at the budget, p99 <= 10 ms at the wide budget, and at each budget
   p99(1M) / p99(10k) <= 1.2.

--quick: 200 events on the projection path, tables of 1,000 and 5,000 rows of which 200 turns
are unsummarised, 20 assemblies each, budget 2048, no wide budget; nothing is judged.

Exit status 1 if a target is missed or the projection path check fails.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from mlx_lm.utils import load_tokenizer  # noqa: E402
from psycopg import sql  # noqa: E402

from journal.event import BifocalEvent, as_vector  # noqa: E402
from journal.journal import Entry, Journal  # noqa: E402
from projections.base import schema_for  # noqa: E402
from projections.postgres import connect  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402
from projections.turns import TURNS, Turns  # noqa: E402
from soul.agent.context import MAX_BUDGET, assemble, render_turn, summarise  # noqa: E402
from evolution.weights.model import embedded_model_dir  # noqa: E402

TARGET = 1.2  # p99(large) / p99(small), at each budget
P50_MS = 3.0  # at the budget
WIDE_P99_MS = 10.0  # at the wide budget
KEPT = 4500  # turns of the measured conversation no summary covers yet: more than a 128k window (--quick: 200)
OTHERS = 100  # other conversations sharing the journal
NO_VECTOR = as_vector([])
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def turn_prose(i: int) -> str:
    # Zero-padded: turns are as long at 1M as at 10k, so both windows hold as many.
    return f"Turn {i:07d}: the soul considered the deploy script and noted that step {i % 97:02d} needs a retry."


def check_projection_path(nats_url: str, pg_url: str, tokenizer: Any, budget: int, count: int) -> dict[str, Any]:
    """Journal, project and assemble a small conversation of `count` events end to end; what was
    checked and how long."""
    talk, other = uuid.uuid4(), uuid.uuid4()
    events = [BifocalEvent("self_defined", "I am the soul under benchmark.", np.zeros(0)),
              BifocalEvent("notebook_written", "Keep the deploy green.", np.zeros(0))]
    events += [BifocalEvent(TURNS[i % 3], turn_prose(i), np.zeros(0), originator_id=(talk, other)[i % 2])
               for i in range(count - 2)]
    start = time.perf_counter()
    journal = Journal("benchpath" + uuid.uuid4().hex[:8], {"SOUL_NATS_URL": nats_url})
    try:
        app = journal.app
        with connect(pg_url) as conn:
            seqs = [journal.add(e)[0] for e in events]
            journaled = time.perf_counter()
            with ProjectionRunner(journal, Turns(), pg_url) as runner:
                runner.catch_up()
            projected = time.perf_counter()
            context = assemble(conn, app, str(talk), None, tokenizer, budget)
            mine = [s for s, e in zip(seqs, events) if e.originator_id == talk]
            kept = context.turn_seqs
            suffix = bool(kept) and kept == mine[-len(kept):] and context.evictions == ((mine[0], mine[-len(kept) - 1]),)
            summarise(journal, conn, str(talk), context.evictions[0], tokenizer, budget // 4)
            with ProjectionRunner(journal, Turns(), pg_url) as runner:
                runner.catch_up()
            after = assemble(conn, app, str(talk), None, tokenizer, budget)
            summarised = any(b.kind == "summary" for b in after.blocks) and after.turn_seqs[-1] == mine[-1]
            ok = suffix and summarised and context.tokens <= budget and after.tokens <= budget
            return {"events": len(events), "journal_s": journaled - start, "catch_up_s": projected - journaled,
                    "window_turns": len(kept), "tokens": context.tokens, "ok": ok}
    finally:
        common.forget(journal, pg_url)


def entry(seq: int, conversation: uuid.UUID, kind: str, prose: str, data: dict[str, Any] | None = None) -> Entry:
    return Entry(seq, conversation, kind, 0, BifocalEvent(kind, prose, NO_VECTOR, originator_id=conversation,
                                                          data=data or {}))


def load_turns(nats_url: str, pg_url: str, events: int, kept: int) -> tuple[Journal, str]:
    """A journal whose `turns` table holds `events` rows that Turns.apply wrote (see the module
    doc), the journal itself empty; (journal, conversation)."""
    journal = Journal("bench" + uuid.uuid4().hex[:8], {"SOUL_NATS_URL": nats_url})
    talk = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(OTHERS)]
    mine = (events - 3) // 2

    def entries() -> Iterator[Entry]:
        yield entry(1, others[0], "self_defined", "I am the soul under benchmark.")
        yield entry(2, others[0], "notebook_written", "Keep the deploy green. " * 40)
        first_mine = last_covered = None
        turn = 0
        for seq in range(3, events):
            if seq % 2:
                turn += 1
                first_mine = first_mine or seq
                if turn == mine - kept:
                    last_covered = seq
                yield entry(seq, talk, TURNS[seq % 3], turn_prose(turn))
            else:
                yield entry(seq, others[seq % OTHERS], TURNS[seq % 3], turn_prose(seq))
        yield entry(events, talk, "summary", "Earlier the soul fixed the deploy script step by step. " * 10,
                    {"first_seq": first_mine, "last_seq": last_covered})

    projection = Turns()
    with ProjectionRunner(journal, projection, pg_url) as runner:
        table = sql.Identifier(schema_for(journal.app), runner.status()["table"])  # the runner made it and its view
    with connect(pg_url) as conn:
        with conn.transaction(), conn.cursor() as cur:
            pages = entries()
            while page := list(itertools.islice(pages, 10_000)):
                projection.apply(cur, table, page)
        conn.execute(sql.SQL("ANALYZE {}").format(table))
    return journal, str(talk)


def floor_read(conn: psycopg.Connection[Any], app: str, conversation: str, turns: int) -> str:
    """What any assembly of a window of `turns` turns must do: read their rows in one SELECT and
    join their text (no counts, no pinned blocks, no eviction)."""
    rows = conn.execute(sql.SQL("SELECT seq, type, prose FROM {} WHERE conversation = %s AND type = ANY(%s)"
                                " ORDER BY seq DESC LIMIT %s").format(Turns.view(app)),
                        [conversation, list(TURNS), turns]).fetchall()
    return "".join(render_turn(*row) for row in reversed(rows))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def machine(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return {**common.machine(), "postgres": conn.execute("SHOW server_version").fetchone()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, help="events in the small journal (default 10000; --quick: 1000)")
    parser.add_argument("--large", type=int, help="events in the large journal (default 1000000; --quick: 5000)")
    parser.add_argument("--assemblies", type=int, help="assemblies measured per size (default 1000; --quick: 20)")
    parser.add_argument("--budget", type=int, help="token budget (default 8192; --quick: 2048)")
    parser.add_argument("--wide", type=int, help="the wide budget, 0 for none (default 131072; --quick: none)")
    parser.add_argument("--model", type=Path, help="an MLX model directory whose tokenizer counts (default: SmolLM2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, the ratio not judged: that it runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    quick = args.quick
    small = args.small or (1000 if quick else 10_000)
    large = args.large or (5000 if quick else 1_000_000)
    assemblies = args.assemblies or (20 if quick else 1000)
    budget = args.budget or (2048 if quick else 8192)
    wide = args.wide if args.wide is not None else (0 if quick else MAX_BUDGET)
    kept = 200 if quick else KEPT
    if not 2 * kept + 10 < small <= large:
        parser.error(f"--small must exceed {2 * kept + 10} and not exceed --large")
    budgets = [budget] + ([wide] if wide else [])

    with common.real_parts() as (home, nats_url, pg_url):
        journals: list[Journal] = []
        try:
            say(f"loading the tokenizer of {args.model or 'SmolLM2 (converting it)'}")
            tokenizer = load_tokenizer(args.model or embedded_model_dir(home))
            say("checking the projection path on a small journal")
            path = check_projection_path(nats_url, pg_url, tokenizer, budget, 200 if quick else 2000)
            sizes = {}
            for events in (small, large):
                say(f"writing {events:,} rows into turns with Turns.apply")
                journal, talk = load_turns(nats_url, pg_url, events, kept)
                journals.append(journal)
                sizes[events] = (journal.app, talk)
            # What is loaded for good (modules, the tokenizer) leaves the collector's generations, as
            # a long-running soul's would: else a full collection of it (~100 ms here) lands in an
            # assembly now and then, whatever the assembly does.
            gc.collect()
            gc.freeze()
            runs = [(t, events) for t in budgets for events in sizes]
            timings: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
            floors: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
            with connect(pg_url) as conn:
                windows, first = {}, {}
                say(f"assembling: {20 + assemblies} rounds of {len(runs)}")
                for round_ in range(20 + assemblies):  # 20 warm-up rounds, then measured; sizes and budgets alternate
                    for t, events in runs:
                        app, talk = sizes[events]
                        start = time.perf_counter()
                        context = assemble(conn, app, talk, None, tokenizer, t)
                        took = time.perf_counter() - start
                        first.setdefault((t, events), took)
                        if round_ >= 20:
                            timings[t, events].append(took)
                        windows[t, events] = (len(context.turn_seqs), context.tokens,
                                              any(b.kind == "summary" for b in context.blocks))
                        start = time.perf_counter()
                        floor_read(conn, app, talk, len(context.turn_seqs))
                        if round_ >= 20:
                            floors[t, events].append(time.perf_counter() - start)
                report: dict[str, Any] = {"machine": machine(conn), "quick": quick, "budget": budget,
                                          "wide": wide or None, "kept": kept, "projection_path": path}

            def figures(t: int, events: int) -> dict[str, Any]:
                values, floor = timings[t, events], floors[t, events]
                turns, tokens, summary = windows[t, events]
                return {"p50_ms": 1000 * statistics.median(values), "p99_ms": 1000 * percentile(values, 99),
                        "floor_p50_ms": 1000 * statistics.median(floor), "floor_p99_ms": 1000 * percentile(floor, 99),
                        "first_ms": 1000 * first[t, events], "window_turns": turns, "tokens": tokens,
                        "summary": summary}

            for key, t in (("sizes", budget), ("wide_sizes", wide)):
                report[key] = {events: figures(t, events) for events in sizes} if t else None
            ratio = {t: percentile(timings[t, large], 99) / percentile(timings[t, small], 99) for t in budgets}
            report["ratio"] = ratio[budget]
            report["wide_ratio"] = ratio.get(wide)
            met = (all(r <= TARGET for r in ratio.values())
                   and all(f["p50_ms"] <= P50_MS for f in report["sizes"].values())
                   and all(f["p99_ms"] <= WIDE_P99_MS for f in (report["wide_sizes"] or {}).values()))
            report["pass"] = None if quick else met and path["ok"]  # tiny sizes judge nothing
        finally:
            for journal in journals:
                common.forget(journal, pg_url)
    say(f"done in {time.perf_counter() - T0:.1f}s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}, Postgres {m['postgres']}")
        p = report["projection_path"]
        print(f"projection path: {p['events']} events journaled in {p['journal_s']:.1f}s, caught up in "
              f"{p['catch_up_s']:.2f}s, window of {p['window_turns']} turns / {p['tokens']} tokens: "
              f"{'ok' if p['ok'] else 'FAILED'}")
        for key, t, ratio_key in (("sizes", budget, "ratio"), ("wide_sizes", wide, "wide_ratio")):
            for events, f in (report[key] or {}).items():
                print(f"budget {t:>6}, {events:>9,} events: p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  "
                      f"first {f['first_ms']:7.1f} ms  ({f['window_turns']} turns, {f['tokens']} tokens); "
                      f"floor p50 {f['floor_p50_ms']:6.2f} ms  p99 {f['floor_p99_ms']:6.2f} ms")
            if report[key]:
                print(f"budget {t:>6}: p99 ratio {report[ratio_key]:.3f} (target <= {TARGET})")
        verdict = {True: "pass", False: "MISS", None: "not judged (--quick)"}[report["pass"]]
        print(f"targets (p50 <= {P50_MS} ms at {budget}, p99 <= {WIDE_P99_MS} ms at {wide or '-'}, "
              f"ratios <= {TARGET}): {verdict}")
    return 0 if path["ok"] and report["pass"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
