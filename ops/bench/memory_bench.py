#!/usr/bin/env python
"""The memory projection and hybrid search at 100k memories, measured in one run.

    python ops/bench/memory_bench.py [--memories N] [--live L] [--queries Q] [--repeats R] [--json]
    python ops/bench/memory_bench.py --quick      # 2,000 memories, 20 queries: seconds, no target judged

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers; then only its own stream and schema are used and
dropped afterwards), journals N memories plus 1 % resonance judgements, and measures:

  1. rebuild: ProjectionRunner(journal, Memory()).rebuild() from seq 1 (read and decode the
     journal, binary COPY per page, judgements, then the deferred HNSW / per-corpus HNSW / GIN
     index builds, then the swap), against a raw binary COPY of the same final rows into a table
     of the same layout followed by the same index builds, in the same run. Target: the raw
     path's time / the rebuild's time >= 0.5. The same ratio without the index builds (fill vs
     COPY alone) is shown for information.
  2. live apply: L more events (default 5,000; 1 % judgements) journaled after the rebuild and
     applied by ProjectionRunner.catch_up into the finished table, HNSW in place (pages of 500,
     one transaction each), against a raw binary COPY of the same rows, in pages of the same
     size, into the raw table of step 1 (same layout and indexes, same rows before), in two
     rounds alternating which goes first. Target: >= 1,000 events/s (issue 13); the raw COPY's
     rate is the ceiling pgvector's HNSW inserts set on this machine, and the ratio raw time /
     runner time shows what is the runner's.
  3. search over the rebuilt memory, live rows included, `limit` 10: hybrid latency p50 / p99 (targets <= 15 ms /
     <= 50 ms) and recall@10 against exact search (target >= 0.95): the same reciprocal rank
     fusion over an exact (brute force, numpy) semantic top-40 and the same keyword list. The
     semantic side's own recall@10, other ef_search values and corpus-filtered hybrid queries
     (which must return 10 rows of the corpus) are shown too.

The data is synthetic: embedding 100k real texts is not affordable here. Vectors are a
mixture of Gaussians on the unit sphere, hierarchical like text: 500 topics of 8 subtopics of
~25 memories; offsets are anisotropic (a power-law spectrum in a random basis) so that, as
with real sentence embeddings, the intrinsic dimension is well below 384 and unrelated texts
are not all orthogonal (printed with the results; at 100k: cosine to the nearest memory 0.78,
to the 10th nearest 0.68, between random pairs 0.00 +- 0.18). Near-uniform random vectors
would understate HNSW recall (design
§4 measured 0.53 at ef_search 40), and this mixture may overstate it somewhat: rerun recall on
real embeddings when a real journal of that size exists. Prose mixes common words with the
topic's and subtopic's made-up words and, in corpus chunks, identifiers like `tovark_mel_v3`,
`tovark/mel.py` and `mel.tovark()`;
queries are 2-3 words drawn the same way, with a vector drawn from the same subtopic.

Exit status 1 if a target is missed (--quick judges none: the sizes are too small to mean anything).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from journal.event import BifocalEvent, Embedder  # noqa: E402
from journal.journal import Journal  # noqa: E402
from projections.base import schema_for  # noqa: E402
from projections.memory import COLUMNS, COPY_TYPES, Memory, place  # noqa: E402
from projections.postgres import connect  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402
from projections.search import DEPTH, EF_SEARCH, RRF_K, search  # noqa: E402

DIM = Memory.dim
EMBEDDER = Embedder("synthetic-mixture@bench", DIM)
TOPICS, SUBTOPICS = 500, 8
SUBTOPIC_SPREAD, MEMORY_SPREAD = 1.0, 0.8  # offset norms relative to the unit centre they are added to
CORPORA = {"alpha": 0.15, "beta": 0.10, "gamma": 0.05}  # shares of memories that are corpus chunks
KINDS = ("perception", "thought", "tool_result", "summary")
LIMIT = 10
TARGETS = {"ratio": 0.5, "live_per_s": 1000.0, "p50_ms": 15.0, "p99_ms": 50.0, "recall": 0.95}
COMMON = (
    "the a of to and in is it that for on with as was at by this be from or have an not are but we they you "
    "which one all were when there can more if out so what up about into than them then now only its some "
    "could time these two may first new like other how after our way well because any most over good very "
    "make still back even use work here where need run test file error value change set call result"
).split()

COMMON_WORDS = np.array(COMMON)
ZIPF = 1 / np.arange(1, len(COMMON) + 1) / np.sum(1 / np.arange(1, len(COMMON) + 1))

T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- synthetic memories ------------------------------------------------------------------


def made_up_words(rng: np.random.Generator, count: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables, size=rng.integers(2, 4))))
    return [str(w) for w in rng.permutation(sorted(words))]  # sorted first: the same words for a seed


class Mixture:
    """Topics -> subtopics -> points on the unit sphere, with power-law (anisotropic) offsets."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
        spectrum = np.arange(1, DIM + 1) ** -0.6
        self.shape = (basis * (spectrum / np.sqrt(np.mean(spectrum**2)))).T  # rows: scaled basis vectors
        self.topics = self.unit(rng.normal(size=(TOPICS, DIM)))
        self.subtopics = self.unit(np.repeat(self.topics, SUBTOPICS, axis=0) + SUBTOPIC_SPREAD * self.offsets(TOPICS * SUBTOPICS))
        words = made_up_words(rng, TOPICS * 12 + TOPICS * SUBTOPICS * 6)
        self.topic_words = np.array(words[: TOPICS * 12]).reshape(TOPICS, 12)
        self.subtopic_words = np.array(words[TOPICS * 12 :]).reshape(TOPICS * SUBTOPICS, 6)

    @staticmethod
    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    def offsets(self, n: int) -> np.ndarray:
        return (self.rng.normal(size=(n, DIM)) @ self.shape) / np.sqrt(DIM)

    def points(self, subtopics: np.ndarray) -> np.ndarray:
        return self.unit(self.subtopics[subtopics] + MEMORY_SPREAD * self.offsets(len(subtopics)))

    def words(self, subtopic: int, count: int) -> list[str]:
        """`count` words: common ones (Zipf-distributed), the topic's and the subtopic's."""
        rng = self.rng
        common = COMMON_WORDS[rng.choice(len(COMMON_WORDS), size=count, p=ZIPF)]
        topic = self.topic_words[subtopic // SUBTOPICS][rng.integers(0, 12, size=count)]
        own = self.subtopic_words[subtopic][rng.integers(0, 6, size=count)]
        which = rng.choice(3, size=count, p=(0.45, 0.35, 0.20))
        return np.where(which == 0, common, np.where(which == 1, topic, own)).tolist()


@dataclass
class Data:
    events: list[BifocalEvent]  # memories with resonance judgements interleaved, in journal order
    memory_index: list[int]  # for each event: its row in `vectors`, or -1 for a judgement
    vectors: np.ndarray
    corpora: list[str | None]
    queries: list[tuple[str, np.ndarray]]


def make_data(memories: int, queries: int, seed: int = 7) -> Data:
    rng = np.random.default_rng(seed)
    mix = Mixture(rng)
    subtopics = rng.integers(0, TOPICS * SUBTOPICS, size=memories)
    vectors = mix.points(subtopics)
    names = list(CORPORA)
    shares = [*CORPORA.values(), 1 - sum(CORPORA.values())]
    corpora: list[str | None] = [names[k] if k < len(names) else None
                                 for k in rng.choice(len(shares), size=memories, p=shares)]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events: list[BifocalEvent] = []
    memory_index: list[int] = []
    remembered: list[BifocalEvent] = []
    for i in range(memories):
        s = int(subtopics[i])
        if corpora[i] is None:
            kind, prose = KINDS[i % len(KINDS)], " ".join(mix.words(s, int(rng.integers(15, 45))))
        else:
            topic, own = mix.topic_words[s // SUBTOPICS][0], mix.subtopic_words[s][0]
            identifiers = [f"{topic}_{own}_v{i % 5}", f"{topic}/{own}.py", f"{own}.{topic}()"]
            kind, prose = "chunk_ingested", " ".join(mix.words(s, int(rng.integers(60, 120))) + identifiers)
        when = start + timedelta(seconds=i)
        remembered.append(BifocalEvent(kind, prose, vectors[i], EMBEDDER, timestamp=when, corpus=corpora[i]))
        events.append(remembered[-1])
        memory_index.append(i)
        if i and rng.random() < 0.01:  # a judgement of an earlier memory
            target = remembered[int(rng.integers(0, i))]
            events.append(BifocalEvent("resonance", "judged", np.zeros(0), timestamp=when,
                                       data={"event": str(target.id), "score": round(float(rng.random()), 3)}))
            memory_index.append(-1)
    query_subtopics = rng.integers(0, TOPICS * SUBTOPICS, size=queries)
    query_vectors = mix.points(query_subtopics)
    texts = [" ".join(mix.words(int(s), int(rng.integers(2, 4)))) for s in query_subtopics]
    return Data(events, memory_index, vectors, corpora, list(zip(texts, query_vectors)))


def journal_events(journal: Journal, events: list[BifocalEvent]) -> list[int]:
    """Append in atomic batches of 1,000, one originator each; the sequence of every event."""
    seqs: list[int] = []
    for k in range(0, len(events), 1000):
        origin = uuid.uuid4()
        batch = [BifocalEvent(e.type, e.prose, e.vector, e.embedder, origin, v, e.id, e.timestamp, corpus=e.corpus,
                              data=e.data) for v, e in enumerate(events[k : k + 1000], 1)]
        seqs += journal.append(batch)
    return seqs


# -- 1. rebuild against a raw COPY -------------------------------------------------------


class TimedMemory(Memory):
    """Memory, noting how long `finish` (the deferred index builds) takes."""

    finish_seconds = 0.0

    def finish(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        t = time.perf_counter()
        super().finish(cur, table)
        self.finish_seconds = time.perf_counter() - t


def final_rows(data: Data, seqs: list[int]) -> list[tuple[Any, ...]]:
    """The rows the projection ends with, resonance applied: what the raw COPY loads."""
    judged: dict[str, tuple[float, int]] = {}
    for event, seq in zip(data.events, seqs):
        if event.type == "resonance":
            judged[event.data["event"]] = (event.data["score"], seq)
    rows = []
    for event, seq in zip(data.events, seqs):
        if event.type != "resonance":
            score, judged_at = judged.get(str(event.id), (None, None))
            rows.append((seq, event.id, event.timestamp, event.type, event.prose, event.vector, event.embedder.name,
                         event.corpus, *place(event), score, judged_at))
    return rows


def raw_copy(conn: psycopg.Connection[Any], schema: str, rows: list[tuple[Any, ...]], build: int,
             keep: bool = False) -> tuple[float, float]:
    """Create a table of Memory's layout, binary COPY `rows` into it, build Memory's indexes:
    (copy seconds including the create, index seconds). `keep`: leave the table `raw_<build>`."""
    table = sql.Identifier(schema, f"raw_{build}")
    memory = Memory()
    t = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        memory.create(cur, table)
        columns = sql.SQL(", ").join(map(sql.Identifier, (*COLUMNS, "resonance", "resonance_seq")))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, columns)) as copy:
            copy.set_types([*COPY_TYPES, "real", "bigint"])
            for row in rows:
                copy.write_row(row)
    copied = time.perf_counter() - t
    t = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        memory.finish(cur, table)
    indexed = time.perf_counter() - t
    if not keep:
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return copied, indexed


def bench_rebuild(journal: Journal, pg_url: str, data: Data, seqs: list[int], repeats: int) -> dict[str, Any]:
    app = journal.app
    rows = final_rows(data, seqs)
    memory = TimedMemory()
    runner = ProjectionRunner(journal, memory, pg_url)
    conn = connect(pg_url)
    say("reading the journal once (warm-up, and its time alone for information)")
    t = time.perf_counter()
    read = sum(1 for _ in journal.read())
    read_seconds = time.perf_counter() - t
    rebuilds, raws = [], []
    for r in range(repeats):
        say(f"raw binary COPY of {len(rows):,} rows + index builds ({r + 1}/{repeats})")
        raws.append(raw_copy(conn, schema_for(app), rows, r, keep=r == repeats - 1))  # the last one: live apply's baseline
        say(f"  copy {raws[-1][0]:.1f}s, indexes {raws[-1][1]:.1f}s")
        say(f"ProjectionRunner.rebuild over {len(seqs):,} journal events ({r + 1}/{repeats})")
        t = time.perf_counter()
        runner.rebuild()
        total = time.perf_counter() - t
        rebuilds.append((total - memory.finish_seconds, memory.finish_seconds))
        say(f"  fill {rebuilds[-1][0]:.1f}s, indexes {rebuilds[-1][1]:.1f}s")
    figures = runner.status()
    runner.close()
    assert figures["rows"] == len(rows) and figures["position"] == seqs[-1], figures
    table = figures["table"]
    check = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE resonance IS NOT NULL), count(DISTINCT corpus) FROM {}").format(
        Memory.view(app))).fetchone()
    assert check == (sum(r[len(COLUMNS)] is not None for r in rows), len(CORPORA)), check
    conn.close()
    rebuild_s = statistics.median(sum(r) for r in rebuilds)
    raw_s = statistics.median(sum(r) for r in raws)
    fill_s = statistics.median(r[0] for r in rebuilds)
    copy_s = statistics.median(r[0] for r in raws)
    return {
        "events": len(seqs), "rows": len(rows), "table": table, "repeats": repeats,
        "rebuild_s": rebuild_s, "rebuild_events_per_s": len(seqs) / rebuild_s,
        "rebuild_fill_s": fill_s, "rebuild_index_s": statistics.median(r[1] for r in rebuilds),
        "raw_s": raw_s, "raw_rows_per_s": len(rows) / raw_s,
        "raw_copy_s": copy_s, "raw_index_s": statistics.median(r[1] for r in raws),
        "ratio": raw_s / rebuild_s, "ratio_without_indexes": copy_s / fill_s,
        "journal_read_s": read_seconds, "journal_read_events": read, "raw_table": f"raw_{repeats - 1}",
    }


