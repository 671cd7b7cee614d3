"""The daemon as a user runs it: real `soul daemon` processes on a real nats-server and
Postgres, thinking with the tiny test model; killed with SIGKILL and stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal.journal import Journal
from soul.doors.daemon import DaemonError, attach, running
from tests.support import ROOT, drop_schema
from tests.tiny_model import build_tiny_model

SOUL = [sys.executable, "-m", "soul"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def env(soul_home: Path, nats_url: str, pg_url: str, app_name: str, tiny: Path) -> Iterator[dict[str, str]]:
    """The environment of every soul process of a test: one home, one soul, the tiny model."""
    yield {**os.environ, "SOUL_HOME": str(soul_home), "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
           "SOUL_APP": app_name, "SOUL_MODEL": str(tiny)}
    drop_schema(pg_url, app_name)


class Daemons:
    """`soul daemon` processes started by a test, each stopped at its end if still running."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env, self.folder, self.started = env, folder, []

    def start(self, *args: str, wait: bool = True) -> subprocess.Popen[str]:
        log = open(self.folder / f"daemon-{len(self.started)}.log", "w+")
        process = subprocess.Popen([*SOUL, "daemon", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   text=True)
        process.log = log  # type: ignore[attr-defined]
        self.started.append(process)
        if wait:
            self.wait_ready(process)
        return process

    def wait_ready(self, process: subprocess.Popen[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ((state := running(Path(self.env["SOUL_HOME"]))) and state.get("pid") == process.pid and "subject" in state):
            assert process.poll() is None, f"the daemon ended early: {log_of(process)}"
            assert time.monotonic() < deadline, "the daemon did not get ready"
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.log.close()  # type: ignore[attr-defined]


def log_of(process: subprocess.Popen[str]) -> str:
    process.log.seek(0)  # type: ignore[attr-defined]
    return process.log.read()  # type: ignore[attr-defined]


@pytest.fixture
def daemons(env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(env, tmp_path)
    yield started
    started.stop_all()


def soul(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOUL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def events(app: str, nats_url: str, kind: str) -> list:
    with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal:
        return [(e.seq, e.event) for e in journal.read(types=[kind])]


def test_one_daemon_per_home_a_stale_lock_is_taken_over_and_stop_releases_it(daemons: Daemons, soul_home: Path) -> None:
    soul_home.mkdir(parents=True)
    (soul_home / "daemon.lock").write_text(json.dumps({"pid": 2**22 + 12345}))  # left by a dead daemon
    first = daemons.start()
    assert running(soul_home)["pid"] == first.pid

    second = soul(daemons.env, "daemon", timeout=120)
    assert second.returncode == 1
    assert second.stderr == f"Error: a soul daemon already runs for {soul_home} (pid {first.pid})\n"

    shown = json.loads(soul(daemons.env, "daemon", "--status", "--json").stdout)
    assert shown["running"] and shown["pid"] == first.pid and shown["app"] == daemons.env["SOUL_APP"]
    stopping = subprocess.Popen([*SOUL, "daemon", "--stop"], env=daemons.env, stderr=subprocess.PIPE, text=True)
    assert first.wait(timeout=120) == 0, log_of(first)  # reaped here, its parent: a zombie would look alive to --stop
    assert stopping.wait(timeout=60) == 0 and stopping.stderr.read() == f"stopped soul daemon pid {first.pid}\n"
    assert running(soul_home) is None and "soul daemon stopped" in log_of(first)
    gone = soul(daemons.env, "daemon", "--stop")
    assert gone.returncode == 1 and gone.stderr == f"Error: no soul daemon runs for {soul_home}\n"


def test_say_attaches_to_the_running_daemon_which_evolves_when_due(daemons: Daemons, app_name: str,
                                                                   nats_url: str) -> None:
    daemon = daemons.start("--evolve-every", "1h")
    deadline = time.monotonic() + 120  # a fresh soul is due at once; with nothing rated it learns nothing
    while "evolve: generation 1 nothing to curate" not in log_of(daemon):
        assert time.monotonic() < deadline and daemon.poll() is None, log_of(daemon)
        time.sleep(0.2)
    client = {**daemons.env, "SOUL_MODEL": "/no/such/model"}  # loading a model here would fail: only the daemon thinks
    said = soul(client, "say", "--json", "hello daemon")
    assert said.returncode == 0, said.stderr
    turn = json.loads(said.stdout)
    assert turn["conversation"] == "main" and turn["thought_seq"] > turn["perception_seq"]
    assert f"perception {turn['perception_seq']}, thought {turn['thought_seq']}" in log_of(daemon)
    [(_, perception)] = events(app_name, nats_url, "perception")
    assert perception.prose == "hello daemon" and perception.data["source"] == "user"
    bare = soul(client, "say", "--json", "--no-memory", "what do you know by heart?")  # the flag travels to the daemon
    assert bare.returncode == 0, bare.stderr
    thoughts = dict(events(app_name, nats_url, "thought"))
    assert "window" not in thoughts[turn["thought_seq"]].data
    assert thoughts[json.loads(bare.stdout)["thought_seq"]].data["window"] == "no-memory"
    sampled = soul(client, "say", "--json", "--max-tokens", "3", "--temperature", "0.5", "sample this")  # so do these
    assert sampled.returncode == 0, sampled.stderr
    thought = dict(events(app_name, nats_url, "thought"))[json.loads(sampled.stdout)["thought_seq"]]
    assert thought.data["sampling"] == {"temperature": 0.5, "seed": 0, "max_tokens": 3}
    too_long = soul(client, "say", "--max-tokens", "100000", "a long story")
    assert too_long.returncode == 1 and too_long.stderr.startswith("Error: a reply takes 1 to 128 tokens")

    help_ = soul(client, "say", "/help")
    assert help_.returncode == 0 and help_.stdout.startswith("commands:")


def test_kill_9_mid_turn_then_restart_continues_the_conversation(daemons: Daemons, app_name: str, nats_url: str,
                                                                 soul_home: Path) -> None:
    first = daemons.start()
    with attach(app_name, soul_home) as client:
        streamed: list[str] = []
        assert client.turn("my name is Ada", on_token=streamed.append).reply == "".join(streamed) != ""

        def kill_at_first_token(_: str) -> None:
            os.kill(first.pid, signal.SIGKILL)

        with pytest.raises(DaemonError, match=rf"daemon \(pid {first.pid}\) died during the turn"):
            client.turn("remember the number 42", on_token=kill_at_first_token)
    first.wait()
    perceptions = events(app_name, nats_url, "perception")
    assert [p.prose for _, p in perceptions] == ["my name is Ada", "remember the number 42"]
    assert len(events(app_name, nats_url, "thought")) == 1  # the killed turn's thought never landed

    second = daemons.start()
    with attach(app_name, soul_home) as client:
        third = client.turn("what is my name?")
    assert "answering perception" in log_of(second)

    perceptions = events(app_name, nats_url, "perception")
    thoughts = events(app_name, nats_url, "thought")
    assert [p.prose for _, p in perceptions] == ["my name is Ada", "remember the number 42", "what is my name?"]
    assert len({p.id for _, p in perceptions}) == 3
    # One thought per perception, each caused by its own perception, in journal order.
    assert [t.causation_id for _, t in thoughts] == [p.id for _, p in perceptions]
    assert [seq for seq, _ in thoughts][1] < third.perception_seq  # the pending one was answered first
    assert {str(e.originator_id) for _, e in perceptions + thoughts} == {"main"}
    # The window of the turn after the crash held the earlier turns (it grew with them).
    assert thoughts[2][1].data["prompt_tokens"] > thoughts[0][1].data["prompt_tokens"]


def test_sigterm_mid_turn_abandons_it_cleanly_and_the_next_start_answers_it(daemons: Daemons, app_name: str,
                                                                            nats_url: str, soul_home: Path) -> None:
    first = daemons.start()
    with attach(app_name, soul_home) as client:
        with pytest.raises(DaemonError, match="the daemon is stopping; your words are journaled"):
            client.turn("a thought to finish later", on_token=lambda _: os.kill(first.pid, signal.SIGTERM))
    assert first.wait(timeout=60) == 0
    assert running(soul_home) is None
    assert events(app_name, nats_url, "thought") == []

    second = daemons.start()
    deadline = time.monotonic() + 120
    while not events(app_name, nats_url, "thought"):
        assert time.monotonic() < deadline and second.poll() is None, log_of(second)
        time.sleep(0.2)
    [(_, perception)] = events(app_name, nats_url, "perception")
    [(_, thought)] = events(app_name, nats_url, "thought")
    assert thought.causation_id == perception.id


def test_an_mcp_agents_question_is_answered_by_the_running_daemon(daemons: Daemons, env: dict[str, str]) -> None:
    from tests.soul.doors.test_mcp import consult, text

    daemon = daemons.start()
    names, [asked] = consult({**env, "SOUL_MODEL": "/no/such/model"}, "--allow", "ask",
                             calls=[("ask", {"question": "who keeps the lighthouse?"})])
    assert names == ["ask"] and not asked.is_error and text(asked)
    assert "turn in mcp from agent:mcp" in log_of(daemon)


def test_the_daemon_keeps_one_session_per_mcp_server_across_turns(daemons: Daemons, soul_home: Path) -> None:
    import psutil

    from tests.soul.doors.test_mcp import configure

    configure(soul_home)
    daemon = daemons.start()

    def agent(tool: str) -> str:
        said = soul(daemons.env, "say", "--json", f"/agent echo {tool}")
        assert said.returncode == 0, said.stderr
        return json.loads(said.stdout)["reply"]

    first, second = agent("pid"), agent("pid")
    assert first.isdigit() and first == second  # one server process, one session, for both turns
    assert agent("die").startswith("error: MCP server 'echo': Connection closed")
    third = agent("pid")
    assert third.isdigit() and third != first  # opened again once it had died
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0, log_of(daemon)
    assert not psutil.pid_exists(int(third))


def test_the_service_units_run_the_daemon_and_stop_it_with_sigterm() -> None:
    import configparser
    import plistlib

    ops = ROOT / "ops"
    plist = plistlib.loads((ops / "launchd" / "ai.soul.daemon.plist").read_bytes())
    assert plist["Label"] == "ai.soul.daemon" and plist["ProgramArguments"][-2:] == ["/Users/YOU/soul/.venv/bin/soul", "daemon"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["ExitTimeOut"] >= 30
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((ops / "systemd" / "soul.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].endswith("/.venv/bin/soul daemon") and service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "default.target"


def cpu_of_children() -> float:
    """CPU seconds (user and system) of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_twenty_concurrent_says_are_each_answered_once_in_order(daemons: Daemons, app_name: str, nats_url: str) -> None:
    """20 `soul say` processes at once against one daemon, four conversations of five, half of
    them streaming the reply and half asking for JSON: every turn answered to its own client,
    each thought caused by its own perception, per conversation perception-thought pairs one
    after another, nothing lost, nothing doubled."""
    daemons.start()
    client = {**daemons.env, "SOUL_MODEL": "/no/such/model"}  # only the daemon thinks
    said = {f"words {i} in c{i % 4}": f"c{i % 4}" for i in range(20)}
    began, cpu = time.monotonic(), cpu_of_children()
    processes = {words: subprocess.Popen([*SOUL, "say", *(["--json"] if n % 2 else []), "-c", conversation, words],
                                         env=client, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for n, (words, conversation) in enumerate(said.items())}
    outcomes = {words: (p.communicate(timeout=300), p.returncode) for words, p in processes.items()}
    wall, cpu = time.monotonic() - began, cpu_of_children() - cpu
    assert all(code == 0 for _, code in outcomes.values()), {w: err for w, ((_, err), code) in outcomes.items() if code}

    perceptions, thoughts = events(app_name, nats_url, "perception"), events(app_name, nats_url, "thought")
    assert sorted(p.prose for _, p in perceptions) == sorted(said)  # each said once, none lost, none doubled
    assert len(thoughts) == 20
    for n, (words, ((out, _), _)) in enumerate(outcomes.items()):  # each client got its own turn's answer
        [(seq, perception)] = [(s, p) for s, p in perceptions if p.prose == words]
        [(thought_seq, thought)] = [(s, t) for s, t in thoughts if t.causation_id == perception.id]
        assert str(perception.originator_id) == said[words]
        if n % 2:
            turn = json.loads(out)
            assert (turn["conversation"], turn["perception_seq"], turn["thought_seq"]) == (said[words], seq,
                                                                                           thought_seq)
            assert turn["reply"] == thought.prose
        else:
            assert out == thought.prose + "\n"  # streamed piece by piece, none of another client's
    for conversation in set(said.values()):  # perception, its thought, the next perception, its thought, ...
        mine = sorted((seq, e) for seq, e in perceptions + thoughts if str(e.originator_id) == conversation)
        assert [e.type for _, e in mine] == ["perception", "thought"] * 5
        assert all(t.causation_id == p.id for (_, p), (_, t) in zip(mine[::2], mine[1::2]))
    served = (max(t.timestamp for _, t in thoughts) - min(p.timestamp for _, p in perceptions)).total_seconds()
    print(f"CONCURRENT SAYS: 20 clients in {wall:.1f}s using {cpu:.1f}s of CPU; the daemon's 20 turns, first "
          f"perception to last thought: {served:.1f}s")  # `pytest -s` shows it; docs/reliability.md records them
