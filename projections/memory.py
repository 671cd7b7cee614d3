"""Memory: one row per bifocal event worth remembering, found by meaning and by words (design §4).

Remembered are what the soul perceived, thought, got back from tools, summarised, and the chunks
of ingested corpora, each with its prose and the vector it was journaled with (nothing is
re-embedded). Not the results of `recall`: they are copies of memories, and remembered they
would be recalled again, each recall's result nesting the last one's (they stay in the journal
and in their conversation's turns). Corpus chunks are forgotten again when their file is
(`document_removed`, naming the chunk event ids) or their corpus is (`corpus_removed`), and any
event when a `redaction` names it (`soul forget`; data: {"event": id}).

A `resonance` event scores the event it judges (data: {"event": id, "score": 0..1, "judge":
user | self | similarity}; a judgement that names no judge is the user's). `judges` keeps each
judge's latest score with its journal seq ({"user": [0.9, 41], ...}): per judge the judgement
with the highest seq wins, whatever order pages are applied in, so a rebuild and an incremental
run agree and re-applying a page changes nothing. `resonance` is `projections.resonance.combine` of
those scores (the one rule), `resonance_seq` the seq of the newest judgement counted. A partial
index on seq over the rows with resonance >= HIGH serves the similarity judge's centroid.

A corpus chunk also keeps where it comes from, as its event's data says: `path` (the file, relative
to the corpus's folder) and `first_line`, `last_line` (1-based, inclusive), so a hit can say
`corpus:path:first-last`; they are NULL for other events, and the lines for a chunk whose data
holds no pair of line numbers.

The vector column is `vector(384)`, the default embedder's dimension. An event embedded with
another dimension is still remembered, with its vector NULL: keyword search finds it, semantic
search cannot (`unembedded` counts those rows). Changing `dim` changes the schema: bump `version`.

Indexes: the seq primary key and a btree on the event id (which resonance looks up) are made
with the table; the search indexes are deferred to `finish`, which builds them over all rows at
once after a fill from the journal: an HNSW index (cosine) over every vector, one partial HNSW
index per corpus (pgvector 0.6 filters *after* an index scan, so `WHERE corpus = …` on the
global index can return fewer than k rows; a partial index returns k of that corpus), and a GIN
index over `words`. Once a table is finished, `apply` adds the partial index of a corpus it sees
for the first time.

`words` is the prose under the 'simple' configuration (no stemming, no stop words, so
identifiers stay as written): as Postgres parses it, where `soul/cli.py` and `runner.catch_up`
are single tokens and `parse_config_v2` is a phrase of three, and, if a token holds `.`, `/` or
`:`, once more with those read as spaces, so that `cli.py` or `catch_up` alone find them too
(search.py queries both ways).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from journal.event import BifocalEvent
from journal.journal import Entry
from projections.base import Projection
from projections.resonance import HIGH, combine

log = logging.getLogger("soul.projections.memory")

REMEMBERED = ("perception", "thought", "tool_result", "summary", "chunk_ingested")
COPIES = ("recall",)  # tools whose results are copies of memories: not remembered again
# Corpus chunks leave memory with their file or corpus; any event with its `redaction` (`soul forget`).
FORGOTTEN = ("document_removed", "corpus_removed", "redaction")
SPLIT = "./:"  # characters read as spaces in the second half of `words` (and of the query)
# The second half only for prose with a separator inside a token (most prose has none), and with
# ts_rank's lowest weight (D, 0.1) against the first half's highest (A, 1.0): words that appear
# in both halves barely gain rank from it.
WORDS = (f"setweight(to_tsvector('simple', prose), 'A') || CASE WHEN prose ~ '[{SPLIT}][[:alnum:]_]' "
         f"THEN to_tsvector('simple', translate(prose, '{SPLIT}', '{' ' * len(SPLIT)}')) ELSE ''::tsvector END")
COLUMNS = ("seq", "id", "time", "type", "prose", "vector", "embedder", "corpus", "path", "first_line", "last_line")
COPY_TYPES = ("bigint", "uuid", "timestamptz", "text", "text", "vector", "text", "text", "text", "int4", "int4")


class Memory(Projection):
    name = "memory"
    version = 6
    types = (*REMEMBERED, "resonance", *FORGOTTEN)
    dim = 384

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE {table} ("
            " seq bigint PRIMARY KEY, id uuid NOT NULL, time timestamptz NOT NULL, type text NOT NULL,"
            " prose text NOT NULL, vector vector({dim}), embedder text NOT NULL, corpus text,"
            " path text, first_line int, last_line int,"
            " resonance real, resonance_seq bigint, judges jsonb,"
            " words tsvector GENERATED ALWAYS AS ({words}) STORED)"
        ).format(table=table, dim=sql.Literal(self.dim), words=sql.SQL(WORDS)))
        # Not unique: a duplicated event id in the journal must not stop the projection.
        cur.execute(sql.SQL("CREATE INDEX ON {} (id)").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (seq DESC) WHERE resonance >= {}").format(table, sql.Literal(HIGH)))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        # Rows are only ever added, in journal order: the highest seq held marks what is applied.
        applied = cur.execute(sql.SQL("SELECT coalesce(max(seq), 0) FROM {}").format(table)).fetchone()[0]  # type: ignore[index]
        rows = [self._row(e) for e in entries if remembered(e) and e.seq > applied]
        if rows:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        self._judge(cur, table, [e for e in entries if e.topic == "resonance"])
        self._forget(cur, table, [e for e in entries if e.topic in FORGOTTEN])
        corpora = {row[COLUMNS.index("corpus")] for row in rows} - {None}
        if corpora:
            relname, existing = self._indexes(cur, table)
            if f"{relname}_vector" in existing:  # finished: index a new corpus as it comes; else `finish` will
                self._create_missing(cur, table, relname, existing, corpora)

    def finish(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        relname, existing = self._indexes(cur, table)
        if f"{relname}_vector" in existing:
            return  # finished before (all in one transaction), and `apply` has kept corpora indexed since
        rows, corpora = cur.execute(sql.SQL(
            "SELECT count(*), coalesce(array_agg(DISTINCT corpus) FILTER (WHERE corpus IS NOT NULL), '{{}}') FROM {}"
        ).format(table)).fetchone()  # type: ignore[misc]
        # HNSW builds fast only while its graph fits in maintenance_work_mem (~4 bytes a dimension
        # plus ~1 KB of links and bookkeeping per row): the default 64 MB holds ~25k rows. Beyond
        # the 2 GB cap pgvector goes on building, slower, rather than taking the machine's memory.
        megabytes = min(2048, max(64, rows * (4 * self.dim + 1024) * 5 // 4 >> 20))
        cur.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(f"{megabytes}MB")))
        self._create_missing(cur, table, relname, existing, set(corpora))
        cur.execute(sql.SQL("ANALYZE {}").format(table))  # plans for a bulk-loaded table need its statistics

    def _row(self, e: Entry) -> tuple[Any, ...]:
        event = e.event
        assert event is not None  # the runner passes decoded entries only
        vector = event.vector if event.embedder.dim == self.dim else None
        return (e.seq, event.id, event.timestamp, event.type, event.prose, vector, event.embedder.name, event.corpus,
                *place(event))

    def _judge(self, cur: psycopg.Cursor[Any], table: sql.Identifier, judgements: Sequence[Entry]) -> None:
        latest: dict[uuid.UUID, dict[str, tuple[float, int]]] = {}
        for e in judgements:
            data = e.event.data  # type: ignore[union-attr]
            try:
                target, score, judge = uuid.UUID(str(data["event"])), float(data["score"]), str(data.get("judge", "user"))
            except (KeyError, TypeError, ValueError):
                log.warning("memory: resonance at seq %d names no event and score: %r", e.seq, data)
                continue
            if not 0.0 <= score <= 1.0:
                log.warning("memory: resonance at seq %d scores %r, outside 0..1", e.seq, score)
                continue
            latest.setdefault(target, {})[judge] = (score, e.seq)  # in journal order: the last one wins
        if not latest:
            return
        # A table filled by COPY has no statistics until autovacuum gets to it; without them the
        # planner hash-joins the judgements against a scan of the whole table (20 ms a page at 50k rows).
        (never_analyzed,) = cur.execute("SELECT reltuples < 0 FROM pg_class WHERE oid = %s::regclass",
                                        [table.as_string(cur)]).fetchone()  # type: ignore[misc]
        if never_analyzed:
            cur.execute(sql.SQL("ANALYZE {}").format(table))
        rows = cur.execute(sql.SQL("SELECT seq, id, judges FROM {} WHERE id = ANY(%s) ORDER BY seq FOR UPDATE").format(table),
                           [list(latest)]).fetchall()
        if not rows:
            return
        updates = []
        for seq, target, stored in rows:
            judges = dict(stored or {})
            for judge, (score, judged_at) in latest[target].items():
                if judge not in judges or judges[judge][1] < judged_at:
                    judges[judge] = [score, judged_at]
            combined = combine({judge: score for judge, (score, _) in judges.items()})
            if combined is not None:  # as the real column holds it: a denormal double would underflow in Postgres
                combined = float(np.float32(combined))
            updates.append((seq, json.dumps(judges, sort_keys=True), combined, max(at for _, at in judges.values())))
        seqs, judges_json, scores, newest = zip(*updates)
        cur.execute(sql.SQL(
            "UPDATE {} AS m SET judges = j.judges, resonance = j.score, resonance_seq = j.newest"
            " FROM unnest(%s::bigint[], %s::jsonb[], %s::real[], %s::bigint[]) AS j(seq, judges, score, newest)"
            " WHERE m.seq = j.seq"
        ).format(table), [list(seqs), list(judges_json), list(scores), list(newest)])

    @staticmethod
    def _forget(cur: psycopg.Cursor[Any], table: sql.Identifier, removals: Sequence[Entry]) -> None:
        # A removed document names its chunks' event ids; a removed corpus takes the chunks
        # journaled before it (a corpus added again later keeps its new ones).
        for e in removals:
            event = e.event
            assert event is not None
            if e.topic == "document_removed":
                ids = [str(i) for i in event.data.get("chunk_ids", [])]
                cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s::uuid[]) AND type = 'chunk_ingested'").format(table), [ids])
            elif e.topic == "redaction":
                try:
                    forgotten = uuid.UUID(str(event.data.get("event")))
                except ValueError:
                    log.warning("memory: redaction at seq %d names no event id: %r", e.seq, event.data)
                    continue
                cur.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), [forgotten])
            elif event.corpus is not None:
                cur.execute(sql.SQL("DELETE FROM {} WHERE corpus = %s AND type = 'chunk_ingested' AND seq < %s")
                            .format(table), [event.corpus, e.seq])

    @staticmethod
    def _indexes(cur: psycopg.Cursor[Any], table: sql.Identifier) -> tuple[str, set[str]]:
        """The table's own name (without schema) and the names of its indexes."""
        relname, names = cur.execute(
            "SELECT t.relname, array(SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = t.oid) FROM pg_class t WHERE t.oid = %s::regclass", [table.as_string(cur)]
        ).fetchone()  # type: ignore[misc]
        return relname, set(names)

    @staticmethod
    def _create_missing(cur: psycopg.Cursor[Any], table: sql.Identifier, relname: str, existing: set[str],
                        corpora: set[str]) -> None:
        hnsw = "USING hnsw (vector vector_cosine_ops)"
        wanted: dict[str, tuple[str, str | None]] = {
            f"{relname}_vector": (hnsw, None),
            f"{relname}_words": ("USING gin (words)", None),
            **{f"{relname}_vector_{corpus_key(c)}": (hnsw, c) for c in sorted(corpora)},
        }
        for name, (using, corpus) in wanted.items():
            if name in existing:
                continue
            ddl = sql.SQL("CREATE INDEX {} ON {} " + using).format(sql.Identifier(name), table)
            if corpus is not None:
                ddl += sql.SQL(" WHERE corpus = {}").format(sql.Literal(corpus))
            cur.execute(ddl)


