"""Tasks: a goal the soul works on over many steps, across restarts (issue 15).

A task is its events and nothing else (projections/tasks.py keeps its state):

- `task_started` (prose: the goal) names its budget (steps, seconds of wall time from its
  start), the corpus and database it may read and the tools it may call;
- each **step** is one thought in the task's conversation (`task:<id>`), caused by the newest
  event of the task, and the tool calls parsed from it with their results, all carrying
  `data.task`; the step's window is the conversation's (soul/agent/loop.py): the pinned self,
  the summary the mind wrote of the steps evicted (journaled by context.summarise), the newest
  steps and results, and a "# Task" section with the goal, the budget and the rule that an
  answer without a tool call is the outcome;
- `task_finished` (prose: the outcome; data: status done | out_of_budget | cancelled | failed).

`step` resumes from the journal alone, as a durable workflow does: a journaled result is never
run again; a call journaled without its result (the process died while it ran) is run again
when its tool is read-only, and otherwise gets an error result saying it was not retried; a
thought without tool calls that has no `task_finished` after it finishes the task. The
daemon (soul/doors/daemon.py) takes one step at a time when no turn is waiting.

A call outside the task's scope, a tool it may not use or a corpus or database other than its
own, is journaled with an error result and not run. Tools that read a corpus or a database
(parameters `corpus`, `db`) get the task's when the call names none.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from journal.event import BifocalEvent
from journal.journal import Entry
from projections import corpora
from projections import tasks as task_view
from projections.tasks import Tasks, TaskState
from soul.agent import databases
from soul.agent.loop import Brief, Soul
from soul.agent.tools import TOOLS, Tool, ToolError, register, required, text_parameter

DEFAULT_STEPS = 20
DEFAULT_SECONDS = 3600.0
CORPUS_TOOLS = ("files", "read", "grep")
DB_TOOLS = ("sql",)
SCOPED = ("corpus", "db")  # tool parameters that must name the task's own corpus and database


class TaskError(ValueError):
    """A task that cannot be started, found or cancelled; the message says why."""


def conversation_of(task: uuid.UUID) -> str:
    return f"task:{task}"


def default_tools(corpus: str | None, db: str | None) -> list[str]:
    """What a task may call unless told otherwise: recall, and the readers of its corpus and database."""
    return ["recall", *(CORPUS_TOOLS if corpus else ()), *(DB_TOOLS if db else ())]


def start(soul: Soul, goal: str, *, corpus: str | None = None, db: str | None = None,
          max_steps: int = DEFAULT_STEPS, max_seconds: float = DEFAULT_SECONDS, tools: Iterable[str] = (),
          by: str = "user") -> TaskState:
    """Journal a task_started for `goal`; its state. `tools` are allowed besides the defaults."""
    goal = " ".join(goal.split())
    if not goal:
        raise TaskError("the goal is empty: say what the task is for")
    if max_steps < 1 or not max_seconds > 0:
        raise TaskError("a task needs at least one step and some time")
    if corpus is not None:
        soul.catch_up(corpora.Corpora.name)
        known = [c["name"] for c in corpora.listing(soul.conn, soul.app)]
        if corpus not in known:
            raise TaskError(f"no corpus named {corpus!r}; known: {', '.join(known) or 'none (soul corpus add NAME PATH)'}")
        if corpora.root(soul.conn, soul.app, corpus) is None:
            raise TaskError(f"corpus {corpus!r} has no root folder journaled: add it again (soul corpus add {corpus} PATH)")
    if db is not None and db not in (configured := databases.configured()):
        known = ", ".join(configured) or "none (soul db add NAME --sqlite PATH)"
        raise TaskError(f"no database named {db!r}; configured: {known}")
    allowed = default_tools(corpus, db)
    for name in tools:
        if name not in TOOLS:
            raise TaskError(f"no tool named {name!r}; tools: {', '.join(TOOLS)}")
        if name not in allowed:
            allowed.append(name)
    task = uuid.uuid4()
    soul.journal.add(BifocalEvent(
        "task_started", goal, soul.embedder.embed([goal])[0], soul.embedder.id, conversation_of(task),
        data={"task": str(task), "conversation": conversation_of(task), "max_steps": max_steps,
              "max_seconds": float(max_seconds), "corpus": corpus, "db": db, "tools": allowed, "by": by}))
    return state(soul, str(task))


def state(soul: Soul, key: str) -> TaskState:
    """The task whose id is or starts with `key`, as the journal has it now."""
    soul.catch_up(Tasks.name)
    found = task_view.find(soul.conn, soul.app, key)
    if not found:
        raise TaskError(f"no task {key!r}: `soul tasks` lists them")
    if len(found) > 1:
        raise TaskError(f"{key!r} names {len(found)} tasks: give more of the id")
    return found[0]


def listing(soul: Soul, open_only: bool = False) -> list[TaskState]:
    """The tasks in the order they were started (only those still to be worked on, with `open_only`)."""
    soul.catch_up(Tasks.name)
    return task_view.listing(soul.conn, soul.app, open_only=open_only)


def open_tasks(soul: Soul) -> list[TaskState]:
    """The tasks still to be worked on, the one left longest first."""
    return sorted(listing(soul, open_only=True), key=lambda t: t.seq)


def cancel(soul: Soul, key: str, by: str = "user") -> TaskState:
    """Journal a task_cancelled: the worker finishes the task as cancelled before its next step."""
    task = state(soul, key)
    if task.status not in task_view.OPEN:
        raise TaskError(f"task {task.short} is {task.status} already")
    soul.journal.add(BifocalEvent("task_cancelled", f"cancel the task: {task.goal}", soul.embedder.embed([task.goal])[0],
                                  soul.embedder.id, task.conversation, data={"task": str(task.task), "by": by}))
    return state(soul, str(task.task))


def finish(soul: Soul, task: TaskState, status: str, outcome: str) -> TaskState:
    outcome = outcome.strip() or "(no outcome)"
    soul.journal.add(BifocalEvent("task_finished", outcome, soul.embedder.embed([outcome])[0], soul.embedder.id,
                                  task.conversation, data={"task": str(task.task), "status": status,
                                                           "steps": task.steps}))
    return state(soul, str(task.task))


# -- a step ------------------------------------------------------------------------------


def _entry(soul: Soul, seq: int) -> Entry:
    entry = next(soul.journal.read(since=seq, limit=1), None)
    if entry is None or entry.seq != seq or entry.event is None:
        raise TaskError(f"event {seq} of the task is not in the journal")
    return entry


def last_step(soul: Soul, task: TaskState) -> str | None:
    """The words of the task's last thought, if it has taken a step."""
    return _entry(soul, task.last_thought).event.prose if task.last_thought is not None else None


