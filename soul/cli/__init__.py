"""The `soul` command line.

Every command talks to the journal on NATS JetStream: SOUL_NATS_URL (or --nats) names an
external server or cluster; without it the embedded nats-server under SOUL_HOME is started
on demand and reused. A user mistake or an unreachable server ends in one line on stderr
and exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import orjson
from eventsourcing.persistence import PersistenceError

import psycopg

from soul.cli.evolution import evolve, export, forget, generations, replay
from journal.embedded import EmbeddedNats, ServiceError, soul_home
from journal.errors import one_line
from journal.event import BifocalEvent, EventError
from journal.journal import PAGE, Entry, Journal
from journal.secrets import redact_secrets
from projections.postgres import EmbeddedPostgres, connect, pg_url
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner, status
from evolution.weights.blas import BlasError, reexec_with_optimized_blas
from soul.cli.mind import chat, open_soul, rate, say, stream_to
from soul.cli.corpus import corpus
from soul.cli.daemon import daemon, message
from soul.cli.mcp import mcp
from soul.cli.search import search

USER_ERRORS = (PersistenceError, EventError, ServiceError, OSError)


class SoulGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if isinstance(e, BrokenPipeError):  # `soul tail | head`: the reader left, fine
                sys.stderr.close()
                ctx.exit(0)
            raise click.ClickException(str(e) or type(e).__name__) from None
        except psycopg.OperationalError as e:  # the Postgres connection broke mid-command
            raise click.ClickException(f"Postgres: {one_line(e)}") from None
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=SoulGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nats", "nats_url", envvar="SOUL_NATS_URL", metavar="URL[,URL...]",
              help="External NATS server(s); default: the embedded server under SOUL_HOME.")
@click.option("--home", envvar="SOUL_HOME", type=click.Path(file_okay=False), metavar="DIR",
              help="The soul's home (embedded servers, models). Default: ~/.soul")
@click.option("--app", default="soul", envvar="SOUL_APP", show_default=True, metavar="NAME",
              help="Which soul's journal: each name is its own JetStream stream.")
@click.pass_context
def main(ctx: click.Context, nats_url: str | None, home: str | None, app: str) -> None:
    """soul: a local, self-evolving agent whose every perception, thought and judgement
    is an immutable bifocal event (prose + vector) on a NATS JetStream journal."""
    if nats_url:
        os.environ["SOUL_NATS_URL"] = nats_url
    if home:
        os.environ["SOUL_HOME"] = home
    ctx.obj = {"app": app}


def entry() -> None:
    """The `soul` console script: restart once with the optimized BLAS preloaded, then run."""
    try:
        reexec_with_optimized_blas()
    except BlasError as e:
        sys.exit(f"Error: {e}")
    main()


def open_journal(ctx: click.Context) -> Journal:
    journal = Journal(app=ctx.obj["app"])
    ctx.call_on_close(journal.close)
    return journal


# -- run -------------------------------------------------------------------------------

FIRST_WORDS = (
    "Hello! Who are you, in one sentence?",
    "What is one thing you will remember about this conversation?",
)


@main.command()
@click.option("--model", type=click.Path(path_type=Path), envvar="SOUL_MODEL", metavar="DIR",
              help="An MLX model directory to think with (SOUL_MODEL). Default: the embedded SmolLM2-135M-Instruct.")
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


@main.command()
@click.argument("prose")
@click.option("--source", default="user", show_default=True, help="Who or what was perceived: user, agent:NAME, tool:NAME.")
@click.option("--corpus", default=None, help="Corpus tag to attach.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored event as JSON.")
@click.pass_context
def perceive(ctx: click.Context, prose: str, source: str, corpus: str | None, as_json: bool) -> None:
    """Journal PROSE as a perception, embedded with the default embedder."""
    journal = open_journal(ctx)
    prose, redacted = redact_secrets(prose)  # the journal is immutable: secrets must never reach it
    if redacted:
        click.echo(f"redacted before journaling: {', '.join(redacted)}", err=True)
    embedder = _embedder()
    event = BifocalEvent("perception", prose, embedder.embed([prose])[0], embedder.id, _originator(source),
                         corpus=corpus, data={"source": source, **({"redacted": redacted} if redacted else {})})
    seq, event = journal.add(event)
    entry = Entry(seq, event.originator_id, event.type, 0, event)
    click.echo(orjson.dumps(entry_json(entry)).decode() if as_json else format_line(entry))


def _embedder() -> Any:
    from soul.agent.embedder import load_default_embedder  # loads MLX: only for commands that embed

    return load_default_embedder()


def _originator(name: str) -> str:
    """One aggregate per source, so each has its own ordered, versioned sequence."""
    return f"source:{name}"


# -- tail ------------------------------------------------------------------------------


def parse_since(value: str) -> int | datetime:
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("give a sequence number or an ISO time like 2026-11-25T10:00") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@main.command()
@click.option("--since", metavar="SEQ|TIME", help="Start at this sequence number or ISO time (naive times are UTC).")
@click.option("-n", "--last", "last", default=10, show_default=True, help="Without --since: start this many events back.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only events of this type (repeatable).")
@click.option("--follow/--no-follow", "-f/-F", default=True, show_default=True, help="Keep printing new events as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--vectors", is_flag=True, help="With --json: include each vector as a list of floats.")
@click.pass_context
def tail(ctx: click.Context, since: str | None, last: int, types: tuple[str, ...], follow: bool, as_json: bool, vectors: bool) -> None:
    """Show journal events, then follow new ones live (Ctrl-C to stop).

    One line per event: sequence, time, type, originator, prose excerpt, and the vector's
    dimension and norm. A message that cannot be decoded is shown as UNDECODABLE with its
    sequence and the reason, and tailing goes on.
    """
    journal = open_journal(ctx)
    if since is None:
        start = max(journal.last_seq() - last + 1, 1)
    else:
        point = parse_since(since)
        start = point if isinstance(point, int) else journal.seq_at(point)
    entries: Iterator[Entry] = journal.follow(start, types) if follow else journal.read(start, types)
    out = sys.stdout
    try:
        for entry in entries:
            out.write((orjson.dumps(entry_json(entry, vectors)).decode() if as_json else format_line(entry)) + "\n")
            if follow:  # a live reader wants each event as it lands; a dump wants throughput
                out.flush()
    except KeyboardInterrupt:
        pass
    out.flush()


def format_line(entry: Entry) -> str:
    event = entry.event
    if event is None:
        return f"{entry.seq:>8}  {'-':<19}  {'UNDECODABLE':<16}  {str(entry.originator_id)[:24]:<24}  {entry.error}"
    prose = event.prose.replace("\n", " ")
    excerpt = prose if len(prose) <= 60 else prose[:59] + "…"
    origin = str(event.originator_id)[:24]
    return (
        f"{entry.seq:>8}  {event.timestamp:%Y-%m-%d %H:%M:%S}  {event.type:<16}  {origin:<24}  "
        f"{excerpt!r}  [{event.embedder.dim}d |v|={event.norm:.3f}]"
    )


def entry_json(entry: Entry, vectors: bool = False) -> dict[str, Any]:
    event = entry.event
    if event is None:
        return {"seq": entry.seq, "undecodable": True, "error": entry.error,
                "originator": str(entry.originator_id), "topic": entry.topic}
    out = {
        "seq": entry.seq,
        "time": event.timestamp.isoformat(),
        "type": event.type,
        "schema": event.schema,
        "id": str(event.id),
        "originator": str(event.originator_id),
        "version": event.originator_version,
        "prose": event.prose,
        "embedder": event.embedder.name,
        "dim": event.embedder.dim,
        "norm": round(event.norm, 6),
        "corpus": event.corpus,
        "causation": str(event.causation_id) if event.causation_id else None,
        "correlation": str(event.correlation_id) if event.correlation_id else None,
        "data": event.data,
    }
    if vectors:
        out["vector"] = event.vector.tolist()
    return out


main.add_command(search)
main.add_command(corpus)
main.add_command(say)
main.add_command(chat)
main.add_command(rate)
main.add_command(daemon)
main.add_command(message)
main.add_command(mcp)
for command in (evolve, generations, replay, export, forget):
    main.add_command(command)


# -- journal ---------------------------------------------------------------------------


@main.group()
def journal() -> None:
    """Inspect the journal."""


@journal.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Count, bytes, first and last sequence, and events per type (reads the whole journal)."""
    journal = open_journal(ctx)
    end = journal.last_seq()
    if end > 20 * PAGE and sys.stderr.isatty():
        with click.progressbar(length=end, label="reading the journal", file=sys.stderr) as bar:
            figures = journal.stats(progress=lambda seq: bar.update(seq - bar.pos))
    else:
        figures = journal.stats()
    if as_json:
        click.echo(orjson.dumps(figures).decode())
        return
    click.echo(f"stream       {figures['stream']}")
    click.echo(f"events       {figures['events']:,}")
    click.echo(f"bytes        {figures['bytes']:,}")
    click.echo(f"sequence     {figures['first_seq']} .. {figures['last_seq']}")
    click.echo(f"undecodable  {figures['undecodable']:,}")
    for kind, count in figures["by_type"].items():
        click.echo(f"  {kind:<20} {count:,}")


