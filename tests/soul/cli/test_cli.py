"""The `soul` command as a user meets it: real processes, real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
import numpy as np
import pytest
from click.testing import CliRunner

from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from soul.cli import main
from tests.support import drop_schema
from tests.tiny_model import build_tiny_model

SOUL = [sys.executable, "-m", "soul"]


def soul(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOUL, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def filled(nats_url: str, app_name: str) -> str:
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        for i, kind in enumerate(["perception", "thought", "perception"]):
            journal.add(BifocalEvent(kind, f"{kind} number {i}", np.full(4, 0.5), Embedder("e@1", 4), "source:user"))
    return app_name


def test_help_explains_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "perceive", "tail", "journal", "services"):
        assert command in result.output
    tail_help = CliRunner().invoke(main, ["tail", "--help"]).output
    assert "--since SEQ|TIME" in tail_help and "--vectors" in tail_help


def test_version_names_soul_mlx_and_mlx_lm() -> None:
    from importlib.metadata import version

    result = subprocess.run([str(Path(sys.executable).with_name("soul")), "--version"], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"soul {version('soul')} (mlx {version('mlx')}, mlx-lm {version('mlx-lm')})\n"


def test_bash_completion_completes_commands_and_choices_through_the_console_script() -> None:
    # The console script, as a shell runs it: entry() restarts once with OpenBLAS, then completes.
    bin_dir = Path(sys.executable).parent
    script = ('eval "$(_SOUL_COMPLETE=bash_source soul)"; complete -p soul;'
              ' COMP_WORDS=(soul se); COMP_CWORD=1; _soul_completion soul; echo "${COMPREPLY[*]}";'
              ' COMPREPLY=(); COMP_WORDS=(soul search --mode ""); COMP_CWORD=3; _soul_completion soul; echo "${COMPREPLY[*]}"')
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["complete -o nosort -F _soul_completion soul", "search services",
                                          "hybrid semantic keyword"]


def test_tail_lines(filled: str) -> None:
    result = CliRunner().invoke(main, ["--app", filled, "tail", "--no-follow"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[0] == "2" and "thought" in lines[1] and "[4d |v|=1.000]" in lines[1]


def test_tail_json_filters_and_vectors(filled: str) -> None:
    result = CliRunner().invoke(main, ["--app", filled, "tail", "-F", "--json", "--since", "2", "--type", "perception"])
    objects = [json.loads(line) for line in result.output.splitlines()]
    assert [o["seq"] for o in objects] == [3]
    assert objects[0]["prose"] == "perception number 2" and "vector" not in objects[0]
    with_vectors = CliRunner().invoke(main, ["--app", filled, "tail", "-F", "--json", "--vectors", "-n", "1"])
    assert json.loads(with_vectors.output)["vector"] == [0.5] * 4


def test_tail_since_time(filled: str) -> None:
    future = CliRunner().invoke(main, ["--app", filled, "tail", "-F", "--since", "2999-01-01T00:00"])
    assert future.exit_code == 0 and future.output == ""
    past = CliRunner().invoke(main, ["--app", filled, "tail", "-F", "--since", "2000-01-01T00:00"])
    assert len(past.output.splitlines()) == 3
    bad = CliRunner().invoke(main, ["--app", filled, "tail", "--since", "yesterday"])
    assert bad.exit_code == 2 and "ISO time" in bad.output


def test_journal_stats(filled: str) -> None:
    figures = json.loads(CliRunner().invoke(main, ["--app", filled, "journal", "stats", "--json"]).output)
    assert figures["events"] == 3 and figures["first_seq"] == 1 and figures["last_seq"] == 3
    assert figures["by_type"] == {"perception": 2, "thought": 1}


def test_follow_shows_garbage_as_undecodable_goes_on_and_stops_cleanly_on_ctrl_c(filled: str, nats_url: str) -> None:
    # Ctrl-C as a terminal gives it, even when the suite runs where SIGINT is ignored (a job in
    # the background of a shell without job control): an ignored signal is inherited.
    process = subprocess.Popen([*SOUL, "--app", filled, "tail", "--json", "--since", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [json.loads(process.stdout.readline()) for _ in range(3)]
        assert [line["seq"] for line in lines] == [1, 2, 3]

        async def publish() -> None:
            nc = await nats.connect(nats_url)
            await nc.jetstream().publish(f"soul.{filled}.e.intruder", b"not an event")
            await nc.close()

        asyncio.run(publish())
        with Journal(filled, {"SOUL_NATS_URL": nats_url}) as journal:
            journal.add(BifocalEvent("thought", "still here", [], originator_id="source:user"))
        garbage, after = (json.loads(process.stdout.readline()) for _ in range(2))
        assert garbage["seq"] == 4 and garbage["undecodable"] and "foreign" in garbage["error"]
        assert after["seq"] == 5 and after["prose"] == "still here"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_unreachable_nats_is_one_line_naming_the_url() -> None:
    result = soul("--nats", "nats://127.0.0.1:1", "tail", "--no-follow", env={"SOUL_NATS_TIMEOUT": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "nats://127.0.0.1:1" in result.stderr, result.stderr


def statuses(env: dict[str, str]) -> dict[str, dict]:
    lines = soul("services", "status", "--json", env=env).stdout.splitlines()
    return {s["service"]: s for s in map(json.loads, lines)}


def test_services_start_reuse_status_stop() -> None:
    home = Path(tempfile.mkdtemp(prefix="soul-home-"))  # outside pytest's tree: Postgres runs as its own user
    env = {"SOUL_HOME": str(home), "SOUL_NATS_URL": "", "SOUL_PG_URL": ""}
    first = soul("services", "start", env=env)
    assert first.returncode == 0, first.stderr
    urls = dict(line.split(maxsplit=2)[::2] for line in first.stdout.splitlines())
    assert urls["nats"].startswith("nats://127.0.0.1:") and urls["postgres"].startswith("postgresql://")
    try:
        again = soul("services", "start", env=env).stdout.splitlines()
        assert dict(line.split(maxsplit=2)[::2] for line in again) == urls  # reused, not restarted
        status = statuses(env)
        assert status["nats"]["running"] and status["nats"]["url"] == urls["nats"]
        assert status["postgres"]["running"] and "host=" in status["postgres"]["url"]  # a Unix socket
        log = Path(status["nats"]["log"]).read_text()
        assert "Listening for client connections on 127.0.0.1:" in log  # loopback only
        with Journal("t", {"SOUL_NATS_URL": urls["nats"]}) as journal:
            journal.add(BifocalEvent("thought", "kept across restarts", [], originator_id="x"))
    finally:
        stopped = soul("services", "stop", env=env).stdout
        assert stopped.count("stopped") == 2, stopped
    assert not any(s["running"] for s in statuses(env).values())
    url_again = soul("services", "start", env=env).stdout.splitlines()[0].split()[-1]
    try:
        with Journal("t", {"SOUL_NATS_URL": url_again}) as journal:
            assert [e.event.prose for e in journal.read()] == ["kept across restarts"]
    finally:
        soul("services", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_commands_start_the_embedded_server_on_demand(tmp_path: Path) -> None:
    env = {"SOUL_HOME": str(tmp_path), "SOUL_NATS_URL": ""}
    try:
        result = soul("tail", "--no-follow", env=env)
        assert result.returncode == 0, result.stderr
        assert statuses(env)["nats"]["running"]
    finally:
        soul("services", "stop", env=env)


def test_run_shows_an_exchange_and_perceive_journals(tmp_path: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    # The tiny model keeps this fast; tests/soul/cli/test_chat_cli.py talks to the embedded SmolLM2.
    env = {"SOUL_HOME": str(tmp_path), "SOUL_MODEL": str(build_tiny_model(tmp_path / "tiny"))}
    try:
        result = soul("--app", app_name, "run", env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("you> Hello!") and result.stdout.count("you> ") == result.stdout.count("soul> ") == 2
        assert "Talk on with `soul chat`" in result.stderr
        with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
            events = [e.event for e in journal.read()]
        assert [e.type for e in events].count("thought") == 2
        assert events[0].type == "perception" and events[0].embedder.name.startswith("all-MiniLM-L6-v2@")
        perceived = soul("--app", app_name, "perceive", "a new thing", "--source", "agent:coder", "--json",
                         env=env, timeout=300)
        assert perceived.returncode == 0, perceived.stderr
        event = json.loads(perceived.stdout)
        assert event["seq"] == len(events) + 1 and event["data"] == {"source": "agent:coder"} and event["dim"] == 384
    finally:
        drop_schema(pg_url, app_name)


def test_empty_words_are_refused_in_one_line_and_journal_nothing(filled: str, nats_url: str) -> None:
    for args, message in [(["say", ""], "PROSE is empty: there is nothing to say"),
                          (["perceive", " \n"], "PROSE is empty: there is nothing to perceive"),
                          (["search", ""], "QUERY is empty: there is nothing to search")]:
        result = soul("--app", filled, *args)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", f"Error: {message}\n"), args
    with Journal(filled, {"SOUL_NATS_URL": nats_url}) as journal:
        assert journal.last_seq() == 3  # the three `filled` put there


def test_doctor_reports_every_part_and_fails_on_a_dead_one(nats_url: str, pg_url: str, app_name: str) -> None:
    env = {"SOUL_APP": app_name}
    healthy = soul("doctor", "--json", env=env, timeout=300)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["compute"]["mlx"] and report["compute"]["matmul_gflops"] > 0
    assert report["model"]["model"].startswith("SmolLM2-135M-Instruct@")
    assert report["embedder"] == {"ok": True, "embedder": report["embedder"]["embedder"], "dim": 384}
    assert report["nats"]["server"].startswith("2.") and report["nats"]["stream"] == f"SOUL_{app_name}"
    assert report["postgres"]["pgvector"] and report["postgres"]["server"].startswith("16")
    broken = soul("doctor", env={**env, "SOUL_PG_URL": "postgresql://bob:hunter2@127.0.0.1:1/x"}, timeout=300)
    assert broken.returncode == 1
    lines = dict(line.split(maxsplit=1) for line in broken.stdout.splitlines())
    assert lines["postgres"].startswith("FAIL") and "hunter2" not in broken.stdout
    assert lines["nats"].startswith("ok")
