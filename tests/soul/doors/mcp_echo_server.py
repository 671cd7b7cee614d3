"""A real stdio MCP server for tests/soul/doors/test_mcp.py: one tool that answers, one that hangs, one that dies."""

from __future__ import annotations

import os
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


if __name__ == "__main__":
    server.run("stdio")
