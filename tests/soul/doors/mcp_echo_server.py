"""A real MCP server for tests/soul/doors/test_mcp.py: one tool that answers, one that hangs, one
that dies, and two that tell which process answers and where it runs.

`python mcp_echo_server.py` speaks stdio; `python mcp_echo_server.py http [TOKEN]` serves
streamable HTTP on a free loopback port (only to requests bearing TOKEN, if given) and prints
its url as its first line."""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    """Say `text` back."""
    return f"echo: {text}"


@server.tool()
def hang() -> str:
    """Never answer (within any sane timeout)."""
    time.sleep(3600)
    return "woke up"


@server.tool()
def die() -> str:
    """End the server's process in the middle of the call."""
    os._exit(3)


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
def cwd() -> str:
    """The server's working directory."""
    return os.getcwd()


def serve_http(token: str | None) -> None:
    import uvicorn

    from soul.doors.mcp_server import BearerToken, listen, url_of

    sock = listen("127.0.0.1", 0)
    web = server.streamable_http_app(host="127.0.0.1")
    print(url_of(sock), flush=True)
    config = uvicorn.Config(BearerToken(web, token) if token else web, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        serve_http(sys.argv[2] if len(sys.argv) > 2 else None)
    else:
        server.run("stdio")