def _calls_of(soul: Soul, task: TaskState, thought: Entry) -> tuple[list[Entry], set[uuid.UUID]]:
    """The tool calls journaled for `thought`, in order, and the ids of those with a result."""
    calls, answered = [], set()
    for e in soul.journal.read(since=thought.seq + 1, types=("tool_call", "tool_result")):
        event = e.event
        if event is None or event.data.get("task") != str(task.task):
            continue
        if e.topic == "tool_call" and event.causation_id == thought.event.id:
            calls.append(e)
        elif e.topic == "tool_result" and event.causation_id is not None:
            answered.add(event.causation_id)
    return calls, answered


def refusal(task: TaskState, name: str, arguments: dict[str, Any]) -> str | None:
    """Why the task may not make this call (None: it may); fills in its corpus and database."""
    if name not in task.tools:
        return f"this task may not call {name or 'an unparsed tool'!r}; it may call: {', '.join(task.tools)}"
    tool = TOOLS.get(name)
    parameters = tool.parameters.get("properties", {}) if tool else {}
    for parameter in SCOPED:
        own = getattr(task, parameter)
        if parameter not in parameters:
            continue
        given = arguments.get(parameter)
        if given and own and given != own:
            return f"this task may read {parameter} {own!r} only, not {given!r}"
        if own and not given:
            arguments[parameter] = own
    return None


def _call(soul: Soul, task: TaskState, name: str, arguments: dict[str, Any], cause: BifocalEvent) -> None:
    arguments = dict(arguments)
    soul.call_tool(name, arguments, task.conversation, cause=cause, data={"task": str(task.task)},
                   refused=refusal(task, name, arguments))


