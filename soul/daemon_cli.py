"""`soul daemon`: run the soul as a long-lived process (`soul daemon status|stop`);
`soul message`: say something to another soul."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click
import orjson

from journal.embedded import process_alive, soul_home, stop_process
from soul.agent import Soul
from soul.chat_cli import mind_errors, model_option, open_soul
from soul.daemon import Daemon, DaemonError, running


@click.group(invoke_without_command=True)
@model_option
@click.pass_context
def daemon(ctx: click.Context, model: Path | None) -> None:
    """Run the soul: serve `soul say` and `soul chat` over NATS, take in messages from other
    souls, answer what a crash left unanswered. One daemon per SOUL_HOME; stop it with
    SIGTERM, Ctrl-C or `soul daemon stop`. Logs go to stderr."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    app, home = ctx.obj["app"], soul_home()

    def ready(subject: str) -> None:
        click.echo(f"soul daemon serving {app} from {home} on {subject}", err=True)

    try:
        Daemon(app, home, lambda: Soul.open(app, model_dir=model)).serve(ready)
    except (DaemonError, *mind_errors()) as e:
        raise click.ClickException(str(e)) from None
    click.echo("soul daemon stopped", err=True)


@daemon.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object.")
def status(as_json: bool) -> None:
    """Whether a daemon runs for SOUL_HOME, with its pid and the soul it serves."""
    home = soul_home()
    state = running(home)
    figures = {"home": str(home), "running": state is not None, **(state or {})}
    if as_json:
        click.echo(orjson.dumps(figures).decode())
    elif state is None:
        click.echo(f"no soul daemon runs for {home}")
    else:
        click.echo(f"soul daemon pid {state.get('pid', '?')} serving {state.get('app', '(starting)')} from {home}")


@daemon.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait before killing it.")
def stop(timeout: float) -> None:
    """Stop the daemon of SOUL_HOME (SIGTERM; SIGKILL after --timeout seconds)."""
    state = running(soul_home())
    pid = (state or {}).get("pid")
    if not pid or not process_alive(pid):
        raise click.ClickException(f"no soul daemon runs for {soul_home()}")
    stop_process(pid, signal.SIGTERM, signal.SIGKILL, timeout)
    click.echo(f"stopped soul daemon pid {pid}", err=True)


@click.command()
@click.argument("to")
@click.argument("text")
@model_option
@click.pass_context
def message(ctx: click.Context, to: str, text: str, model: Path | None) -> None:
    """Send TEXT to soul TO (another soul's name on the same NATS) as this soul's `message`
    tool call, journaled with its result. It waits in TO's inbox until TO's daemon takes it."""
    with open_soul(ctx, model) as soul:
        result = soul.turn(f"/message {to} {text}")
    if result.reply.startswith("error: "):
        raise click.ClickException(result.reply.removeprefix("error: "))
    click.echo(result.reply)
