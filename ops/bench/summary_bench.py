#!/usr/bin/env python
"""Do summaries keep what was said? A made-up fact stated once, evicted, and looked for in the
summaries written for it by SmolLM2 (or --model) through the soul's own window.

    python ops/bench/summary_bench.py [--model DIR] [--facts N] [--json]
    python ops/bench/summary_bench.py --quick --model DIR     # seconds: the tests

For each fact (a name, a code, a date: FACTS), a conversation of its own: some chatter, the
fact in one user turn, then chatter until two summaries cover the fact's turn. The user's turns
are perceived and the window assembled as in a turn (`Soul.window`, which evicts and
summarises with the mind: `soul.agent.context.summarise`); the assistant's replies are scripted
(CHATTER), so only the summaries are generated and every fact meets the same conversation but
for its own words. Retrievals are off: the fact can reach the window through its summary only.

Per fact, whether its key word is in:
- placeholder: the first sentences of the evicted turns (after the previous summary, cut to
  2,000 characters), what summaries were before the mind wrote them;
- mind: the mind's own words in the first summary that covers the fact;
- summary: that summary as journaled (the mind's words, then the user's sentences holding a
  name or a number the mind left out);
- later: the next summary, which subsumes it, and the window assembled after it.

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers). Greedy; the soul's default window (2,048 tokens,
cut to half on eviction, a quarter for the summary, at most 96 tokens of the mind's words).
--quick: the first 2 facts (one in a first sentence, one in a second), to show that it runs
(give it a small --model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

from evolution.weights.blas import blas_in_use, reexec_with_optimized_blas  # noqa: E402
from journal.event import BifocalEvent  # noqa: E402
from journal.journal import Journal  # noqa: E402
from projections.turns import prose_between  # noqa: E402
from soul.agent.context import SUMMARY_ROWS, first_sentence, mentions  # noqa: E402
from soul.agent.loop import Soul, SoulConfig  # noqa: E402

PLACEHOLDER_CHARS = 2000  # the placeholder's cut
# (what the user says once, the word that must survive): every other fact in a second sentence,
# which the placeholder (first sentences) cannot keep.
FACTS = (
    ("By the way, my sister Ingrid moved to Tromsø last week.", "Ingrid"),
    ("Before I forget. The server room door code is 4817.", "4817"),
    ("Our wedding anniversary is on 14 March, so keep that day free.", "March"),
    ("Good news today! The project is called Bluefinch and it ships in October.", "Bluefinch"),
    ("We decided to use Postgres instead of MongoDB for the ledger.", "Postgres"),
    ("Let me tell you about my pet. He is a cat called Ziggy and he weighs six kilos.", "Ziggy"),
    ("The plumber, Mr Okonkwo, comes on Thursday at nine.", "Okonkwo"),
    ("I just got back home. I parked the car on level three, in bay 112.", "112"),
)
CHATTER = (
    ("What should I cook tonight?", "A simple pasta with tomatoes, garlic and basil is quick and tasty. "
                                    "You could add some chili if you like heat."),
    ("How long does it take to boil water?", "About five to ten minutes, depending on the pot, the amount of "
                                             "water and the stove."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light is scattered more than red light "
                             "because its wavelength is shorter."),
    ("Can you suggest a good book?", "You might enjoy a long adventure story, or a short collection of essays "
                                     "if you have little time."),
    ("What is a good way to start running?", "Start slowly with short runs, walk when you need to, and go a "
                                             "little further each week."),
    ("How do I keep houseplants alive?", "Give them enough light, water them only when the soil is dry, and do "
                                         "not let them stand in water."),
    ("What is the difference between a lake and a river?", "A river flows in one direction towards the sea or "
                                                            "another river, while a lake is still water."),
    ("Any tips for sleeping better?", "Keep a regular bedtime, avoid screens an hour before sleep, and keep the "
                                      "bedroom cool and dark."),
    ("How do I make tea properly?", "Heat fresh water, pour it over the leaves, and let them steep for a few "
                                    "minutes before you take them out."),
    ("What should I pack for a weekend trip?", "Clothes for two days, a toothbrush, a charger, and a light jacket "
                                               "in case the weather changes."),
)
LEAD = (0, 4, 8)  # chatter exchanges before the fact, by turns: early, middle, late in the first cut
MAX_EXCHANGES = 200
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def exchange(soul: Soul, conversation: str, question: str, answer: str) -> int:
    """A user turn perceived and its window assembled (evicting and summarising as a turn
    does), then the scripted reply journaled as the thought; the perception's seq."""
    seq, perception = soul.perceive(question, conversation=conversation)
    soul.window(conversation, perception.vector)
    soul.journal.add(BifocalEvent("thought", answer, soul.embedder.embed([answer])[0], soul.embedder.id,
                                  conversation, causation_id=perception.id))
    return seq


def summaries_of(soul: Soul, conversation: str) -> list[Any]:
    return [e for e in soul.journal.read(types=["summary"]) if e.event.data["conversation"] == conversation]