def brief(task: TaskState, step: int, calls_tools: bool) -> Brief:
    """The task's section of the window: its goal, the step, and how a step ends it."""
    last = step >= task.max_steps
    how = (f"Each step, call the tools you need ({', '.join(task.tools)}), or answer without a tool call: "
           "that answer is the task's outcome." if calls_tools else "Answer it: your answer is the task's outcome.")
    return Brief(f"# Task\nGoal: {task.goal}\nThis is step {step} of at most {task.max_steps}"
                 f"{': the last one, so answer now' if last else ''}. {how}", f"Begin the task: {task.goal}")


def step(soul: Soul, task: TaskState, on_token: Callable[[str], None] | None = None) -> TaskState:
    """Take the next step of `task` (see the module's docstring); its state after."""
    task_id = {"task": str(task.task)}
    if task.status == "cancelling":
        return finish(soul, task, "cancelled", f"Cancelled after {task.steps} steps.")
    started = _entry(soul, task.started_seq).event
    if task.last_thought is not None:
        thought = _entry(soul, task.last_thought)
        wanted = soul.mind.tool_calls(thought.event.prose)
        if not wanted:
            return finish(soul, task, "done", thought.event.prose)
        journaled, answered = _calls_of(soul, task, thought)
        unanswered = [c for c in journaled if c.event.id not in answered]
        if unanswered or len(journaled) < len(wanted):  # the step a process died in: finish it, and no more
            for call in unanswered:
                tool = TOOLS.get(str(call.event.data.get("tool")))
                if tool is not None and tool.read_only:
                    soul.result_of(call, data={**task_id, "retried": True})
                else:
                    soul.result_of(call, data=task_id, refused=(
                        f"not retried: the call was cut off before its result and {tool.name if tool else 'its tool'} "
                        "is not read-only; call it again if it is still needed"))
            for name, arguments in wanted[len(journaled):]:  # parsed but never journaled: never run
                _call(soul, task, name, arguments, thought.event)
            return state(soul, str(task.task))
    newest = _entry(soul, task.seq).event  # the task's newest result, else its start
    elapsed = time.time() - task.started.timestamp()
    if task.steps >= task.max_steps or elapsed > task.max_seconds:
        spent = f"{task.steps} steps" if task.steps >= task.max_steps else f"{elapsed:.0f} s"
        last = last_step(soul, task) or "none"
        return finish(soul, task, "out_of_budget", f"Out of budget after {spent}. The last step: {last}")
    number = task.steps + 1
    sampling = soul.sampling()
    tools = soul.tool_schemas(names=task.tools)
    context, messages = soul.window(task.conversation, newest.vector if newest.vector.size else None,
                                    brief=brief(task, number, tools is not None), tools=tools,
                                    reserve=sampling["max_tokens"] + soul.question_tokens)
    _, thought_event, generation = soul.think(task.conversation, context, messages, sampling, cause=newest,
                                              on_token=on_token, tools=tools, correlation=started.id,
                                              data={**task_id, "step": number})
    calls = soul.mind.tool_calls(generation.text)
    for name, arguments in calls:
        _call(soul, task, name, arguments, thought_event)
    task = state(soul, str(task.task))
    if not calls:
        return finish(soul, task, "done", generation.text)
    return task


def describe(state: TaskState, last: str | None = None) -> str:
    """One line: id, status, steps used of the budget, goal, scope, and the outcome (else `last`, the last step)."""
    said = state.outcome if state.outcome is not None else last
    said = " ".join((said or "").split())
    said = said if len(said) <= 80 else said[:79] + "…"
    scope = "".join(f" {k} {v}" for k, v in (("corpus", state.corpus), ("db", state.db)) if v)
    return (f"{state.short}  {state.status:<13} {state.steps:>3}/{state.max_steps:<3} {state.goal[:50]!r}{scope}"
            f"{'  → ' + said if said else ''}")


def start_tool(soul: Any, arguments: dict[str, Any]) -> str:
    """The `task` tool (`/task GOAL` in chat): start a task with the default budget and tools."""
    try:
        task = start(soul, required(arguments, "goal"), by="chat")
    except TaskError as e:
        raise ToolError(str(e)) from None
    return (f"task {task.short} started (at most {task.max_steps} steps): the daemon works on it when no one is "
            f"talking to it; `soul tasks` shows it")


register(Tool("task", "Start a task: a goal the soul works on over many steps, between conversations.",
              text_parameter("goal", "what the task is for"), start_tool))
