"""`soul daemon`: run the soul as a long-lived process (`--status`, `--stop`);
`soul message`: say something to another soul."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from journal.embedded import soul_home, stop_process
from journal.journal import Journal
from soul.agent.loop import Soul
from soul.cli.options import app_of, json_option, mind_errors, model_option, not_empty, open_soul
from soul.doors.daemon import COMMAND, Daemon, DaemonError, running

if TYPE_CHECKING:
    from soul.doors.http import HttpDoor

HTTP_TOKEN_ENV = "SOUL_HTTP_TOKEN"


@click.command()
@model_option
@click.option("--status", "show_status", is_flag=True, help="Only say whether a daemon runs for SOUL_HOME, its pid, soul and model.")
@click.option("--stop", "stop_it", is_flag=True, help="Only stop the running daemon (SIGTERM; SIGKILL after --timeout).")
@click.option("--timeout", default=60.0, show_default=True, help="With --stop: seconds to wait before killing it.")
@json_option("With --status: print the state as one JSON object.")
@click.option("--evolve-every", envvar="SOUL_EVOLVE_EVERY", metavar="PERIOD",
              help="Evolve the soul when idle once every PERIOD (30m, 12h, 7d, 1w) since the last evolve run, "
                   "like `soul evolve`; a promoted generation thinks from the daemon's next start. Default: never.")
@click.option("--evolve-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="With --evolve-every: the evolution config (as `soul evolve --config`).")
@click.option("--http", "http_address", metavar="[HOST:]PORT",
              help="Also serve an OpenAI-compatible API on HOST:PORT (HOST: 127.0.0.1 unless given; PORT 0: a free "
                   "one): POST /v1/chat/completions, GET /v1/models, GET /health. Beyond loopback a bearer token "
                   "is required.")
@click.option("--http-token-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"With --http: a file holding the bearer token every request must carry (else {HTTP_TOKEN_ENV}). "
                   "Never printed.")
@click.pass_context
def daemon(ctx: click.Context, model: Path | None, show_status: bool, stop_it: bool, timeout: float,
           as_json: bool, evolve_every: str | None, evolve_config: Path | None, http_address: str | None,
           http_token_file: Path | None) -> None:
    """Run the soul: serve `soul say`, `soul chat` and `soul mcp serve`'s questions over NATS,
    take in messages from other souls, answer what a crash left unanswered; with --http, also
    OpenAI's chat completions API. One daemon per SOUL_HOME; SIGTERM, Ctrl-C or `soul daemon --stop`
    stop it cleanly. Logs go to stderr."""
    home = soul_home()
    if show_status:
        status(home, as_json)
    elif stop_it:
        stop(home, timeout)
    else:
        http = http_door(app_of(ctx), http_address, http_token_file)
        serve(app_of(ctx), home, model, cadence(home, model, evolve_every, evolve_config), http)


def http_door(app: str, address: str | None, token_file: Path | None) -> HttpDoor | None:
    """The HttpDoor of `--http ADDRESS` (soul/doors/http.py), with the page (soul/doors/page.py), or None."""
    if address is None:
        if token_file is not None:
            raise click.ClickException("--http-token-file: only with --http")
        return None
    from soul.cli.mcp import bearer_token
    from soul.doors.http import HttpDoor, parse_address
    from soul.doors.mcp_server import loopback

    try:
        host, port = parse_address(address)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--http'") from None
    token = bearer_token(token_file, HTTP_TOKEN_ENV)
    if token is None and not loopback(host):
        raise click.ClickException(f"--http {address}: listening beyond loopback needs a bearer token: "
                                   f"--http-token-file FILE or {HTTP_TOKEN_ENV}")
    from soul.doors.page import SHELL, page_routes

    return HttpDoor(host, port, token, extra_routes=lambda soul: page_routes(app, soul.embedder), open_paths=SHELL)


def cadence(home: Path, model: Path | None, every: str | None, config_path: Path | None) -> Callable[[Journal], Any] | None:
    """The daemon's evolve step: `run_scheduled` once every `every`, or None."""
    if every is None:
        return None
    from evolution.cadence import parse_every, run_scheduled
    from evolution.config import EvolutionConfig

    try:
        period = parse_every(every)
        config = EvolutionConfig.load(config_path) if config_path else None
    except ValueError as e:  # a bad period or config file (MergeConfigError)
        raise click.ClickException(str(e)) from None
    return lambda journal: run_scheduled(journal, home, datetime.now(timezone.utc), period, config, model)


def serve(app: str, home: Path, model: Path | None, evolve: Callable[[Journal], Any] | None,
          http: HttpDoor | None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("soul").setLevel(logging.INFO)  # the soul's own news; libraries only when they warn
    soul_daemon = Daemon(app, home, lambda: Soul.open(app, model_dir=model), evolve, http)

    def ready(subject: str) -> None:
        api = f" and {soul_daemon.http_url}/v1" if soul_daemon.http_url else ""
        click.echo(f"soul daemon serving {app} from {home} on {subject}{api}", err=True)

    try:
        soul_daemon.serve(ready)
    except (DaemonError, *mind_errors()) as e:
        raise click.ClickException(str(e)) from None
    click.echo("soul daemon stopped", err=True)


def status(home: Path, as_json: bool) -> None:
    state = running(home)
    figures = {"home": str(home), "running": state is not None, **(state or {})}
    if as_json:
        click.echo(orjson.dumps(figures).decode())
    elif state is None:
        click.echo(f"no soul daemon runs for {home}")
    else:
        click.echo(f"soul daemon pid {state.get('pid', '?')} serving {state.get('app', '(starting)')} "
                   f"with {state.get('model', '?')} from {home}"
                   + (f"; OpenAI-compatible API at {state['http']}/v1" if state.get("http") else ""))


def stop(home: Path, timeout: float) -> None:
    state = running(home) or {}
    pid = state.get("pid")
    if not pid:
        raise click.ClickException(f"no soul daemon runs for {home}")
    if not stop_process(pid, state.get("started"), signal.SIGTERM, signal.SIGKILL, timeout, named=COMMAND):
        raise click.ClickException(f"no soul daemon runs for {home} (stale lock: pid {pid} is not it; "
                                   "nothing signalled)")
    click.echo(f"stopped soul daemon pid {pid}", err=True)


@click.command()
@click.argument("to")
@click.argument("text", callback=not_empty)
@model_option
@click.pass_context
def message(ctx: click.Context, to: str, text: str, model: Path | None) -> None:
    """Send TEXT to soul TO (another soul's name on the same NATS) as this soul's `message`
    tool call, journaled with its result. It waits in TO's inbox until TO's daemon takes it."""
    with open_soul(ctx, model, think=False) as soul:
        result = soul.turn(f"/message {to} {text}")
    if result.reply.startswith("error: "):
        raise click.ClickException(result.reply.removeprefix("error: "))
    click.echo(result.reply)
