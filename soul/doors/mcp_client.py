"""External agents over MCP (design §7): the `agent` tool calls a tool of a configured server.

Servers are the user's, in `$SOUL_HOME/mcp.json`, in the `mcpServers` shape other MCP clients
use, plus a timeout in seconds:

    {"mcpServers": {"coder": {"command": "my-agent", "args": ["mcp"], "env": {"K": "v"},
                              "timeout": 60}}}

Each call starts the server over stdio (the official SDK's `stdio_client`), initializes a
`ClientSession`, calls the tool and stops the server: a server that crashed on one call
cannot spoil the next, and the soul holds no connection state. The whole call, start-up
included, has the server's timeout; a server that hangs or dies becomes a `ToolError` naming
it, which the turn loop journals as the tool's result, and the soul goes on. A server's
stderr is appended to `$SOUL_HOME/logs/mcp-<name>.log`, never mixed into the soul's output.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from journal.embedded import soul_home
from journal.errors import one_line
from soul.agent.tools import Tool, ToolError, ToolHost, register

CONFIG = "mcp.json"
DEFAULT_TIMEOUT = 30.0
T = TypeVar("T")


class ConfigError(ValueError):
    """mcp.json is missing something or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class Server:
    name: str
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT


def config_path(home: Path | None = None) -> Path:
    return (home or soul_home()) / CONFIG


def load_config(home: Path | None = None) -> dict[str, Any]:
    """The parsed mcp.json ({} when there is none)."""
    path = config_path(home)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return config


def servers(home: Path | None = None) -> dict[str, Server]:
    path, entries = config_path(home), load_config(home).get("mcpServers", {})
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: mcpServers must map server names to {{command, args, env, timeout}}")
    found = {}
    for name, entry in entries.items():
        try:
            server = Server(name, **entry)
        except TypeError as e:
            raise ConfigError(f"{path}: server {name!r}: {e}; use command, args, env, timeout") from None
        if not (isinstance(server.command, str) and server.command
                and isinstance(server.args, list) and all(isinstance(a, str) for a in server.args)
                and isinstance(server.env, dict) and all(isinstance(v, str) for v in server.env.values())
                and isinstance(server.timeout, (int, float)) and server.timeout > 0):
            raise ConfigError(f"{path}: server {name!r} needs a command (text), args (a list of text), "
                              "env (text values) and a positive timeout (seconds)")
        found[name] = server
    return found


def server(name: str, home: Path | None = None) -> Server:
    known = servers(home)
    if name not in known:
        raise ToolError(f"no MCP server named {name!r} in {config_path(home)}; "
                        f"configured: {', '.join(known) or 'none'}")
    return known[name]


def reason(e: BaseException) -> str:
    """One line for what went wrong, from inside the task groups the SDK wraps errors in."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if isinstance(e, TimeoutError):
        return "timed out"
    return one_line(e)


def session_call(target: Server, work: Callable[[Any], Awaitable[T]], home: Path | None = None) -> T:
    """Start `target`, open an initialized session, run `work(session)` and stop the server,
    all within the server's timeout. Failures become a ToolError naming the server."""
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client  # 0.6 s to import: only when used

    logs = (home or soul_home()) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    params = StdioServerParameters(command=target.command, args=target.args, env=target.env or None)

    async def run() -> T:
        with open(logs / f"mcp-{target.name}.log", "a") as errlog, anyio.fail_after(target.timeout):
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    try:
        return anyio.run(run)
    except Exception as e:
        why = reason(e)
        if why == "timed out":
            why = f"did not answer within {target.timeout:g}s"
        raise ToolError(f"MCP server {target.name!r}: {why} (its stderr: {logs / f'mcp-{target.name}.log'})") from None


def result_text(result: Any) -> str:
    """What a tool result says, as text: its text blocks, else its structured content."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    others = [f"[{block.type}]" for block in result.content if getattr(block, "type", None) != "text"]
    if texts or others:
        return "\n".join(texts + others)
    return json.dumps(result.structured_content) if result.structured_content is not None else ""


def call(server_name: str, tool: str, arguments: dict[str, Any], home: Path | None = None) -> str:
    """Call `tool` of MCP server `server_name` with `arguments`; its result as text."""
    async def work(session: Any) -> Any:
        return await session.call_tool(tool, arguments)

    result = session_call(server(server_name, home), work, home)
    if result.is_error:
        raise ToolError(f"{server_name}.{tool}: {result_text(result)}")
    return result_text(result)


def list_tools(target: Server, home: Path | None = None) -> list[Any]:
    async def work(session: Any) -> Any:
        return (await session.list_tools()).tools

    return session_call(target, work, home)


def agent(soul: ToolHost, arguments: dict[str, Any]) -> str:
    server_name, tool = arguments.get("server"), arguments.get("tool")
    if not (isinstance(server_name, str) and server_name and isinstance(tool, str) and tool):
        raise ToolError("give the MCP server and the tool to call: /agent SERVER TOOL {json arguments}")
    given = arguments.get("arguments") or {}
    if isinstance(given, str):  # a chat command passes the rest of its line
        try:
            given = json.loads(given)
        except ValueError as e:
            raise ToolError(f"the tool's arguments must be a JSON object: {e}") from None
    if not isinstance(given, dict):
        raise ToolError("the tool's arguments must be a JSON object")
    return call(server_name, tool, given)


register(Tool(
    "agent",
    "Invoke a tool of an external agent over MCP (servers configured in SOUL_HOME/mcp.json).",
    {"type": "object",
     "properties": {"server": {"type": "string", "description": "the MCP server's name in mcp.json"},
                    "tool": {"type": "string", "description": "the tool to call"},
                    "arguments": {"type": "object", "description": "the tool's arguments"}},
     "required": ["server", "tool"]},
    agent,
))
