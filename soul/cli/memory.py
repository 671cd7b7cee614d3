"""`soul search`, `soul corpus add|list|mount|unmount|remove`, `soul projections status|rebuild`:
the soul's memory as the journal's read models in Postgres.

Search finds memories by meaning, by words, or both (projections/search.py). Corpora are
repositories and folders ingested as chunks, memories that are each their own searchable view
(soul/agent/corpus.py); mount, unmount and remove are events on the journal, which the
projections (corpora, memory) turn into state. Each of these commands first brings the
projection it reads up to date with the journal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from projections import corpora
from projections.corpora import Corpora
from projections.memory import Memory
from projections.postgres import connect, pg_url
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner, status
from projections.search import MODES, Hit
from projections.search import search as search_memory
from soul.agent.corpus import CorpusError, Ingest, check_name, list_files, no_files, originator
from soul.cli.options import app_of, default_embedder, json_option, not_empty, open_journal
from soul.cli.progress import progressbar

EXCERPT = 72

# -- search ----------------------------------------------------------------------------


@click.command()
@click.argument("query", callback=not_empty)
@click.option("--corpus", metavar="NAME", help="Only memories of this corpus.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True,
              help="hybrid: meaning and words fused; semantic: meaning only; "
                   "keyword: the exact words and identifiers.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="At most this many hits.")
@json_option("One JSON object per hit.")
@click.pass_context
def search(ctx: click.Context, query: str, corpus: str | None, mode: str, limit: int, as_json: bool) -> None:
    """Search the soul's memory for QUERY, best first.

    Brings the memory projection up to date with the journal first. One line per hit: score,
    type, time (UTC), journal sequence, where a corpus chunk comes from (corpus:path:first-last)
    and an excerpt around the first word of QUERY it holds.
    Keyword queries take web-search syntax: "a phrase", or, -word.
    """
    app = app_of(ctx)
    with Journal(app) as journal, ProjectionRunner(journal, Memory()) as runner:
        _catch_up(runner)
        vector = None if mode == "keyword" else default_embedder().embed([query])[0]
        hits = search_memory(runner.conn, app, query, vector, mode=mode, corpus=corpus, limit=limit)
    for hit in hits:
        click.echo(orjson.dumps(hit_json(hit)).decode() if as_json else format_hit(hit, query))
    if not hits and not as_json:
        click.echo("no memory matches", err=True)


def _catch_up(runner: ProjectionRunner) -> None:
    figures = runner.status()
    if figures["lag"] < 10_000:
        runner.catch_up()
        return
    start = figures["position"]
    with progressbar(figures["lag"], "bringing memory up to date", "events") as bar:
        runner.catch_up(lambda position, end: bar.update(position - start - bar.pos))


def excerpt(prose: str, query: str, width: int = EXCERPT) -> str:
    """About `width` characters of `prose` on one line, in whole words, starting a little before
    the first word of `query` it holds."""
    flat = " ".join(prose.split())
    lowered = flat.lower()
    found = [i for i in (lowered.find(w) for w in re.findall(r"[\w./:-]{3,}", query.lower())) if i >= 0]
    start = min(max(min(found) - width // 4, 0), max(len(flat) - width, 0)) if found else 0  # a full window
    text = flat[start : start + width]
    if start:
        text = "…" + text.split(" ", 1)[-1]
    if start + width < len(flat):
        text = text.rsplit(" ", 1)[0] + "…"
    return text


def format_hit(hit: Hit, query: str) -> str:
    where = f"{hit.where}  " if hit.where else ""  # a corpus chunk: corpus:path:first-last
    return (f"{hit.score:8.4f}  {hit.type:<14}  {hit.time:%Y-%m-%d %H:%M:%S}  {hit.seq:>8}  {where}"
            f"{excerpt(hit.prose, query)!r}")


def hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "score": round(hit.score, 6),
        "type": hit.type,
        "time": hit.time.isoformat(),
        "seq": hit.seq,
        "id": str(hit.id),
        "corpus": hit.corpus,
        "path": hit.path,
        "lines": hit.lines,  # [first, last]
        "resonance": hit.resonance,
        "semantic_rank": hit.semantic_rank,
        "keyword_rank": hit.keyword_rank,
        "prose": hit.prose,
    }


# -- corpus ----------------------------------------------------------------------------


@click.group()
def corpus() -> None:
    """Corpora: repositories and folders ingested as chunks, each its own searchable view."""


@contextmanager
def _corpora(ctx: click.Context) -> Iterator[tuple[Journal, ProjectionRunner]]:
    """The journal and an up-to-date corpora view; user mistakes end in one line."""
    try:
        with Journal(app_of(ctx)) as journal, ProjectionRunner(journal, Corpora()) as runner:
            runner.catch_up()
            yield journal, runner
    except CorpusError as e:
        raise click.ClickException(str(e)) from None


def _known(runner: ProjectionRunner, app: str, name: str) -> None:
    if name not in {c["name"] for c in corpora.listing(runner.conn, app)}:
        raise CorpusError(f"no corpus named {name!r}; `soul corpus list` shows them")


def _journal(journal: Journal, kind: str, name: str, prose: str) -> None:
    journal.add(BifocalEvent(kind, prose, [], NO_EMBEDDER, originator(name), corpus=name))


@corpus.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--max-files", type=click.IntRange(1), metavar="N",
              help="Only the first N files (sorted by path); files beyond are neither read nor tombstoned.")
@json_option("Print the figures as one JSON object.")
@click.pass_context
def add(ctx: click.Context, name: str, path: Path, max_files: int | None, as_json: bool) -> None:
    """Ingest the text files under PATH as corpus NAME (git-tracked ones in a git work tree).

    Re-running journals only what changed: new and modified files, and a tombstone for each
    file that is gone.
    """
    paths = list_files(path) if path.is_dir() else []
    if not paths:
        raise click.ClickException(no_files(path))
    with _corpora(ctx) as (journal, runner):
        check_name(name)
        ingest = Ingest(journal, default_embedder(), name, corpora.files(runner.conn, app_of(ctx), name),
                        corpora.root(runner.conn, app_of(ctx), name))
        with progressbar(len(paths[:max_files]), f"ingesting {name}", "files") as bar:
            report = ingest.run(path, paths[:max_files], complete=max_files is None or max_files >= len(paths),
                                progress=bar.update)
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
        return
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    click.echo(f"{name}: {report.files} files: {report.ingested} ingested ({report.chunks} chunks), "
               f"{report.unchanged} unchanged, {report.removed} removed; skipped: {skipped}")


@corpus.command("list")
@json_option("One JSON object per corpus.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """The corpora: name, files, chunks, the folder it was added from; `*` marks the mounted one."""
    with _corpora(ctx) as (_, runner):
        rows = corpora.listing(runner.conn, app_of(ctx))
    for row in rows:
        click.echo(orjson.dumps(row).decode() if as_json else format_row(row))
    if not rows and not as_json:
        click.echo("no corpora; add one with `soul corpus add NAME PATH`", err=True)


def format_row(row: dict[str, Any]) -> str:
    return f"{'*' if row['mounted'] else ' '} {row['name']:<24} {row['files']:>7} files {row['chunks']:>9} chunks  {row['root'] or '(folder unknown)'}"


@corpus.command()
@click.argument("name")
@click.pass_context
def mount(ctx: click.Context, name: str) -> None:
    """Mount corpus NAME (unmounting any other): the one the context window retrieves from."""
    with _corpora(ctx) as (journal, runner):
        _known(runner, app_of(ctx), name)
        _journal(journal, "corpus_mounted", name, f"mounted corpus {name}")
    click.echo(f"mounted {name}", err=True)


@corpus.command()
@click.argument("name", required=False)
@click.pass_context
def unmount(ctx: click.Context, name: str | None) -> None:
    """Unmount corpus NAME (default: the mounted one)."""
    with _corpora(ctx) as (journal, runner):
        current = corpora.mounted(runner.conn, app_of(ctx))
        name = name or current
        if name is None or name != current:
            raise CorpusError(f"corpus {name!r} is not mounted" if name else "no corpus is mounted")
        _journal(journal, "corpus_unmounted", name, f"unmounted corpus {name}")
    click.echo(f"unmounted {name}", err=True)


@corpus.command()
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove corpus NAME: its chunks leave memory and search (the journal keeps them)."""
    with _corpora(ctx) as (journal, runner):
        _known(runner, app_of(ctx), name)
        _journal(journal, "corpus_removed", name, f"removed corpus {name}")
    click.echo(f"removed {name}", err=True)


# -- projections -----------------------------------------------------------------------


@click.group()
def projections() -> None:
    """The read models of the journal, kept in Postgres (SOUL_PG_URL, else the embedded one)."""


@projections.command("status")
@json_option("One JSON object per projection.")
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
        bar = progressbar(max(journal.last_seq(), 1), f"rebuilding {name}", "events")

        def progress(position: int, end: int) -> None:
            bar.length = end  # the journal may grow while we rebuild
            bar.update(position - bar.pos)

        with bar:
            runner.rebuild(progress)
        figures = runner.status()
    click.echo(f"{name} rebuilt: v{figures['version']}, position {figures['position']:,}, rows {figures['rows']:,}, "
               f"dead letters {figures['dead_letters']:,}")
