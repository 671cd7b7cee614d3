#!/usr/bin/env python
"""Which resonance judges tell a good reply from a bad one: AUC against a person's ratings.

    python ops/bench/judge_bench.py [--labels PATH] [--model DIR] [--rows N] [--quick] [--json]

The labelled set (tests/data/judge_labels.jsonl) holds exchanges as the soul has them: a user
message (sometimes after a short history), the soul's reply, and the rating 0..1 a person gave
it; `source` says whether the reply is SmolLM2's own (greedy, the soul's repetition penalty) or
written, `flaw` what is wrong with a bad one (wrong, made-up, echo, off-topic, evasive,
rambling, wrong-language). A reply rated >= 0.5 counts as good.

Each judge scores every row as the soul would score the thought: the conversation is the
default self-definition as the system message, the history, then the message, with the
embedded SmolLM2 (or --model) and MiniLM. The judges Soul.judge journals, and candidates:

- self: the self judge itself (soul.agent.judges.self_judgement), P(yes) to SELF_QUESTION;
- self-answered: the same with "Did your last reply answer my message?";
- self-relative: self less the same P(yes) after the non-answer "I don't know." to the same
  message (a per-message baseline), moved to 0..1;
- grader: P(yes) from the mind in a fresh context, the exchange quoted to it as a grader;
- fluency: the geometric mean probability of the reply's tokens after the conversation;
- pmi: the reply's mean token log-probability after the conversation less after an empty
  message alone (how much the conversation explains the reply), through a logistic to 0..1;
  pmi-head the same over the reply's first 16 tokens, pmi-self with the same system message
  before the empty message;
- relevance: the cosine of the message's and the reply's MiniLM vectors;
- distinct: the share of the reply's word trigrams that are distinct (low for a loop);
- brevity: fewer words, higher; not a judge but a baseline a judge has to beat (rambling
  replies are long);
- similarity: the cosine of the reply's vector to the centroid of the good replies to the
  other half of the messages (two folds by message, so no reply meets its own message's), as
  soul.agent.judges.similarity_judgement scores against the high-resonance memories;
- combined: projections.resonance.combine of the judges it counts besides the user (JUDGES),
  without a user rating: the rule in effect. Absent while it counts none.

The table gives each AUC (the chance a good reply scores above a bad one; 0.5 is chance) with
a seeded 95 % bootstrap interval, on SmolLM2's own replies alone, and per flaw (good rows
against the bad rows of that flaw). A judge counts in combine from AUC 0.65 on.
--quick scores the first 8 rows (4 messages) with a 100-draw bootstrap: a smoke test, with
the tiny test model in seconds. Exit status 1 if, on a full run, combine counts a judge below
0.65 or one this benchmark cannot score.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from evolution.weights.blas import blas_in_use, reexec_with_optimized_blas  # noqa: E402
from projections.resonance import JUDGES, combine  # noqa: E402
from soul.agent.judges import SELF_QUESTION, cosine_score, self_judgement  # noqa: E402
from soul.agent.loop import DEFAULT_SELF  # noqa: E402

LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
GOOD = 0.5  # a rating this high is a good reply
KEEP = 0.65  # a judge discriminates enough to count in combine at this AUC
QUICK_ROWS = 8
NON_ANSWER = "I don't know."
ANSWERED = "Did your last reply answer my message? Answer yes or no."
HEAD = 16  # pmi-head: the reply's first this many tokens
GRADER = ("A user wrote: {message}\n\nAn assistant replied: {reply}\n\n"
          "Is the reply helpful, correct and on topic? Answer yes or no.")
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if not (isinstance(row.get("message"), str) and isinstance(row.get("reply"), str)
                and 0.0 <= row.get("rating", -1) <= 1.0):
            raise ValueError(f"{path}: row {row.get('id')} needs a message, a reply and a rating in 0..1")
    return rows


def conversation(row: dict[str, Any], message: str | None = None) -> list[dict[str, str]]:
    """The messages the soul's mind reads before it replies: a fresh soul's window."""
    return [{"role": "system", "content": f"# Self\n{DEFAULT_SELF}"}, *row.get("history", []),
            {"role": "user", "content": row["message"] if message is None else message}]


def auc(scores: list[float], good: list[bool]) -> float:
    """P(a good row scores above a bad one), ties counting half (Mann-Whitney); NaN without both."""
    pos = [s for s, g in zip(scores, good) if g and not math.isnan(s)]
    neg = [s for s, g in zip(scores, good) if not g and not math.isnan(s)]
    if not pos or not neg:
        return float("nan")
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (len(pos) * len(neg)))


def interval(scores: list[float], good: list[bool], draws: int, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap 95 % interval of the AUC, resampling rows (seeded)."""
    rng = np.random.default_rng(seed)
    s, g = np.array(scores), np.array(good)
    found = []
    for _ in range(draws):
        pick = rng.integers(0, len(s), len(s))
        found.append(auc(list(s[pick]), list(g[pick])))
    found = [a for a in found if not math.isnan(a)]
    return (float(np.percentile(found, 2.5)), float(np.percentile(found, 97.5))) if found else (math.nan, math.nan)


