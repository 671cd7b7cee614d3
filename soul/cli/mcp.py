"""`soul mcp servers`: the external agents configured in SOUL_HOME/mcp.json and their tools;
`soul mcp serve`: the soul's own MCP server on stdio (soul/doors/mcp_server.py)."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from soul.agent.loop import Soul
from soul.agent.tools import ToolError
from soul.cli.options import app_of, json_option, model_option
from soul.doors import mcp_client, mcp_server


@click.group()
def mcp() -> None:
    """MCP: call external agents' tools, and let other agents consult this soul."""


@mcp.command()
@json_option("One JSON object per server.")
@click.pass_context
def servers(ctx: click.Context, as_json: bool) -> None:
    """The MCP servers configured in SOUL_HOME/mcp.json, each started to list its tools.

    A server that fails to start or answer is shown with the reason; the exit status is 1
    if any did."""
    try:
        configured = mcp_client.servers()
    except mcp_client.ConfigError as e:
        raise click.ClickException(str(e)) from None
    if not configured:
        click.echo(f"no MCP servers configured in {mcp_client.config_path()}", err=True)
    failed = False
    for server in configured.values():
        figures = {"name": server.name, "command": [server.command, *server.args], "timeout": server.timeout}
        try:
            tools = mcp_client.list_tools(server)
            figures["tools"] = [{"name": t.name, "description": t.description or ""} for t in tools]
        except ToolError as e:
            figures["error"], failed = str(e), True
        if as_json:
            click.echo(orjson.dumps(figures).decode())
            continue
        click.echo(f"{server.name}: {' '.join(figures['command'])}  (timeout {server.timeout:g}s)")
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
@model_option
@click.pass_context
def serve(ctx: click.Context, allow: str | None, model: Path | None) -> None:
    """Serve this soul over MCP on stdio, for agents that consult it (e.g. a coding agent).

    Only the allowed tools are listed and callable. `ask` goes to the running daemon when
    there is one; otherwise the soul (and its model) is opened here on the first call.
    """
    try:
        allowed = mcp_server.allowed(allow)
    except mcp_client.ConfigError as e:
        raise click.ClickException(str(e)) from None
    app = app_of(ctx)
    mcp_server.serve(app, allowed, lambda: Soul.open(app, model_dir=model))
