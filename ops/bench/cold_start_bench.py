#!/usr/bin/env python
"""Cold start: how long a user waits for `soul` with no daemon, against the floor of the same
work done by raw mlx-lm in a fresh process, in the same run.

    python ops/bench/cold_start_bench.py [--model DIR] [--repeats R] [--json]
    python ops/bench/cold_start_bench.py --quick --model DIR     # seconds: the tests

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers) and runs the console script as a shell does, each
command a new process. A first `soul say` converts the embedded model into that home (reported,
not judged). Then R times, in turn:

  - `python -c pass`: the interpreter's own start, the floor of any command;
  - raw: a new python that imports mlx-lm, loads the same model directory and streams one
    token of a one-message chat (what a cold `soul say` cannot avoid), with OpenBLAS preloaded
    as `soul` preloads it; time to that first token;
  - `soul say "hi" --max-tokens 8`: time to the first byte of the reply on stdout, and to exit;
  - `soul message <peer> <text>` (journals a tool call; the mind's weights are never read) and
    `soul --help`: time to exit.

Printed: medians, and `soul say`'s first token over raw's (target <= 2: what soul adds to a cold
start, journal, projections, embedder and window, is at most as much again as the model's own
load and first token). Exit status 1 if missed; --quick (1 repeat) judges nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

TARGET = 2.0
SOUL = Path(sys.executable).with_name("soul")
RAW = """
import sys, time
start = float(sys.argv[2])
from mlx_lm import load, stream_generate
model, tokenizer = load(sys.argv[1])
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
for response in stream_generate(model, tokenizer, prompt, max_tokens=1):
    print(time.time() - start)
    break
"""


def say(message: str) -> None:
    print(f"[cold start] {message}", file=sys.stderr, flush=True)


def finished(command: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning `command` to its exit (which must be 0)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def first_byte(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to exit) of `command`."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    first = process.stdout.read(1)
    at = time.perf_counter() - start
    _, err = process.communicate(timeout=900)
    if process.returncode != 0 or not first:
        raise SystemExit(f"{' '.join(command[:3])} failed: {err.decode(errors='replace').strip()[-500:]}")
    return at, time.perf_counter() - start


def raw_first_token(model: Path, env: dict[str, str]) -> float:
    """Seconds from spawning a raw mlx-lm process to its first token, as that process saw it."""
    from evolution.weights.blas import optimized_library

    library = optimized_library()
    raw_env = {**env, **({"LD_PRELOAD": str(library)} if library else {})}
    done = subprocess.run([sys.executable, "-c", RAW, str(model), repr(time.time())], env=raw_env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"raw mlx-lm failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every command (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round, no target: for tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    app = "benchcold" + uuid.uuid4().hex[:8]
    with common.real_parts() as (home, _, pg_url):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env.update(SOUL_APP=app, **({"SOUL_MODEL": str(args.model)} if args.model else {}))
        say_hi = [str(SOUL), "say", "hi", "--max-tokens", "8"]
        say("the first `soul say` (converts the embedded model into the home on first use)")
        first_ever = finished(say_hi, env)
        from evolution.weights.model import embedded_model_dir

        model = args.model or embedded_model_dir(home)
        rounds: dict[str, list[float]] = {k: [] for k in ("python", "raw_first_token", "say_first_token", "say_exit",
                                                          "message_exit", "help_exit")}
        for r in range(args.repeats):
            say(f"round {r + 1} of {args.repeats}")
            rounds["python"].append(finished([sys.executable, "-c", "pass"], env))
            rounds["raw_first_token"].append(raw_first_token(model, env))
            token, done = first_byte(say_hi, env)
            rounds["say_first_token"].append(token)
            rounds["say_exit"].append(done)
            rounds["message_exit"].append(finished([str(SOUL), "message", f"{app}-peer", "the bridge opens at noon"], env))
            rounds["help_exit"].append(finished([str(SOUL), "--help"], env))
        from journal.journal import Journal

        with Journal(app) as journal:
            common.forget(journal, pg_url)
    medians = {k: statistics.median(v) for k, v in rounds.items()}
    ratio = medians["say_first_token"] / medians["raw_first_token"]
    report: dict[str, Any] = {
        "machine": common.machine(), "model": str(args.model or "embedded SmolLM2-135M-Instruct"),
        "repeats": args.repeats, "first_ever_say_s": first_ever, "median_s": medians, "rounds_s": rounds,
        "say_over_raw": ratio, "target": TARGET, "pass": None if args.quick else ratio <= TARGET,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"cold start, median of {args.repeats} ({report['model']}):")
        print(f"  python -c pass                      {medians['python']:6.2f} s")
        print(f"  raw mlx-lm: load + first token      {medians['raw_first_token']:6.2f} s")
        print(f"  soul say: first token               {medians['say_first_token']:6.2f} s  "
              f"(x{ratio:.2f} raw; target <= {TARGET:g})")
        print(f"  soul say: exit (8 tokens, judged)   {medians['say_exit']:6.2f} s")
        print(f"  soul message: exit                  {medians['message_exit']:6.2f} s")
        print(f"  soul --help: exit                   {medians['help_exit']:6.2f} s")
        print(f"  (the first soul say ever, converting the model: {first_ever:.1f} s)")
    return 1 if report["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
