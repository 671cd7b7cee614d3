#!/usr/bin/env python
"""The turn loop against raw mlx-lm: generation speed, time to first token deep into a
conversation, and what the journal and projections add to a turn.

    python ops/bench/turn_bench.py [--model DIR] [--repeats R] [--turns T] [--max-tokens N] [--json]
    python ops/bench/turn_bench.py --quick --model DIR     # seconds: the tests

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers; then only its own stream and schema are used and
dropped afterwards). The model is the embedded SmolLM2-135M-Instruct (converted into the
temporary home first, ~1 minute) unless --model names an MLX directory. Greedy sampling with
the soul's repetition penalty on both sides.

1. Generation speed: R times, a turn (what `soul say` runs: the perception journaled, then
   `Soul.answer`) in a fresh conversation, and raw `mlx_lm.stream_generate` on the very prompt
   the turn's mind sees (the same tokens: checked) with a fresh KV cache, the two in alternating
   order. Both report mlx-lm's generation tokens/s (tokens after the first over the time after
   the first). Target: median ratio >= 0.9. On a shared machine single pairs scatter by
   +-30 %: use R >= 8.
2. Time to first token over one conversation of T turns (KV cache kept across turns; the
   window evicts and summarises when full). Target: median of the last 5 turns' TTFT over the
   median of the first 5 turns' <= 1.5 (turn T alone is reported too). Beside it, at those ten
   turns, raw mlx-lm's first token on the turn's own prompt with the tokens the soul's cache
   held already prefilled: the model's own ratio over the same conversation.
3. Overhead per turn: a turn's wall time less the mind's (generation and the self judge) and
   the embedder's: journaling, projections caught up, the window assembled, in ms (median).

Exit status 1 if a target is missed. --quick: 2 pairs and 10 turns of at most 8 tokens, to show
that it runs (give it a small --model); it judges no target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import mlx.core as mx  # noqa: E402
from mlx_lm.generate import stream_generate  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402
from mlx_lm.sample_utils import make_logits_processors, make_sampler  # noqa: E402

from journal.journal import Entry, Journal  # noqa: E402
from soul.agent.loop import Soul, SoulConfig  # noqa: E402
from evolution.weights.blas import blas_in_use, reexec_with_optimized_blas  # noqa: E402

SPEED_TARGET = 0.9
TTFT_TARGET = 1.5
QUESTIONS = (
    "What is a journal, in one sentence?",
    "Name one thing that makes a river different from a lake.",
    "Why do lighthouses blink?",
    "Give me a short tip for writing clear code.",
    "What colour is the sky at dusk?",
)
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class Stopwatch:
    """Adds up the time spent in chosen methods of an object (the bench's own instrument)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, owner: Any, name: str) -> None:
        method: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


def raw_generation(soul: Soul, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    """(generation tokens/s, first-token s, tokens) of raw mlx-lm on `prompt`, fresh cache."""
    model, tokenizer, config = soul.mind.model, soul.mind.tokenizer, soul.config
    start, first, last = time.perf_counter(), None, None
    for last in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=max_tokens,
                                sampler=make_sampler(config.temperature),
                                logits_processors=make_logits_processors(repetition_penalty=config.repetition_penalty),
                                prompt_cache=make_prompt_cache(model)):
        first = first or time.perf_counter() - start
    assert last is not None and first is not None
    return last.generation_tps, first, last.generation_tokens


def raw_first_token(soul: Soul, prompt: list[int], cached: int) -> float:
    """Seconds raw mlx-lm takes to its first token when a cache already holds `prompt[:cached]`
    (prefilled before the clock starts) and the rest is fed: the model's own cost of a turn's
    first token at that depth of the conversation."""
    model, tokenizer, config = soul.mind.model, soul.mind.tokenizer, soul.config
    cache = make_prompt_cache(model)
    if cached:
        model(mx.array(prompt[:cached])[None], cache=cache)
        mx.eval([c.state for c in cache])
    start = time.perf_counter()
    for _ in stream_generate(model, tokenizer, mx.array(prompt[cached:]), max_tokens=1,
                             sampler=make_sampler(config.temperature), prompt_cache=cache,
                             logits_processors=make_logits_processors(repetition_penalty=config.repetition_penalty)):
        break
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--repeats", type=int, default=8, help="soul/raw generation pairs (default 8)")
    parser.add_argument("--turns", type=int, default=50, help="turns of the TTFT conversation (default 50, >= 10)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens a reply may take (default 64)")
    parser.add_argument("--quick", action="store_true", help="2 pairs, 10 turns of 8 tokens, no target: for tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.turns, args.max_tokens = min(args.repeats, 2), 10, min(args.max_tokens, 8)
    if args.turns < 10 or args.repeats < 1:
        parser.error("--turns must be at least 10 and --repeats at least 1")

    reexec_with_optimized_blas()  # as `soul` runs: generation speed depends on the BLAS
    app = "benchturn" + uuid.uuid4().hex[:8]
    with common.real_parts() as (_, _, pg_url):
        say("opening the soul (converting SmolLM2 on first use)")
        soul = Soul.open(app, model_dir=args.model, config=SoulConfig(max_tokens=args.max_tokens, retrieval_k=0))
        try:
            mind_time, embed_time = Stopwatch(), Stopwatch()
            for name in ("generate", "probability"):
                mind_time.wrap(soul.mind, name)
            embed_time.wrap(soul.embedder, "embed")

            say(f"generation speed: {args.repeats} x (a turn's answer, raw stream_generate), alternating")
            speed = []
            for r in range(args.repeats):
                conversation = f"speed-{r}"
                seq, perception = soul.perceive(QUESTIONS[r % len(QUESTIONS)], conversation=conversation)
                _, messages = soul.window(conversation, perception.vector)  # what the answer's mind will see
                prompt = soul.mind.encode(messages)
                runs: dict[str, Any] = {}
                for side in ("soul", "raw") if r % 2 == 0 else ("raw", "soul"):
                    if side == "raw":
                        runs["raw"] = raw_generation(soul, prompt, soul.max_tokens)
                    else:
                        runs["soul"] = soul.answer(Entry(seq, conversation, "perception", 0, perception)).generation
                generated = runs["soul"]
                assert generated.prompt_tokens == len(prompt), "raw and soul must see the same prompt"
                raw_tps, _, raw_tokens = runs["raw"]
                speed.append({"soul_tps": generated.tokens_per_s, "raw_tps": raw_tps, "soul_first": r % 2 == 0,
                              "soul_tokens": generated.generated_tokens, "raw_tokens": raw_tokens,
                              "ratio": generated.tokens_per_s / raw_tps})

            say(f"time to first token over a conversation of {args.turns} turns")
            turns, asked = [], []
            generate = soul.mind.generate

            def answering(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
                made = generate(messages, **kwargs)  # the reply's, and a summary's when one is written
                asked.append((made, messages, kwargs.get("tools")))
                return made

            soul.mind.generate = answering  # type: ignore[method-assign]
            for t in range(args.turns):
                asked.clear()
                mind_time.seconds = embed_time.seconds = 0.0
                start = time.perf_counter()
                result = soul.turn(f"{QUESTIONS[t % len(QUESTIONS)]} (turn {t + 1})", conversation="long")
                wall = time.perf_counter() - start
                generation = result.generation
                turns.append({"ttft_s": generation.first_token_s, "prompt_tokens": generation.prompt_tokens,
                              "fed_tokens": generation.processed_tokens, "wall_s": wall,
                              "overhead_ms": 1000 * (wall - mind_time.seconds - embed_time.seconds),
                              "embed_ms": 1000 * embed_time.seconds})
                if t < 5 or t >= args.turns - 5:  # the ends the ratio compares: raw mlx-lm in the same place
                    (messages, tools), = [(m, offered) for made, m, offered in asked if made is generation]
                    prompt = soul.mind.encode(messages, tools)
                    assert len(prompt) == generation.prompt_tokens, "raw must see the turn's own prompt"
                    turns[-1]["raw_ttft_s"] = raw_first_token(soul, prompt, generation.reused_tokens)
                if (t + 1) % 10 == 0:
                    say(f"  turn {t + 1}: ttft {result.generation.first_token_s * 1000:.0f} ms, "
                        f"prompt {result.generation.prompt_tokens} tokens, fed {result.generation.processed_tokens}")
            summaries = sum(1 for e in soul.journal.read(types=["summary"]))
        finally:
            soul.close()
            common.forget(Journal(app), pg_url)

    ttft = [t["ttft_s"] for t in turns]
    raw_ttft = [t["raw_ttft_s"] for t in turns if "raw_ttft_s" in t]
    report: dict[str, Any] = {
        "machine": {**common.machine(), "blas": str(blas_in_use())},
        "model": soul.mind.model_id, "max_tokens": soul.max_tokens, "budget": soul.budget,
        "speed": {"runs": speed, "ratio": median([s["ratio"] for s in speed]),
                  "ratio_range": [min(s["ratio"] for s in speed), max(s["ratio"] for s in speed)],
                  "soul_tps": median([s["soul_tps"] for s in speed]), "raw_tps": median([s["raw_tps"] for s in speed])},
        "ttft": {"turns": len(turns), "first5_s": median(ttft[:5]), "last5_s": median(ttft[-5:]), "turn1_s": ttft[0],
                 "last_s": ttft[-1], "summaries": summaries,
                 "raw_first5_s": median(raw_ttft[:5]), "raw_last5_s": median(raw_ttft[-5:]),
                 "fed_tokens_last5": median([t["fed_tokens"] for t in turns[-5:]]),
                 "prompt_tokens_last5": median([t["prompt_tokens"] for t in turns[-5:]])},
        "overhead": {"median_ms": median([t["overhead_ms"] for t in turns]),
                     "p90_ms": sorted(t["overhead_ms"] for t in turns)[int(0.9 * (len(turns) - 1))],
                     "embed_median_ms": median([t["embed_ms"] for t in turns]),
                     "turn_median_s": median([t["wall_s"] for t in turns])},
    }
    report["ttft"]["ratio"] = report["ttft"]["last5_s"] / report["ttft"]["first5_s"]
    report["ttft"]["raw_ratio"] = report["ttft"]["raw_last5_s"] / report["ttft"]["raw_first5_s"]
    report["pass"] = (None if args.quick  # timings on tiny sizes mean nothing
                      else report["speed"]["ratio"] >= SPEED_TARGET and report["ttft"]["ratio"] <= TTFT_TARGET)
    say(f"done in {time.perf_counter() - T0:.1f}s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m, s, f, o = report["machine"], report["speed"], report["ttft"], report["overhead"]

        def verdict(ok: bool) -> str:
            return "not judged" if args.quick else "pass" if ok else "MISS"

        print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}, BLAS {m['blas']}")
        print(f"model {report['model']}, replies of at most {report['max_tokens']} tokens, window {report['budget']} tokens")
        print(f"generation: soul {s['soul_tps']:.1f} tok/s, raw mlx-lm {s['raw_tps']:.1f} tok/s, median ratio "
              f"{s['ratio']:.3f} of {len(s['runs'])} pairs (range {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f}; "
              f"target >= {SPEED_TARGET}): {verdict(s['ratio'] >= SPEED_TARGET)}")
        print(f"ttft: turns 1-5 {f['first5_s'] * 1000:.0f} ms, turns {f['turns'] - 4}-{f['turns']} {f['last5_s'] * 1000:.0f} ms "
              f"(turn 1 {f['turn1_s'] * 1000:.0f} ms, turn {f['turns']} {f['last_s'] * 1000:.0f} ms; last prompts "
              f"{f['prompt_tokens_last5']:.0f} tokens, {f['fed_tokens_last5']:.0f} fed; {f['summaries']} summaries): ratio "
              f"{f['ratio']:.3f} (target <= {TTFT_TARGET}): {verdict(f['ratio'] <= TTFT_TARGET)}")
        print(f"ttft, raw mlx-lm with the same prompts and cached tokens: turns 1-5 {f['raw_first5_s'] * 1000:.0f} ms, "
              f"turns {f['turns'] - 4}-{f['turns']} {f['raw_last5_s'] * 1000:.0f} ms: ratio {f['raw_ratio']:.3f} "
              f"(the model's own; soul / raw {f['first5_s'] / f['raw_first5_s']:.2f} and {f['last5_s'] / f['raw_last5_s']:.2f})")
        print(f"overhead per turn (journal, projections, window): median {o['median_ms']:.1f} ms, p90 {o['p90_ms']:.1f} ms; "
              f"embedding {o['embed_median_ms']:.1f} ms; whole turn median {o['turn_median_s']:.2f} s")
    return 1 if report["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
