"""The `soul` command line.

Every command talks to the journal on NATS JetStream: SOUL_NATS_URL (or --nats) names an
external server or cluster; without it the embedded nats-server under SOUL_HOME is started
on demand and reused. A user mistake or an unreachable server ends in one line on stderr
and exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from eventsourcing.persistence import PersistenceError

from journal.embedded import ServiceError
from journal.errors import one_line
from journal.event import EventError
from projections.postgres import OperationalError
from soul.cli.backup import backup, restore
from soul.cli.daemon import daemon, message
from soul.cli.db import db
from soul.cli.doctor import doctor
from soul.cli.evolution import evolve, export, forget, generations, replay
from soul.cli.journal import journal, perceive, tail
from soul.cli.mcp import mcp
from soul.cli.memory import corpus, projections, search
from soul.cli.mind import chat, rate, run, say, window
from soul.cli.services import services
from soul.cli.task import task, tasks_command

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
        except OperationalError as e:  # the Postgres connection broke mid-command
            raise click.ClickException(f"Postgres: {one_line(e)}") from None
        except KeyboardInterrupt:
            ctx.exit(130)


def show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--version: soul's, and mlx's and mlx-lm's, on whose versions a generation's bytes depend."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    click.echo(f"soul {of('soul')} (mlx {of('mlx')}, mlx-lm {of('mlx-lm')})")
    ctx.exit()


@click.group(cls=SoulGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show_version,
              help="Print the versions of soul, mlx and mlx-lm, and exit.")
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


for command in (run, perceive, tail, journal, search, corpus, projections, say, chat, rate, window, daemon, message,
                mcp, evolve, generations, replay, export, forget, backup, restore, doctor, services, task, tasks_command, db):
    main.add_command(command)

