"""`soul db`: the databases the soul may query, read-only (soul/agent/databases.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import orjson

from soul.agent import databases
from soul.cli.options import json_option, not_empty


@contextmanager
def _mistakes() -> Iterator[None]:
    try:
        yield
    except databases.DatabaseError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def db() -> None:
    """Databases the soul may query with its `sql` tool, always read-only (a READ ONLY
    transaction, a read-only SQLite file), at most 50 rows and 10 s a query. Kept in
    $SOUL_HOME/databases.json (mode 0600: a URL may hold a password)."""


@db.command()
@click.argument("name")
@click.option("--sqlite", "sqlite_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A SQLite database file.")
@click.option("--postgres", "postgres_url", metavar="URL", help="A PostgreSQL URL: postgresql://user@host/db.")
def add(name: str, sqlite_path: Path | None, postgres_url: str | None) -> None:
    """Let the soul query database NAME (it is opened once to check)."""
    if (sqlite_path is None) == (postgres_url is None):
        raise click.UsageError("give one of --sqlite FILE or --postgres URL")
    database = {"kind": "sqlite", "path": str(sqlite_path)} if sqlite_path else {"kind": "postgres", "url": postgres_url}
    with _mistakes():
        added = databases.add(name, database)  # type: ignore[arg-type]
    click.echo(f"database {name}: {added['kind']} {databases.masked(added)}")


@db.command("list")
@json_option("One JSON object per database (passwords masked).")
def list_command(as_json: bool) -> None:
    """The databases: name, kind, where (passwords masked)."""
    with _mistakes():
        found = databases.configured()
    for name, database in sorted(found.items()):
        where = databases.masked(database)
        click.echo(orjson.dumps({"name": name, "kind": database["kind"], "where": where}).decode() if as_json
                   else f"{name:<20} {database['kind']:<9} {where}")
    if not found and not as_json:
        click.echo("no database; add one with `soul db add NAME --sqlite FILE` or `--postgres URL`", err=True)


@db.command()
@click.argument("name")
def remove(name: str) -> None:
    """Forget database NAME (the database itself is not touched)."""
    with _mistakes():
        databases.remove(name)
    click.echo(f"database {name} removed")


@db.command()
@click.argument("name")
@click.argument("statement", callback=not_empty)
@json_option("One JSON object: columns, rows, more.")
def query(name: str, statement: str, as_json: bool) -> None:
    """Run STATEMENT on database NAME as the `sql` tool does: read-only, capped, timed."""
    with _mistakes():
        _, database = databases.named(name)
        columns, rows, more = databases.query(database, statement)
    if as_json:
        click.echo(orjson.dumps({"columns": columns, "rows": rows, "more": more}, default=str).decode())
    else:
        click.echo(databases.table(columns, rows, more))
