#!/usr/bin/env python
"""Secret redaction's cost per KB on ordinary prose and code, against a git revision's.

    python ops/bench/redact_bench.py [--baseline REV] [--repeats N] [--quick] [--json]

The text is this checkout's own Markdown (prose) and Python (code), with the shipped clean corpus
(tests/data/secrets/clean/), cut into ~1 KB pieces on line boundaries: the size of a perception or
a corpus chunk, which is what `redact_secrets` sees. Each piece is redacted once per repeat; the
figure is the median over repeats of thread CPU time per KB (CPU time, so that other processes on a
shared machine do not count). `--baseline REV` measures journal/secrets.py as it is at REV too
(default HEAD; `--baseline ''` for none), interleaved with the working tree's. Exit status 1 if the
working tree's mix costs more than the target; `--quick` (3 passes) shows the figures, unjudged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

from journal.secrets import redact_secrets  # noqa: E402

TARGET_US_PER_KB = 32.0  # the cost before the formats of issue 14 were added, measured the same way
PIECE = 1024


def pieces(paths: list[Path]) -> list[str]:
    """The files' text cut into pieces of about PIECE characters, on line boundaries."""
    out, piece = [], ""
    for path in paths:
        for line in path.read_text().splitlines(keepends=True):
            piece += line
            if len(piece) >= PIECE:
                out.append(piece)
                piece = ""
    return out + ([piece] if piece else [])


def corpus() -> dict[str, list[str]]:
    listed = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    clean = sorted((ROOT / "tests/data/secrets/clean").iterdir())
    prose = [ROOT / n for n in listed if n.endswith(".md")] + [p for p in clean if p.suffix in (".md", ".txt")]
    code = [ROOT / n for n in listed if n.endswith(".py")] + [p for p in clean if p.suffix not in (".md", ".txt")]
    return {"prose": pieces(prose), "code": pieces(code)}


def at_revision(rev: str) -> Callable[[str], tuple[str, list[str]]]:
    """`redact_secrets` as journal/secrets.py defines it at git revision `rev`."""
    source = subprocess.run(["git", "show", f"{rev}:journal/secrets.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"secrets_at_{rev}")
    exec(compile(source, f"{rev}:journal/secrets.py", "exec"), module.__dict__)
    return module.redact_secrets


def us_per_kb(redact: Callable[[str], Any], texts: list[str]) -> float:
    start = time.thread_time()
    for text in texts:
        redact(text)
    return (time.thread_time() - start) * 1e6 / (sum(len(t.encode()) for t in texts) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with (default HEAD; '' for none)")
    parser.add_argument("--repeats", type=int, default=15, help="passes over the text per variant (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 passes, the target not judged: figures in a second")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    texts = corpus()
    texts["mix"] = texts["prose"] + texts["code"]
    variants = {"working tree": redact_secrets}
    if args.baseline:
        try:
            variants[args.baseline] = at_revision(args.baseline)
        except subprocess.CalledProcessError as e:
            print(f"cannot read journal/secrets.py at {args.baseline!r}: {e.stderr.strip()}", file=sys.stderr)
            return 1
    timings: dict[str, dict[str, list[float]]] = {v: {k: [] for k in texts} for v in variants}
    for round_ in range(1 + repeats):  # one warm-up round, then measured; variants interleave
        for variant, redact in variants.items():
            for kind, pieces_ in texts.items():
                figure = us_per_kb(redact, pieces_)
                if round_:
                    timings[variant][kind].append(figure)
    report: dict[str, Any] = {
        "machine": common.machine(), "repeats": repeats, "target_us_per_kb": TARGET_US_PER_KB,
        "kb": {k: round(sum(len(t.encode()) for t in v) / 1024, 1) for k, v in texts.items()},
        "us_per_kb": {v: {k: round(statistics.median(f), 1) for k, f in kinds.items()} for v, kinds in timings.items()}}
    report["pass"] = None if args.quick else report["us_per_kb"]["working tree"]["mix"] <= TARGET_US_PER_KB
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['platform']}, Python {m['python']}")
        print(f"text: {report['kb']['prose']} KB prose, {report['kb']['code']} KB code, in ~1 KB pieces; "
              f"median of {repeats} passes, thread CPU time")
        for variant, figures in report["us_per_kb"].items():
            print(f"{variant:>14}: " + ", ".join(f"{kind} {us:5.1f} µs/KB" for kind, us in figures.items()))
        verdict = {True: "pass", False: "MISS", None: "not judged (--quick)"}[report["pass"]]
        print(f"mix {report['us_per_kb']['working tree']['mix']} µs/KB (target <= {TARGET_US_PER_KB}): {verdict}")
    return 1 if report["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
