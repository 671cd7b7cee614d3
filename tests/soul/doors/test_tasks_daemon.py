"""Tasks as a user runs them: `soul task` handing a goal to a real `soul daemon` that works on
it between turns, is killed with SIGKILL in the middle of a tool call and goes on after a
restart; a tiny scripted model calls the tools (tests/tiny_model.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journal.journal import Journal
from tests.soul.doors.test_daemon import SOUL, Daemons, log_of, soul
from tests.support import drop_schema
from tests.tiny_model import build_scripted_model

# Two slow read-only queries (seconds each: SQLite counts ~10M rows/s), then the outcome.
COUNT = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT count(*) AS {name} FROM c"
FIRST, SECOND = COUNT.format(n=20_000_000, name="first_count"), COUNT.format(n=20_000_001, name="second_count")
OUTCOME = "Counted twice: 20000000, then 20000001."


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("counter"), [
        ("(tool result) second_count", OUTCOME),
        ("(tool result) first_count", call("sql", query=SECOND)),
        ("Begin the task", call("sql", query=FIRST)),
    ], "Hello from the daemon.")


@pytest.fixture
def env(soul_home: Path, nats_url: str, pg_url: str, app_name: str, counter: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "SOUL_HOME": str(soul_home), "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
           "SOUL_APP": app_name, "SOUL_MODEL": str(counter)}
    drop_schema(pg_url, app_name)


@pytest.fixture
def daemons(env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(env, tmp_path)
    yield started
    started.stop_all()


def task_events(env: dict[str, str], kind: str | None = None) -> list[tuple[int, Any]]:
    with Journal(env["SOUL_APP"], {"SOUL_NATS_URL": env["SOUL_NATS_URL"]}) as journal:
        return [(e.seq, e.event) for e in journal.read() if e.event is not None
                and (kind is None or e.topic == kind) and "task" in e.event.data]


def wait_for(what: str, check: Any, daemon: subprocess.Popen[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert daemon.poll() is None and time.monotonic() < deadline, f"no {what}: {log_of(daemon)}"
        time.sleep(0.05)
    return found


def test_a_killed_daemon_resumes_the_task_without_redoing_a_step_and_a_turn_goes_first(
        daemons: Daemons, env: dict[str, str], tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.execute("CREATE TABLE invoices (id integer PRIMARY KEY, total real)")
    added = soul(env, "db", "add", "shop", "--sqlite", str(tmp_path / "shop.db"))
    assert added.returncode == 0, added.stderr
    first = daemons.start()
    started = soul(env, "task", "count the rows twice", "--db", "shop", "--json")
    assert started.returncode == 0, started.stderr
    task = json.loads(started.stdout.splitlines()[0])
    assert task["status"] == "open" and task["tools"] == ["recall", "sql"] and task["db"] == "shop"

    # Killed in the middle of the first query: its call is journaled, its result is not.
    wait_for("first call", lambda: task_events(env, "tool_call"), first)
    first.kill()
    first.wait()
    assert [e.data["tool"] for _, e in task_events(env, "tool_call")] == ["sql"]
    assert task_events(env, "tool_result") == []

    second = daemons.start()
    # While the second query runs, the user says something: it is answered before the next step.
    calls = wait_for("second call", lambda: (c := task_events(env, "tool_call")) and len(c) == 2 and c, second)
    said = soul(env, "say", "--json", "how are you?")
    assert said.returncode == 0, said.stderr
    reply = json.loads(said.stdout)
    assert reply["reply"] == "Hello from the daemon."
    wait_for("the end", lambda: task_events(env, "task_finished"), second)

    shown = [json.loads(line) for line in soul(env, "tasks", "--json").stdout.splitlines()]
    assert [(t["id"], t["status"], t["steps"], t["outcome"]) for t in shown] == [(task["id"], "done", 3, OUTCOME)]
    # Counted from the journal: each step's thought and each call once; the cut-off call's result once, retried.
    thoughts = task_events(env, "thought")
    assert [e.data["step"] for _, e in thoughts] == [1, 2, 3]
    assert [e.data["arguments"]["query"] for _, e in calls] == [FIRST, SECOND]
    results = task_events(env, "tool_result")
    assert [(e.data["outcome"], e.data.get("retried", False)) for _, e in results] == [("ok", True), ("ok", False)]
    assert "20000000" in results[0][1].prose and "20000001" in results[1][1].prose
    assert calls[1][0] < reply["thought_seq"] < thoughts[2][0]  # the turn came between two steps
    assert "task " + task["id"] + ": done after 3 steps" in log_of(second)

    shown = soul(env, "task", "show", task["id"])
    assert shown.returncode == 0 and shown.stdout.count("tool_result") == 2 and "task_finished" in shown.stdout


def test_cancel_stops_the_daemons_task_between_steps(daemons: Daemons, env: dict[str, str], tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.execute("CREATE TABLE t (x)")
    assert soul(env, "db", "add", "shop", "--sqlite", str(tmp_path / "shop.db")).returncode == 0
    daemon = daemons.start()
    task = json.loads(soul(env, "task", "count the rows twice", "--db", "shop", "--json").stdout)
    wait_for("first call", lambda: task_events(env, "tool_call"), daemon)
    cancelled = soul(env, "task", "cancel", task["id"])
    assert cancelled.returncode == 0 and cancelled.stdout == f"task {task['id']} is cancelled before its next step\n"
    wait_for("the end", lambda: task_events(env, "task_finished"), daemon)
    (ended,) = [json.loads(line) for line in soul(env, "tasks", "--json").stdout.splitlines()]
    assert ended["status"] == "cancelled" and ended["steps"] < 3  # its script had a third step
    (cancel_seq, _), = task_events(env, "task_cancelled")
    thoughts, results = task_events(env, "thought"), task_events(env, "tool_result")
    assert all(seq < cancel_seq for seq, _ in thoughts)  # no step began after the cancel
    assert len(results) == len(thoughts) == ended["steps"]  # the step under way finished
    again = soul(env, "task", "cancel", task["id"])
    assert again.returncode == 1 and again.stderr == f"Error: task {task['id']} is cancelled already\n"
