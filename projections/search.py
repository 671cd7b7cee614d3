"""Searching memory: by meaning (HNSW), by words (full text), or both fused (hybrid).

One statement per search, against the `memory` view (so it keeps working across rebuilds):

- semantic: the `depth` nearest vectors by cosine distance, from the HNSW index with
  `hnsw.ef_search` >= depth (an HNSW scan returns at most ef_search rows). With a corpus, the
  literal `corpus = '…'` lets the planner take that corpus's partial index, which returns
  `depth` rows of the corpus where the global index filtered after the scan would not.
- keyword: rows whose `words` match `websearch_to_tsquery('simple', text)` (quotes, `or`, `-`
  work as on the web; all words must appear), or the same query with `.`, `/`, `:` read as
  spaces (see memory.py), ranked by ts_rank; a corpus filters them. Only the newest
  KEYWORD_WINDOW matches are ranked: ranking all of them for words found in most memories
  ("the error") takes ~200 ms at 100k rows, so such queries are answered from recent memories
  in bounded time (the planner walks the seq index backwards for those, and takes the GIN index
  for rarer words).
- hybrid: reciprocal rank fusion of both lists (score = sum of 1 / (60 + rank)), which needs no
  calibration between cosine distances and ts_rank values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from projections.memory import SPLIT, Memory

MODES = ("hybrid", "semantic", "keyword")
RRF_K = 60
EF_SEARCH = 100  # measured on clustered 384-d vectors: recall@10 >= 0.95 over 100k rows (ops/bench/memory_bench.py)
DEPTH = 40  # candidates from each side before fusion
KEYWORD_WINDOW = 1000  # keyword search ranks at most this many matches, the newest


@dataclass(frozen=True)
class Hit:
    seq: int
    score: float  # hybrid: fused RRF score; semantic: cosine similarity; keyword: ts_rank
    type: str
    time: datetime
    prose: str
    id: uuid.UUID
    corpus: str | None
    path: str | None  # a corpus chunk's file, relative to its corpus's folder
    first_line: int | None  # the chunk's lines in it, 1-based, inclusive
    last_line: int | None
    resonance: float | None
    semantic_rank: int | None  # 1-based place in each list; None when not in it
    keyword_rank: int | None

    @property
    def lines(self) -> tuple[int, int] | None:
        return None if self.first_line is None or self.last_line is None else (self.first_line, self.last_line)

    @property
    def where(self) -> str | None:
        """Where a corpus chunk comes from, as `corpus:path:first-last`; None for other memories."""
        if self.corpus is None or self.path is None:
            return None
        return f"{self.corpus}:{self.path}" + (f":{self.lines[0]}-{self.lines[1]}" if self.lines else "")


_SEMANTIC = """
SELECT seq, row_number() OVER (ORDER BY distance, seq) AS rank, 1 - distance AS score FROM (
    SELECT seq, vector <=> %(vector)s AS distance FROM {memory}
    WHERE vector IS NOT NULL {corpus} ORDER BY vector <=> %(vector)s LIMIT %(depth)s) nearest"""

_KEYWORD = """
SELECT seq, row_number() OVER (ORDER BY score DESC, seq DESC) AS rank, score FROM (
    SELECT seq, ts_rank(words, query) AS score FROM (
        SELECT seq, words, query FROM {memory},
            (SELECT websearch_to_tsquery('simple', %(text)s)
                 || websearch_to_tsquery('simple', translate(%(text)s, %(split)s, %(spaces)s)) AS query) q
        WHERE words @@ query {corpus} ORDER BY seq DESC LIMIT %(window)s) newest
    ORDER BY score DESC, seq DESC LIMIT %(depth)s) matches"""

_FUSED = {
    "semantic": "SELECT seq, score, rank AS semantic_rank, NULL::bigint AS keyword_rank FROM semantic",
    "keyword": "SELECT seq, score, NULL::bigint AS semantic_rank, rank AS keyword_rank FROM keyword",
    "hybrid": f"""
SELECT seq, (coalesce(1.0 / ({RRF_K} + s.rank), 0) + coalesce(1.0 / ({RRF_K} + k.rank), 0))::float8 AS score,
       s.rank AS semantic_rank, k.rank AS keyword_rank
FROM semantic s FULL JOIN keyword k USING (seq)""",
}

_SEARCH = """
WITH semantic AS ({semantic}), keyword AS ({keyword}), fused AS ({fused})
SELECT f.seq, f.score, m.type, m.time, m.prose, m.id, m.corpus, m.path, m.first_line, m.last_line, m.resonance,
       f.semantic_rank, f.keyword_rank
FROM fused f JOIN {memory} m USING (seq) ORDER BY f.score DESC, f.seq DESC LIMIT %(limit)s"""


def search(
    conn: psycopg.Connection[Any],
    app: str,
    text: str,
    vector: np.ndarray | None = None,
    *,
    mode: str = "hybrid",
    corpus: str | None = None,
    limit: int = 10,
    ef_search: int = EF_SEARCH,
    max_seq: int | None = None,
) -> list[Hit]:
    """The `limit` best memories of soul `app` for `text` (keyword side) and `vector` (semantic
    side, a query embedding of Memory.dim dimensions; not needed for keyword mode). With
    `max_seq`, only memories journaled up to that seq: what a past self knew (like a corpus
    filter, applied after the HNSW scan, so the semantic side may return fewer rows)."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; one of {', '.join(MODES)}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    semantic = mode != "keyword"
    if semantic and (vector is None or len(vector) != Memory.dim):
        raise ValueError(f"{mode} search needs a query vector of {Memory.dim} dimensions")
    depth = limit if mode != "hybrid" else max(limit, DEPTH)
    filters = sql.SQL("AND corpus = {}").format(sql.Literal(corpus)) if corpus is not None else sql.SQL("")
    if max_seq is not None:
        filters += sql.SQL(" AND seq <= {}").format(sql.Literal(max_seq))
    nothing = sql.SQL("SELECT NULL::bigint AS seq, NULL::bigint AS rank, NULL::real AS score WHERE false")
    parts = {
        "semantic": sql.SQL(_SEMANTIC).format(memory=Memory.view(app), corpus=filters) if semantic else nothing,
        "keyword": sql.SQL(_KEYWORD).format(memory=Memory.view(app), corpus=filters) if mode != "semantic" else nothing,
    }
    query = sql.SQL(_SEARCH).format(fused=sql.SQL(_FUSED[mode]), memory=Memory.view(app), **parts)
    params = {"vector": vector, "text": text, "split": SPLIT, "spaces": " " * len(SPLIT), "depth": depth, "limit": limit,
              "window": KEYWORD_WINDOW}
    with conn.pipeline():  # the ef_search setting and the search in one round trip
        if semantic:
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(max(ef_search, depth))])
        rows = conn.execute(query, params).fetchall()
    return [Hit(*row) for row in rows]
