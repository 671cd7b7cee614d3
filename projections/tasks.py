"""Tasks: one row per task the soul works on over many steps (issue 15), all of it from the journal.

Events, in journal order (a step's events carry the task's id as `data.task`):

- task_started (prose: the goal; data: task, conversation, max_steps, max_seconds, corpus, db,
  tools, by): the row, `open`.
- thought of a task: one step more; `last_thought` is its seq.
- tool_call, tool_result of a task: counted (`calls`, `results`).
- task_cancelled: an open task becomes `cancelling`; the worker finishes it between two steps.
- task_finished (prose: the outcome; data: status): `status` is done, out_of_budget, cancelled
  or failed, and the row keeps the outcome.

Each row keeps the seq of the last event that changed it and a statement changes it only for a
newer event, so an entry applied twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from journal.journal import Entry
from projections.base import Projection

OPEN = ("open", "cancelling")  # statuses of a task still to be worked on
ENDS = ("done", "out_of_budget", "cancelled", "failed")
COLUMNS = ("task", "conversation", "goal", "by", "corpus", "db", "tools", "max_steps", "max_seconds", "started",
           "started_seq", "status", "steps", "calls", "results", "last_thought", "outcome", "finished_seq", "seq")

_STARTED = """INSERT INTO {t} (task, conversation, goal, by, corpus, db, tools, max_steps, max_seconds, started,
    started_seq, status, steps, calls, results, seq)
VALUES (%(task)s, %(conversation)s, %(goal)s, %(by)s, %(corpus)s, %(db)s, %(tools)s, %(max_steps)s, %(max_seconds)s,
    %(started)s, %(seq)s, 'open', 0, 0, 0, %(seq)s)
ON CONFLICT (task) DO NOTHING"""
_CHANGES = {
    "thought": "steps = steps + 1, last_thought = %(seq)s",
    "tool_call": "calls = calls + 1",
    "tool_result": "results = results + 1",
    "task_cancelled": "status = CASE WHEN status = 'open' THEN 'cancelling' ELSE status END",
    "task_finished": "status = %(status)s, outcome = %(prose)s, finished_seq = %(seq)s",
}


class Tasks(Projection):
    name = "tasks"
    version = 1
    types = ("task_started", "thought", "tool_call", "tool_result", "task_cancelled", "task_finished")

    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE {} (task uuid PRIMARY KEY, conversation text NOT NULL, goal text NOT NULL, by text NOT NULL,"
            " corpus text, db text, tools text[] NOT NULL, max_steps int NOT NULL, max_seconds double precision NOT NULL,"
            " started timestamptz NOT NULL, started_seq bigint NOT NULL, status text NOT NULL, steps int NOT NULL,"
            " calls int NOT NULL, results int NOT NULL, last_thought bigint, outcome text, finished_seq bigint,"
            " seq bigint NOT NULL)").format(table))

    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        for e in entries:
            event = e.event
            assert event is not None
            task = event.data.get("task")
            if not isinstance(task, str):  # a thought or tool event of a conversation, not of a task
                continue
            try:
                task = uuid.UUID(task)
            except ValueError:
                continue
            if event.type == "task_started":
                d = event.data
                cur.execute(sql.SQL(_STARTED).format(t=table), {
                    "task": task, "conversation": d.get("conversation") or f"task:{task}", "goal": event.prose,
                    "by": str(d.get("by") or "user"), "corpus": d.get("corpus"), "db": d.get("db"),
                    "tools": [str(t) for t in d.get("tools") or []], "max_steps": int(d.get("max_steps") or 0),
                    "max_seconds": float(d.get("max_seconds") or 0), "started": event.timestamp, "seq": e.seq})
                continue
            change = _CHANGES[event.type]
            cur.execute(sql.SQL(f"UPDATE {{t}} SET {change}, seq = %(seq)s WHERE task = %(task)s AND seq < %(seq)s"
                                ).format(t=table),
                        {"task": task, "seq": e.seq, "prose": event.prose, "status": str(event.data.get("status"))})


@dataclass(frozen=True)
class TaskState:
    task: uuid.UUID
    conversation: str  # the task's steps are the turns of this conversation
    goal: str
    by: str  # who asked: user, agent:NAME, soul:NAME
    corpus: str | None  # the corpus its file tools read, if any
    db: str | None  # the database its sql tool queries, if any
    tools: list[str]  # what it may call
    max_steps: int
    max_seconds: float  # wall time from its start
    started: datetime
    started_seq: int
    status: str  # open | cancelling | done | out_of_budget | cancelled | failed
    steps: int  # thoughts so far
    calls: int
    results: int
    last_thought: int | None  # seq
    outcome: str | None
    finished_seq: int | None
    seq: int  # of the last event that changed it

    @property
    def short(self) -> str:
        """The first 8 hex digits of its id: what commands show and take."""
        return self.task.hex[:8]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": str(self.task), "started": self.started.isoformat(), "id": self.short}


def _select(app: str, where: str) -> sql.Composed:
    return sql.SQL(f"SELECT {', '.join(COLUMNS)} FROM {{}} {where}").format(Tasks.view(app))


def listing(conn: psycopg.Connection[Any], app: str, *, open_only: bool = False) -> list[TaskState]:
    """The tasks in the order they were started (only those still to be worked on, with `open_only`)."""
    where = "WHERE status = ANY(%s) ORDER BY started_seq" if open_only else "ORDER BY started_seq"
    return [TaskState(*row) for row in conn.execute(_select(app, where), [list(OPEN)] if open_only else [])]


def find(conn: psycopg.Connection[Any], app: str, key: str) -> list[TaskState]:
    """The tasks whose id is `key` or starts with it (a short id: its first hex digits)."""
    prefix = key.strip().lower().replace("-", "")
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        return []
    return [TaskState(*row) for row in conn.execute(
        _select(app, "WHERE replace(task::text, '-', '') LIKE %s ORDER BY started_seq"), [prefix + "%"])]
