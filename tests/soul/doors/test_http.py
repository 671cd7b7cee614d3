"""The daemon's OpenAI-compatible HTTP API as its clients use it: real `soul daemon --http`
processes thinking with the tiny model, asked by the official `openai` client and by curl."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest
import yaml
from click.testing import CliRunner

from evolution.lineage import chain, lineage
from journal.journal import Journal
from soul.cli import main
from soul.doors.daemon import running
from soul.doors.http import MAX_BODY
from tests.evolution_support import CONFIG as EVOLUTION
from tests.evolution_support import journal_moments
from tests.soul.doors.test_daemon import Daemons, daemons, env, events, log_of, soul, tiny  # noqa: F401  # fixtures
from tests.tiny_model import build_tiny_model

TOKEN = "s3cret-http-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def url_of(daemons: Daemons) -> str:
    return running(Path(daemons.env["SOUL_HOME"]))["http"]


def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) of curl with `args`."""
    done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def post(url: str, body: object, *headers: str) -> tuple[int, str]:
    return curl(f"{url}/v1/chat/completions", "-H", "Content-Type: application/json",
                *[arg for header in headers for arg in ("-H", header)],
                "-d", body if isinstance(body, str) else json.dumps(body))


def ask(prose: str, **fields: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prose}], **fields}


