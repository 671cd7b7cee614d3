#!/usr/bin/env python
"""Replay from cached adapters: gen-N against gen-1 wall time, and both against a raw merge.

    python ops/bench/replay_bench.py [--model DIR] [--generations 10] [--iters 2] [--repeats 3] [--json]
    python ops/bench/replay_bench.py --quick --model DIR     # 2 generations, 1 iteration, 1 repeat: the tests

Evolves `--generations` generations of a real soul (embedded NATS, the embedded SmolLM2 as W0
unless `--model`), each from two freshly rated thoughts with a short LoRA run (rank 8, q/k/v,
`--iters` iterations), then times, interleaved `--repeats` times, each the median:

  replay gen-1   `evolution.replay.replay(..., "gen-1")`: curate 1 window again, find 1 cached
                 adapter, merge W0 + 1 adapter, hash, compare with the seal
  replay gen-N   the same for generation N: N windows, N cached adapters, one merge of N
  raw merge 1/N  `evolution.ties.merge_model` of W0 and the same 1 / N adapters, nothing else:
                 the work a replay cannot avoid

Target: replay gen-N / replay gen-1 <= 2 (one merge, not N). A merge of N adapters costs more
than a merge of one (N deltas rebuilt and trimmed per changed tensor), so the raw merge ratio
is printed too: it is the floor of the replay ratio. Exit status 1 if the target is missed or
a replay does not MATCH its seal; --quick judges no target (the tiny model's merges take
milliseconds), only that every generation is promoted and every replay MATCHes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

TARGET = 2.0
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def journal_moments(journal, count: int, generation: int) -> None:
    """`count` perception → thought exchanges, each thought rated 0.95 by the user."""
    import numpy as np

    from journal.event import NO_EMBEDDER, BifocalEvent, Embedder

    embedder, talk = Embedder("synthetic@1", 4), f"talk:{generation}"
    rng = np.random.default_rng(generation)
    for i in range(count):
        _, ask = journal.add(BifocalEvent("perception", f"what did you learn in week {generation}, part {i}?",
                                          rng.standard_normal(4), embedder, talk, data={"source": "user"}))
        _, thought = journal.add(BifocalEvent(
            "thought", f"In week {generation} I learnt that rivers {i} carry the hills to the sea, grain by grain.",
            rng.standard_normal(4), embedder, talk, causation_id=ask.id))
        journal.add(BifocalEvent("resonance", "user rates 0.95", [], NO_EMBEDDER, f"judge:{thought.id}",
                                 data={"event": str(thought.id), "score": 0.95, "judge": "user"}))


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="W0: an MLX model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--generations", type=int, help="generations evolved (default 10; --quick: 2)")
    parser.add_argument("--iters", type=int, help="LoRA iterations per generation (default 2; --quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed rounds; the median is reported (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, the ratio not judged: that it runs")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    args.generations = args.generations or (2 if args.quick else 10)
    args.iters = args.iters or (1 if args.quick else 2)
    args.repeats = args.repeats or (1 if args.quick else 3)

    from evolution.weights.blas import reexec_with_optimized_blas

    reexec_with_optimized_blas()
    from common import machine, real_parts

    from evolution.config import EvolutionConfig
    from evolution.evolve import adapters_root, base_model, evolve
    from evolution.lineage import chain, lineage
    from evolution.replay import replay
    from evolution.ties import LoraAdapter, merge_model
    from evolution.train import find_cached
    from journal.journal import Journal

    config = EvolutionConfig(min_events=1, rank=8, iters=args.iters, batch_size=1, max_seq_length=256,
                             max_drift=10.0, max_perplexity_ratio=100.0)
    with real_parts() as (home, _, _), Journal(f"benchreplay{uuid.uuid4().hex[:8]}") as journal:
        base = base_model(args.model, home)
        size = sum(p.stat().st_size for p in base.path.glob("*.safetensors"))
        say(f"W0 {base.path} ({size / 1e6:.0f} MB); evolving {args.generations} generations")
        evolve_seconds = []
        for generation in range(1, args.generations + 1):
            journal_moments(journal, 2, generation)
            seconds, outcome = timed(lambda: evolve(journal, home, base, config))
            if outcome.status != "promoted":
                sys.exit(f"gen-{generation} was not promoted: {outcome.status} {outcome.why or ''}")
            evolve_seconds.append(seconds)
            say(f"gen-{generation} promoted in {seconds:.1f} s")
        promoted = chain(lineage(journal))
        adapters = [find_cached(adapters_root(home), g.adapter["cache_key"]).path for g in promoted]
        last = f"gen-{args.generations}"
        scratch = Path(tempfile.mkdtemp(prefix="replay-bench-"))

        def raw_merge(count: int) -> None:
            out = scratch / uuid.uuid4().hex
            merge_model(base.path, out, [LoraAdapter(a) for a in adapters[:count]], [config.weight] * count,
                        [config.density] * count, lam=config.lam, normalize=config.normalize)
            shutil.rmtree(out)

        def replayed(name: str) -> None:
            report = replay(journal, home, name, base)
            if not report.match or not all(a["cached"] for a in report.adapters):
                sys.exit(f"replay of {name} did not MATCH from cached adapters: {report.as_dict()}")

        times: dict[str, list[float]] = {"replay gen-1": [], f"replay {last}": [], "raw merge 1": [],
                                         f"raw merge {args.generations}": []}
        for repeat in range(args.repeats):
            times["raw merge 1"].append(timed(lambda: raw_merge(1))[0])
            times["replay gen-1"].append(timed(lambda: replayed("gen-1"))[0])
            times[f"raw merge {args.generations}"].append(timed(lambda: raw_merge(args.generations))[0])
            times[f"replay {last}"].append(timed(lambda: replayed(last))[0])
            say(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        shutil.rmtree(scratch)

    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median[f"replay {last}"] / median["replay gen-1"]
    result = {
        "machine": machine(), "model": str(base.path), "model_mb": round(size / 1e6), "generations": args.generations,
        "iters": args.iters, "repeats": args.repeats, "evolve_seconds_median": statistics.median(evolve_seconds),
        "seconds": median, "ratio_last_over_first": ratio,
        "raw_merge_ratio": median[f"raw merge {args.generations}"] / median["raw merge 1"],
        "replay_over_raw_merge": {"gen-1": median["replay gen-1"] / median["raw merge 1"],
                                  last: median[f"replay {last}"] / median[f"raw merge {args.generations}"]},
        "target": TARGET, "quick": args.quick, "ok": None if args.quick else ratio <= TARGET,  # tiny sizes: unjudged
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"W0 {result['model_mb']} MB, {args.generations} generations, median of {args.repeats}")
        for name, seconds in median.items():
            print(f"  {name:<16} {seconds:8.2f} s")
        print(f"  replay {last} / replay gen-1: {ratio:.2f} (target <= {TARGET:g})")
        print(f"  raw merge {args.generations} / raw merge 1: {result['raw_merge_ratio']:.2f} (the merge alone)")
        for name, value in result["replay_over_raw_merge"].items():
            print(f"  replay {name} / raw merge: {value:.2f}")
    sys.exit(1 if result["ok"] is False else 0)


if __name__ == "__main__":
    main()
