"""`soul tail`, `soul journal stats`, `soul perceive`: reading the journal, and writing to it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timezone

import click
import orjson

from journal.event import BifocalEvent
from journal.journal import PAGE, Entry, entry_json
from journal.secrets import redact_secrets
from soul.cli.options import default_embedder, json_option, not_empty, open_journal
from soul.cli.progress import progressbar


def parse_since(value: str) -> int | datetime:
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("give a sequence number or an ISO time like 2026-11-25T10:00") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@click.command()
@click.option("--since", metavar="SEQ|TIME", help="Start at this sequence number or ISO time (naive times are UTC).")
@click.option("-n", "--last", "last", default=10, show_default=True, help="Without --since: start this many events back.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only events of this type (repeatable).")
@click.option("--follow/--no-follow", "-f/-F", default=True, show_default=True, help="Keep printing new events as they arrive.")
@json_option("One JSON object per line.")
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


@click.group()
def journal() -> None:
    """Inspect the journal."""


@journal.command()
@json_option("Print the figures as one JSON object.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Count, bytes, first and last sequence, and events per type (reads the whole journal)."""
    journal = open_journal(ctx)
    end = journal.last_seq()
    if end > 20 * PAGE:
        with progressbar(end, "reading the journal", "events") as bar:
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


@click.command()
@click.argument("prose", callback=not_empty)
@click.option("--source", default="user", show_default=True, help="Who or what was perceived: user, agent:NAME, tool:NAME.")
@click.option("--corpus", default=None, help="Corpus tag to attach.")
@json_option("Print the stored event as JSON.")
@click.pass_context
def perceive(ctx: click.Context, prose: str, source: str, corpus: str | None, as_json: bool) -> None:
    """Journal PROSE as a perception, embedded with the default embedder."""
    journal = open_journal(ctx)
    prose, redacted = redact_secrets(prose)  # the journal is immutable: secrets must never reach it
    if redacted:
        click.echo(f"redacted before journaling: {', '.join(redacted)}", err=True)
    embedder = default_embedder()
    event = BifocalEvent("perception", prose, embedder.embed([prose])[0], embedder.id, _originator(source),
                         corpus=corpus, data={"source": source, **({"redacted": redacted} if redacted else {})})
    seq, event = journal.add(event)
    entry = Entry(seq, event.originator_id, event.type, 0, event)
    click.echo(orjson.dumps(entry_json(entry)).decode() if as_json else format_line(entry))


def _originator(name: str) -> str:
    """One aggregate per source, so each has its own ordered, versioned sequence."""
    return f"source:{name}"
