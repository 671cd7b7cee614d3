"""External agents over MCP (design §7): the `agent` tool calls a tool of a configured server.

Servers are the user's, in `$SOUL_HOME/mcp.json` (soul/doors/mcp_config.py: Claude Code's and
VS Code's shapes, stdio or streamable HTTP). A call opens a `ClientSession` with the official
SDK's `stdio_client` (the server is started as a process) or `streamable_http_client` (the
server is reached at its url, with its headers), initializes it and calls the tool.

- **One call, one session** by default: the server is started for the call and stopped after
  it, so a server that crashed on one call cannot spoil the next. The whole call, start-up
  included, has the server's timeout.
- **Kept sessions** (`kept_sessions()`, which the daemon holds for its life): one session per
  server, opened on its first call and reused by the next. Before reuse it is pinged; one that
  died since (its process exited, its HTTP server forgot it) is opened again, once, and the
  call goes to the new one. A call that fails or times out closes its session, so the next
  call starts afresh; a tool call is never sent twice. Leaving `kept_sessions()` closes them all
  (stdio servers are stopped).

A server that hangs or dies becomes a `ToolError` naming it, which the turn loop journals as
the tool's result, and the soul goes on. A stdio server's stderr is appended to
`$SOUL_HOME/logs/mcp-<name>.log`, never mixed into the soul's output.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from journal.embedded import soul_home
from journal.errors import one_line
from soul.agent.tools import Tool, ToolError, ToolHost, register
from soul.doors.mcp_config import Server, config_path, servers

log = logging.getLogger("soul.mcp")
SSE_READ_TIMEOUT = 300.0  # seconds an HTTP server may keep a response stream quiet (the SDK's default)
T = TypeVar("T")
Work = Callable[[Any], Awaitable[T]]  # work(session): what is done with an initialized ClientSession


def server(name: str, home: Path | None = None) -> Server:
    known = servers(home)
    if name not in known:
        raise ToolError(f"no MCP server named {name!r} in {config_path(home)}; "
                        f"configured: {', '.join(known) or 'none'}")
    if known[name].disabled:
        raise ToolError(f"MCP server {name!r} is disabled in {config_path(home)}")
    return known[name]


def stderr_log(target: Server, home: Path | None) -> Path:
    logs = (home or soul_home()) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"mcp-{target.name}.log"


@asynccontextmanager
async def connect(target: Server, home: Path | None = None) -> AsyncIterator[Any]:
    """An initialized ClientSession with `target`, over its transport; closed (and a stdio
    server stopped) on leaving."""
    from mcp import ClientSession

    async with AsyncExitStack() as stack:
        if target.transport == "http":
            import httpx2  # the SDK's HTTP client
            from mcp.client.streamable_http import streamable_http_client

            http = await stack.enter_async_context(httpx2.AsyncClient(
                headers=target.headers, timeout=httpx2.Timeout(target.timeout, read=SSE_READ_TIMEOUT)))
            read, write = await stack.enter_async_context(streamable_http_client(target.url, http_client=http))
        else:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=target.command, args=list(target.args), env=target.env or None,
                                           cwd=target.cwd)
            errlog = stack.enter_context(open(stderr_log(target, home), "a"))
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


def reason(e: BaseException) -> str:
    """One line for what went wrong, from inside the task groups the SDK wraps errors in."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if isinstance(e, TimeoutError):
        return "timed out"
    return one_line(e)


def failure(target: Server, e: BaseException, home: Path | None) -> ToolError:
    why = reason(e)
    if why == "timed out":
        why = f"did not answer within {target.timeout:g}s"
    if target.transport == "stdio":
        why += f" (its stderr: {stderr_log(target, home)})"
    return ToolError(f"MCP server {target.name!r}: {why}")


