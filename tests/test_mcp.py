"""MCP both ways, over stdio with real processes: the soul calls a real MCP server
(tests/mcp_echo_server.py), and other agents call the soul's own server through mcp.ClientSession."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from soul import mcp_client
from soul.tools import ToolError

ECHO_SERVER = str(Path(__file__).with_name("mcp_echo_server.py"))


def configure(home: Path, timeout: float = 20.0, **extra: dict) -> None:
    home.mkdir(parents=True, exist_ok=True)
    servers = {"echo": {"command": sys.executable, "args": [ECHO_SERVER], "timeout": timeout}, **extra}
    (home / "mcp.json").write_text(json.dumps({"mcpServers": servers}))


def test_a_real_mcp_server_answers(soul_home: Path) -> None:
    configure(soul_home)
    assert mcp_client.call("echo", "echo", {"text": "hello"}) == "echo: hello"
    assert [t.name for t in mcp_client.list_tools(mcp_client.server("echo"))] == ["echo", "hang", "die"]


def test_a_hanging_server_is_an_error_after_its_timeout(soul_home: Path) -> None:
    configure(soul_home, timeout=3)
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"MCP server 'echo': did not answer within 3s"):
        mcp_client.call("echo", "hang", {})
    assert time.monotonic() - start < 3 + 10  # the timeout, then a bounded shutdown of the server


def test_a_dying_server_is_an_error(soul_home: Path) -> None:
    configure(soul_home)
    with pytest.raises(ToolError, match=r"MCP server 'echo': Connection closed .*mcp-echo.log"):
        mcp_client.call("echo", "die", {})


def test_unknown_tools_servers_and_commands_are_errors(soul_home: Path) -> None:
    configure(soul_home, missing={"command": str(soul_home / "no-such-program")})
    with pytest.raises(ToolError, match=r"echo.nope: Unknown tool: nope"):
        mcp_client.call("echo", "nope", {})
    with pytest.raises(ToolError, match=r"no MCP server named 'other' .*configured: echo, missing"):
        mcp_client.call("other", "echo", {})
    with pytest.raises(ToolError, match=r"MCP server 'missing': .*No such file"):
        mcp_client.call("missing", "echo", {})


def test_a_broken_config_names_the_file_and_the_fix(soul_home: Path) -> None:
    soul_home.mkdir(parents=True)
    (soul_home / "mcp.json").write_text("{not json")
    with pytest.raises(mcp_client.ConfigError, match=r"mcp.json is not valid JSON"):
        mcp_client.servers()
    (soul_home / "mcp.json").write_text(json.dumps({"mcpServers": {"x": {"command": "a", "cwd": "/"}}}))
    with pytest.raises(mcp_client.ConfigError, match=r"server 'x': .*cwd.*use command, args, env, timeout"):
        mcp_client.servers()
    (soul_home / "mcp.json").write_text(json.dumps({"mcpServers": {"x": {"command": "a", "timeout": -1}}}))
    with pytest.raises(mcp_client.ConfigError, match=r"positive timeout"):
        mcp_client.servers()
