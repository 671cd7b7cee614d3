#!/usr/bin/env python
"""Corpus ingest of a ~2,000-file source tree: files/s, chunks/s, where the time goes, and the
embedder's useful GFLOP/s against this machine's matmul rate measured in the same run.

    python ops/bench/corpus_bench.py [--files 2000] [--max-files N] [--source DIR] [--json]
    python ops/bench/corpus_bench.py --tree DIR [--max-files N]   # DIR itself, in place
    python ops/bench/corpus_bench.py --quick      # 2 files: seconds, the tests

Copies the first `--files` .py files of `--source` (default: this interpreter's site-packages)
into a temporary folder (not a git work tree: all its files are listed), or with `--tree` takes
DIR as it is (its git-tracked files in a git work tree, as `soul corpus add`), starts its own
embedded nats-server and Postgres under a temporary SOUL_HOME (unless SOUL_NATS_URL / SOUL_PG_URL
name servers; then only its own stream and schema are used, and dropped afterwards), and measures:

  1. ingest: `soul corpus add` of the first `--max-files` files (all by default) into a fresh
     journal: files/s and chunks/s overall, and the split into embedding, journal appends, and
     the rest (listing, reading, hashing, chunking);
  2. embedding: the matmul FLOPs of the tokens embedded (each text's real length, not a padded
     batch) per second of embedding, against float32 matmul GFLOP/s (`python -m
     evolution.weights.blas`) sampled before, every ~30 s during and after the ingest; target:
     their ratio >= 0.5 (exit status 1 below it, unless --quick);
  3. re-ingest with nothing changed: bringing the corpora projection up to date, then hashing
     every file again and journaling nothing (files/s).

After a file, once 10 s have passed since the last line, a line on stderr says how far the
ingest is. On 2 cores the embedder runs ~10-20 chunks/s (a chunk is up to 256 tokens, ~6 GFLOP),
so the 2,000-file tree (~25,000 chunks) takes about half an hour; bound it with `--max-files`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)


from journal.journal import Journal  # noqa: E402
from projections import corpora  # noqa: E402
from projections.corpora import Corpora  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402
from evolution.weights.blas import matmul_gflops, reexec_with_optimized_blas  # noqa: E402
from soul.agent.corpus import Ingest, list_files  # noqa: E402
from soul.agent.embedder import load_default_embedder  # noqa: E402

TARGET = 0.5  # useful embedding GFLOP/s / matmul GFLOP/s (issue 13)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def copy_tree(source: Path, target: Path, files: int) -> int:
    """The first `files` .py files under `source` (sorted), copied with their relative paths."""
    copied = 0
    for path in sorted(source.rglob("*.py")):
        if copied == files:
            break
        if path.is_file() and not path.is_symlink():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            copied += 1
    return copied


class Progress:
    """After a file: a line on stderr if 10 s have passed, a matmul-rate sample if 30 s have
    (between embeddings, so the embedder is idle)."""

    def __init__(self, total: int, job: Ingest, samples: list[float]):
        self.total, self.job, self.samples, self.done = total, job, samples, 0
        self.started = self.said = self.sampled = time.perf_counter()

    def __call__(self, files: int) -> None:
        self.done += files
        now = time.perf_counter()
        if now - self.said >= 10:
            chunks = self.job.report.chunks
            say(f"  {self.done}/{self.total} files, {chunks} chunks, {chunks / (now - self.started):.1f} chunks/s")
            self.said = now
        if now - self.sampled >= 30:
            self.samples.append(matmul_gflops())
            self.sampled = time.perf_counter()


def ingest(journal: Journal, runner: ProjectionRunner, embedder: Any, tree: Path, max_files: int,
           samples: list[float] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    runner.catch_up()
    app = journal.app
    paths = list_files(tree)
    job = Ingest(journal, embedder, "bench", corpora.files(runner.conn, app, "bench"), corpora.root(runner.conn, app, "bench"))
    flops = embedder.flops
    progress = Progress(min(max_files, len(paths)), job, samples) if samples is not None else None
    report = job.run(tree, paths[:max_files], complete=max_files >= len(paths), progress=progress)
    seconds = time.perf_counter() - started
    flops = embedder.flops - flops
    return {**report.as_dict(), "seconds": round(seconds, 2),
            "other_seconds": round(seconds - report.embed_seconds - report.journal_seconds, 2),
            "files_per_s": round(report.files / seconds, 1), "chunks_per_s": round(report.chunks / seconds, 1),
            "embed_gflop": round(flops / 1e9, 1),
            "embed_gflops": round(flops / report.embed_seconds / 1e9, 1) if report.embed_seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, help="files in the tree (default 2000; --quick: 2)")
    parser.add_argument("--max-files", type=int, help="ingest only the first N files (default: all)")
    parser.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="where the .py files come from (default: site-packages)")
    parser.add_argument("--tree", type=Path, help="ingest this folder in place instead of a copy of .py files")
    parser.add_argument("--quick", action="store_true", help="a tree of 2 files: that it runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    files = args.files or (2 if args.quick else 2000)
    reexec_with_optimized_blas()  # embed as `soul corpus add` does

    load = [round(x, 2) for x in os.getloadavg()]
    with common.real_parts() as (home, _, pg_url):
        tree = args.tree.resolve() if args.tree else home / "tree"
        if not args.tree:
            copy_tree(args.source, tree, files)
        listed = list_files(tree)
        copied = len(listed)
        size = sum((tree / p).stat().st_size for p in listed if (tree / p).is_file())
        max_files = min(args.max_files or copied, copied)
        app = "bench" + uuid.uuid4().hex[:8]
        journal = Journal(app)
        try:
            embedder = load_default_embedder()
            embedder.embed(["warm up"])
            samples = [matmul_gflops()]
            with ProjectionRunner(journal, Corpora(), pg_url) as runner:
                say(f"ingesting {max_files} of {copied} files from {args.tree or args.source}")
                first = ingest(journal, runner, embedder, tree, max_files, samples)
                samples.append(matmul_gflops())
                say("re-ingesting, nothing changed")
                again = ingest(journal, runner, embedder, tree, max_files)
            matmul = statistics.median(samples)
            ratio = first["embed_gflops"] / matmul if first["embed_gflops"] else None
            result = {
                "machine": {**common.machine(), "load_average_before": load,
                            "load_average_after": [round(x, 2) for x in os.getloadavg()]},
                "tree": {"files": copied, "bytes": size},
                "ingest": first,
                "embedding": {"forward": "mlx (GPU)" if embedder.gpu else "numpy (CPU)",
                              "gflops": first["embed_gflops"], "matmul_gflops": round(matmul, 1),
                              "matmul_samples": [round(x, 1) for x in samples],
                              "ratio": round(ratio, 2) if ratio else None, "target": TARGET},
                "reingest_unchanged": {k: again[k] for k in ("files", "unchanged", "events", "seconds", "files_per_s")},
                "quick": args.quick,
                "pass": None if args.quick or ratio is None else ratio >= TARGET,
            }
        finally:
            common.forget(journal, pg_url)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        i, e, r = result["ingest"], result["embedding"], result["reingest_unchanged"]
        m = result["machine"]
        print(f"machine: {m['cpu']}, {m['nproc']} CPUs, {m['platform']}; load average "
              f"{m['load_average_before'][0]} before, {m['load_average_after'][0]} after")
        print(f"tree: {result['tree']['files']} files, {result['tree']['bytes'] / 1e6:.1f} MB; ingested {i['files']}")
        print(f"ingest: {i['files']} files, {i['chunks']} chunks, {i['events']} events in {i['seconds']} s: "
              f"{i['files_per_s']} files/s, {i['chunks_per_s']} chunks/s")
        print(f"  embed {i['embed_seconds']} s, journal {i['journal_seconds']} s, "
              f"list/read/hash/chunk {i['other_seconds']} s; skipped {i['skipped']}")
        verdict = {True: "pass", False: "MISS", None: "not judged (--quick)"}[result["pass"]]
        print(f"embedding ({e['forward']}): {i['embed_gflop']} GFLOP of real tokens at {e['gflops']} GFLOP/s; "
              f"matmul {e['matmul_gflops']} GFLOP/s (median of {len(e['matmul_samples'])} samples, "
              f"{min(e['matmul_samples'])}-{max(e['matmul_samples'])}); "
              f"ratio {e['ratio']} (target >= {TARGET}): {verdict}")
        print(f"re-ingest, nothing changed: {r['files']} files in {r['seconds']} s ({r['files_per_s']} files/s), "
              f"{r['events']} events journaled")
    sys.exit(1 if result["pass"] is False else 0)


if __name__ == "__main__":
    main()
