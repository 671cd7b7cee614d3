"""Event counts per type: how many, how many payload bytes, and the latest of each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Entry
from projections.base import Projection


class EventCounts(Projection):
    name = "event_counts"
    version = 1

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE {} (type text PRIMARY KEY, events bigint NOT NULL, bytes bigint NOT NULL, "
            "last_seq bigint NOT NULL, last_time timestamptz NOT NULL)"
        ).format(table))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        types = sorted({e.topic for e in entries})
        counted = dict(cur.execute(
            sql.SQL("SELECT type, last_seq FROM {} WHERE type = ANY(%s) FOR UPDATE").format(table), [types]
        ).fetchall())
        totals: dict[str, list[Any]] = {}
        for e in entries:
            if e.seq > counted.get(e.topic, 0):  # seqs a counter already holds are not counted twice
                total = totals.setdefault(e.topic, [e.topic, 0, 0, 0, None])
                total[1:] = total[1] + 1, total[2] + e.size, e.seq, e.event.timestamp  # type: ignore[union-attr]
        cur.executemany(sql.SQL(
            "INSERT INTO {0} AS t VALUES (%s, %s, %s, %s, %s) ON CONFLICT (type) DO UPDATE SET "
            "events = t.events + excluded.events, bytes = t.bytes + excluded.bytes, "
            "last_seq = excluded.last_seq, last_time = excluded.last_time"
        ).format(table), list(totals.values()))
