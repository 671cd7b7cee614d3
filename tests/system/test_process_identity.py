"""Pid files name a process by its pid and its start time: a pid that another process has taken
since (after a crash and a reboot, say) is stale, and nothing signals it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal.embedded import EmbeddedNats, same_process, started_at, stop_process
from projections.postgres import EmbeddedPostgres

SOUL = [sys.executable, "-m", "soul"]
AN_HOUR = 3600.0


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process, standing for one that took a dead server's pid."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    process.kill()
    process.wait()


def untouched(process: subprocess.Popen[bytes]) -> bool:
    """Still running: any signal a stop sends (SIGTERM, SIGINT, SIGKILL) would have ended a `sleep`."""
    return process.poll() is None and same_process(process.pid, started_at(process.pid))


def soul(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOUL_HOME": str(home), "SOUL_NATS_URL": "", "SOUL_PG_URL": ""}
    return subprocess.run([*SOUL, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_pid_is_its_process_only_with_its_start_time(stranger: subprocess.Popen[bytes]) -> None:
    pid, started = stranger.pid, started_at(stranger.pid)
    assert started is not None and same_process(pid, started)
    assert not same_process(pid, started - AN_HOUR)  # the pid, but not the process that started then
    assert same_process(pid, started - AN_HOUR, named="sleep 120")  # the clock was stepped: its command line says
    assert not same_process(pid, None)  # an older pid file without a start time: stale...
    assert same_process(pid, None, named="sleep 120")  # ...unless its command line says it is the one
    assert not same_process(2**22 + 12345, started)  # no such process
    assert stop_process(pid, started - AN_HOUR, signal.SIGTERM, signal.SIGKILL, 5) is False and untouched(stranger)
    assert stop_process(pid, started, signal.SIGTERM, signal.SIGKILL, 5) is True and not same_process(pid, started)


def test_services_stop_leaves_a_stale_pid_alone_and_says_so(tmp_path: Path, stranger: subprocess.Popen[bytes]) -> None:
    """The pid files name the stranger with another start time, and something answers on their
    port and socket (as a server started since would): the stranger is still not signalled."""
    home, pid = tmp_path / "home", stranger.pid
    (home / "nats").mkdir(parents=True)
    (home / "pg").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as tcp, socket.socket(socket.AF_UNIX) as unix:
        port = tcp.getsockname()[1]
        unix.bind(str(home / "pg" / ".s.PGSQL.5432"))
        unix.listen()
        started = started_at(pid) - AN_HOUR  # type: ignore[operator]
        (home / "nats" / "server.json").write_text(json.dumps({"pid": pid, "started": started, "port": port}))
        # postmaster.pid as Postgres writes it: pid, data dir, start time (whole seconds), port, socket dir, ...
        (home / "pg" / "postmaster.pid").write_text(
            f"{pid}\n{home / 'pg'}\n{int(started)}\n5432\n{home / 'pg'}\n\n  1 2\nready   \n")
        assert EmbeddedNats(home).status()["stale"] == pid and EmbeddedPostgres(home).status()["stale"] == pid

        stopped = soul(home, "services", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.splitlines() == [
            f"nats      was not running (stale pid file: pid {pid} is not it; nothing signalled)",
            f"postgres  was not running (stale pid file: pid {pid} is not it; nothing signalled)",
        ]
        assert untouched(stranger)
        assert "stale" not in EmbeddedNats(home).status()  # the pid is forgotten, the port kept for the next start
        assert json.loads((home / "nats" / "server.json").read_text()) == {"port": port}

        (home / "nats" / "server.json").write_text(json.dumps({"pid": pid, "port": port}))  # older: no start time
        assert EmbeddedNats(home).stop() is False and untouched(stranger)


def test_an_older_pid_file_of_the_real_server_is_verified_by_its_command_line(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    server.start()
    state = json.loads(server.state_file.read_text())
    assert state["started"] == started_at(state["pid"])
    del state["started"]  # as the embedded NATS wrote it before pid files carried a start time
    server.state_file.write_text(json.dumps(state))
    assert server.status()["running"]  # its command line names this home's store
    assert server.stop() is True and not same_process(state["pid"], None, named=str(tmp_path))


def test_daemon_stop_leaves_a_stale_pid_alone_and_says_so(tmp_path: Path, stranger: subprocess.Popen[bytes]) -> None:
    """A lock still held (by a child the dead daemon left, say) naming a pid that is another process now."""
    home, pid = tmp_path / "home", stranger.pid
    home.mkdir()
    with open(home / "daemon.lock", "w") as lock:
        lock.write(json.dumps({"pid": pid, "started": started_at(pid) - AN_HOUR,  # type: ignore[operator]
                               "app": "soul", "subject": "soulrpc.soul.turn"}))
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        stopped = soul(home, "daemon", "--stop", "--timeout", "5")
    assert stopped.returncode == 1
    assert stopped.stderr == (f"Error: no soul daemon runs for {home} (stale lock: pid {pid} is not it; "
                              "nothing signalled)\n")
    assert untouched(stranger)
