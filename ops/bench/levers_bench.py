#!/usr/bin/env python
"""Which training settings make a generation learn: the learning benchmark's rows, offline.

    python ops/bench/levers_bench.py [--generations 2] [--keys mlp] [--lam 0.8] [--lams 0.6,1.0]
        [--density 0.3] [--weight 0.5] [--no-normalize] [--rehearse 0] [--relearn] [--joint] [--rule restate-v2]
        [--json]                                                     # ~5 min a generation on 2 cores
    python ops/bench/levers_bench.py --quick --model DIR            # seconds: the tests

`learning_bench.py` goes through the real path (turns, ratings, `soul evolve`) and takes about
an hour; this measures one set of settings in minutes, to choose EvolutionConfig's defaults.
For generation g = 1..N it builds the rows a curation of group g's facts
(ops/bench/data/learning_facts.jsonl) makes: each fact told as a moment (the person's words,
the parent generation's greedy reply) and its lesson's (cue, answer) rows
(`evolution.lessons.restate` by `--rule`), plus, with `--rehearse K`, K rows of W0's own greedy answers to
ops/bench/data/rehearsal_prompts.txt (none of them a benchmark question), and with `--relearn`
the lesson rows of every earlier generation's facts again. It trains a LoRA on
generation g-1 with `evolution.train.train_adapter` and merges `W0 + λ·TIES(Δ1..Δg)` with
`evolution.ties.merge_model` (every task vector at `--weight` and `--density`; the disjoint sum
divided by Σ weight·mask, a disjoint mean, unless `--no-normalize`), then asks the merged
weights, as learning_bench does, every group taught so far and the general questions W0
answers right, and measures anchor-set perplexity. `--joint` trains one adapter on W0 with every
group's rows at once, for as many iterations as the generations would take together, and merges
it alone: what these rows and this LoRA can hold with no generation in the way of another. Nothing is asserted: the figures are
printed (docs/evolution.md holds them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from evolution.config import EvolutionConfig  # noqa: E402
from evolution.lessons import RULES  # noqa: E402
from evolution.weights.blas import reexec_with_optimized_blas  # noqa: E402

KEYS = {"mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        "all": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def chat_row(system: str, question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from common import machine  # this folder: python puts a script's own folder on sys.path
    from learning_bench import DATA, Asker, load_jsonl

    from evolution.config import EvolutionConfig
    from evolution.evaluate import anchor_texts, perplexity
    from evolution.lessons import restate
    from evolution.ties import LoraAdapter, merge_model
    from evolution.train import iterations, train_adapter
    from evolution.weights.model import embedded_model_dir
    from soul.agent.loop import DEFAULT_SELF

    facts = load_jsonl("learning_facts.jsonl")
    general = load_jsonl("general_questions.jsonl")
    prompts = [line for line in (DATA / "rehearsal_prompts.txt").read_text().splitlines() if line.strip()]
    per = 2 if args.quick else args.per_generation
    groups = {g: [f for f in facts if f["group"] == g][:per] for g in range(1, args.generations + 1)}
    if args.quick:
        general, prompts = general[:2], prompts[:args.rehearse]
    anchor = anchor_texts()[:1] if args.quick else anchor_texts()
    keys = KEYS.get(args.keys) or tuple(args.keys.split(","))
    config = EvolutionConfig(keys=keys, iters=args.iters, learning_rate=args.learning_rate, rank=args.rank,
                             weight=args.weight, normalize=not args.no_normalize,
                             **({"batch_size": 2, "max_seq_length": 128} if args.quick else {}))
    base = Path(args.model) if args.model else embedded_model_dir()
    w0 = Asker(base, DEFAULT_SELF, args.max_tokens)
    _, answers = w0.score(general)
    known = [q for q, a in zip(general, answers, strict=True) if a["knows"]]
    w0_perplexity = perplexity((w0.model, w0.tokenizer), anchor)
    rehearsal = [chat_row(DEFAULT_SELF, q, a.strip()) for q, a in zip(prompts, w0.answers(prompts), strict=True)] \
        if args.rehearse else []
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "settings": vars(args),
                              "config": config.training(), "w0": {"general_known": len(known),
                                                                  "perplexity": w0_perplexity}, "generations": []}
    _say(json.dumps(report["w0"]))
    work = Path(tempfile.mkdtemp(prefix="soul-levers-"))
    parent, parent_path, adapters = w0, base, []
    try:
        # Sequentially each generation learns its own group; --joint learns every group in one adapter
        # trained on W0 for as many steps as the generations would take together: a bound, not a schedule.
        steps = [list(groups)] if args.joint else [[g] for g in groups]
        for step, taught in enumerate(steps, start=1):
            g = taught[-1]
            told = [f for h in taught for f in groups[h]]
            replies = parent.answers([f["tell"] for f in told])
            rows = []
            for fact, reply in zip(told, replies, strict=True):
                rows.append(chat_row(DEFAULT_SELF, fact["tell"], reply.strip()))
                rows += [chat_row(DEFAULT_SELF, cue, answer) for cue, answer in restate(fact["tell"], args.rule)]
            if args.relearn:  # the journaled lessons of earlier generations, taught again
                rows += [chat_row(DEFAULT_SELF, cue, answer) for h in range(1, g) for fact in groups[h]
                         for cue, answer in restate(fact["tell"], args.rule)]
            start = (taught[0] - 1) * args.rehearse  # each generation rehearses the next prompts of the set
            rows += [rehearsal[(start + i) % len(rehearsal)] for i in range(args.rehearse * len(taught))] if rehearsal else []
            started = time.perf_counter()
            trained = dataclasses.replace(config, iters=config.iters * len(taught))
            adapters.append(LoraAdapter(train_adapter(parent_path, rows, trained, work / "adapters").path))
            entry: dict[str, Any] = {"generation": g, "groups": taught, "rows": len(rows),
                                     "iters": iterations(trained, len(rows)),
                                     "train_s": round(time.perf_counter() - started, 1), "merges": []}
            extra = [float(x) for x in args.lams.split(",") if x] if step == len(steps) else []
            for lam in [args.lam, *extra]:
                out = work / f"gen-{g}-lambda-{lam:g}"
                seal = merge_model(base, out, adapters, [config.weight] * step, [args.density] * step, lam=lam,
                                   normalize=config.normalize)
                asker = Asker(out, DEFAULT_SELF, args.max_tokens)
                merged = {"lambda": lam, "max_drift": round(max(seal.drift.values()), 4),
                          "perplexity_ratio": round(perplexity((asker.model, asker.tokenizer), anchor) / w0_perplexity, 3),
                          "general": round(asker.score(known)[0], 3) if known else None,
                          **{f"g{h}": round(asker.score(groups[h])[0], 3) for h in range(1, g + 1)}}
                entry["merges"].append(merged)
                _say(json.dumps({"generation": g, **merged}))
                if lam == args.lam:  # the next generation trains on this one, as `soul evolve` does
                    chosen = asker, out
            parent, parent_path = chosen
            report["generations"].append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="W0 (default: the embedded SmolLM2)")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--per-generation", type=int, default=8, help="facts of each group taught")
    parser.add_argument("--keys", default="mlp", help="mlp, all, or module paths joined by commas")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lam", type=float, default=0.8, help="λ of every generation's merge")
    parser.add_argument("--lams", default="", help="more λ to measure for the last generation, e.g. 0.6,1.0")
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--weight", type=float, default=EvolutionConfig().weight, help="every task vector's TIES weight")
    parser.add_argument("--no-normalize", action="store_true",
                        help="merge the disjoint sum of the weighted deltas, not their disjoint mean")
    parser.add_argument("--rehearse", type=int, default=0, help="rows of W0's own answers added to each generation")
    parser.add_argument("--relearn", action="store_true",
                        help="add every earlier generation's lesson rows to each generation's rows")
    parser.add_argument("--joint", action="store_true",
                        help="one adapter on W0 learns every group at once (iterations x generations): the bound")
    parser.add_argument("--rule", default=EvolutionConfig().lesson_rule, choices=RULES, help="the lesson rule (evolution/lessons.py)")
    parser.add_argument("--max-tokens", type=int, default=20, help="tokens of each answer")
    parser.add_argument("--quick", action="store_true", help="2 facts a group, 2 general questions: that it runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.joint and args.relearn:
        parser.error("--joint already learns every group's lessons at once: --relearn has nothing to add")
    if args.quick:
        args.iters = min(args.iters, 3)
    reexec_with_optimized_blas()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['date']} {report['machine']['cpu']} x{report['machine']['nproc']}; "
          f"W0 answers {report['w0']['general_known']} general questions, anchor perplexity {report['w0']['perplexity']:.2f}")
    print("| generation | λ | facts by group | general (× W0) | anchor perplexity (× W0) | largest drift |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for entry in report["generations"]:
        for m in entry["merges"]:
            groups = ", ".join(f"{k}: {v:.2f}" for k, v in m.items() if k[:1] == "g" and k[1:].isdigit())
            print(f"| {entry['generation']} | {m['lambda']:g} | {groups} | {m['general']} | {m['perplexity_ratio']} | "
                  f"{m['max_drift']} |")


if __name__ == "__main__":
    main()