def error_of(status: int, body: str, expected: int) -> dict[str, object]:
    assert status == expected, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def wait_for(daemon: subprocess.Popen[str], line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while line not in log_of(daemon):
        assert time.monotonic() < deadline and daemon.poll() is None, log_of(daemon)
        time.sleep(0.1)


def test_the_openai_client_streams_a_turn_that_soul_tail_shows(daemons: Daemons, app_name: str,
                                                               nats_url: str) -> None:
    port = free_port()
    daemon = daemons.start("--http", f"127.0.0.1:{port}")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused on loopback")
    assert [m.id for m in client.models.list()] == ["external"]  # SOUL_MODEL: weights outside the lineage

    stream = client.chat.completions.create(
        model="external", stream=True, user="ada", stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "earlier words"},
                  {"role": "assistant", "content": "an earlier reply"}, {"role": "user", "content": "Hello over HTTP"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [finished] = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finished.choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens > 0
    turn = finished.soul  # the journal's side, beyond OpenAI's shape
    assert turn["conversation"] == "ada" and turn["thought_seq"] > turn["perception_seq"]

    tail = soul(daemons.env, "tail", "--no-follow", "-n", "20")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert any(" perception " in line and " ada " in line and "'Hello over HTTP'" in line for line in lines), lines
    assert any(" thought " in line and " ada " in line for line in lines), tail.stdout
    # Only the last message is perceived: the system prompt and the earlier messages are not journaled.
    [(perception_seq, perception)] = events(app_name, nats_url, "perception")
    [(thought_seq, thought)] = events(app_name, nats_url, "thought")
    assert perception.prose == "Hello over HTTP" and perception.data["source"] == "user"
    assert (perception_seq, thought_seq) == (turn["perception_seq"], turn["thought_seq"])
    assert thought.prose == text and thought.causation_id == perception.id
    assert f"turn in ada over HTTP: perception {perception_seq}, thought {thought_seq}" in log_of(daemon)


def test_curl_health_models_turns_and_errors_then_a_clean_stop(daemons: Daemons, app_name: str, nats_url: str,
                                                               tmp_path: Path) -> None:
    daemon = daemons.start("--http", "127.0.0.1:0")  # port 0: a free one, written in the lock
    url = url_of(daemons)
    shown = soul(daemons.env, "daemon", "--status")
    assert shown.stdout.rstrip().endswith(f"; OpenAI-compatible API at {url}/v1")

    assert curl(f"{url}/health") == (200, json.dumps({"status": "ok", "soul": app_name, "model": "external"},
                                                     separators=(",", ":")))
    status, body = curl(f"{url}/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["external"]

    # The header names the conversation before `user` does; the soul's name is the active generation.
    status, body = post(url, ask("Hello from curl", model=app_name, user="not this one", max_tokens=8),
                        "Soul-Conversation: curl-talk")
    assert status == 200, body
    whole = json.loads(body)
    assert whole["object"] == "chat.completion" and whole["model"] == "external"
    assert whole["soul"]["conversation"] == "curl-talk" and whole["usage"]["completion_tokens"] <= 8
    thoughts = dict(events(app_name, nats_url, "thought"))
    assert whole["choices"][0]["message"]["content"] == thoughts[whole["soul"]["thought_seq"]].prose

    status, body = curl("-N", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json",
                        "-d", json.dumps(ask("Stream to curl", stream=True)))
    assert status == 200, body
    data = [line.removeprefix("data: ") for line in body.splitlines() if line]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    thoughts = dict(events(app_name, nats_url, "thought"))
    turn = chunks[-1]["soul"]
    assert streamed == thoughts[turn["thought_seq"]].prose and turn["conversation"] == "main"

    perceived = len(events(app_name, nats_url, "perception"))
    error = error_of(*post(url, "{not json"), 400)
    assert error["message"].startswith("the body is not JSON") and error["type"] == "invalid_request_error"
    answered_already = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    error = error_of(*post(url, {"messages": answered_already}), 400)
    assert error["message"].startswith("the last message must be the user's") and error["param"] == "messages"
    error = error_of(*post(url, ask("hi", temperature="hot")), 400)
    assert error == {"message": 'temperature must be a number, not "hot"', "type": "invalid_request_error",
                     "param": "temperature", "code": None}
    error = error_of(*post(url, ask("a long story", max_tokens=100000, stream=True)), 400)  # the soul's own check
    assert error["message"].startswith("a reply takes 1 to 128 tokens")
    big = tmp_path / "big.json"
    big.write_text(json.dumps(ask("x" * MAX_BODY)))
    error = error_of(*curl(f"{url}/v1/chat/completions", "--data-binary", f"@{big}"), 413)
    assert error["message"] == f"the request is larger than {MAX_BODY} bytes"
    error = error_of(*post(url, ask("hi", model="gen-7")), 404)
    assert error["code"] == "model_not_found" and error["message"].startswith("no generation gen-7 in the lineage")
    assert error_of(*curl(f"{url}/v1/nothing"), 404)["message"] == "GET /v1/nothing: Not Found"
    error = error_of(*curl(f"{url}/v1/chat/completions"), 405)
    assert error["message"] == "GET /v1/chat/completions: Method Not Allowed"
    assert len(events(app_name, nats_url, "perception")) == perceived  # nothing refused was journaled

    stopped = soul(daemons.env, "daemon", "--stop")
    assert stopped.returncode == 0 and daemon.wait(timeout=60) == 0, log_of(daemon)
    assert "soul daemon stopped" in log_of(daemon) and "Traceback" not in log_of(daemon)


def test_a_token_is_required_beyond_loopback_and_checked_on_every_request(daemons: Daemons, tmp_path: Path) -> None:
    refused = soul(daemons.env, "daemon", "--http", "0.0.0.0:0")
    assert refused.returncode == 1 and refused.stderr == (
        "Error: --http 0.0.0.0:0: listening beyond loopback needs a bearer token: --http-token-file FILE or "
        "SOUL_HTTP_TOKEN\n")
    blank = tmp_path / "blank"
    blank.write_text("\n")
    assert soul(daemons.env, "daemon", "--http", "8765", "--http-token-file", str(blank)).stderr == \
        f"Error: {blank} holds no token\n"
    assert soul(daemons.env, "daemon", "--http-token-file", str(blank)).stderr == \
        "Error: --http-token-file: only with --http\n"
    assert "is not [HOST:]PORT" in soul(daemons.env, "daemon", "--http", "localhost:http").stderr

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    daemon = daemons.start("--http", "127.0.0.1:0", "--http-token-file", str(token_file))
    url = url_of(daemons)
    status, body = curl("-i", f"{url}/health")
    assert status == 401 and "www-authenticate: bearer" in body.lower()
    error = error_of(*curl(f"{url}/v1/models"), 401)
    assert error["code"] == "invalid_api_key" and error["message"].startswith("a bearer token is required")
    assert error_of(*post(url, ask("hi"), "Authorization: Bearer wrong"), 401)["message"] == \
        "the bearer token is not this daemon's"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").chat.completions.create(
            model="external", messages=[{"role": "user", "content": "hi"}])

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
    reply = client.chat.completions.create(model="external", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens <= 4
    assert TOKEN not in log_of(daemon) and TOKEN not in soul(daemons.env, "daemon", "--status", "--json").stdout

    # The page is served on the same port: its HTML shell opens in a browser, its data needs the token.
    status, page = curl(f"{url}/")
    assert status == 200 and "<html" in page.lower() and TOKEN not in page
    assert error_of(*curl(f"{url}/api/lineage"), 401)["code"] == "invalid_api_key"
    status, lineage = curl(f"{url}/api/lineage", "-H", f"Authorization: Bearer {TOKEN}")
    assert status == 200 and json.loads(lineage)["generations"] == []  # no generation yet


def test_a_client_that_disconnects_mid_stream_leaves_a_turn_that_completes_once(daemons: Daemons, app_name: str,
                                                                              nats_url: str) -> None:
    daemon = daemons.start("--http", "127.0.0.1:0")
    client = openai.OpenAI(base_url=f"{url_of(daemons)}/v1", api_key="unused")
    stream = client.chat.completions.create(model="external", stream=True, max_tokens=128, user="leaving",
                                            messages=[{"role": "user", "content": "Tell me a long story"}])
    chunks = iter(stream)
    received = ""
    while not received:  # the role, then the first words
        received += next(chunks).choices[0].delta.content or ""
    stream.close()  # hangs up while the soul still speaks

    wait_for(daemon, "turn in leaving over HTTP")
    [(_, perception)] = events(app_name, nats_url, "perception")
    [(_, thought)] = events(app_name, nats_url, "thought")
    assert perception.prose == "Tell me a long story" and thought.causation_id == perception.id
    assert thought.prose.startswith(received)  # all of it journaled, once, whatever the client read

    after = client.chat.completions.create(model="external", max_tokens=4,
                                           messages=[{"role": "user", "content": "still there?"}])
    thoughts = dict(events(app_name, nats_url, "thought"))
    assert after.choices[0].message.content == thoughts[after.soul["thought_seq"]].prose
    assert len(events(app_name, nats_url, "perception")) == 2 and "Traceback" not in log_of(daemon)


def test_sigterm_mid_stream_ends_it_with_an_error_event_and_the_daemon_exits_cleanly(
        daemons: Daemons, app_name: str, nats_url: str) -> None:
    daemon = daemons.start("--http", "127.0.0.1:0")
    client = openai.OpenAI(base_url=f"{url_of(daemons)}/v1", api_key="unused")
    stream = client.chat.completions.create(model="external", stream=True, max_tokens=128,
                                            messages=[{"role": "user", "content": "a thought to finish later"}])
    with pytest.raises(openai.APIError, match="the daemon is stopping; your words are journaled"):
        for chunk in stream:
            if chunk.choices[0].delta.content:
                daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0, log_of(daemon)
    assert "soul daemon stopped" in log_of(daemon) and "Traceback" not in log_of(daemon)
    assert [e.prose for _, e in events(app_name, nats_url, "perception")] == ["a thought to finish later"]
    assert events(app_name, nats_url, "thought") == []  # the next start answers it


def test_model_gen_n_talks_to_a_past_self(daemons: Daemons, journal: Journal, tmp_path: Path) -> None:
    journal_moments(journal, 3)
    config = tmp_path / "evolution.yaml"
    values = EVOLUTION.as_dict()
    values["lambda"] = values.pop("lam")
    config.write_text(yaml.safe_dump(values))
    base = build_tiny_model(tmp_path / "w0")
    evolved = CliRunner().invoke(main, ["--app", journal.app, "evolve", "--config", str(config)],
                                 env={"SOUL_MODEL": str(base)})
    assert evolved.exit_code == 0, evolved.output
    [gen1] = chain(lineage(journal))

    daemons.start("--http", "127.0.0.1:0")  # SOUL_MODEL: the daemon's own mind is external; gen-1 is a past self
    client = openai.OpenAI(base_url=f"{url_of(daemons)}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["external", "gen-1"]
    reply = client.chat.completions.create(model="gen-1", max_tokens=4,
                                           messages=[{"role": "user", "content": "Who are you?"}])
    assert reply.model == "gen-1"
    thought = next(journal.read(since=reply.soul["thought_seq"], limit=1)).event
    assert thought.data["generation"] == "gen-1" and thought.data["model"].endswith(f"@{gen1.root_sha256[:12]}")
    with pytest.raises(openai.NotFoundError, match="no generation gen-7 in the lineage; promoted generations: gen-1"):
        client.chat.completions.create(model="gen-7", messages=[{"role": "user", "content": "hi"}])
