"""`soul services start|status|stop`: the embedded servers under SOUL_HOME."""

from __future__ import annotations

import os

import click
import orjson

from journal.embedded import EmbeddedNats, soul_home
from projections.postgres import EmbeddedPostgres
from soul.cli.options import json_option


@click.group()
def services() -> None:
    """Start, inspect and stop the embedded servers under SOUL_HOME."""


def _services() -> list[tuple[EmbeddedNats | EmbeddedPostgres, str]]:
    """Each embedded server with the variable that, when set, makes commands use another one."""
    home = soul_home()
    return [(EmbeddedNats(home), "SOUL_NATS_URL"), (EmbeddedPostgres(home), "SOUL_PG_URL")]


@services.command("start")
def start() -> None:
    """Start the embedded NATS (JetStream, 127.0.0.1 only) and Postgres (Unix socket only)."""
    for server, _ in _services():
        url = server.start()
        click.echo(f"{server.status()['service']:<9} running  {url}")


@services.command("status")
@json_option("One JSON object per service.")
def status(as_json: bool) -> None:
    """Whether each embedded server runs, where, and where it keeps its data."""
    for server, variable in _services():
        figures = server.status()
        if os.environ.get(variable):
            figures["note"] = f"{variable} is set: commands use that server, not this one"
        if as_json:
            click.echo(orjson.dumps(figures).decode())
            continue
        state = "running" if figures["running"] else "stopped"
        where = figures["url"] if figures["running"] else "-"
        click.echo(f"{figures['service']:<9} {state:<8} {where}  pid={figures['pid'] or '-'}  store={figures['store']}")
        if "note" in figures:
            click.echo(f"          {figures['note']}")


@services.command("stop")
def stop() -> None:
    """Stop the embedded servers cleanly (their data stays under SOUL_HOME)."""
    for server, _ in _services():
        status = server.status()
        if server.stop():
            click.echo(f"{status['service']:<9} stopped")
        elif "stale" in status:  # its pid file names a process that ended or is another one now: left alone
            click.echo(f"{status['service']:<9} was not running (stale pid file: pid {status['stale']} is not it; "
                       "nothing signalled)")
        else:
            click.echo(f"{status['service']:<9} was not running")