# -- 2. live apply against a raw COPY ------------------------------------------------------


def copy_pages(conn: psycopg.Connection[Any], table: sql.Identifier, rows: list[tuple[Any, ...]], page: int) -> float:
    """Binary COPY `rows` into `table`, a transaction per `page` rows, as the runner commits; seconds."""
    columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    t = time.perf_counter()
    for k in range(0, len(rows), page):
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, columns)) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows[k : k + page]:
                    copy.write_row(row)
    return time.perf_counter() - t


def bench_live(journal: Journal, pg_url: str, events: list[BifocalEvent], raw_table: str, rounds: int = 2) -> tuple[dict[str, Any], list[int]]:
    """Journal `events` in `rounds` parts; after each, the runner catches the finished table up and
    the same rows are copied into `raw_table`, alternating which goes first. (figures, their seqs)"""
    conn = connect(pg_url)
    raw = sql.Identifier(schema_for(journal.app), raw_table)
    before = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(raw)).fetchone()[0]  # type: ignore[index]
    runner = ProjectionRunner(journal, Memory(), pg_url)
    runner.catch_up()  # level with the journal; the table is finished (its indexes built)
    seqs: list[int] = []
    ours_s = raw_s = 0.0
    rows = 0
    for r, part in enumerate(np.array_split(np.arange(len(events)), rounds)):
        chunk = [events[i] for i in part]
        part_seqs = journal_events(journal, chunk)
        seqs += part_seqs
        copied = [(seq, e.id, e.timestamp, e.type, e.prose, e.vector, e.embedder.name, e.corpus, *place(e))
                  for e, seq in zip(chunk, part_seqs) if e.type != "resonance"]
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which == 0:
                t = time.perf_counter()
                runner.catch_up()
                ours_s += time.perf_counter() - t
            else:
                raw_s += copy_pages(conn, raw, copied, runner.page)
        rows += len(copied)
        say(f"  round {r + 1}/{rounds}: {len(chunk):,} events; so far runner {ours_s:.1f}s, raw COPY {raw_s:.1f}s")
    figures = runner.status()
    runner.close()
    assert figures["position"] == seqs[-1] and figures["rows"] == before + rows, figures
    conn.execute(sql.SQL("DROP TABLE {}").format(raw))
    conn.close()
    return {"events": len(events), "rows": rows, "memories_before": before, "rounds": rounds, "page": runner.page,
            "runner_s": ours_s, "events_per_s": len(events) / ours_s, "raw_s": raw_s, "raw_rows_per_s": rows / raw_s,
            "ratio": raw_s / ours_s, "target_per_s": TARGETS["live_per_s"],
            "met": len(events) / ours_s >= TARGETS["live_per_s"]}, seqs


