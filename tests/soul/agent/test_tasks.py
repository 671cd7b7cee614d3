"""Tasks worked on step by step (soul/agent/tasks.py), in this process, against real NATS and
Postgres, with tiny models that call tools as their script says (tests/tiny_model.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journal.event import BifocalEvent
from soul.agent import tasks
from soul.agent.corpus import Ingest, list_files
from soul.agent.loop import Soul, SoulConfig
from soul.agent.tools import TOOLS, Tool, register, text_parameter
from tests.support import drop_schema
from tests.tiny_model import build_scripted_model

CONFIG = SoulConfig(max_tokens=16, self_judge=False)


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture
def opened(nats_url: str, pg_url: str, app_name: str, soul_home: Path, tmp_path: Path) -> Iterator[Any]:
    """open(script, default) -> a Soul on a fresh journal thinking with a scripted model."""
    souls: list[Soul] = []

    def open_(script: list[tuple[str, str]], default: str = "I could not finish.") -> Soul:
        model = build_scripted_model(tmp_path / f"model-{len(souls)}", script, default)
        soul = Soul.open(app_name, model_dir=model, config=CONFIG)
        souls.append(soul)
        return soul

    yield open_
    for soul in souls:
        soul.close()
    drop_schema(pg_url, app_name)


def of_task(soul: Soul, state: Any, *kinds: str) -> list[BifocalEvent]:
    return [e.event for e in soul.journal.read(since=state.started_seq)
            if e.event is not None and e.event.data.get("task") == str(state.task) and (not kinds or e.topic in kinds)]


def run_to_end(soul: Soul, state: Any, limit: int = 20) -> Any:
    for _ in range(limit):
        if state.status not in ("open", "cancelling"):
            return state
        state = tasks.step(soul, state)
    raise AssertionError(f"task still {state.status} after {limit} steps")


@pytest.fixture
def mylib(tmp_path: Path) -> Path:
    root = tmp_path / "mylib"
    root.mkdir()
    (root / "retry.py").write_text("def retry(call):\n    # exponential backoff: 1 s, 2 s, 4 s, then give up\n"
                                   "    for wait in (1, 2, 4):\n        ...\n")
    (root / "README.md").write_text("mylib: small helpers.\n")
    return root


@pytest.fixture
def shop(tmp_path: Path, soul_home: Path) -> str:
    from soul.agent import databases

    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE customers (id integer PRIMARY KEY, name text);"
                         "CREATE TABLE invoices (id integer PRIMARY KEY, customer_id integer REFERENCES customers(id),"
                         " total real);"
                         "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');"
                         "INSERT INTO invoices VALUES (10, 1, 99.5), (11, 2, 12.0);")
    databases.add("shop", {"kind": "sqlite", "path": str(path)})
    return "shop"


def ingest(soul: Soul, name: str, root: Path) -> None:
    from projections import corpora

    soul.catch_up()
    Ingest(soul.journal, soul.embedder, name, corpora.files(soul.conn, soul.app, name)).run(root, list_files(root))
    soul.catch_up()


def test_a_task_reads_a_corpus_and_a_database_then_finishes_with_its_outcome(
        opened: Any, mylib: Path, shop: str) -> None:
    answer = "Retries back off 1, 2 then 4 s; invoices.customer_id points at customers."
    soul = opened([
        ("customer_id", answer),
        ("backoff", call("sql", query="SELECT id, customer_id, total FROM invoices")),
        ("retry.py", call("read", path="retry.py")),
        ("Begin the task", call("files")),
    ])
    ingest(soul, "mylib", mylib)
    started = tasks.start(soul, "find how mylib waits between attempts and where invoices live",
                          corpus="mylib", db=shop, max_steps=6)
    assert started.tools == ["recall", "files", "read", "grep", "sql"] and started.status == "open"
    done = run_to_end(soul, started)
    assert (done.status, done.steps, done.outcome) == ("done", 4, answer)
    calls = of_task(soul, done, "tool_call")
    assert [(c.data["tool"], c.data["arguments"]) for c in calls] == [
        ("files", {"corpus": "mylib"}), ("read", {"path": "retry.py", "corpus": "mylib"}),
        ("sql", {"query": "SELECT id, customer_id, total FROM invoices", "db": "shop"})]
    results = of_task(soul, done, "tool_result")
    assert [r.data["outcome"] for r in results] == ["ok"] * 3
    assert "retry.py" in results[0].prose and "backoff" in results[1].prose and "99.5" in results[2].prose
    thoughts = of_task(soul, done, "thought")
    assert [t.data["step"] for t in thoughts] == [1, 2, 3, 4]
    assert thoughts[1].causation_id == results[0].id  # each step is caused by the newest result
    finished = of_task(soul, done, "task_finished")
    assert len(finished) == 1 and finished[0].data["status"] == "done" and finished[0].vector.size == 384


def test_a_call_outside_the_tasks_scope_is_refused_with_an_error_result(opened: Any, mylib: Path) -> None:
    soul = opened([
        ("only", "Refused twice, so I stop here."),
        ("may not call", call("files", corpus="elsewhere")),
        ("Begin the task", call("mount", corpus="mylib")),
    ])
    ingest(soul, "mylib", mylib)
    done = run_to_end(soul, tasks.start(soul, "look around mylib", corpus="mylib"))
    assert done.status == "done" and done.steps == 3
    mount, files = of_task(soul, done, "tool_result")
    assert mount.data["outcome"] == "error" and mount.prose.startswith("this task may not call 'mount'")
    assert files.data["outcome"] == "error" and files.prose == "this task may read corpus 'mylib' only, not 'elsewhere'"
    assert all(e.type != "corpus_mounted" for e in (x.event for x in soul.journal.read()))  # not run


def test_cancel_ends_it_between_steps_and_a_budget_ends_it_too(opened: Any) -> None:
    soul = opened([], call("recall", query="anything"))  # never answers: it would go on forever
    first = tasks.step(soul, tasks.start(soul, "recall things", max_steps=5))
    assert first.steps == 1 and first.calls == first.results == 1
    assert tasks.cancel(soul, first.short).status == "cancelling"
    done = tasks.step(soul, tasks.state(soul, first.short))
    assert (done.status, done.steps, done.outcome) == ("cancelled", 1, "Cancelled after 1 steps.")
    with pytest.raises(tasks.TaskError, match="is cancelled already"):
        tasks.cancel(soul, first.short)

    budget = run_to_end(soul, tasks.start(soul, "recall more things", max_steps=2))
    assert budget.status == "out_of_budget" and budget.steps == 2
    assert budget.outcome.startswith("Out of budget after 2 steps. The last step: <tool_call>")


@pytest.fixture
def side_effect() -> Iterator[list[str]]:
    """A tool that is not read-only: it records each run."""
    runs: list[str] = []
    register(Tool("launch", "Launch something (not read-only).", text_parameter("what", "what to launch"),
                  lambda soul, arguments: runs.append(arguments["what"]) or "launched"))
    yield runs
    del TOOLS["launch"]


def test_a_call_journaled_without_its_result_is_retried_only_when_read_only(opened: Any, side_effect: list[str]) -> None:
    """What a crash mid-call leaves (thought and tool calls journaled, no results), built as the
    soul journals it; a restarted worker goes on from there."""
    soul = opened([("not retried", "Done, without launching twice.")])
    state = tasks.start(soul, "launch the rocket", tools=["launch"])
    started = of_task(soul, state)[0]
    thought = BifocalEvent("thought", call("launch", what="rocket") + call("recall", query="rocket"),
                           soul.embedder.embed(["x"])[0], soul.embedder.id, state.conversation,
                           causation_id=started.id, data={"task": str(state.task), "step": 1})
    _, thought = soul.journal.add(thought)
    for name, arguments in soul.mind.tool_calls(thought.prose):
        soul.journal.add(BifocalEvent("tool_call", name, soul.embedder.embed([name])[0], soul.embedder.id,
                                      state.conversation, causation_id=thought.id,
                                      data={"tool": name, "arguments": arguments, "task": str(state.task)}))
    done = run_to_end(soul, tasks.state(soul, state.short))
    assert done.status == "done" and done.steps == 2 and side_effect == []  # launch was never run
    launch, recall = of_task(soul, done, "tool_result")
    assert launch.data["outcome"] == "error" and launch.prose.startswith("not retried:")
    assert recall.data["outcome"] == "ok" and recall.data["retried"] is True
    assert len(of_task(soul, done, "tool_call")) == 2  # no call journaled twice


def test_starting_a_task_checks_what_it_names(opened: Any) -> None:
    soul = opened([])
    with pytest.raises(tasks.TaskError, match="the goal is empty"):
        tasks.start(soul, "  ")
    with pytest.raises(tasks.TaskError, match="no corpus named 'nope'"):
        tasks.start(soul, "read", corpus="nope")
    with pytest.raises(tasks.TaskError, match="no database named 'nope'"):
        tasks.start(soul, "query", db="nope")
    with pytest.raises(tasks.TaskError, match="no tool named 'nope'"):
        tasks.start(soul, "call", tools=["nope"])
    with pytest.raises(tasks.TaskError, match="no task 'abc'"):
        tasks.state(soul, "abc")


def test_task_in_chat_starts_one_with_the_defaults(opened: Any) -> None:
    soul = opened([])
    result = soul.turn("/task count the ships in the harbour")
    (state,) = tasks.listing(soul)
    assert result.reply.startswith(f"task {state.short} started (at most {tasks.DEFAULT_STEPS} steps)")
    assert (state.goal, state.by, state.tools, state.status) == ("count the ships in the harbour", "chat", ["recall"], "open")
    assert soul.turn("/task").reply == "usage: /task GOAL"
