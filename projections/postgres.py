"""Postgres for the projections: the embedded one from the pgserver wheel, or SOUL_PG_URL.

The embedded server is PostgreSQL 16 with pgvector, its data directory `$SOUL_HOME/pg`,
listening on a Unix socket only (no TCP port). Like the embedded NATS it is started by the
first command that needs it and reused by later ones until `stop()`. pgserver's default
would stop it when the Python process that started it exits (an atexit hook, for the last
process holding a handle); we ask for `cleanup_mode=None` so a server started by one
command outlives it. Its state is read from Postgres' own `postmaster.pid`.

It runs with more shared buffers than Postgres' default 128 MB (`settings`): at 100k memories the
memory table and its HNSW graphs are ~0.5 GB, and an HNSW insert or search that finds its pages
outside shared buffers copies them in from the OS cache, evicting others. There 1 GB applied
events live 1.2-1.4x as fast and halved hybrid search p50 under load (ops/bench/memory_bench.py).
"""

from __future__ import annotations

import os
import signal
import socket
import warnings
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import OperationalError as OperationalError  # re-exported: the CLI catches it without importing psycopg
from psycopg import sql

from journal.embedded import ServiceError, same_process, soul_home, stop_process
from journal.errors import one_line
from journal.secrets import redact_url


class PostgresUnavailable(ServiceError):
    """Postgres could not be started, reached or used; the message says why and where."""


def server_versions(url: str) -> dict[str, str]:
    """The server's version and pgvector's, as `soul doctor` reports them."""
    with connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]  # type: ignore[index]
    return {"server": server, "pgvector": vector}


def pg_url() -> str:
    """SOUL_PG_URL if set, else the embedded server's URL (started if needed)."""
    return os.environ.get("SOUL_PG_URL") or EmbeddedPostgres(soul_home()).start()


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to `url` with pgvector's types registered."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        reason = one_line(e)
        raise PostgresUnavailable(
            f"cannot reach Postgres at {redact_url(url)} ({reason}); is it running? "
            "(SOUL_PG_URL names it; unset, the embedded one under SOUL_HOME is used)"
        ) from None
    try:
        _ensure_vector(conn, url)
        register_vector(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_vector(conn: psycopg.Connection[Any], url: str) -> None:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        raise PostgresUnavailable(
            f"Postgres at {redact_url(url)} lacks the pgvector extension ('vector'); install pgvector "
            "there, or unset SOUL_PG_URL to use the embedded Postgres"
        )
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.UniqueViolation:  # another connection created it just now
        pass
    except psycopg.errors.InsufficientPrivilege:
        raise PostgresUnavailable(
            f"the pgvector extension ('vector') is not created in the database at {redact_url(url)} "
            "and this user may not create it; run `CREATE EXTENSION vector` there as a superuser"
        ) from None


def settings() -> dict[str, str]:
    """What the embedded server runs with beyond Postgres' defaults, as pg_settings holds them:
    shared buffers of an eighth of RAM, 128 MB to 1 GB (in 8 kB pages; only the pages used become
    resident)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"shared_buffers": str(max(128, min(1024, ram // 8 >> 20)) * 128)}


def _listening(socket_path: Path) -> bool:
    """Whether a server answers on the Unix socket: a pid file can outlive its server (reboot)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.2)
        return s.connect_ex(str(socket_path)) == 0


class EmbeddedPostgres:
    def __init__(self, home: Path):
        self.dir = home / "pg"
        self.log_file = self.dir / "log"

    def _postmaster(self) -> dict[str, Any] | None:
        """pid, start time, port, socket dir and state from `postmaster.pid`, which Postgres keeps current."""
        try:
            lines = (self.dir / "postmaster.pid").read_text().splitlines()
            return {"pid": int(lines[0]), "started": int(lines[2]), "port": int(lines[3]), "socket_dir": lines[4],
                    "state": lines[7].strip() if len(lines) > 7 else "starting"}
        except (FileNotFoundError, IndexError, ValueError):  # not running, or still writing it
            return None

    def status(self) -> dict[str, Any]:
        """{"running": bool, "pid", "port", "url", "store", "log"} and "stale", like EmbeddedNats.status()."""
        info = self._postmaster() or {}
        ours = bool(info) and same_process(info["pid"], info["started"], named=str(self.dir))  # a crash leaves the file
        running = (ours and info["state"] == "ready"
                   and _listening(Path(info["socket_dir"]) / f".s.PGSQL.{info['port']}"))
        return {
            "service": "postgres",
            "running": running,
            "pid": info["pid"] if running else None,
            "port": info.get("port"),
            "url": f"postgresql://postgres@/postgres?host={info['socket_dir']}&port={info['port']}" if running else None,
            "store": str(self.dir),
            "log": str(self.log_file),
            **({"stale": info["pid"]} if info and not ours else {}),
        }

    def start(self) -> str:
        """The URL of the running server, starting it first if needed."""
        status = self.status()
        if status["running"]:
            return status["url"]
        fresh = not (self.dir / "PG_VERSION").exists()
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # platformdirs warns on import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
        try:
            # pgserver serialises starts across processes with its own lock and reuses a running server.
            server = pgserver.get_server(self.dir, cleanup_mode=None)
            if not self.status()["running"]:  # a handle pgserver cached in this process before a stop()
                server.ensure_postgres_running()
        except Exception as e:
            raise PostgresUnavailable(
                f"the embedded Postgres did not start from {self.dir} ({type(e).__name__}); see {self.log_file}"
            ) from None
        status = self.status()
        if not status["running"]:  # pgserver took a stale postmaster.pid for a running server
            raise PostgresUnavailable(
                f"the embedded Postgres under {self.dir} is not running though pgserver found it started; "
                f"`soul services stop` then `soul services start` (see {self.log_file})")
        if self._configure(status["url"]) and fresh:
            # Settings of shared memory take effect at a start: restart a server no one uses yet, once.
            self.stop()
            return self.start()
        return status["url"]

    @staticmethod
    def _configure(url: str) -> bool:
        """ALTER SYSTEM to `settings()` where the server runs otherwise; whether it did."""
        with connect(url) as conn:
            wanted = settings()
            current = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(wanted)]).fetchall())
            changed = {name: value for name, value in wanted.items() if current.get(name) != value}
            for name, value in changed.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        return bool(changed)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server cleanly (fast shutdown: a checkpoint, no recovery next time)."""
        info = self._postmaster()
        if info is None or not self.status()["running"]:
            return False
        # SIGINT is Postgres' fast shutdown; SIGQUIT its immediate one (recovers on the next start).
        return stop_process(info["pid"], info["started"], signal.SIGINT, signal.SIGQUIT, timeout, named=str(self.dir))