def reply_logprobs(mind: Any, messages: list[dict[str, str]], reply: str) -> np.ndarray:
    """The log-probability of each of the reply's tokens, its end of turn included, after `messages`."""
    prompt = mind.encode(messages)
    full = list(mind.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}]))
    if full[: len(prompt)] != prompt:  # a template that renders the reply's prefix otherwise
        raise ValueError("the chat template does not end the prompt where the reply starts")
    ends = [i for i in range(len(prompt), len(full)) if full[i] == mind.tokenizer.eos_token_id]
    tokens = full[: min(ends[0] + 1 if ends else len(full), mind.max_context)]
    if len(tokens) <= len(prompt):  # the prompt alone fills the context
        return np.zeros(0, dtype=np.float32)
    logits = mind.model(mx.array(tokens[:-1])[None])[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(tokens[1:])[:, None], axis=-1)[:, 0]
    return np.array(picked[len(prompt) - 1:])


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b over the tokens both hold (a long reply is cut at the model's context, after prompts of two lengths)."""
    n = min(len(a), len(b))
    return a[:n] - b[:n]


def self_score(mind: Any, messages: list[dict[str, str]], reply: str, question: str = SELF_QUESTION) -> float:
    asked = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": question}]
    if len(mind.encode(asked)) > mind.max_context:
        return math.nan
    return mind.probability(asked)


def distinct_trigrams(text: str) -> float:
    """The share of the reply's word trigrams that are distinct: 1 for no repetition, low for a loop."""
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else 1.0


def logistic(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def score_rows(rows: list[dict[str, Any]], mind: Any, embedder: Any) -> dict[str, list[float]]:
    """Each judge's score of each row (NaN where a judge does not speak)."""
    messages = embedder.embed([r["message"] for r in rows])
    replies = embedder.embed([r["reply"] for r in rows])
    names = ("self", "self-answered", "self-relative", "grader", "fluency", "pmi", "pmi-head", "pmi-self",
             "relevance", "distinct", "brevity", "similarity")
    scores: dict[str, list[float]] = {name: [] for name in names}
    for i, row in enumerate(rows):
        asked, reply = conversation(row), row["reply"]
        judged = self_judgement(mind, asked, reply)  # the judge itself
        scores["self"].append(judged[0] if judged is not None else math.nan)
        scores["self-answered"].append(self_score(mind, asked, reply, ANSWERED))
        baseline = self_score(mind, asked, NON_ANSWER)
        scores["self-relative"].append(min(max(0.5 + scores["self"][-1] - baseline, 0.0), 1.0))
        graded = [{"role": "user", "content": GRADER.format(message=row["message"], reply=reply)}]
        scores["grader"].append(mind.probability(graded))
        conditioned = reply_logprobs(mind, asked, reply)
        pmi = difference(conditioned, reply_logprobs(mind, [{"role": "user", "content": ""}], reply))
        scores["fluency"].append(math.exp(conditioned.mean()) if conditioned.size else math.nan)
        scores["pmi"].append(logistic(pmi.mean()) if pmi.size else math.nan)
        scores["pmi-head"].append(logistic(pmi[:HEAD].mean()) if pmi.size else math.nan)
        pmi_self = difference(conditioned, reply_logprobs(mind, conversation(row, ""), reply))
        scores["pmi-self"].append(logistic(pmi_self.mean()) if pmi_self.size else math.nan)
        scores["relevance"].append(cosine_score(messages[i], replies[i]))
        scores["distinct"].append(distinct_trigrams(reply))
        scores["brevity"].append(1 / (1 + len(reply.split()) / 20))
        if (i + 1) % 20 == 0:
            say(f"  {i + 1} of {len(rows)} rows")
    # Two folds by message: each reply against the centroid of the good replies to the other fold's messages.
    fold = {m: k % 2 for k, m in enumerate(dict.fromkeys(r["message"] for r in rows))}
    for i, row in enumerate(rows):
        others = [j for j, r in enumerate(rows) if fold[r["message"]] != fold[row["message"]] and r["rating"] >= GOOD]
        scores["similarity"].append(cosine_score(replies[i], replies[others].mean(axis=0)) if others else math.nan)
    if counted := [judge for judge in JUDGES if judge != "user" and judge in scores]:
        scores["combined"] = [nan_if_none(combine({j: scores[j][i] for j in counted if not math.isnan(scores[j][i])}))
                              for i in range(len(rows))]
    return scores


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def report_of(rows: list[dict[str, Any]], scores: dict[str, list[float]], draws: int) -> dict[str, Any]:
    good = [r["rating"] >= GOOD for r in rows]
    own = [i for i, r in enumerate(rows) if r.get("source") == "smollm2"]
    flaws = sorted({r.get("flaw", "none") for r in rows if r["rating"] < GOOD})

    def subset(values: list[float], keep: Callable[[int], bool]) -> float:
        picked = [i for i in range(len(rows)) if keep(i)]
        return auc([values[i] for i in picked], [good[i] for i in picked])

    judges = {}
    for name, values in scores.items():
        present = [v for v in values if not math.isnan(v)]
        lo, hi = interval(values, good, draws)
        judges[name] = {
            "auc": auc(values, good), "ci95": [lo, hi], "smollm2_auc": subset(values, lambda i: i in own),
            "flaw_auc": {f: subset(values, lambda i, f=f: good[i] or rows[i].get("flaw", "none") == f) for f in flaws},
            "good_mean": float(np.nanmean([v for v, g in zip(values, good) if g])) if any(good) else math.nan,
            "bad_mean": float(np.nanmean([v for v, g in zip(values, good) if not g])) if not all(good) else math.nan,
            "range": [min(present), max(present)] if present else [math.nan, math.nan], "scored": len(present)}
    return {"rows": len(rows), "good": sum(good), "smollm2_rows": len(own), "flaws": flaws, "judges": judges,
            "counted": [j for j in JUDGES if j != "user"], "ids": [r.get("id") for r in rows],
            "scores": {name: [round(v, 4) for v in values] for name, values in scores.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=LABELS, help=f"the labelled set (default {LABELS.relative_to(ROOT)})")
    parser.add_argument("--model", type=Path, help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--rows", type=int, help="score only the first N rows")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap draws for the intervals (default 2000)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_ROWS} rows, 100 draws: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    try:
        rows = load_rows(args.labels)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    limit = QUICK_ROWS if args.quick else args.rows
    rows = rows[:limit] if limit else rows
    draws = 100 if args.quick else args.draws

    reexec_with_optimized_blas()  # as `soul` runs
    from soul.agent.embedder import load_default_embedder  # loads MLX, as the mind does
    from soul.agent.mind import Mind

    say(f"loading the mind ({args.model or 'the embedded SmolLM2'}) and MiniLM")
    mind = Mind(args.model)
    embedder = load_default_embedder()
    say(f"scoring {len(rows)} rows")
    report = {"machine": {**common.machine(), "blas": str(blas_in_use())}, "model": mind.model_id,
              "labels": str(args.labels), **report_of(rows, score_rows(rows, mind, embedder), draws)}
    judges = report["judges"]
    report["discriminating"] = [name for name, j in judges.items() if name != "combined" and j["auc"] >= KEEP]
    full = not (args.quick or args.rows)
    report["pass"] = all(j in judges and judges[j]["auc"] >= KEEP for j in report["counted"]) if full else None
    say(f"done in {time.perf_counter() - T0:.1f}s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 1 if report["pass"] is False else 0


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}, BLAS {m['blas']}")
    print(f"model {report['model']}; {report['rows']} rows ({report['good']} good, rating >= {GOOD}), "
          f"{report['smollm2_rows']} of them SmolLM2's own replies")
    flaws = report["flaws"]
    head = f"{'judge':<14} {'AUC':>5}  {'95% CI':<11} {'smollm2':>7} " + " ".join(f"{f[:9]:>9}" for f in flaws)
    print(head + f"  {'good':>5} {'bad':>5}  range")
    for name, j in report["judges"].items():
        mark = "*" if name in report["counted"] or name == "combined" else " "
        print(f"{mark}{name:<13} {j['auc']:5.2f}  {j['ci95'][0]:.2f}-{j['ci95'][1]:.2f}   {j['smollm2_auc']:7.2f} "
              + " ".join(f"{j['flaw_auc'][f]:9.2f}" for f in flaws)
              + f"  {j['good_mean']:5.2f} {j['bad_mean']:5.2f}  {j['range'][0]:.2f}-{j['range'][1]:.2f}")
    counted = ", ".join(report["counted"]) or "none (an event nobody rated has no resonance)"
    print(f"* counted in combine besides the user's rating, which decides alone when there is one: {counted}")
    print(f"AUC >= {KEEP} here: {', '.join(report['discriminating']) or 'none'}")
    if report["pass"] is not None:
        print(f"every judge combine counts reaches {KEEP}: {'pass' if report['pass'] else 'MISS'}")

if __name__ == "__main__":
    sys.exit(main())
