"""The soul's own MCP server (design §7): other agents consult the soul over stdio, or over
streamable HTTP at `http://HOST:PORT/mcp`.

Tools, each exposed only when it is on the allow-list:

- `ask(question, conversation)`: one turn (the running daemon's when there is one), the reply;
- `recall(query)`: hybrid search of memory;
- `mount(corpus)`: mount a corpus for the context window;
- `perceive(text)`: journal a perception from the calling agent, without answering it;
- `task(goal)`: start a task the daemon works on over many steps (soul/agent/tasks.py);
- `tasks()`: the tasks, one a line, with their state and outcome.

The allow-list is `--allow` (or SOUL_MCP_ALLOW), else `"serve": {"allow": [...]}` in
`$SOUL_HOME/mcp.json`, else `ask,recall`: consulting the soul, not changing what it attends
to. A tool off the list is never registered with the server, so it is neither listed nor
callable (a call fails as an unknown tool). Perceptions from MCP carry the source
`agent:mcp`; what an agent asks cannot run chat commands (only a user's words can).

The soul is opened on the first call that needs it, and all its work runs on one thread, in
order: the mind is not for two callers at once.

Over HTTP (the SDK's streamable HTTP app, run by uvicorn) the server listens on loopback by
default, where the SDK also refuses requests whose Host or Origin is not local (DNS rebinding).
Given a bearer token, it answers 401 to any request that does not carry it; `soul mcp serve`
insists on one before it listens beyond loopback. The SDK's own auth is OAuth's resource-server
role (an issuer, metadata to publish); a shared token needs only the small `BearerToken` here.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import signal
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from journal.errors import one_line
from soul.agent.tools import ToolError
from soul.doors.mcp_config import ConfigError, load_config

TOOLS = ("ask", "recall", "mount", "perceive", "task", "tasks")
DEFAULT_ALLOW = ("ask", "recall")
SOURCE = "agent:mcp"
CONVERSATION = "mcp"
UNAUTHORIZED = -32001  # JSON-RPC's range for a server's own errors
REFUSED = "a bearer token is required (Authorization: Bearer <token>)"
T = TypeVar("T")


def allowed(given: str | None, home: Path | None = None) -> tuple[str, ...]:
    """The allow-list: `given` (comma-separated), else mcp.json's serve.allow, else the default."""
    if given is not None:
        names = [n.strip() for n in given.split(",") if n.strip()]
    else:
        serve = load_config(home).get("serve", {})
        names = serve.get("allow", list(DEFAULT_ALLOW)) if isinstance(serve, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError("mcp.json: serve.allow must be a list of tool names")
    unknown = sorted(set(names) - set(TOOLS))
    if unknown:
        raise ConfigError(f"no such tool to serve: {', '.join(unknown)}; the soul serves {', '.join(TOOLS)}")
    return tuple(n for n in TOOLS if n in names)


class Backend:
    """The soul behind the server, opened on first use, worked on by one thread."""

    def __init__(self, app: str, open_soul: Callable[[], Any]):
        self.app, self.open_soul = app, open_soul
        self.soul: Any = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soul-mcp")

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on the soul's thread; a failure is the calling agent's error result, in one line."""
        from mcp.server.mcpserver.exceptions import ToolError as ResultError  # MCPServer shows its text

        try:
            return await asyncio.wrap_future(self.worker.submit(work))
        except Exception as e:
            raise ResultError(one_line(e)) from None

    def opened(self) -> Any:
        if self.soul is None:
            self.soul = self.open_soul()
        return self.soul

    def ask(self, question: str, conversation: str) -> str:
        from soul.doors.daemon import attach

        if (client := attach(self.app)) is not None:  # the daemon's mind answers, not one loaded here
            with client:
                return client.turn(question, source=SOURCE, conversation=conversation).reply
        return self.opened().turn(question, source=SOURCE, conversation=conversation).reply

    def tool(self, name: str, arguments: dict[str, Any]) -> str:
        """A tool of the soul's (journaled as its tool call and result, in the MCP conversation)."""
        outcome = self.opened().call_tool(name, arguments, CONVERSATION)
        if not outcome.ok:
            raise ToolError(outcome.text)
        return outcome.text

    def perceive(self, text: str) -> str:
        seq, _ = self.opened().perceive(text, source=SOURCE, conversation=f"source:{SOURCE}")
        return f"perceived (journal sequence {seq})"

    def tasks(self) -> str:
        from soul.agent import tasks

        soul = self.opened()
        return "\n".join(map(tasks.describe, tasks.listing(soul))) or "no task yet"

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        if self.soul is not None:
            self.soul.close()


def build(backend: Backend, allow: Sequence[str]) -> Any:
    """An MCPServer with the tools on `allow`, and no others."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer(f"soul-{backend.app}", instructions="A local soul: ask it, or recall its memory.")

    async def ask(question: str, conversation: str = CONVERSATION) -> str:
        """Ask the soul; it answers in one turn (perceived, thought about, journaled)."""
        return await backend.run(lambda: backend.ask(question, conversation))

    async def recall(query: str) -> str:
        """Search the soul's memory (meaning and words) for `query`; the best memories, one a line:
        `[seq type] text`, a corpus chunk's as `[seq chunk_ingested corpus:path:first-last] text`."""
        return await backend.run(lambda: backend.tool("recall", {"query": query}))

    async def mount(corpus: str) -> str:
        """Mount corpus `corpus`: the one the soul's context window retrieves from."""
        return await backend.run(lambda: backend.tool("mount", {"corpus": corpus}))

    async def perceive(text: str) -> str:
        """Tell the soul something; it is journaled as a perception, not answered."""
        return await backend.run(lambda: backend.perceive(text))

    async def task(goal: str) -> str:
        """Hand the soul a goal it works on over many steps while its daemon runs; says the task's id."""
        return await backend.run(lambda: backend.tool("task", {"goal": goal}))

    async def tasks() -> str:
        """The soul's tasks, one a line: id, state, steps used of the budget, goal, and the outcome."""
        return await backend.run(backend.tasks)

    for fn in (ask, recall, mount, perceive, task, tasks):
        if fn.__name__ in allow:
            server.add_tool(fn)
    return server


def serve(app: str, allow: Sequence[str], open_soul: Callable[[], Any]) -> None:
    """Serve the soul over stdio until the client hangs up."""
    import anyio

    backend = Backend(app, open_soul)
    try:
        anyio.run(build(backend, allow).run_stdio_async)
    finally:
        backend.close()


def loopback(host: str) -> bool:
    """Whether `host` is this machine alone (127.0.0.0/8, ::1, localhost); a name that could
    resolve elsewhere is not."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), so that the address is known, and a
    taken port refused, before the server starts; a client that comes early waits in its backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/mcp"


class BearerToken:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <token>` gets 401, with a
    JSON-RPC error in the body (which MCP clients show) and a WWW-Authenticate header."""

    def __init__(self, app: Any, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):  # constant time: the token is not guessed by timing
                from starlette.responses import JSONResponse

                refused = JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": UNAUTHORIZED, "message": REFUSED}},
                                       401, headers={"WWW-Authenticate": "Bearer"})
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve_http(app: str, allow: Sequence[str], open_soul: Callable[[], Any], sock: socket.socket,
               token: str | None, on_ready: Callable[[str], None] = lambda _: None) -> None:
    """Serve the soul over streamable HTTP on `sock` (from `listen`) until SIGINT or SIGTERM;
    with `token`, only to requests that carry it. `on_ready(url)` once it is about to accept."""
    import uvicorn

    backend = Backend(app, open_soul)
    try:
        web = build(backend, allow).streamable_http_app(host=sock.getsockname()[0])  # loopback: DNS-rebinding checks
        config = uvicorn.Config(BearerToken(web, token) if token else web, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        on_ready(url_of(sock))
        # uvicorn stops gracefully on SIGINT or SIGTERM, then raises that signal again with the
        # handlers it found: these, so that the process goes on to close the soul and exit 0.
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    finally:
        sock.close()
        backend.close()
