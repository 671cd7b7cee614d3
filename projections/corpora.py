"""Corpora: per corpus, the files ingested with their content hash and chunk event ids, and which
corpus is mounted (design §4). `soul corpus add` reads it to re-ingest incrementally, `soul
corpus list` to show the corpora; the chunks themselves live in memory (memory.py).

One table, keyed (corpus, path): a row with path '' stands for the corpus itself and holds
`mounted` and `root`; the other rows are its files. Events, in journal order:

- corpus_added (data: root): the corpus row exists and holds the folder its files are read
  from (the navigation tools read them there, soul/agent/navigate.py).

- chunk_ingested (data: path, sha256, chunks = the file's chunk count): the corpus row exists;
  the file row takes the chunk's id, starting over when the hash differs from the one it holds.
  A file row is complete when it holds `chunks` ids (an interrupted ingest leaves it short).
- document_removed (data: path): the file row goes.
- corpus_mounted: that corpus is the mounted one, and no other (the latest mount or unmount wins).
- corpus_unmounted: that corpus is no longer mounted.
- corpus_removed: every row of the corpus goes.

Each row keeps the seq of the last event that wrote it; a statement changes a row only for an
event newer than that, so an entry applied twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Entry
from projections.base import Projection

_CHUNK = """
INSERT INTO {t} AS f VALUES (%(corpus)s, %(path)s, %(sha256)s, %(chunks)s, ARRAY[%(id)s::uuid], false, %(seq)s, NULL)
ON CONFLICT (corpus, path) DO UPDATE SET
    chunk_ids = CASE WHEN f.sha256 = excluded.sha256 THEN f.chunk_ids || excluded.chunk_ids ELSE excluded.chunk_ids END,
    sha256 = excluded.sha256, chunks = excluded.chunks, seq = excluded.seq
WHERE f.seq < excluded.seq"""
_CORPUS = """
INSERT INTO {t} AS f VALUES (%(corpus)s, '', NULL, 0, '{{}}', false, %(seq)s, NULL)
ON CONFLICT (corpus, path) DO UPDATE SET seq = excluded.seq WHERE f.seq < excluded.seq"""
_ROOT = """
INSERT INTO {t} AS f VALUES (%(corpus)s, '', NULL, 0, '{{}}', false, %(seq)s, %(root)s)
ON CONFLICT (corpus, path) DO UPDATE SET root = excluded.root, seq = excluded.seq WHERE f.seq < excluded.seq"""


class Corpora(Projection):
    name = "corpora"
    version = 2
    types = ("corpus_added", "chunk_ingested", "document_removed", "corpus_mounted", "corpus_unmounted", "corpus_removed")

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE {} (corpus text NOT NULL, path text NOT NULL, sha256 text, chunks int NOT NULL,"
            " chunk_ids uuid[] NOT NULL, mounted boolean NOT NULL, seq bigint NOT NULL, root text, PRIMARY KEY (corpus, path))"
        ).format(table))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        chunks: list[dict[str, Any]] = []  # consecutive chunk events go in one pipelined executemany

        def flush() -> None:
            if chunks:
                cur.executemany(sql.SQL(_CHUNK).format(t=table), chunks)
                cur.executemany(sql.SQL(_CORPUS).format(t=table), list({c["corpus"]: c for c in chunks}.values()))
                chunks.clear()

        for e in entries:
            event = e.event
            assert event is not None  # the runner passes decoded entries only
            if event.corpus is None:
                continue  # not about a corpus: nothing to keep
            corpus, data = event.corpus, event.data
            if e.topic == "chunk_ingested":
                chunks.append({"corpus": corpus, "path": str(data.get("path", "")), "sha256": data.get("sha256"),
                               "chunks": int(data.get("chunks", 0)), "id": event.id, "seq": e.seq})
                continue
            flush()
            if e.topic == "corpus_added":
                cur.execute(sql.SQL(_ROOT).format(t=table), {"corpus": corpus, "seq": e.seq,
                                                             "root": str(data.get("root") or "") or None})
            elif e.topic == "document_removed":
                cur.execute(sql.SQL("DELETE FROM {} WHERE corpus = %s AND path = %s AND path <> '' AND seq < %s")
                            .format(table), [corpus, data.get("path"), e.seq])
            elif e.topic == "corpus_mounted":  # only a corpus the view knows can be mounted
                cur.execute(sql.SQL(
                    "UPDATE {0} SET mounted = (corpus = %(c)s), seq = %(seq)s WHERE path = '' AND seq < %(seq)s"
                    " AND EXISTS (SELECT FROM {0} WHERE corpus = %(c)s AND path = '')").format(table),
                    {"c": corpus, "seq": e.seq})
            elif e.topic == "corpus_unmounted":
                cur.execute(sql.SQL("UPDATE {} SET mounted = false, seq = %s WHERE corpus = %s AND path = '' AND seq < %s")
                            .format(table), [e.seq, corpus, e.seq])
            elif e.topic == "corpus_removed":
                cur.execute(sql.SQL("DELETE FROM {} WHERE corpus = %s AND seq < %s").format(table), [corpus, e.seq])
        flush()


@dataclass(frozen=True)
class FileState:
    sha256: str
    chunks: int  # how many chunks the file has
    chunk_ids: list[uuid.UUID]  # the chunk events journaled for it so far

    @property
    def complete(self) -> bool:
        return len(self.chunk_ids) == self.chunks


def files(conn: psycopg.Connection[Any], app: str, corpus: str) -> dict[str, FileState]:
    rows = conn.execute(sql.SQL("SELECT path, sha256, chunks, chunk_ids FROM {} WHERE corpus = %s AND path <> ''")
                        .format(Corpora.view(app)), [corpus]).fetchall()
    return {path: FileState(sha, chunks, ids) for path, sha, chunks, ids in rows}


def listing(conn: psycopg.Connection[Any], app: str) -> list[dict[str, Any]]:
    """Each corpus with its file and chunk counts and whether it is mounted, by name."""
    rows = conn.execute(sql.SQL(
        "SELECT corpus, bool_or(mounted), count(*) FILTER (WHERE path <> ''),"
        " coalesce(sum(cardinality(chunk_ids)), 0), max(root) FROM {} GROUP BY corpus ORDER BY corpus"
    ).format(Corpora.view(app))).fetchall()
    return [{"name": name, "mounted": mounted, "files": files, "chunks": int(chunks), "root": root}
            for name, mounted, files, chunks, root in rows]


def root(conn: psycopg.Connection[Any], app: str, corpus: str) -> str | None:
    """The folder corpus `corpus` was last added from (None: unknown, or added before roots were journaled)."""
    row = conn.execute(sql.SQL("SELECT root FROM {} WHERE corpus = %s AND path = ''").format(Corpora.view(app)),
                       [corpus]).fetchone()
    return row[0] if row else None


def mounted(conn: psycopg.Connection[Any], app: str) -> str | None:
    row = conn.execute(sql.SQL("SELECT corpus FROM {} WHERE path = '' AND mounted").format(Corpora.view(app))).fetchone()
    return row[0] if row else None