# -- 3. search latency and recall ----------------------------------------------------------


def exact_semantic(data: Data, seq_of_row: np.ndarray, vector: np.ndarray, depth: int, rows: np.ndarray | None = None) -> list[int]:
    """The `depth` nearest memories by cosine distance, brute force; ties by seq as the SQL does."""
    candidates = np.arange(len(data.vectors)) if rows is None else rows
    distance = 1 - data.vectors[candidates] @ vector
    order = np.lexsort((seq_of_row[candidates], distance))[:depth]
    return [int(seq_of_row[candidates[i]]) for i in order]


def fuse(semantic: list[int], keyword: list[int], limit: int) -> list[int]:
    """Reciprocal rank fusion exactly as projections/search.py does it (ties: newer first)."""
    score: dict[int, Fraction] = {}
    for ranked in (semantic, keyword):
        for rank, seq in enumerate(ranked, 1):
            score[seq] = score.get(seq, Fraction(0)) + Fraction(1, RRF_K + rank)
    return sorted(score, key=lambda seq: (-score[seq], -seq))[:limit]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_search(conn: psycopg.Connection[Any], app: str, data: Data, seqs: list[int], efs: list[int]) -> dict[str, Any]:
    seq_of_row = np.array([seq for seq, index in zip(seqs, data.memory_index) if index >= 0])
    corpus_rows = {c: np.array([i for i, name in enumerate(data.corpora) if name == c]) for c in CORPORA}
    queries = data.queries
    for text, vector in queries[:50]:  # warm-up: index pages into memory, statements prepared
        search(conn, app, text, vector, limit=LIMIT)
    say(f"exact answers for {len(queries)} queries (brute force)")
    exact_semantic_lists = [exact_semantic(data, seq_of_row, v, DEPTH) for _, v in queries]
    keyword_lists = [[h.seq for h in search(conn, app, text, mode="keyword", limit=DEPTH)] for text, _ in queries]
    exact_hybrid = [fuse(s, k, LIMIT) for s, k in zip(exact_semantic_lists, keyword_lists)]
    results: list[dict[str, Any]] = []
    for ef in efs:
        say(f"hybrid and semantic search, ef_search {ef}: {len(queries)} queries each")
        for mode in ("hybrid", "semantic"):
            latencies, recalls = [], []
            for (text, vector), semantic_truth, hybrid_truth in zip(queries, exact_semantic_lists, exact_hybrid):
                t = time.perf_counter()
                hits = search(conn, app, text, vector, mode=mode, limit=LIMIT, ef_search=ef)
                latencies.append((time.perf_counter() - t) * 1000)
                truth = hybrid_truth if mode == "hybrid" else semantic_truth[:LIMIT]
                recalls.append(len({h.seq for h in hits} & set(truth)) / len(truth))
            results.append({"mode": mode, "ef_search": max(ef, DEPTH if mode == "hybrid" else LIMIT),
                            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                            "recall": float(np.mean(recalls)), "default": ef == EF_SEARCH})
    say("keyword-only and corpus-filtered hybrid search")
    latencies = []
    for text, _ in queries:
        t = time.perf_counter()
        search(conn, app, text, mode="keyword", limit=LIMIT)
        latencies.append((time.perf_counter() - t) * 1000)
    results.append({"mode": "keyword", "ef_search": None, "p50_ms": percentile(latencies, 50),
                    "p99_ms": percentile(latencies, 99), "recall": None, "default": True})
    latencies, recalls, short = [], [], 0
    names = list(CORPORA)
    for i, (text, vector) in enumerate(queries):
        corpus = names[i % len(names)]
        t = time.perf_counter()
        hits = search(conn, app, text, vector, corpus=corpus, limit=LIMIT)
        latencies.append((time.perf_counter() - t) * 1000)
        short += len(hits) < LIMIT or any(h.corpus != corpus for h in hits)
        keyword = [h.seq for h in search(conn, app, text, mode="keyword", corpus=corpus, limit=DEPTH)]
        truth = fuse(exact_semantic(data, seq_of_row, vector, DEPTH, corpus_rows[corpus]), keyword, LIMIT)
        recalls.append(len({h.seq for h in hits} & set(truth)) / LIMIT)
    results.append({"mode": "hybrid --corpus", "ef_search": max(EF_SEARCH, DEPTH), "p50_ms": percentile(latencies, 50),
                    "p99_ms": percentile(latencies, 99), "recall": float(np.mean(recalls)), "default": False,
                    "short_or_foreign": short})
    matched = [len(k) for k in keyword_lists]
    return {"queries": len(queries), "limit": LIMIT, "depth": DEPTH, "results": results,
            "keyword_lists_nonempty": sum(m > 0 for m in matched) / len(matched)}


