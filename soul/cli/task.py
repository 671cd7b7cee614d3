"""`soul task` and `soul tasks`: goals the soul works on over many steps (soul/agent/tasks.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import orjson

from journal.embedded import soul_home
from journal.journal import entry_json
from projections import tasks as task_view
from soul.agent import databases, tasks
from soul.agent.loop import Soul
from soul.cli.journal import format_line
from soul.cli.options import json_option, model_option, not_empty, open_soul

NO_TOOLS = ("{model} cannot call tools (its chat template has none): each step is one thought, so the task ends "
            "with its first answer. A model with tool calling (e.g. Mistral Large, Command R+, Qwen) works through "
            "the tools.")


class TaskGroup(click.Group):
    """`soul task GOAL` is `soul task start GOAL`: words that name no subcommand are a goal."""

    default_command = "start"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=TaskGroup)
def task() -> None:
    """Hand the soul a goal it works on over many steps: `soul task "find how retries work" --corpus mylib`.

    Each step is a thought with its tool calls and their results, journaled; the daemon takes
    a step whenever no turn is waiting, and after a crash goes on from the last journaled step
    (a call whose result is journaled is never run again). Without a daemon, `soul task GOAL`
    works on it here until it ends (Ctrl-C leaves it open for later)."""


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from evolution.cadence import parse_every

    try:
        return parse_every(value).total_seconds()
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@contextmanager
def _soul(ctx: click.Context, model: Path | None = None, think: bool = False) -> Iterator[Soul]:
    """A soul in this process (a daemon's client cannot start or read tasks), as `open_soul` opens one."""
    with open_soul(ctx, model, here=True, think=think) as soul:
        try:
            yield soul
        except (tasks.TaskError, databases.DatabaseError) as e:
            raise click.ClickException(str(e)) from None


@task.command()
@click.argument("goal", nargs=-1, required=True)
@click.option("--corpus", metavar="NAME", help="A corpus whose files it may list, read and grep (soul corpus add).")
@click.option("--db", metavar="NAME", help="A database it may query, read-only (soul db add).")
@click.option("--steps", type=click.IntRange(1, 10_000), default=tasks.DEFAULT_STEPS, show_default=True,
              help="At most this many steps (thoughts).")
@click.option("--time", "seconds", default="1h", show_default=True, callback=_duration, metavar="PERIOD",
              help="At most this long from its start (90s, 30m, 2h, 1d).")
@click.option("--tool", "tools", multiple=True, metavar="NAME",
              help="Another tool it may call besides recall and the readers of its corpus and database (repeatable).")
@click.option("--detach", is_flag=True, help="Only start it: the daemon (or `soul task work`) works on it.")
@model_option
@json_option("Print the task's state as one JSON object when it is started (and when it ends, if worked on here).")
@click.pass_context
def start(ctx: click.Context, goal: tuple[str, ...], corpus: str | None, db: str | None, steps: int, seconds: float,
          tools: tuple[str, ...], detach: bool, model: Path | None, as_json: bool) -> None:
    """Start a task for GOAL (the words after `soul task`)."""
    from soul.doors.daemon import running

    words = not_empty(ctx, ctx.command.params[0], " ".join(goal))
    daemon = running(soul_home())
    here = daemon is None and not detach
    with _soul(ctx, model, think=here) as soul:
        started = tasks.start(soul, words, corpus=corpus, db=db, max_steps=steps, max_seconds=seconds, tools=tools)
        _said(started, "started", as_json)
        if not soul.mind.tokenizer.has_tool_calling:
            click.echo(NO_TOOLS.format(model=soul.mind.model_id), err=True)
        if daemon is not None:
            click.echo(f"the daemon (pid {daemon.get('pid', '?')}) works on it: `soul tasks`, "
                       f"`soul task show {started.short}`, `soul tail`", err=True)
        elif detach:
            click.echo(f"it waits for `soul daemon` or `soul task work {started.short}`", err=True)
        else:
            _work(soul, [started.short], as_json)


@task.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@model_option
@json_option("Print each task's state as one JSON object when it ends.")
@click.pass_context
def work(ctx: click.Context, ids: tuple[str, ...], model: Path | None, as_json: bool) -> None:
    """Work here on open tasks (the IDs given, else all) until they end, when no daemon runs."""
    from soul.doors.daemon import running

    if (daemon := running(soul_home())) is not None:
        raise click.ClickException(f"the daemon (pid {daemon.get('pid', '?')}) works on the open tasks already")
    with _soul(ctx, model, think=True) as soul:
        keys = list(ids) or [t.short for t in tasks.open_tasks(soul)]
        if not keys:
            click.echo("no open task", err=True)
        _work(soul, keys, as_json)


def _work(soul: Soul, keys: list[str], as_json: bool) -> None:
    """Step each task in turn until all have ended, printing each step's events on stderr."""
    open_ = [tasks.state(soul, key) for key in keys]
    try:
        while open_ := [t for t in open_ if t.status in task_view.OPEN]:
            for state in open_:
                since = soul.journal.last_seq() + 1
                after = tasks.step(soul, state)
                for entry in soul.journal.read(since=since):
                    if entry.event is not None and entry.event.data.get("task") == str(state.task):
                        click.echo(format_line(entry), err=True)
                if after.status not in task_view.OPEN:
                    _said(after, "ended", as_json)
                open_ = [after if t.task == after.task else t for t in open_]
    except KeyboardInterrupt:
        click.echo(f"left open: `soul task work {' '.join(t.short for t in open_)}` goes on", err=True)
        sys.exit(130)


def _said(state: task_view.TaskState, what: str, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(state.as_dict()).decode())
    elif what == "started":
        click.echo(f"task {state.short} started: at most {state.max_steps} steps, {state.max_seconds:g} s; "
                   f"tools {', '.join(state.tools)}")
    else:
        click.echo(f"task {state.short} {state.status} after {state.steps} steps: {state.outcome}")


@task.command()
@click.argument("key", metavar="ID")
@json_option("One JSON object per event.")
@click.pass_context
def show(ctx: click.Context, key: str, as_json: bool) -> None:
    """The task's state, then its events: its start, each step's thought, calls and results, its end."""
    with _soul(ctx) as soul:
        state = tasks.state(soul, key)
        entries = [e for e in soul.journal.read(since=state.started_seq, types=task_view.Tasks.types)
                   if e.event is not None and e.event.data.get("task") == str(state.task)]
    if as_json:
        for entry in entries:
            click.echo(orjson.dumps(entry_json(entry)).decode())
        return
    click.echo(tasks.describe(state))
    for entry in entries:
        click.echo(format_line(entry))


@task.command()
@click.argument("key", metavar="ID")
@click.pass_context
def cancel(ctx: click.Context, key: str) -> None:
    """Cancel a task: it ends as cancelled before its next step (a step under way finishes first)."""
    with _soul(ctx) as soul:
        state = tasks.cancel(soul, key)
    click.echo(f"task {state.short} is cancelled before its next step")


@click.command("tasks")
@click.option("--open", "open_only", is_flag=True, help="Only the tasks still being worked on.")
@json_option("One JSON object per task.")
@click.pass_context
def tasks_command(ctx: click.Context, open_only: bool, as_json: bool) -> None:
    """The tasks, oldest first: id, state, steps used of the budget, the last step or the outcome."""
    with _soul(ctx) as soul:
        found = tasks.listing(soul, open_only=open_only)
        last = {t.task: tasks.last_step(soul, t) for t in found if t.outcome is None}
    for state in found:
        click.echo(orjson.dumps({**state.as_dict(), "last_step": last.get(state.task)}).decode() if as_json
                   else tasks.describe(state, last.get(state.task)))
    if not found and not as_json:
        click.echo('no task yet: soul task "GOAL"', err=True)