def remembered(e: Entry) -> bool:
    """Whether memory holds entry `e` (decoded): a remembered type, and no copy of memories."""
    copy = e.topic == "tool_result" and e.event.data.get("tool") in COPIES  # type: ignore[union-attr]
    return e.topic in REMEMBERED and not copy


def place(event: BifocalEvent) -> tuple[str | None, int | None, int | None]:
    """Where a corpus chunk comes from: (path, first line, last line) from its data; Nones for an
    event of no corpus, and no lines when its data holds no pair of line numbers."""
    if event.corpus is None or "path" not in event.data:
        return None, None, None
    lines = event.data.get("lines")
    pair = isinstance(lines, list) and len(lines) == 2 and all(type(n) is int and 0 < n < 2**31 for n in lines)
    return (str(event.data["path"]), *(lines if pair else (None, None)))


def corpus_key(corpus: str) -> str:
    """A short, stable, identifier-safe stand-in for a corpus name (which may be any text)."""
    return hashlib.sha256(corpus.encode()).hexdigest()[:12]


def unembedded(conn: psycopg.Connection[Any], app: str) -> int:
    """How many remembered events have no vector here (their embedder's dimension is not `dim`)."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE vector IS NULL").format(Memory.view(app))
    return conn.execute(query).fetchone()[0]  # type: ignore[index]


def high_resonance_centroid(conn: psycopg.Connection[Any], app: str, window: int,
                            max_seq: int | None = None) -> tuple[np.ndarray, int] | None:
    """The mean of the newest `window` vectors with resonance >= HIGH journaled up to `max_seq`,
    and how many it averages; None while there are none."""
    centroid, n = conn.execute(sql.SQL(
        "SELECT avg(vector), count(*) FROM (SELECT vector FROM {} WHERE resonance >= {} AND vector IS NOT NULL"
        " AND seq <= %s ORDER BY seq DESC LIMIT %s) high").format(Memory.view(app), sql.Literal(HIGH)),
        [2**63 - 1 if max_seq is None else max_seq, window]).fetchone()  # type: ignore[misc]
    return (centroid.to_numpy().astype(np.float32), n) if n else None


def seq_of(conn: psycopg.Connection[Any], app: str, event_id: uuid.UUID) -> int | None:
    """The journal seq of the remembered event with id `event_id` (the first, if the id recurs), or None."""
    row = conn.execute(sql.SQL("SELECT seq FROM {} WHERE id = %s ORDER BY seq LIMIT 1").format(Memory.view(app)),
                       [event_id]).fetchone()
    return row[0] if row else None
