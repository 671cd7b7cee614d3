"""MCP both ways, over stdio with real processes: the soul calls a real MCP server
(tests/mcp_echo_server.py), and other agents call the soul's own server through mcp.ClientSession."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from soul.agent.loop import Soul, SoulConfig
from soul.agent.tools import ToolError
from soul.doors import mcp_client
from tests.support import drop_schema
from tests.tiny_model import build_tiny_model

ECHO_SERVER = str(Path(__file__).with_name("mcp_echo_server.py"))
SOUL = [sys.executable, "-m", "soul"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def soul(soul_home: Path, nats_url: str, pg_url: str, app_name: str, tiny: Path) -> Iterator[Soul]:
    with Soul.open(app_name, model_dir=tiny, config=SoulConfig(max_tokens=8)) as opened:
        yield opened
    drop_schema(pg_url, app_name)


@pytest.fixture
def env(soul_home: Path, nats_url: str, pg_url: str, app_name: str, tiny: Path) -> Iterator[dict[str, str]]:
    """The environment of a `soul` process: this test's home and soul, the tiny model."""
    yield {**os.environ, "SOUL_HOME": str(soul_home), "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
           "SOUL_APP": app_name, "SOUL_MODEL": str(tiny)}
    drop_schema(pg_url, app_name)


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


# -- the soul calls them ------------------------------------------------------------------


def tool_events(soul: Soul) -> list[Any]:
    return [e.event for e in soul.journal.read(types=["tool_call", "tool_result"])]


def test_the_soul_calls_a_real_mcp_server_and_journals_call_and_result(soul_home: Path, soul: Soul) -> None:
    configure(soul_home)
    result = soul.turn('/agent echo echo {"text": "hello"}')
    assert result.reply == "echo: hello"
    call, outcome = tool_events(soul)
    assert call.data == {"tool": "agent", "arguments": {"server": "echo", "tool": "echo", "arguments": '{"text": "hello"}'}}
    assert outcome.prose == "echo: hello" and outcome.data["outcome"] == "ok" and outcome.causation_id == call.id


def test_a_hanging_or_dying_server_is_an_error_result_and_the_soul_goes_on(soul_home: Path, soul: Soul) -> None:
    configure(soul_home, timeout=3)
    hung = soul.turn("/agent echo hang")
    died = soul.turn("/agent echo die")
    assert hung.reply.startswith("error: MCP server 'echo': did not answer within 3s")
    assert died.reply.startswith("error: MCP server 'echo': Connection closed")
    results = [e for e in tool_events(soul) if e.type == "tool_result"]
    assert [e.data["outcome"] for e in results] == ["error", "error"]
    assert [e.prose for e in results] == [hung.reply.removeprefix("error: "), died.reply.removeprefix("error: ")]
    assert 3 <= results[0].data["duration_s"] < 15
    after = soul.turn("are you still there?")
    assert after.thought_seq is not None


def test_mcp_servers_lists_each_server_and_its_tools_or_why_not(soul_home: Path, env: dict[str, str]) -> None:
    configure(soul_home, missing={"command": str(soul_home / "no-such-program")})
    listed = subprocess.run([*SOUL, "mcp", "servers", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 1
    echo, missing = (json.loads(line) for line in listed.stdout.splitlines())
    assert [t["name"] for t in echo["tools"]] == ["echo", "hang", "die"] and echo["tools"][0]["description"] == "Say `text` back."
    assert "No such file" in missing["error"] and "tools" not in missing


# -- other agents call the soul -----------------------------------------------------------


def consult(env: dict[str, str], *args: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Any]]:
    """Start `soul mcp serve ARGS` over stdio, list its tools and make `calls`: (names, results)."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "soul", "mcp", "serve", *args], env=env)

    async def session() -> tuple[list[str], list[Any]]:
        with open(Path(env["SOUL_HOME"]).parent / "serve.log", "a") as errlog, anyio.fail_after(240):
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
                await client.initialize()
                names = [t.name for t in (await client.list_tools()).tools]
                return names, [await client.call_tool(name, arguments) for name, arguments in calls]

    return anyio.run(session)


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


def test_other_agents_ask_and_recall_and_nothing_beyond_the_allow_list(env: dict[str, str], app_name: str) -> None:
    names, (asked, recalled, perceived, commanded) = consult(env, "--allow", "ask,recall", calls=[
        ("ask", {"question": "the lighthouse keeper counts ships"}),
        ("recall", {"query": "lighthouse keeper"}),
        ("perceive", {"text": "not allowed"}),
        ("ask", {"question": "/notebook an agent's words are not commands"}),
    ])
    assert names == ["ask", "recall"]
    assert not asked.is_error and text(asked)
    assert not recalled.is_error and "the lighthouse keeper counts ships" in text(recalled)
    assert perceived.is_error and text(perceived) == "Unknown tool: perceive"
    assert not commanded.is_error
    from journal.journal import Journal

    with Journal(app_name) as journal:
        journaled = [e.event for e in journal.read()]
    turns = [(e.type, str(e.originator_id), e.data.get("source")) for e in journaled if e.type in ("perception", "thought")]
    assert turns == [("perception", "mcp", "agent:mcp"), ("thought", "mcp", None)] * 2
    assert not [e for e in journaled if e.type == "notebook_written"]
    recall_call = next(e for e in journaled if e.type == "tool_call")
    assert recall_call.data == {"tool": "recall", "arguments": {"query": "lighthouse keeper"}}


def test_the_allow_list_comes_from_mcp_json_and_a_wrong_one_is_one_line(env: dict[str, str], soul_home: Path) -> None:
    soul_home.mkdir(parents=True)
    (soul_home / "mcp.json").write_text(json.dumps({"serve": {"allow": ["mount", "perceive"]}}))
    names, (perceived, mounted, asked) = consult(env, calls=[
        ("perceive", {"text": "noted"}), ("mount", {"corpus": "nothing"}), ("ask", {"question": "hi?"})])
    assert names == ["mount", "perceive"] and text(perceived).startswith("perceived (journal sequence ")
    assert mounted.is_error and text(mounted).startswith("Error executing tool mount: no corpus named 'nothing'")
    assert asked.is_error and text(asked) == "Unknown tool: ask"

    wrong = subprocess.run([*SOUL, "mcp", "serve", "--allow", "ask,rm"], env=env, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
    assert wrong.returncode == 1
    assert wrong.stderr == "Error: no such tool to serve: rm; the soul serves ask, recall, mount, perceive\n"
