"""What the benchmarks share: the real parts they run against, and a description of the machine."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg import sql

from journal.embedded import EmbeddedNats
from journal.journal import Journal
from projections.base import schema_for
from projections.postgres import EmbeddedPostgres, connect


@contextmanager
def real_parts() -> Iterator[tuple[Path, str, str]]:
    """(home, NATS URL, Postgres URL): a temporary SOUL_HOME whose embedded servers are started
    unless SOUL_NATS_URL / SOUL_PG_URL name running ones; stops what it started, removes the home."""
    home = Path(tempfile.mkdtemp(prefix="soul-bench-"))
    os.environ["SOUL_HOME"] = str(home)
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    try:
        if not os.environ.get("SOUL_NATS_URL"):
            started.append(EmbeddedNats(home))
            os.environ["SOUL_NATS_URL"] = started[-1].start()
        pg_url = os.environ.get("SOUL_PG_URL")
        if not pg_url:
            started.append(EmbeddedPostgres(home))
            pg_url = started[-1].start()
        yield home, os.environ["SOUL_NATS_URL"], pg_url
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


def forget(journal: Journal, pg_url: str) -> None:
    """Remove what a benchmark journaled and projected, then close the journal."""
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(schema_for(journal.app))))
    journal.delete()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu": cpu, "platform": platform.platform(), "python": platform.python_version()}
