"""MCP both ways, with real processes over stdio and streamable HTTP: the soul calls a real MCP
server (tests/soul/doors/mcp_echo_server.py), and other agents call the soul's own server through
the SDK's ClientSession."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from soul.agent.loop import Soul, SoulConfig
from soul.agent.tools import ToolError
from soul.doors import mcp_client, mcp_config
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
    assert [t.name for t in mcp_client.list_tools(mcp_client.server("echo"))] == ["echo", "hang", "die", "pid", "cwd"]
    assert mcp_client.call("echo", "pid", {}) != mcp_client.call("echo", "pid", {})  # one call, one process


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


def test_a_broken_config_names_the_file_the_key_and_the_fix(soul_home: Path) -> None:
    soul_home.mkdir(parents=True)
    path = soul_home / "mcp.json"

    def refused(config: Any) -> str:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        with pytest.raises(mcp_config.ConfigError) as e:
            mcp_config.servers()
        return str(e.value)

    assert refused("{not json").startswith(f"{path} is not valid JSON")
    assert refused({"mcpServers": {"x": {"command": "a", "envFile": ".env"}}}) == (
        f"{path}: mcpServers.x: unknown field 'envFile' for a stdio server; "
        "it takes type, disabled, timeout, command, args, env, cwd")
    assert refused({"servers": {"x": {"type": "http", "url": "http://h/mcp", "command": "a"}}}) == (
        f"{path}: servers.x: unknown field 'command' for a http server; it takes type, disabled, timeout, url, headers")
    assert refused({"servers": {"x": {"type": "sse", "url": "http://h/sse"}}}) == (
        f"{path}: servers.x: type 'sse' is not one the soul speaks; use \"stdio\" or \"http\" (streamable HTTP)")
    assert refused({"mcpServers": {"x": {"command": "a", "timeout": -1}}}) == (
        f"{path}: mcpServers.x: timeout must be a positive number of seconds")
    assert refused({"mcpServers": {"x": {"command": "a", "disabled": "yes"}}}) == (
        f"{path}: mcpServers.x: disabled must be true or false")
    assert refused({"servers": {"x": {"type": "http"}}}) == f"{path}: servers.x: an http server needs a url (http:// or https://)"
    assert refused({"mcpServers": {"x": {"args": []}}}) == f"{path}: mcpServers.x: a stdio server needs a command (text)"
    assert refused({"mcpServers": {"x": {"command": "a"}}, "servers": {"x": {"command": "b"}}}) == (
        f"{path}: server 'x' is in both mcpServers and servers; keep one")
    assert refused({"mcp": {"servers": {}}}) == f"{path}: unknown key 'mcp'; mcp.json holds mcpServers, servers, inputs, serve"
    assert refused({"servers": ["x"]}) == f"{path}: servers must map server names to their settings"


def test_claude_code_and_vs_code_shapes_are_read_and_cwd_is_honoured(soul_home: Path) -> None:
    (soul_home / "work").mkdir(parents=True)
    (soul_home / "mcp.json").write_text(json.dumps({
        "mcpServers": {  # Claude Code's .mcp.json
            "code": {"type": "stdio", "command": sys.executable, "args": [ECHO_SERVER], "env": {"K": "v"}, "cwd": "work"},
            "plain": {"command": sys.executable, "args": [ECHO_SERVER], "cwd": "/"},
            "remote": {"type": "http", "url": "https://example.com/mcp", "headers": {"X-API-Key": "k"}},
        },
        "servers": {  # VS Code's .vscode/mcp.json
            "vscode": {"type": "stdio", "command": sys.executable, "args": [ECHO_SERVER]},
            "off": {"type": "http", "url": "http://127.0.0.1:9/mcp", "disabled": True},
        },
        "inputs": [{"type": "promptString", "id": "api-key", "password": True}],
    }))
    found = mcp_config.servers()
    assert list(found) == ["code", "plain", "remote", "vscode", "off"]
    assert found["code"] == mcp_config.Server("code", "stdio", command=sys.executable, args=(ECHO_SERVER,),
                                              env={"K": "v"}, cwd=soul_home / "work")
    assert found["remote"] == mcp_config.Server("remote", "http", url="https://example.com/mcp", headers={"X-API-Key": "k"})
    assert found["off"].disabled and not found["vscode"].disabled and found["vscode"].cwd is None
    assert mcp_client.call("code", "cwd", {}) == str(soul_home / "work")  # relative to mcp.json's folder
    assert mcp_client.call("plain", "cwd", {}) == "/"
    with pytest.raises(ToolError, match=rf"MCP server 'off' is disabled in {soul_home / 'mcp.json'}"):
        mcp_client.call("off", "echo", {"text": "hi"})


def test_kept_sessions_are_reused_reopened_once_when_dead_and_closed_at_the_end(soul_home: Path) -> None:
    configure(soul_home)
    with mcp_client.kept_sessions() as kept:
        first, again = mcp_client.call("echo", "pid", {}), mcp_client.call("echo", "pid", {})
        assert first == again and kept.opened == 1
        with pytest.raises(ToolError, match=r"MCP server 'echo': Connection closed"):
            mcp_client.call("echo", "die", {})  # the tool killed it: an error, not sent again
        after_death = mcp_client.call("echo", "pid", {})
        assert after_death != first and kept.opened == 2
        os.kill(int(after_death), signal.SIGKILL)  # dies between two calls: the next one opens another
        wait_gone(int(after_death))
        last = mcp_client.call("echo", "pid", {})
        assert last != after_death and kept.opened == 3
    wait_gone(int(last), timeout=10)  # leaving kept_sessions stops the servers


def wait_gone(pid: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


# -- over streamable HTTP -------------------------------------------------------------------


TOKEN = "s3cret-token"


@pytest.fixture
def echo_url(tmp_path: Path) -> Iterator[str]:
    """The echo server over streamable HTTP, answering only requests that bear TOKEN."""
    with open(tmp_path / "echo-http.log", "w") as log:
        process = subprocess.Popen([sys.executable, ECHO_SERVER, "http", TOKEN], stdout=subprocess.PIPE, stderr=log,
                                   text=True)
        try:
            yield process.stdout.readline().strip()
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_an_http_mcp_server_is_called_with_its_headers_and_its_session_kept(soul_home: Path, echo_url: str) -> None:
    soul_home.mkdir(parents=True)
    (soul_home / "mcp.json").write_text(json.dumps({"servers": {
        "web": {"type": "http", "url": echo_url, "headers": {"Authorization": f"Bearer {TOKEN}"}, "timeout": 20},
        "bare": {"url": echo_url, "timeout": 20}}}))
    assert mcp_client.call("web", "echo", {"text": "over http"}) == "echo: over http"
    with pytest.raises(ToolError, match=r"^MCP server 'bare': a bearer token is required \(Authorization: Bearer <token>\)$"):
        mcp_client.call("bare", "echo", {"text": "no token"})
    with mcp_client.kept_sessions() as kept:
        assert mcp_client.call("web", "echo", {"text": "one"}) == "echo: one"
        assert mcp_client.call("web", "echo", {"text": "two"}) == "echo: two"
        assert kept.opened == 1


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
    # dying gets time to start on a loaded machine: what it shows is Connection closed, not a timeout
    configure(soul_home, timeout=3, dying={"command": sys.executable, "args": [ECHO_SERVER], "timeout": 60})
    hung = soul.turn("/agent echo hang")
    died = soul.turn("/agent dying die")
    assert hung.reply.startswith("error: MCP server 'echo': did not answer within 3s")
    assert died.reply.startswith("error: MCP server 'dying': Connection closed")
    results = [e for e in tool_events(soul) if e.type == "tool_result"]
    assert [e.data["outcome"] for e in results] == ["error", "error"]
    assert [e.prose for e in results] == [hung.reply.removeprefix("error: "), died.reply.removeprefix("error: ")]
    assert 3 <= results[0].data["duration_s"] < 15
    after = soul.turn("are you still there?")
    assert after.thought_seq is not None


def test_mcp_servers_lists_each_server_and_its_tools_or_why_not(soul_home: Path, env: dict[str, str],
                                                                echo_url: str) -> None:
    configure(soul_home, missing={"command": str(soul_home / "no-such-program")},
              off={"command": str(soul_home / "no-such-program"), "disabled": True},
              web={"type": "http", "url": echo_url, "headers": {"Authorization": f"Bearer {TOKEN}"}})
    listed = subprocess.run([*SOUL, "mcp", "servers", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 1
    echo, missing, off, web = (json.loads(line) for line in listed.stdout.splitlines())
    assert [t["name"] for t in echo["tools"]] == ["echo", "hang", "die", "pid", "cwd"]
    assert echo["tools"][0]["description"] == "Say `text` back." and echo["type"] == "stdio"
    assert "No such file" in missing["error"] and "tools" not in missing
    assert off == {"name": "off", "type": "stdio", "timeout": 30.0, "disabled": True,
                   "command": [str(soul_home / "no-such-program")]}  # not started, so no error
    assert web["type"] == "http" and web["url"] == echo_url and len(web["tools"]) == 5
    shown = subprocess.run([*SOUL, "mcp", "servers"], env=env, capture_output=True, text=True, timeout=120).stdout
    assert f"off: stdio {soul_home / 'no-such-program'}  (disabled)\n" in shown and TOKEN not in shown
    assert f"web: http {echo_url}  (timeout 30s)\n" in shown


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


def test_other_agents_start_a_task_and_see_it_listed(env: dict[str, str], app_name: str) -> None:
    names, (started, listed) = consult(env, "--allow", "task,tasks", calls=[
        ("task", {"goal": "count the lighthouse's ships"}), ("tasks", {})])
    assert names == ["task", "tasks"]
    assert not started.is_error and text(started).startswith("task ") and "started" in text(started)
    short = text(started).split()[1]
    assert not listed.is_error and text(listed).startswith(f"{short}  open") and "count the lighthouse" in text(listed)


def test_a_recalled_corpus_chunk_says_where_it_comes_from(env: dict[str, str], app_name: str) -> None:
    import numpy as np

    from journal.event import BifocalEvent, Embedder
    from journal.journal import Journal

    text_ = "The harbour lantern is lit at dusk by the keeper."
    with Journal(app_name) as journal:  # keyword search finds it; its vector only has to be 384-d
        journal.add(BifocalEvent("chunk_ingested", text_, np.full(384, 0.05), Embedder("test-minilm@1", 384),
                                 "corpus:lore", corpus="lore", data={"path": "docs/harbour.md", "lines": [3, 9]}))
    _, (recalled,) = consult(env, "--allow", "recall", calls=[("recall", {"query": "harbour lantern"})])
    assert not recalled.is_error and f"[1 chunk_ingested lore:docs/harbour.md:3-9] {text_}" in text(recalled)


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
    assert wrong.stderr == "Error: no such tool to serve: rm; the soul serves ask, recall, mount, perceive, task, tasks\n"


def serve_http(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `soul mcp serve --transport streamable-http --port 0 ARGS`: the process and the url it prints."""
    with open(log, "w") as out:
        process = subprocess.Popen([*SOUL, "mcp", "serve", "--transport", "streamable-http", "--port", "0", *args],
                                   env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True)
    deadline = time.monotonic() + 120
    while not (found := re.search(r" at (http://127\.0\.0\.1:\d+/mcp)", log.read_text())):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process, found.group(1)


