#!/usr/bin/env python
"""Corpus ingest of a ~2,000-file source tree: files/s, chunks/s, and where the time goes.

    python ops/bench/corpus_bench.py [--files 2000] [--max-files N] [--source DIR] [--json]
    python ops/bench/corpus_bench.py --quick      # 2 files: seconds, the tests

Copies the first `--files` .py files of `--source` (default: this interpreter's site-packages)
into a temporary folder (not a git work tree: all its files are listed), starts its own embedded
nats-server and Postgres under a temporary SOUL_HOME (unless SOUL_NATS_URL / SOUL_PG_URL name
servers; then only its own stream and schema are used, and dropped afterwards), and measures:

  1. ingest: `soul corpus add` of the first `--max-files` files (all by default) into a fresh
     journal: files/s and chunks/s overall, and the split into embedding, journal appends, and
     the rest (listing, reading, hashing, chunking);
  2. re-ingest with nothing changed: bringing the corpora projection up to date, then hashing
     every file again and journaling nothing (files/s).

Embedding dominates (the embedder runs ~40 sentences/s on 2 cores; a chunk is up to 256
tokens), so on a small machine bound the run with `--max-files`.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from evolution.weights.blas import reexec_with_optimized_blas  # noqa: E402
from soul.agent.corpus import Ingest, list_files  # noqa: E402
from soul.agent.embedder import load_default_embedder  # noqa: E402


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


def ingest(journal: Journal, runner: ProjectionRunner, embedder: Any, tree: Path, max_files: int) -> dict[str, Any]:
    started = time.perf_counter()
    runner.catch_up()
    app = journal.app
    paths = list_files(tree)
    job = Ingest(journal, embedder, "bench", corpora.files(runner.conn, app, "bench"))
    report = job.run(tree, paths[:max_files], complete=max_files >= len(paths))
    seconds = time.perf_counter() - started
    return {**report.as_dict(), "seconds": round(seconds, 2),
            "other_seconds": round(seconds - report.embed_seconds - report.journal_seconds, 2),
            "files_per_s": round(report.files / seconds, 1), "chunks_per_s": round(report.chunks / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, help="files in the tree (default 2000; --quick: 2)")
    parser.add_argument("--max-files", type=int, help="ingest only the first N files (default: all)")
    parser.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="where the .py files come from (default: site-packages)")
    parser.add_argument("--quick", action="store_true", help="a tree of 2 files: that it runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    files = args.files or (2 if args.quick else 2000)
    reexec_with_optimized_blas()  # embed as `soul corpus add` does

    with common.real_parts() as (home, _, pg_url):
        tree = home / "tree"
        copied = copy_tree(args.source, tree, files)
        max_files = min(args.max_files or copied, copied)
        app = "bench" + uuid.uuid4().hex[:8]
        journal = Journal(app)
        try:
            embedder = load_default_embedder()
            embedder.embed(["warm up"])
            with ProjectionRunner(journal, Corpora(), pg_url) as runner:
                say(f"ingesting {max_files} of {copied} files from {args.source}")
                first = ingest(journal, runner, embedder, tree, max_files)
                say("re-ingesting, nothing changed")
                again = ingest(journal, runner, embedder, tree, max_files)
            result = {
                "machine": common.machine(),
                "tree": {"files": copied, "bytes": sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())},
                "ingest": first,
                "reingest_unchanged": {k: again[k] for k in ("files", "unchanged", "events", "seconds", "files_per_s")},
            }
        finally:
            common.forget(journal, pg_url)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    i, r = result["ingest"], result["reingest_unchanged"]
    print(f"machine: {result['machine']['cpu']}, {result['machine']['nproc']} CPUs, {result['machine']['platform']}")
    print(f"tree: {result['tree']['files']} files, {result['tree']['bytes'] / 1e6:.1f} MB; ingested {i['files']}")
    print(f"ingest: {i['files']} files, {i['chunks']} chunks, {i['events']} events in {i['seconds']} s: "
          f"{i['files_per_s']} files/s, {i['chunks_per_s']} chunks/s")
    print(f"  embed {i['embed_seconds']} s, journal {i['journal_seconds']} s, "
          f"list/read/hash/chunk {i['other_seconds']} s; skipped {i['skipped']}")
    print(f"re-ingest, nothing changed: {r['files']} files in {r['seconds']} s ({r['files_per_s']} files/s), "
          f"{r['events']} events journaled")


if __name__ == "__main__":
    main()