# -- report --------------------------------------------------------------------------------


def machine(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in ("shared_buffers", "max_parallel_maintenance_workers")}
    return {
        **common.machine(),
        "postgres": conn.execute("SHOW server_version").fetchone()[0],
        "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
        **settings,
    }


def data_figures(data: Data) -> dict[str, float]:
    """Cosine figures of the synthetic vectors, to compare with real embeddings."""
    sample = data.vectors[:2000] @ data.vectors.T
    sample[np.arange(2000), np.arange(2000)] = -1
    nearest = np.sort(sample, axis=1)
    return {"nearest_cos": float(nearest[:, -1].mean()), "tenth_nearest_cos": float(nearest[:, -10].mean()),
            "pair_cos_mean": float(sample.mean()), "pair_cos_std": float(sample.std())}


def verdicts(report: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    hybrid = next(r for r in report["search"]["results"] if r["mode"] == "hybrid" and r["default"])
    return [
        ("rebuild: raw / rebuild time", report["rebuild"]["ratio"], f">= {TARGETS['ratio']}", report["rebuild"]["ratio"] >= TARGETS["ratio"]),
        ("hybrid p50 ms", hybrid["p50_ms"], f"<= {TARGETS['p50_ms']:g}", hybrid["p50_ms"] <= TARGETS["p50_ms"]),
        ("hybrid p99 ms", hybrid["p99_ms"], f"<= {TARGETS['p99_ms']:g}", hybrid["p99_ms"] <= TARGETS["p99_ms"]),
        ("hybrid recall@10", hybrid["recall"], f">= {TARGETS['recall']}", hybrid["recall"] >= TARGETS["recall"]),
    ]


def print_report(report: dict[str, Any]) -> None:
    m, c, r = report["machine"], report["config"], report["rebuild"]
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}; {m['platform']}; python {m['python']}")
    print(f"postgres {m['postgres']}, pgvector {m['pgvector']}, shared_buffers {m.get('shared_buffers')}, "
          f"max_parallel_maintenance_workers {m.get('max_parallel_maintenance_workers')}")
    d = report["data"]
    print(f"data: {c['memories']:,} synthetic memories ({DIM}-d mixture, {TOPICS} topics x {SUBTOPICS} subtopics; "
          f"cos to nearest {d['nearest_cos']:.2f}, to 10th {d['tenth_nearest_cos']:.2f}, random pairs "
          f"{d['pair_cos_mean']:.2f} +- {d['pair_cos_std']:.2f}), corpora {CORPORA}, {r['events'] - r['rows']:,} judgements")
    print()
    print(f"rebuild from {r['events']:,} journal events into {r['rows']:,} rows (median of {r['repeats']}):")
    print(f"  ProjectionRunner.rebuild   {r['rebuild_s']:7.1f} s  {r['rebuild_events_per_s']:9,.0f} events/s"
          f"   (fill {r['rebuild_fill_s']:.1f} s: read, decode, COPY; indexes {r['rebuild_index_s']:.1f} s)")
    print(f"  raw binary COPY + indexes  {r['raw_s']:7.1f} s  {r['raw_rows_per_s']:9,.0f} rows/s  "
          f"   (copy {r['raw_copy_s']:.1f} s; indexes {r['raw_index_s']:.1f} s)")
    print(f"  ratio {r['ratio']:.2f}; without the index builds {r['ratio_without_indexes']:.2f} (information); "
          f"Journal.read alone {r['journal_read_s']:.1f} s")
    v = report["live"]
    print()
    print(f"live apply of {v['events']:,} events ({v['rows']:,} rows) into the finished table of {v['memories_before']:,} rows, "
          f"HNSW in place, pages of {v['page']} ({v['rounds']} rounds, alternated):")
    print(f"  ProjectionRunner.catch_up  {v['runner_s']:7.1f} s  {v['events_per_s']:9,.0f} events/s")
    print(f"  raw binary COPY, same rows {v['raw_s']:7.1f} s  {v['raw_rows_per_s']:9,.0f} rows/s   (the ceiling here)")
    print(f"  ratio raw / runner time {v['ratio']:.2f}; target >= {v['target_per_s']:,.0f} events/s "
          f"{'PASS' if v['met'] else 'FAIL'}")
    s = report["search"]
    print()
    print(f"search: {s['queries']} queries, limit {s['limit']}, {s['depth']} candidates a side; "
          f"{s['keyword_lists_nonempty']:.0%} of queries match words")
    print(f"  {'mode':<16} {'ef_search':>9} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for row in s["results"]:
        recall = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        note = "  (default)" if row["default"] and row["ef_search"] else ""
        if "short_or_foreign" in row:
            note = f"  ({row['short_or_foreign']} queries short of {s['limit']} rows or outside the corpus)"
        print(f"  {row['mode']:<16} {row['ef_search'] or '-':>9} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {recall:>10}{note}")
    print()
    for name, value, target, ok in report["verdicts"]:
        print(f"  {name:<30} {value:8.3f}  target {target:<8} {'PASS' if ok else 'FAIL'}")
    print()
    print({True: "PASS", False: "FAIL: at least one target missed", None: "not judged (--quick)"}[report["pass"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", type=int, help="memories journaled (default 100000; --quick: 2000)")
    parser.add_argument("--live", type=int, help="memories applied live after the rebuild (default 5000; --quick: 200)")
    parser.add_argument("--queries", type=int, help="search queries (default 300; --quick: 20)")
    parser.add_argument("--repeats", type=int, default=1, help="rebuilds and raw COPYs; the median is reported (default 1)")
    parser.add_argument("--ef", default=f"40,{EF_SEARCH},200", help=f"ef_search values to measure (default 40,{EF_SEARCH},200)")
    parser.add_argument("--quick", action="store_true", help="2,000 memories, 20 queries, no target judged")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    memories = args.memories or (2000 if args.quick else 100_000)
    queries = args.queries or (20 if args.quick else 300)
    live = args.live or (200 if args.quick else 5000)
    efs = sorted({int(x) for x in args.ef.split(",")} | {EF_SEARCH})

    external = [name for name in ("SOUL_NATS_URL", "SOUL_PG_URL") if os.environ.get(name)]
    with common.real_parts() as (_, _, pg_url):
        app = "bench" + uuid.uuid4().hex[:8]
        journal = Journal(app)
        say(f"servers: {', '.join(external) or 'embedded'}; app {app}")
        try:
            say(f"making {memories:,} + {live:,} synthetic memories and {queries} queries")
            data = make_data(memories + live, queries)
            split = data.memory_index.index(memories)  # the first live memory
            say(f"journaling {split:,} events")
            seqs = journal_events(journal, data.events[:split])
            rebuild = bench_rebuild(journal, pg_url, data, seqs, args.repeats)
            say(f"live apply of {len(data.events) - split:,} events: runner and raw COPY alternated")
            live_figures, live_seqs = bench_live(journal, pg_url, data.events[split:], rebuild["raw_table"])
            seqs += live_seqs
            with connect(pg_url) as conn:
                report: dict[str, Any] = {
                    "machine": machine(conn),
                    "config": {"memories": memories, "live": live, "queries": queries, "repeats": args.repeats,
                               "quick": args.quick},
                    "data": data_figures(data),
                    "rebuild": rebuild,
                    "live": live_figures,
                    "search": bench_search(conn, app, data, seqs, efs),
                }
        finally:
            common.forget(journal, pg_url)
    report["verdicts"] = verdicts(report)
    # tiny sizes judge nothing
    report["pass"] = None if args.quick else all(ok for *_, ok in report["verdicts"]) and report["live"]["met"]
    say(f"done in {time.perf_counter() - T0:.1f}s")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return 1 if report["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
