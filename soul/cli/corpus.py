"""`soul corpus add|list|mount|unmount|remove`: corpora as searchable views (soul/agent/corpus.py).

Each command first brings the corpora projection up to date with the journal; mount, unmount
and remove are events on the journal, which the projections (corpora, memory) turn into state.
"""

from __future__ import annotations

import os
import sys
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
from projections.runner import ProjectionRunner
from soul.agent.corpus import CorpusError, Ingest, check_name, list_files, originator


@click.group()
def corpus() -> None:
    """Corpora: repositories and folders ingested as chunks, each its own searchable view."""


def _app(ctx: click.Context) -> str:
    return ctx.obj["app"] if ctx.obj else os.environ.get("SOUL_APP", "soul")


@contextmanager
def _opened(ctx: click.Context) -> Iterator[tuple[Journal, ProjectionRunner]]:
    """The journal and an up-to-date corpora view; user mistakes end in one line."""
    try:
        with Journal(_app(ctx)) as journal, ProjectionRunner(journal, Corpora()) as runner:
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
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def add(ctx: click.Context, name: str, path: Path, max_files: int | None, as_json: bool) -> None:
    """Ingest the text files under PATH as corpus NAME (git-tracked ones in a git work tree).

    Re-running journals only what changed: new and modified files, and a tombstone for each
    file that is gone.
    """
    if not path.is_dir():
        raise click.ClickException(f"{path} is not a directory")
    with _opened(ctx) as (journal, runner):
        check_name(name)
        paths = list_files(path)
        from soul.agent.embedder import load_default_embedder  # loads MLX: only when embedding

        ingest = Ingest(journal, load_default_embedder(), name, corpora.files(runner.conn, _app(ctx), name))
        with click.progressbar(length=len(paths[:max_files]), label=f"ingesting {name}", file=sys.stderr) as bar:
            report = ingest.run(path, paths[:max_files], complete=max_files is None or max_files >= len(paths),
                                progress=bar.update)
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
        return
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    click.echo(f"{name}: {report.files} files: {report.ingested} ingested ({report.chunks} chunks), "
               f"{report.unchanged} unchanged, {report.removed} removed; skipped: {skipped}")


@corpus.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per corpus.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """The corpora: name, files, chunks; `*` marks the mounted one."""
    with _opened(ctx) as (_, runner):
        rows = corpora.listing(runner.conn, _app(ctx))
    for row in rows:
        click.echo(orjson.dumps(row).decode() if as_json else format_row(row))
    if not rows and not as_json:
        click.echo("no corpora; add one with `soul corpus add NAME PATH`", err=True)


def format_row(row: dict[str, Any]) -> str:
    return f"{'*' if row['mounted'] else ' '} {row['name']:<24} {row['files']:>7} files {row['chunks']:>9} chunks"


@corpus.command()
@click.argument("name")
@click.pass_context
def mount(ctx: click.Context, name: str) -> None:
    """Mount corpus NAME (unmounting any other): the one the context window retrieves from."""
    with _opened(ctx) as (journal, runner):
        _known(runner, _app(ctx), name)
        _journal(journal, "corpus_mounted", name, f"mounted corpus {name}")
    click.echo(f"mounted {name}", err=True)


@corpus.command()
@click.argument("name", required=False)
@click.pass_context
def unmount(ctx: click.Context, name: str | None) -> None:
    """Unmount corpus NAME (default: the mounted one)."""
    with _opened(ctx) as (journal, runner):
        current = corpora.mounted(runner.conn, _app(ctx))
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
    with _opened(ctx) as (journal, runner):
        _known(runner, _app(ctx), name)
        _journal(journal, "corpus_removed", name, f"removed corpus {name}")
    click.echo(f"removed {name}", err=True)
