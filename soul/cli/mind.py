"""`soul say`, `soul chat`, `soul rate`: talking to the soul (soul/agent/loop.py).

`open_soul` is the one place that decides where the soul runs: in the running `soul daemon`
when there is one (attached over NATS, soul/doors/daemon.py), else in this process (the model is
loaded here).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from journal.embedded import soul_home
from journal.journal import Journal
from projections.memory import Memory
from projections.runner import ProjectionRunner
from soul.agent.loop import DEFAULT_CONVERSATION, Soul, TurnError, TurnResult
from soul.agent.judges import RatingError
from soul.agent.judges import rate as rate_event

PROMPT = "you> "
SPEAKER = "soul> "

model_option = click.option(
    "--model", type=click.Path(path_type=Path), envvar="SOUL_MODEL", metavar="DIR",
    help="An MLX model directory to think with (SOUL_MODEL). Default: the promoted generation, else the embedded SmolLM2-135M-Instruct.")
as_option = click.option(
    "--as", "as_generation", metavar="gen-N",
    help="Talk to a past self: generation N's weights, remembering only the journal up to its cut.")
conversation_option = click.option(
    "-c", "--conversation", default=DEFAULT_CONVERSATION, show_default=True, metavar="ID",
    help="Which conversation to continue (any name; each keeps its own window).")


def _app(ctx: click.Context) -> str:
    return ctx.obj["app"] if ctx.obj else os.environ.get("SOUL_APP", "soul")


def mind_errors() -> tuple[type[Exception], ...]:
    """The mistakes a user can fix around the mind: a bad model or embedder, a window too small,
    a bad rating. Imported here, not at the top: they load MLX, which other commands do not need."""
    from evolution.lineage import LineageError
    from evolution.store import StoreError
    from soul.agent.embedder import EmbedderError
    from evolution.weights.model import ModelError

    return ModelError, EmbedderError, TurnError, RatingError, LineageError, StoreError


@contextmanager
def open_soul(ctx: click.Context, model: Path | None, as_generation: str | None = None) -> Iterator[Soul]:
    """The soul to talk to: the running `soul daemon`'s if one serves this soul (its model
    answers; soul/doors/daemon.py), else one opened in this process. `as_generation` ("gen-N") is
    always opened here: that past self's weights, remembering the journal up to its cut. Model,
    embedder, lineage, window, rating and daemon mistakes end in one line."""
    from soul.doors.daemon import DaemonError, attach

    errors = (*mind_errors(), DaemonError)
    try:
        if as_generation is not None:
            from evolution.lineage import parse_name, resolve

            with Journal(_app(ctx)) as journal:
                folder, cut = resolve(journal, soul_home(), as_generation)
            opened = Soul.open(_app(ctx), model_dir=folder, generation=f"gen-{parse_name(as_generation)}", as_of=cut)
        else:
            opened = attach(_app(ctx)) or Soul.open(_app(ctx), model_dir=model)
        with opened as soul:
            yield soul
    except errors as e:
        raise click.ClickException(str(e)) from None


def stream_to(out: Any) -> Callable[[str], None]:
    def write(text: str) -> None:
        out.write(text)
        out.flush()
    return write


def answer_pending(soul: Soul, conversation: str) -> None:
    """Answer a perception a process died in the middle of, before anything new."""
    pending = soul.pending(conversation)
    if pending is None or pending.event is None:
        return
    click.echo(f"(answering seq {pending.seq}, left unanswered: {pending.event.prose[:60]!r})", err=True)
    sys.stdout.write(SPEAKER)
    soul.answer(pending, on_token=stream_to(sys.stdout))
    sys.stdout.write("\n")


def show(result: TurnResult, streamed: bool) -> None:
    """The rest of a turn after its streamed reply: a command's reply, the judges on stderr."""
    if not streamed:
        click.echo(result.reply)
    else:
        click.echo()
    if result.judges:
        judged = ", ".join(f"{judge} {score:.2f}" for judge, score in result.judges.items())
        click.echo(f"  (thought {result.thought_seq}; resonance {result.resonance:.2f}: {judged})", err=True)


@click.command()
@click.argument("prose")
@conversation_option
@model_option
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print the turn as one JSON object instead of streaming the reply.")
@click.pass_context
def say(ctx: click.Context, prose: str, conversation: str, model: Path | None, as_generation: str | None,
        as_json: bool) -> None:
    """Say PROSE to the soul and print its reply as it is generated (one turn).

    The perception, the thought, tool calls and resonance judgements are journaled; a
    chat command (`/help` lists them) runs its tool instead. The conversation goes on across
    invocations: each turn's window comes from the journal.
    """
    with open_soul(ctx, model, as_generation) as soul:
        if not as_json:
            answer_pending(soul, conversation)
        command = prose.startswith("/")
        result = soul.turn(prose, conversation=conversation, on_token=None if as_json or command else stream_to(sys.stdout))
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        show(result, streamed=not command)


@click.command()
@conversation_option
@model_option
@as_option
@click.pass_context
def chat(ctx: click.Context, conversation: str, model: Path | None, as_generation: str | None) -> None:
    """Talk with the soul: replies stream as they are generated; `/help` lists the commands.
    Ctrl-D (or Ctrl-C) leaves; the conversation stays in the journal for next time."""
    with open_soul(ctx, model, as_generation) as soul:
        try:  # the banner inside: a Ctrl-C the moment it is shown still leaves with "bye"
            click.echo(f"soul {soul.app}, conversation {conversation!r}, thinking with {soul.mind.model_id}; "
                       "/help for commands, Ctrl-D to leave", err=True)
            answer_pending(soul, conversation)
            while True:
                line = read_line()
                if line is None:
                    break
                if not line.strip():
                    continue
                command = line.startswith("/")
                if not command:
                    sys.stdout.write(SPEAKER)
                result = soul.turn(line, conversation=conversation, on_token=None if command else stream_to(sys.stdout))
                show(result, streamed=not command)
        except KeyboardInterrupt:  # mid-turn: the perception is journaled; the next session answers it
            click.echo()
    click.echo("bye", err=True)


def read_line() -> str | None:
    """A line from the user (None at end of input), with line editing on a terminal."""
    if sys.stdin.isatty():
        import readline  # noqa: F401  # gives input() history and editing

        try:
            return input(PROMPT)
        except EOFError:
            click.echo()
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


@click.command()
@click.argument("event")
@click.argument("score", type=click.FloatRange(0, 1))
@click.option("--json", "as_json", is_flag=True, help="Print the resonance event's seq and target as JSON.")
@click.pass_context
def rate(ctx: click.Context, event: str, score: float, as_json: bool) -> None:
    """Rate EVENT (a journal sequence number or an event id) with SCORE between 0 and 1.

    The rating is a `resonance` event by the user judge; memory's resonance of EVENT becomes
    this rating: the user's latest rating decides (see soul/agent/judges.py's combine).
    """
    from soul.agent.embedder import load_default_embedder  # loads MLX: only when embedding

    app, errors = _app(ctx), mind_errors()
    try:
        with Journal(app) as journal, ProjectionRunner(journal, Memory()) as runner:
            runner.catch_up()
            seq, target = rate_event(journal, runner.conn, app, event, score, load_default_embedder())
    except errors as e:
        raise click.ClickException(str(e)) from None
    assert target.event is not None
    if as_json:
        click.echo(orjson.dumps({"seq": seq, "event": str(target.event.id), "event_seq": target.seq, "score": score}).decode())
    else:
        click.echo(f"rated {target.event.type} {target.seq} at {score:g} (resonance event {seq})")
