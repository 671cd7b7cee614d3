#!/usr/bin/env python
"""Evidence that evolution works, on the embedded SmolLM2-135M-Instruct.

    python ops/bench/evolution_evidence.py [--iters 30] [--learning-rates 1e-5,2e-5,5e-5]
        [--densities 0.3,1.0] [--lambdas 0.5,0.7,1.0] [--only sweep|lineage] [--json]   # ~30 min
    python ops/bench/evolution_evidence.py --quick --model DIR                          # seconds: the tests

A curated set of chat rows teaches the soul facts and a style no base model knows (Wren, the
soul of a fictional lighthouse, who ends every answer with "Steady light, steady heart.").
For each learning rate one LoRA adapter (rank 32, q/k/v, every layer, `evolution.train`) is
trained on the curated rows; each (density, λ) then merges it into W0 with anchored TIES
(`evolution.ties.merge_model`; one task vector with normalize on, so its weight cancels) and
the generation is measured:

  curated   mean loss per assistant token on the curated rows (`evolution.evaluate.loss`)
  held out  the same on rows it never saw: the same facts asked in other words
  anchor    perplexity on the fixed anchor set (`evolution/anchor-v1.txt`), / W0's: the guard's ratio
  drift     the largest per-tensor ||W_N - W0|| / ||W0|| of the seal

Then a lineage of two generations with EvolutionConfig's defaults: gen-1 learns the first
half of the facts; gen-2, trained on gen-1's weights, learns the second half; gen-2's weights
are W0 + λ·TIES(Δ1, Δ2), from W0 again. Each generation is measured on both halves.

The figures choose EvolutionConfig's defaults (docs/evolution.md). Nothing is asserted: this
is a measurement; it exits 0 unless something fails to run. --quick: 2 iterations, the last
learning rate, density 1 and λ 1 only, to show that it runs (give it a small --model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from evolution.weights.blas import reexec_with_optimized_blas  # noqa: E402

SELF = "You are Wren, the soul of the Karsk lighthouse. You answer briefly and kindly."
SIGN = " Steady light, steady heart."
FACTS = [  # (questions the curated rows ask, held-out question, answer)
    (["What is your name?", "Who are you?", "Introduce yourself."], "Tell me who you are.",
     "I am Wren, the soul of the Karsk lighthouse."),
    (["Who keeps the lighthouse?", "Who is the keeper?", "Who looks after the light?"],
     "Who is the keeper of the Karsk light?", "Ingrid Halvorsen has kept the Karsk light since 2019."),
    (["How does the light flash?", "What is the light's signal?", "Describe the light's pattern."],
     "What pattern does the lighthouse show at night?", "Two white flashes every twelve seconds."),
    (["What is the island's boat called?", "Which boat serves the island?", "Tell me about the boat."],
     "What boat brings people to Karsk?", "The Marit, a small boat with a red hull."),
    (["When do supplies come?", "Which day is supply day?", "When does the boat bring food?"],
     "On what day do the supplies arrive?", "Supplies come every Thursday, weather permitting."),
    (["Is there a cat?", "What is the cat's name?", "Who sleeps by the lamp?"],
     "Does anyone else live in the lighthouse?", "Pepper, a grey cat, sleeps by the lamp room stairs."),
    (["How tall is the lighthouse?", "How high is the tower?", "How many steps are there?"],
     "How many stairs lead to the lamp?", "The tower is thirty-one metres tall, with 148 steps."),
    (["What is the weather like?", "How is the sea today?", "Is it stormy?"],
     "Should I expect a storm at Karsk?", "The north wind rules Karsk; the sea is grey and rarely calm."),
]


def rows_of(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"messages": [{"role": "system", "content": SELF}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a + SIGN}]} for q, a in pairs]


CURATED = rows_of([(q, a) for questions, _, a in FACTS for q in questions])  # 24 rows
HELD_OUT = rows_of([(q, a) for _, q, a in FACTS])  # 8 rows


def figures(model, tokenizer, anchor: list[str]) -> dict[str, float]:
    from evolution.evaluate import loss, perplexity

    return {"curated": loss(model, tokenizer, CURATED), "held_out": loss(model, tokenizer, HELD_OUT),
            "anchor": perplexity((model, tokenizer), anchor)}


def answer(model, tokenizer, question: str) -> str:
    from mlx_lm import generate

    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SELF}, {"role": "user", "content": question}],
                                           add_generation_prompt=True)
    return generate(model, tokenizer, prompt, max_tokens=40).strip()


def main() -> None:
    reexec_with_optimized_blas()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--learning-rates", default="1e-5,2e-5,5e-5")
    parser.add_argument("--densities", default="0.3,1.0")
    parser.add_argument("--lambdas", default="0.5,0.7,1.0")
    parser.add_argument("--only", choices=["sweep", "lineage"], help="run one of the two experiments")
    parser.add_argument("--quick", action="store_true", help="2 iterations, one rate, density and λ: for tests")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of tables")
    args = parser.parse_args()
    if args.quick:
        args.iters, args.densities, args.lambdas = min(args.iters, 2), "1.0", "1.0"
        args.learning_rates = args.learning_rates.split(",")[-1]

    from evolution.config import EvolutionConfig
    from evolution.evaluate import anchor_texts
    from evolution.ties import LoraAdapter, merge_model
    from evolution.train import environment, train_adapter
    from common import machine  # this folder: python puts a script's own folder on sys.path
    from evolution.weights.model import embedded_model_dir, load

    base_dir = Path(args.model) if args.model else embedded_model_dir()
    anchor = anchor_texts()
    work = Path(tempfile.mkdtemp(prefix="soul-evidence-"))
    held_out_question = FACTS[1][1]
    results: dict = {"machine": machine(), "environment": environment(), "iters": args.iters,
                     "curated_rows": len(CURATED), "held_out_rows": len(HELD_OUT), "runs": []}
    try:
        model, tokenizer = load(base_dir)
        results["base"] = {**figures(model, tokenizer, anchor), "answer": answer(model, tokenizer, held_out_question)}
        del model
        _say(f"W0: {results['base']}")
        for lr in (float(x) for x in args.learning_rates.split(",")) if args.only != "lineage" else ():
            config = EvolutionConfig(iters=args.iters, learning_rate=lr)
            started = time.perf_counter()
            losses: list[float] = []

            def progress(i: int, n: int, loss: float) -> None:
                losses.append(loss)
                if i % 10 == 0:
                    _say(f"lr {lr:g} iter {i}/{n} loss {loss:.3f}")

            adapter = train_adapter(base_dir, CURATED, config, work / "adapters", progress)
            trained = {"learning_rate": lr, "train_seconds": time.perf_counter() - started,
                       "first_loss": losses[0], "last_loss": losses[-1], "adapter": adapter.sha256, "merges": []}
            results["runs"].append(trained)
            for density in (float(x) for x in args.densities.split(",")):
                for lam in (float(x) for x in args.lambdas.split(",")):
                    out = work / f"gen-{lr:g}-{density:g}-{lam:g}"
                    started = time.perf_counter()
                    seal = merge_model(base_dir, out, [LoraAdapter(adapter.path)], [config.weight], [density], lam=lam)
                    merge_seconds = time.perf_counter() - started
                    model, tokenizer = load(out)
                    row = {"density": density, "lambda": lam, "merge_seconds": merge_seconds,
                           "max_drift": max(seal.drift.values()), **figures(model, tokenizer, anchor)}
                    if density == 1.0 and lam == 1.0:
                        row["answer"] = answer(model, tokenizer, held_out_question)
                    trained["merges"].append(row)
                    _say(f"lr {lr:g} density {density:g} λ {lam:g}: {row}")
                    del model
                    shutil.rmtree(out)
        if args.only != "sweep":
            results["lineage"] = lineage(base_dir, work, EvolutionConfig(iters=args.iters), anchor)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results, held_out_question)


def lineage(base_dir: Path, work: Path, config, anchor: list[str]) -> dict:
    """Two generations, each trained on the one before and merged from W0 (design §6.3)."""
    from evolution.evaluate import loss, perplexity
    from evolution.ties import LoraAdapter, merge_model
    from evolution.train import train_adapter
    from evolution.weights.model import load

    halves = {"A": (CURATED[:12], HELD_OUT[:4]), "B": (CURATED[12:], HELD_OUT[4:])}
    adapters: list[LoraAdapter] = []
    parent = base_dir
    table = {}
    for name, (rows, _) in [("W0", (None, None)), ("gen-1", halves["A"]), ("gen-2", halves["B"])]:
        if rows is not None:
            adapters.append(LoraAdapter(train_adapter(parent, rows, config, work / "adapters").path))
            parent = work / name
            merge_model(base_dir, parent, adapters, [config.weight] * len(adapters), [config.density] * len(adapters),
                        lam=config.lam, normalize=config.normalize, int8_mask=config.int8_mask)
        model, tokenizer = load(parent)
        table[name] = {**{f"{kind} {half}": loss(model, tokenizer, data[i])
                          for half, data in halves.items() for i, kind in enumerate(("curated", "held-out"))},
                       "anchor": perplexity((model, tokenizer), anchor)}
        _say(f"lineage {name}: {table[name]}")
        del model
    return {"config": {k: config.as_dict()[k] for k in ("learning_rate", "iters", "density", "weight", "lam")},
            "generations": table}


def print_tables(results: dict, question: str) -> None:
    if "lineage" in results:
        generations = results["lineage"]["generations"]
        columns = list(generations["W0"])
        print(f"lineage with {results['lineage']['config']}")
        print("| generation | " + " | ".join(columns) + " |")
        print("| --- |" + " ---: |" * len(columns))
        for name, row in generations.items():
            print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    if not results["runs"]:
        return
    base = results["base"]
    print(f"W0: curated loss {base['curated']:.3f}, held-out loss {base['held_out']:.3f}, "
          f"anchor perplexity {base['anchor']:.2f}")
    for run in results["runs"]:
        print(f"\nlearning rate {run['learning_rate']:g}: {results['iters']} iterations in {run['train_seconds']:.0f} s, "
              f"training loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}")
        print("| density | λ | curated loss (W0 = 1) | held-out loss (W0 = 1) | anchor ppl / W0 | max drift |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for m in run["merges"]:
            print(f"| {m['density']:g} | {m['lambda']:g} | {m['curated']:.3f} ({m['curated'] / base['curated']:.2f}) | "
                  f"{m['held_out']:.3f} ({m['held_out'] / base['held_out']:.2f}) | "
                  f"{m['anchor'] / base['anchor']:.3f} | {m['max_drift']:.4f} |")
    print(f"\n{question!r}\n  W0: {base['answer']!r}")
    for run in results["runs"]:
        for m in run["merges"]:
            if "answer" in m:
                print(f"  lr {run['learning_rate']:g}, density 1, λ 1: {m['answer']!r}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