def consult_http(url: str, token: str | None, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Any]]:
    """The SDK's streamable HTTP client at `url`: list the tools and make `calls`: (names, results)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def session() -> tuple[list[str], list[Any]]:
        with anyio.fail_after(240):
            async with (httpx2.AsyncClient(headers=headers, timeout=240) as http,
                        streamable_http_client(url, http_client=http) as (read, write),
                        ClientSession(read, write) as client):
                await client.initialize()
                names = [t.name for t in (await client.list_tools()).tools]
                return names, [await client.call_tool(name, arguments) for name, arguments in calls]

    return anyio.run(session)


def test_other_agents_consult_the_soul_over_streamable_http_bearing_its_token(env: dict[str, str], tmp_path: Path) -> None:
    import httpx2

    (tmp_path / "token").write_text(f"{TOKEN}\n")
    log = tmp_path / "serve-http.log"
    process, url = serve_http(env, log, "--allow", "recall,perceive", "--token-file", str(tmp_path / "token"))
    try:
        names, (perceived, recalled) = consult_http(url, TOKEN, calls=[
            ("perceive", {"text": "the lighthouse keeper counts ships"}), ("recall", {"query": "lighthouse keeper"})])
        assert names == ["recall", "perceive"] and text(perceived).startswith("perceived (journal sequence ")
        assert not recalled.is_error and "the lighthouse keeper counts ships" in text(recalled)

        for wrong in ({}, {"Authorization": "Bearer not-the-token"}):
            refused = httpx2.post(url, headers=wrong, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        with pytest.raises(Exception) as raised:
            consult_http(url, None, calls=[])
        assert mcp_client.reason(raised.value) == "a bearer token is required (Authorization: Bearer <token>)"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    assert f"soul MCP server for {env['SOUL_APP']} at {url} (bearer token required)" in log.read_text()
    assert TOKEN not in log.read_text()


def test_serving_beyond_loopback_needs_a_token_and_http_options_need_http(env: dict[str, str], tmp_path: Path) -> None:
    def serve(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SOUL, "mcp", "serve", *args], env={**env, **extra}, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    open_to_all = serve("--transport", "streamable-http", "--host", "0.0.0.0")
    assert open_to_all.returncode == 1 and open_to_all.stderr == (
        "Error: listening on 0.0.0.0 (beyond loopback) needs a bearer token: --token-file FILE or SOUL_MCP_TOKEN\n")
    blank = serve("--transport", "streamable-http", "--host", "0.0.0.0", SOUL_MCP_TOKEN=" ")
    assert blank.returncode == 1 and blank.stderr == "Error: SOUL_MCP_TOKEN holds no token\n"
    stdio = serve("--port", "9000")
    assert stdio.returncode == 1 and stdio.stderr == "Error: --port: only with --transport streamable-http\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve("--transport", "streamable-http", "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 1 and busy.stderr.startswith("Error: cannot listen on 127.0.0.1:") \
        and busy.stderr.endswith("Address already in use\n")