# -- projections -----------------------------------------------------------------------


@main.group()
def projections() -> None:
    """The read models of the journal, kept in Postgres (SOUL_PG_URL, else the embedded one)."""


@projections.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per projection.")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Position, lag, version, rows and dead letters of each projection."""
    journal = open_journal(ctx)
    with connect(pg_url()) as conn:
        for projection in PROJECTIONS.values():
            figures = status(conn, journal, projection())
            click.echo(orjson.dumps(figures).decode() if as_json else format_status(figures))


def format_status(figures: dict[str, Any]) -> str:
    line = (f"{figures['name']:<16} v{figures['version']:<3} position {figures['position']:>9,}  "
            f"lag {figures['lag']:>9,}  rows {figures['rows']:>9,}  dead letters {figures['dead_letters']:,}")
    if figures["stored_version"] is None:
        return line + "  (not built yet)"
    if figures["stored_version"] != figures["version"]:
        line += f"  (stored v{figures['stored_version']}: rebuilt on the next run)"
    if shadow := figures["rebuild"]:
        line += f"  (rebuilding v{shadow['version']}: at {shadow['position']:,} of {figures['last_seq']:,})"
    return line


@projections.command()
@click.argument("name")
@click.pass_context
def rebuild(ctx: click.Context, name: str) -> None:
    """Rebuild projection NAME from the start of the journal, then swap it in.

    Reads keep using the current table until the new one has caught up. An interrupted
    rebuild resumes where it stopped.
    """
    if name not in PROJECTIONS:
        raise click.ClickException(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")
    journal = open_journal(ctx)
    with ProjectionRunner(journal, PROJECTIONS[name]()) as runner:
        bar = click.progressbar(length=max(journal.last_seq(), 1), label=f"rebuilding {name}",
                                file=sys.stderr)

        def progress(position: int, end: int) -> None:
            bar.length = end  # the journal may grow while we rebuild
            bar.update(position - bar.pos)

        with bar:
            runner.rebuild(progress)
        figures = runner.status()
    click.echo(f"{name} rebuilt: v{figures['version']}, position {figures['position']:,}, rows {figures['rows']:,}, "
               f"dead letters {figures['dead_letters']:,}")


# -- doctor ----------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """What the soul runs on (device, BLAS, mlx, model and embedder with their hashes) and
    whether NATS and Postgres answer. Exit status 1 if any part does not."""
    from soul.cli.doctor import report  # loads MLX and the models: only here

    figures = report(ctx.obj["app"])
    if as_json:
        click.echo(orjson.dumps(figures).decode())
    else:
        click.echo(f"{'home':<10} {figures['home']}")
        for part, found in figures.items():
            if part == "home":
                continue
            details = "  ".join(f"{k}={v}" for k, v in found.items() if k not in ("ok", "error"))
            click.echo(f"{part:<10} {'ok  ' if found['ok'] else 'FAIL'}  {found.get('error') or details}")
    if not all(found["ok"] for part, found in figures.items() if part != "home"):
        ctx.exit(1)


# -- services --------------------------------------------------------------------------


@main.group()
def services() -> None:
    """Start, inspect and stop the embedded servers under SOUL_HOME."""


def _services() -> list[tuple[EmbeddedNats | EmbeddedPostgres, str]]:
    """Each embedded server with the variable that, when set, makes commands use another one."""
    home = soul_home()
    return [(EmbeddedNats(home), "SOUL_NATS_URL"), (EmbeddedPostgres(home), "SOUL_PG_URL")]


@services.command("start")
def services_start() -> None:
    """Start the embedded NATS (JetStream, 127.0.0.1 only) and Postgres (Unix socket only)."""
    for server, _ in _services():
        url = server.start()
        click.echo(f"{server.status()['service']:<9} running  {url}")


@services.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per service.")
def services_status(as_json: bool) -> None:
    """Whether each embedded server runs, where, and where it keeps its data."""
    for server, variable in _services():
        status = server.status()
        if os.environ.get(variable):
            status["note"] = f"{variable} is set: commands use that server, not this one"
        if as_json:
            click.echo(orjson.dumps(status).decode())
            continue
        state = "running" if status["running"] else "stopped"
        where = status["url"] if status["running"] else "-"
        click.echo(f"{status['service']:<9} {state:<8} {where}  pid={status['pid'] or '-'}  store={status['store']}")
        if "note" in status:
            click.echo(f"          {status['note']}")


@services.command("stop")
def services_stop() -> None:
    """Stop the embedded servers cleanly (their data stays under SOUL_HOME)."""
    for server, _ in _services():
        name = server.status()["service"]
        click.echo(f"{name:<9} stopped" if server.stop() else f"{name:<9} was not running")
