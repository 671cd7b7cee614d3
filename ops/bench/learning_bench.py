#!/usr/bin/env python
"""What a generation learns: made-up facts told to the soul, asked of its weights alone.

    python ops/bench/learning_bench.py [--generations 5] [--per-generation 8] [--json]   # ~1 h on 2 cores
    python ops/bench/learning_bench.py --quick --model DIR                              # seconds: the tests

Through the real path, on a fresh soul (embedded NATS and Postgres in a temporary SOUL_HOME,
the embedded SmolLM2 unless `--model`):

1. For generation g = 1..N, the user tells the soul the facts of group g
   (ops/bench/data/learning_facts.jsonl: names, places, times, preferences no model can guess)
   across two conversations, one turn each (`Soul.turn`: the turn loop, with memory; replies cut
   at `--reply-tokens`), and rates each reply 0.95 as a person who wants it kept would
   (`Soul.rate`). Then `soul evolve --json`
   (a subprocess, as a user runs it) makes generation g.
2. After each generation its weights are asked, with no memory at all (the pinned
   self-definition and the question: what `soul say --no-memory` shows the mind), every
   held-out question of every group taught so far: questions phrased unlike anything journaled.
   An answer counts when it contains the fact's key word. W0 is asked everything first.
3. General ability: ops/bench/data/general_questions.jsonl, simple questions, asked of W0 and
   every generation (the score counts only those W0 answers right), and the anchor-set
   perplexity each generation's seal records.
4. Forgetting: the perception and reply of one fact of the last group are forgotten
   (`soul forget`), `soul evolve --rebuild` derives the lineage again, and that fact is asked
   again (with the others of its group, which must stay).

Greedy decoding throughout, so the same journal and weights give the same answers. Nothing is
asserted against the targets (taught >= 0.8, gen-1's facts >= 0.7 at gen-5, general >= 0.95 x
W0, anchor perplexity <= 1.1 x W0): they are printed next to what was reached; the exit status
is 1 only if something fails to run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from evolution.weights.blas import reexec_with_optimized_blas  # noqa: E402

DATA = Path(__file__).parent / "data"
RATING = 0.95
TARGETS = {"taught": 0.8, "retained": 0.7, "general": 0.95, "perplexity": 1.1}


def load_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def knows(answer: str, keys: list[str]) -> bool:
    low = answer.lower()
    return any(key in low for key in keys)


class Asker:
    """A generation's weights asked questions with nothing but the pinned self in the window,
    greedily, all questions of a call in one batch (mlx-lm's batch_generate)."""

    def __init__(self, model_dir: Path, self_definition: str, max_tokens: int) -> None:
        from evolution.weights.model import load

        self.model, self.tokenizer = load(model_dir)
        self.self_definition, self.max_tokens = self_definition, max_tokens

    def answers(self, questions: list[str]) -> list[str]:
        from mlx_lm.generate import batch_generate

        prompts = [self.tokenizer.apply_chat_template(
            [{"role": "system", "content": self.self_definition}, {"role": "user", "content": q}],
            add_generation_prompt=True) for q in questions]
        return list(batch_generate(self.model, self.tokenizer, prompts, max_tokens=self.max_tokens).texts)

    def score(self, items: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
        """The share of `items`' questions answered with their key word, and each answer."""
        asked = [(item, q) for item in items for q in (item["ask"] if isinstance(item["ask"], list) else [item["ask"]])]
        said = self.answers([q for _, q in asked]) if asked else []
        answers = [{"id": item.get("id"), "ask": q, "answer": a, "knows": knows(a, item["keys"])}
                   for (item, q), a in zip(asked, said, strict=True)]
        return (sum(a["knows"] for a in answers) / len(answers) if answers else 0.0), answers


def soul(home: Path, *words: str) -> tuple[Any, float]:
    """`soul WORDS... --json` as a user runs it: the parsed output (one JSON value per line) and its wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "soul", *words], capture_output=True, text=True,
                          env={**os.environ, "SOUL_HOME": str(home)}, cwd=ROOT)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"soul {' '.join(words)} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    values = [json.loads(line) for line in done.stdout.splitlines() if line.strip().startswith(("{", "["))]
    return (values[0] if len(values) == 1 else values), took


def run(args: argparse.Namespace) -> dict[str, Any]:
    from evolution.evolve import base_model
    from evolution.lineage import active
    from common import machine, real_parts  # this folder: python puts a script's own folder on sys.path
    from soul.agent.loop import DEFAULT_SELF, Soul, SoulConfig

    facts = load_jsonl("learning_facts.jsonl")
    general_set = load_jsonl("general_questions.jsonl")
    groups = sorted({f["group"] for f in facts})[: args.generations]
    facts = [f for f in facts if f["group"] in groups]
    by_group = {g: [f for f in facts if f["group"] == g][: args.per_generation] for g in groups}
    if args.quick:
        general_set = general_set[:2]
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "generations": [],
                              "targets": TARGETS, "rating": RATING}
    with real_parts() as (home, _, _):
        os.environ["SOUL_APP"] = app = "learning"
        if args.model:
            os.environ["SOUL_MODEL"] = str(Path(args.model).resolve())
        config_words = ["--config", str(Path(args.config).resolve())] if args.config else []
        base = base_model(args.model, home)
        w0 = Asker(base.path, DEFAULT_SELF, args.max_tokens)
        general_w0, general_answers = w0.score(general_set)
        known_general = [q for q, a in zip(general_set, general_answers, strict=True) if a["knows"]]
        rows = [{"generation": "W0", "general": 1.0 if known_general else 0.0,
                 **{f"g{g}": w0.score(by_group[g])[0] for g in groups}}]
        report["general_w0_raw"] = general_w0
        report["general_known_by_w0"] = len(known_general)
        print(json.dumps({**rows[0], "general_w0_raw": general_w0, "general_known_by_w0": len(known_general)}),
              file=sys.stderr, flush=True)
        told: dict[int, list[dict[str, Any]]] = {}
        for g in groups:
            started = time.perf_counter()
            promoted = active(home, app)
            with Soul.open(app, model_dir=None if promoted else base.path, generation=None if promoted else "gen-0",
                           config=SoulConfig(max_tokens=args.reply_tokens)) as being:
                for i, fact in enumerate(by_group[g]):
                    turn = being.turn(fact["tell"], conversation=f"facts-{g}-{i % 2}")
                    being.rate(RATING, event=str(turn.thought_seq), conversation=turn.conversation)
                    told.setdefault(g, []).append({"id": fact["id"], "thought_seq": turn.thought_seq,
                                                   "perception_seq": turn.perception_seq, "reply": turn.reply})
            telling = time.perf_counter() - started
            outcome, took = soul(home, "evolve", *config_words, "--json")
            entry: dict[str, Any] = {"generation": g, "status": outcome["status"], "evolve_s": round(took, 1),
                                     "telling_s": round(telling, 1), "why": outcome.get("why"),
                                     "figures": outcome.get("figures"), "stages_s": outcome.get("seconds"),
                                     "training": outcome.get("training")}
            name_path = active(home, app)
            asker = Asker(name_path[1], DEFAULT_SELF, args.max_tokens) if name_path else w0
            row = {"generation": f"gen-{g}", "status": outcome["status"]}
            final = g == groups[-1]
            for h in groups:  # what it was just taught, gen-1's facts (retention), and at the end everything
                if h == g or h == groups[0] or (h < g and (final or args.every_group)):
                    row[f"g{h}"], answers = asker.score(by_group[h])
                    entry.setdefault("answers", {})[f"g{h}"] = answers
            if known_general and (g == groups[0] or final or args.every_group):
                row["general"] = asker.score(known_general)[0]
            perplexity = (outcome.get("figures") or {}).get("perplexity")
            row["perplexity_ratio"] = perplexity["after"] / perplexity["base"] if perplexity else None
            rows.append(row)
            report["generations"].append(entry)
            print(json.dumps(row), file=sys.stderr, flush=True)
        report["table"] = rows
        if args.forget and told:
            last = groups[-1]
            gone = told[last][0]
            for seq in (gone["thought_seq"], gone["perception_seq"]):
                soul(home, "forget", str(seq))
            changes, took = soul(home, "evolve", "--rebuild", *config_words, "--json")
            name_path = active(home, app)
            asker = Asker(name_path[1], DEFAULT_SELF, args.max_tokens) if name_path else w0
            forgotten = next(f for f in by_group[last] if f["id"] == gone["id"])
            kept = [f for f in by_group[last] if f["id"] != gone["id"]]
            before = next(e for e in report["generations"] if e["generation"] == last)["answers"][f"g{last}"]
            report["forget"] = {
                "fact": gone["id"], "rebuild_s": round(took, 1), "changes": changes,
                "forgotten_before": sum(a["knows"] for a in before if a["id"] == gone["id"]) / len(forgotten["ask"]),
                "forgotten_after": asker.score([forgotten])[0],
                "rest_of_group_before": (sum(a["knows"] for a in before if a["id"] != gone["id"])
                                         / max(1, sum(1 for a in before if a["id"] != gone["id"]))),
                "rest_of_group_after": asker.score(kept)[0] if kept else None,
            }
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    table = report["table"]
    last = table[-1]
    groups = [k for k in table[0] if k.startswith("g") and k[1:].isdigit()]
    taught = [table[i + 1][f"g{i + 1}"] for i in range(len(table) - 1)]  # each group right after its generation
    return {
        "taught_mean": sum(taught) / len(taught) if taught else None,
        "taught_by_last": sum(last.get(g, 0.0) for g in groups) / len(groups),
        "w0_facts": sum(table[0][g] for g in groups) / len(groups),
        "retained_g1_at_last": last.get("g1"),
        "general_last": last.get("general"),  # the share of what W0 answered right
        "perplexity_ratio_last": last.get("perplexity_ratio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--per-generation", type=int, default=8, help="facts told before each generation")
    parser.add_argument("--config", metavar="FILE", help="an evolution config for `soul evolve` (default: built-in)")
    parser.add_argument("--model", metavar="DIR", help="W0 (default: the embedded SmolLM2)")
    parser.add_argument("--max-tokens", type=int, default=20, help="tokens of each answer")
    parser.add_argument("--reply-tokens", type=int, default=48,
                        help="tokens of the soul's reply to each fact told (what is learnt comes from the person's "
                             "words; the reply is only its moment's own row)")
    parser.add_argument("--every-group", action="store_true",
                        help="ask every group taught so far after every generation (default: the new one, "
                             "gen-1's and, after the last, all; general ability after the first and the last)")
    parser.add_argument("--no-forget", dest="forget", action="store_false", help="skip the forget + rebuild step")
    parser.add_argument("--quick", action="store_true",
                        help="2 generations of 2 facts and 2 general questions: that it runs (use a tiny --model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.generations, args.per_generation = min(args.generations, 2), min(args.per_generation, 2)
    reexec_with_optimized_blas()
    report = run(args)
    report["summary"] = summary(report)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['date']} {report['machine']['cpu']} x{report['machine']['nproc']}")
    columns = [k for k in report["table"][0] if k.startswith("g") and k[1:].isdigit()]
    print("| generation | " + " | ".join(f"group {c[1:]}" for c in columns) + " | general (x W0) | anchor ppl (x W0) |")
    print("| --- |" + " ---: |" * (len(columns) + 2))
    for row in report["table"]:
        cells = [f"{row[c]:.2f}" if c in row else "" for c in columns]
        ppl = row.get("perplexity_ratio")
        general = f"{row['general']:.2f}" if "general" in row else ""
        print(f"| {row['generation']} | " + " | ".join(cells) + f" | {general} | "
              + (f"{ppl:.3f}" if ppl else "1") + " |")
    for entry in report["generations"]:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in (entry.get("stages_s") or {}).items())
        print(f"gen-{entry['generation']}: {entry['status']}, soul evolve {entry['evolve_s']} s"
              + (f" ({stages})" if stages else "") + (f" ({entry['why']})" if entry.get("why") else ""))
    if "forget" in report:
        print("forget:", json.dumps(report["forget"]))
    print("summary:", json.dumps(report["summary"]), "targets:", json.dumps(TARGETS))


if __name__ == "__main__":
    main()
