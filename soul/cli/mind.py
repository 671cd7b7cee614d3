"""`soul run`, `soul say`, `soul chat`, `soul rate`, `soul window`: talking to the soul
(soul/agent/loop.py), rating what it said, and looking at the window it thinks in. Where the
soul runs is `open_soul`'s choice (soul/cli/options.py). On a terminal `soul chat` edits lines
with readline and keeps what was typed in $SOUL_HOME/chat_history, so the up arrow reaches
earlier sessions' lines too.
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
from journal.secrets import redact_secrets
from projections.memory import Memory
from projections.runner import ProjectionRunner
from soul.agent.judges import rate as rate_event
from soul.agent.context import count
from soul.agent.loop import DEFAULT_SELF, Soul, SoulConfig, TurnResult
from soul.cli.options import (app_of, as_option, conversation_option, default_embedder, json_option, mind_errors,
                              model_option, no_memory_option, not_empty, open_soul)

PROMPT = "you> "
SPEAKER = "soul> "
HISTORY = "chat_history"  # under SOUL_HOME: the lines typed in `soul chat`, redacted
HISTORY_LINES = 1000
FIRST_WORDS = (
    "Hello! Who are you, in one sentence?",
    "What is one thing you will remember about this conversation?",
)


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
        resonance = "unrated" if result.resonance is None else f"{result.resonance:.2f}"  # only a rating counts
        click.echo(f"  (thought {result.thought_seq}; resonance {resonance}: {judged})", err=True)


@click.command()
@model_option
@click.pass_context
def run(ctx: click.Context, model: Path | None) -> None:
    """Start the living soul on embedded defaults and show a short exchange.

    Starts what is not running (the embedded NATS with JetStream and PostgreSQL with
    pgvector, unless SOUL_NATS_URL / SOUL_PG_URL name others), loads the mind (SmolLM2-135M,
    converted once into SOUL_HOME) and the embedder (all-MiniLM-L6-v2), then takes two turns
    of the conversation `main`, streaming the replies. Every step is an event on the journal.
    """
    with open_soul(ctx, model) as soul:
        click.echo(f"journal: {soul.journal.where}; mind: {soul.mind.model_id}", err=True)
        start = soul.journal.last_seq() + 1
        for prose in FIRST_WORDS:
            click.echo(f"you> {prose}")
            click.echo("soul> ", nl=False)
            soul.turn(prose, on_token=stream_to(sys.stdout))
            click.echo()
        events = soul.journal.last_seq() - start + 1
    click.echo(f"{events} events journaled. Talk on with `soul chat`; watch each step with `soul tail`.", err=True)


max_tokens_option = click.option(
    "--max-tokens", type=click.IntRange(min=1), metavar="N",
    help=f"A reply takes at most N tokens. Default: {SoulConfig.max_tokens} (at most a quarter of the model's context).")
temperature_option = click.option(
    "--temperature", type=click.FloatRange(min=0), metavar="T",
    help="Sample replies at temperature T, seeded, so the same prompt gives the same words. "
         "Default: 0, greedy. Journaled with each thought.")


def prose_or_stdin(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """PROSE, or everything standard input holds when PROSE is `-`; blank words are refused."""
    if value == "-":
        value = sys.stdin.read().rstrip()
    return not_empty(ctx, param, value)


@click.command()
@click.argument("prose", callback=prose_or_stdin)
@conversation_option
@model_option
@as_option
@no_memory_option
@max_tokens_option
@temperature_option
@json_option("Print the turn as one JSON object instead of streaming the reply.")
@click.pass_context
def say(ctx: click.Context, prose: str, conversation: str, model: Path | None, as_generation: str | None,
        no_memory: bool, max_tokens: int | None, temperature: float | None, as_json: bool) -> None:
    """Say PROSE to the soul and print its reply as it is generated (one turn). PROSE `-`
    reads the words from standard input: `git diff | soul say -`.

    The perception, the thought, tool calls and resonance judgements are journaled; a
    chat command (`/help` lists them) runs its tool instead. The conversation goes on across
    invocations: each turn's window comes from the journal.
    """
    command = prose.startswith("/")
    with open_soul(ctx, model, as_generation, think=not command) as soul:
        if not as_json:
            answer_pending(soul, conversation)
        result = soul.turn(prose, conversation=conversation, on_token=None if as_json or command else stream_to(sys.stdout),
                           memory=not no_memory, max_tokens=max_tokens, temperature=temperature)
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        show(result, streamed=not command)


@click.command()
@conversation_option
@model_option
@as_option
@no_memory_option
@max_tokens_option
@temperature_option
@click.pass_context
def chat(ctx: click.Context, conversation: str, model: Path | None, as_generation: str | None, no_memory: bool,
         max_tokens: int | None, temperature: float | None) -> None:
    """Talk with the soul: replies stream as they are generated; `/help` lists the commands.
    Ctrl-D (or Ctrl-C) leaves; the conversation stays in the journal for next time. On a
    terminal the up arrow brings back lines typed here, in this session or earlier ones
    ($SOUL_HOME/chat_history, secrets redacted)."""
    with open_soul(ctx, model, as_generation) as soul, history(soul_home() / HISTORY) as keep:
        try:  # the banner inside: a Ctrl-C the moment it is shown still leaves with "bye"
            click.echo(f"soul {soul.app}, conversation {conversation!r}, thinking with {soul.mind.model_id}"
                       f"{' without memory' if no_memory else ''}; /help for commands, Ctrl-D to leave", err=True)
            answer_pending(soul, conversation)
            while True:
                line = read_line()
                if line is None:
                    break
                if not line.strip():
                    continue
                keep(line)
                command = line.startswith("/")
                if not command:
                    sys.stdout.write(SPEAKER)
                result = soul.turn(line, conversation=conversation, on_token=None if command else stream_to(sys.stdout),
                                   memory=not no_memory, max_tokens=max_tokens, temperature=temperature)
                show(result, streamed=not command)
        except KeyboardInterrupt:  # mid-turn: the perception is journaled; the next session answers it
            click.echo()
    click.echo("bye", err=True)


@click.command()
@conversation_option
@model_option
@as_option
@no_memory_option
@json_option("Print the window as one JSON object: budget, tokens, blocks (kind, seq, tokens, text), messages.")
@click.pass_context
def window(ctx: click.Context, conversation: str, model: Path | None, as_generation: str | None, no_memory: bool,
           as_json: bool) -> None:
    """Show what the mind would see if it answered now: the pinned self-definition and notebook,
    the summary, the retrievals (searched with the newest turn), the turns, each block with its
    tokens, and the total against the budget. A new message joins at the end, with retrievals of
    its own. Journals nothing; the soul is opened here, even when a daemon runs."""
    with open_soul(ctx, model, as_generation, here=True, think=False) as soul:
        context, messages = soul.look(conversation, memory=not no_memory)
        blocks = [{"kind": b.kind, "seq": b.seq, "tokens": count(soul.mind.tokenizer, b.text), "text": b.text}
                  for b in context.blocks]
        prompt = len(soul.mind.encode(messages, soul.tool_schemas(not no_memory)))
        shown = {"conversation": conversation, "memory": not no_memory, "budget": soul.budget, "tokens": context.tokens,
                 "prompt_tokens": prompt, "max_context": soul.mind.max_context, "fingerprint": context.fingerprint,
                 "evicted": [list(r) for r in context.evictions], "blocks": blocks, "messages": messages}
    if as_json:
        click.echo(orjson.dumps(shown).decode())
        return
    if not any(b["kind"] == "self" for b in blocks):
        click.echo(f"(no self-definition journaled yet: the mind is shown the default one)\n# Self\n{DEFAULT_SELF}")
    for b in blocks:
        click.echo(f"--- {b['kind']}{'' if b['seq'] is None else ' ' + str(b['seq'])}: {b['tokens']} tokens")
        click.echo(b["text"], nl=False)
    click.echo(f"--- {context.tokens} of a {soul.budget}-token budget; the prompt with the chat template: {prompt} "
               f"of the model's {soul.mind.max_context}")
    for first, last in context.evictions:
        click.echo(f"turns {first}..{last} no longer fit: the next turn summarises them")


@contextmanager
def history(path: Path) -> Iterator[Callable[[str], None]]:
    """On a terminal, readline's history loaded from `path` (its newest HISTORY_LINES lines);
    yields what keeps a line just read: appended to `path` at once, so a killed session keeps its
    lines and two sessions do not overwrite each other's. Lines are kept as the journal keeps
    them, secrets redacted (journal/secrets.py), in a file only its owner can read."""
    if not sys.stdin.isatty():
        yield lambda line: None
        return
    import readline

    def keep(line: str) -> None:  # input() has put `line` in the history: redact it there, then save it
        text, kinds = redact_secrets(line)
        if kinds:
            readline.replace_history_item(readline.get_current_history_length() - 1, text)
        try:
            readline.append_history_file(1, path)
        except OSError:
            pass

    readline.set_history_length(HISTORY_LINES)
    try:
        readline.read_history_file(path)
    except OSError:  # none yet, or unreadable: this session starts with no history
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)  # trimmed to HISTORY_LINES
        os.chmod(path, 0o600)
        writable = True
    except OSError:  # a home we cannot write to: history for this session only
        writable = False
    yield keep if writable else lambda line: None


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
@json_option("Print the resonance event's seq and target as JSON.")
@click.pass_context
def rate(ctx: click.Context, event: str, score: float, as_json: bool) -> None:
    """Rate EVENT (a journal sequence number or an event id) with SCORE between 0 and 1.

    The rating is a `resonance` event by the user judge; memory's resonance of EVENT becomes
    this rating: the user's latest rating decides (see projections/resonance.py's combine).
    """
    app, errors = app_of(ctx), mind_errors()
    try:
        with Journal(app) as journal, ProjectionRunner(journal, Memory()) as runner:
            runner.catch_up()
            seq, target = rate_event(journal, runner.conn, app, event, score, default_embedder())
    except errors as e:
        raise click.ClickException(str(e)) from None
    assert target.event is not None
    if as_json:
        click.echo(orjson.dumps({"seq": seq, "event": str(target.event.id), "event_seq": target.seq, "score": score}).decode())
    else:
        click.echo(f"rated {target.event.type} {target.seq} at {score:g} (resonance event {seq})")