def placeholder(soul: Soul, conversation: str, summaries: list[Any]) -> str:
    """What the placeholder would have written for the last of `summaries`: the first sentences
    of each summary's new turns, after the one before, cut to PLACEHOLDER_CHARS."""
    text, after = "", 0
    for summary in summaries:
        new = prose_between(soul.conn, soul.app, conversation, max(after + 1, summary.data["first_seq"]),
                            summary.data["last_seq"], SUMMARY_ROWS)
        text = " ".join(s for s in [text, *(first_sentence(prose) for _, prose in new)] if s)[:PLACEHOLDER_CHARS]
        after = summary.data["last_seq"]
    return text


def one_fact(soul: Soul, index: int, fact: str, word: str) -> dict[str, Any]:
    conversation = f"fact-{index}"
    lead = LEAD[index % len(LEAD)]
    for i in range(lead):
        exchange(soul, conversation, *CHATTER[i % len(CHATTER)])
    fact_seq = exchange(soul, conversation, fact, "Thank you, I will keep that in mind.")
    covering: dict[int, float] = {}  # seq of each summary that covers the fact: seconds of the exchange that wrote it
    for i in range(lead, lead + MAX_EXCHANGES):
        started = time.perf_counter()
        exchange(soul, conversation, *CHATTER[i % len(CHATTER)])
        newest = (summaries_of(soul, conversation) or [None])[-1]
        if newest is not None and newest.seq not in covering and newest.event.data["last_seq"] >= fact_seq:
            covering[newest.seq] = time.perf_counter() - started
            if len(covering) == 2:
                break
    else:
        raise RuntimeError(f"fact {index}: fewer than two summaries cover it after {MAX_EXCHANGES} exchanges")
    everything = summaries_of(soul, conversation)
    first, later = (e.event for e in everything if e.seq in covering)
    seconds = covering[min(covering)]
    before = [e.event for e in everything if e.seq <= min(covering)]
    lines = first.prose.split("\n")
    mind_words = "\n".join(lines[:len(lines) - first.data["kept"]])
    context, _ = soul.window(conversation, None)
    return {"fact": fact, "word": word, "lead_exchanges": lead, "fact_seq": fact_seq,
            "range": [first.data["first_seq"], first.data["last_seq"]], "by": first.data["by"],
            "generated_tokens": first.data.get("generated_tokens"), "finish": first.data.get("finish"),
            "summary_exchange_s": round(seconds, 2), "kept_sentences": first.data["kept"],
            "placeholder": mentions(placeholder(soul, conversation, before), word), "mind": mentions(mind_words, word),
            "summary": mentions(first.prose, word), "later": mentions(later.prose, word),
            "window": mentions(context.text, word) and fact_seq not in context.turn_seqs,
            "mind_words": mind_words, "summary_tokens": len(soul.mind.tokenizer.encode(first.prose))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--facts", type=int, default=len(FACTS), help=f"facts to try, 1-{len(FACTS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="the first 2 facts: for tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.quick:
        args.facts = min(args.facts, 2)
    if not 1 <= args.facts <= len(FACTS):
        parser.error(f"--facts must be between 1 and {len(FACTS)}")

    reexec_with_optimized_blas()  # as `soul` runs
    app = "benchsummary" + uuid.uuid4().hex[:8]
    with common.real_parts() as (_, _, pg_url):
        say("opening the soul (converting SmolLM2 on first use)")
        soul = Soul.open(app, model_dir=args.model, config=SoulConfig(retrieval_k=0, self_judge=False))
        try:
            soul.pin_default_self()
            results = []
            for index, (fact, word) in enumerate(FACTS[:args.facts]):
                results.append(one_fact(soul, index, fact, word))
                r = results[-1]
                say(f"fact {index} ({word}): placeholder {r['placeholder']}, mind {r['mind']}, summary {r['summary']}, "
                    f"later {r['later']}, window {r['window']}; summary in {r['summary_exchange_s']:.0f} s")
        finally:
            soul.close()
            common.forget(Journal(app), pg_url)

    kept = {k: sum(r[k] for r in results) for k in ("placeholder", "mind", "summary", "later", "window")}
    report = {"machine": {**common.machine(), "blas": str(blas_in_use())}, "model": soul.mind.model_id,
              "budget": soul.budget, "summary_tokens": soul.config.summary_tokens, "facts": len(results), "kept": kept,
              "summary_exchange_s_median": statistics.median(r["summary_exchange_s"] for r in results),
              "results": results}
    say(f"done in {time.perf_counter() - T0:.1f}s")
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, BLAS {m['blas']}")
        print(f"model {report['model']}, window {report['budget']} tokens, "
              f"the mind's words <= {report['summary_tokens']} tokens")
        n = len(results)
        print("key word kept, of " + str(n) + ": " + ", ".join(f"{k} {v}/{n}" for k, v in kept.items()))
        print(f"an exchange that writes a summary: median {report['summary_exchange_s_median']:.1f} s")
        for r in results:
            print(f"  {r['word']:>10} (after {r['lead_exchanges']} exchanges): placeholder {r['placeholder']!s:5} "
                  f"mind {r['mind']!s:5} summary {r['summary']!s:5} later {r['later']!s:5} window {r['window']!s:5} "
                  f"| mind: {r['mind_words'][:90]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
