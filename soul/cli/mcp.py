"""`soul mcp servers`: the external agents configured in SOUL_HOME/mcp.json and their tools;
`soul mcp serve`: the soul's own MCP server on stdio or streamable HTTP (soul/doors/mcp_server.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import orjson

from soul.agent.loop import Soul
from soul.agent.tools import ToolError
from soul.cli.options import app_of, json_option, model_option
from soul.doors import mcp_client, mcp_config, mcp_server

TOKEN_ENV = "SOUL_MCP_TOKEN"


@click.group()
def mcp() -> None:
    """MCP: call external agents' tools, and let other agents consult this soul."""


@mcp.command()
@json_option("One JSON object per server.")
@click.pass_context
def servers(ctx: click.Context, as_json: bool) -> None:
    """The MCP servers configured in SOUL_HOME/mcp.json, each started (or reached) to list its
    tools; a disabled one is shown as such and not started.

    A server that fails to start or answer is shown with the reason; the exit status is 1
    if any did."""
    try:
        configured = mcp_config.servers()
    except mcp_config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    if not configured:
        click.echo(f"no MCP servers configured in {mcp_config.config_path()}", err=True)
    failed = False
    for server in configured.values():
        figures = {"name": server.name, "type": server.transport, "timeout": server.timeout, "disabled": server.disabled}
        if server.transport == "stdio":
            figures["command"] = [server.command, *server.args]
        else:
            figures["url"] = server.url  # its headers may hold a token: not shown
        if not server.disabled:
            try:
                tools = mcp_client.list_tools(server)
                figures["tools"] = [{"name": t.name, "description": t.description or ""} for t in tools]
            except ToolError as e:
                figures["error"], failed = str(e), True
        if as_json:
            click.echo(orjson.dumps(figures).decode())
            continue
        state = "disabled" if server.disabled else f"timeout {server.timeout:g}s"
        click.echo(f"{server.name}: {server.transport} {server.describe()}  ({state})")
        if "error" in figures:
            click.echo(f"  FAIL  {figures['error']}")
        for tool in figures.get("tools", []):
            click.echo(f"  {tool['name']:<24} {tool['description'].strip().splitlines()[0] if tool['description'] else ''}")
    if failed:
        ctx.exit(1)


@mcp.command()
@click.option("--allow", envvar="SOUL_MCP_ALLOW", metavar="TOOL[,TOOL...]",
              help=f"The tools to expose, of {', '.join(mcp_server.TOOLS)}. Default: mcp.json's serve.allow, "
                   f"else {','.join(mcp_server.DEFAULT_ALLOW)}.")
@click.option("--transport", type=click.Choice(["stdio", "streamable-http"]), default="stdio", show_default=True,
              help="stdio: for an agent that starts this command; streamable-http: a server at http://HOST:PORT/mcp.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="streamable-http: the address to listen on. Beyond loopback a bearer token is required.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="streamable-http: the port to listen on (0: a free one; the url is printed).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"streamable-http: a file holding the bearer token every request must carry (else {TOKEN_ENV}). "
                   "Never printed.")
@model_option
@click.pass_context
def serve(ctx: click.Context, allow: str | None, transport: str, host: str, port: int, token_file: Path | None,
          model: Path | None) -> None:
    """Serve this soul over MCP, for agents that consult it (e.g. a coding agent): on stdio,
    or over streamable HTTP until Ctrl-C or SIGTERM.

    Only the allowed tools are listed and callable. `ask` goes to the running daemon when
    there is one; otherwise the soul (and its model) is opened here on the first call.
    """
    try:
        allowed = mcp_server.allowed(allow)
    except mcp_config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    app = app_of(ctx)

    def open_soul() -> Soul:
        return Soul.open(app, model_dir=model)

    if transport == "stdio":
        given = [f"--{name.replace('_', '-')}" for name in ("host", "port", "token_file")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.ClickException(f"{', '.join(given)}: only with --transport streamable-http")
        mcp_server.serve(app, allowed, open_soul)
        return
    token = bearer_token(token_file)
    if token is None and not mcp_server.loopback(host):
        raise click.ClickException(f"listening on {host} (beyond loopback) needs a bearer token: "
                                   f"--token-file FILE or {TOKEN_ENV}")
    try:
        sock = mcp_server.listen(host, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    def ready(url: str) -> None:
        click.echo(f"soul MCP server for {app} at {url}{' (bearer token required)' if token else ''}", err=True)

    mcp_server.serve_http(app, allowed, open_soul, sock, token, ready)


def bearer_token(token_file: Path | None, env: str = TOKEN_ENV) -> str | None:
    """The token from `token_file`, else from the variable `env`, else None; blank is a mistake."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise click.ClickException(f"cannot read the token file {token_file}: {e.strerror or e}") from None
        where = str(token_file)
    elif env in os.environ:
        token, where = os.environ[env].strip(), env
    else:
        return None
    if not token:
        raise click.ClickException(f"{where} holds no token")
    return token