def session_call(target: Server, work: Work[T], home: Path | None = None) -> T:
    """Run `work(session)` on a session with `target`: the kept one while `kept_sessions()` is
    held, else one opened for this call and closed after it, all within the server's timeout.
    Failures become a ToolError naming the server."""
    if _kept is not None:
        return _kept.call(target, work)
    import anyio
    import mcp.client.streamable_http  # noqa: F401  the SDK (0.6 s to import), before the timeout counts

    async def run() -> T:
        with anyio.fail_after(target.timeout):
            async with connect(target, home) as session:
                return await work(session)

    try:
        return anyio.run(run)
    except Exception as e:
        raise failure(target, e, home) from None


# -- kept sessions ---------------------------------------------------------------------------


@dataclass
class Kept:
    target: Server
    session: Any
    stop: Any  # an anyio.Event: set, the session closes
    done: Any  # the future of the task that holds the session open


class Sessions:
    """One open session per server, reused across calls, all on one event loop in a thread of
    its own (an anyio blocking portal); `call` is for any thread, one call at a time."""

    def __init__(self, home: Path | None = None):
        import mcp.client.streamable_http  # noqa: F401  the SDK (0.6 s to import), before any timeout counts
        from anyio.from_thread import start_blocking_portal

        self.home = home
        self.kept: dict[str, Kept] = {}
        self.opened = 0  # sessions opened so far: a measure of reuse
        self.guard = threading.Lock()
        self.portal_context = start_blocking_portal(name="soul-mcp-sessions")
        self.portal = self.portal_context.__enter__()

    def call(self, target: Server, work: Work[T]) -> T:
        deadline = time.monotonic() + target.timeout
        with self.guard:
            kept = self.kept.get(target.name)
            if kept is not None and (kept.target != target or not self._answers(kept, deadline)):
                self._close(target.name)  # mcp.json changed, or the server died since: open it again
                kept = None
            try:
                if kept is None:
                    kept = self._open(target, deadline)
                return self.portal.call(within, deadline, work, kept.session)
            except Exception as e:
                self._close(target.name)
                raise failure(target, e, self.home) from None

    def _answers(self, kept: Kept, deadline: float) -> bool:
        try:
            self.portal.call(within, deadline, lambda session: session.send_ping(), kept.session)
            return True
        except Exception as e:
            log.info("MCP server %r: its session ended (%s); opening another", kept.target.name, reason(e))
            return False

    def _open(self, target: Server, deadline: float) -> Kept:
        import anyio

        async def hold(*, task_status: Any) -> None:
            with anyio.fail_after(max(deadline - time.monotonic(), 0)) as opening:
                async with connect(target, self.home) as session:
                    opening.deadline = math.inf  # the deadline was for opening it
                    stop = anyio.Event()
                    task_status.started((session, stop))
                    await stop.wait()

        done, (session, stop) = self.portal.start_task(hold, name=f"mcp-{target.name}")
        self.kept[target.name] = kept = Kept(target, session, stop, done)
        self.opened += 1
        return kept

    def _close(self, name: str) -> None:
        kept = self.kept.pop(name, None)
        if kept is None:
            return
        try:
            self.portal.call(kept.stop.set)
            kept.done.result(timeout=kept.target.timeout)
        except Exception as e:  # it is gone either way; what it said on the way out is only news
            log.info("MCP server %r: closing its session: %s", name, reason(e))

    def close(self) -> None:
        with self.guard:
            for name in list(self.kept):
                self._close(name)
            self.portal.call(self.portal.stop, True)  # anything still running is cancelled
            self.portal_context.__exit__(None, None, None)


async def within(deadline: float, work: Work[T], session: Any) -> T:
    import anyio

    with anyio.fail_after(max(deadline - time.monotonic(), 0)):
        return await work(session)


_kept: Sessions | None = None  # the daemon's, while it runs


@contextmanager
def kept_sessions(home: Path | None = None) -> Iterator[Sessions]:
    """While held, calls to MCP servers reuse one session per server (see the module's doc)."""
    global _kept
    if _kept is not None:
        raise RuntimeError("MCP sessions are kept already")
    sessions = _kept = Sessions(home)
    try:
        yield sessions
    finally:
        _kept = None
        sessions.close()


# -- the calls -------------------------------------------------------------------------------


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
