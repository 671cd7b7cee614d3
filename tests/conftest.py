"""Real parts for the tests: a nats-server with JetStream and a Postgres with pgvector,
started for the session.

SOUL_NATS_URL in the environment points the tests at an external server or cluster instead,
SOUL_PG_URL at an external Postgres (it needs pgvector).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from evolution.weights.blas import reexec_with_optimized_blas
from journal.embedded import EmbeddedNats
from journal.journal import Journal
from projections.postgres import EmbeddedPostgres, connect
from tests.support import drop_schema

pytest.register_assert_rewrite("tests.projections.contract")  # its asserts run in the tests that subclass it


def pytest_configure(config: pytest.Config) -> None:
    # Run the suite on OpenBLAS as `soul` does (evolution/weights/blas.py); servers it starts do not inherit it.
    reexec_with_optimized_blas()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SOUL_NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("soul-home"))
    url = server.start()
    os.environ["SOUL_NATS_URL"] = url  # for code under test that reads the process environment
    try:
        yield url
    finally:
        server.stop()
        del os.environ["SOUL_NATS_URL"]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    external = os.environ.get("SOUL_PG_URL")
    if external:
        yield external
        return
    home = pg_home()
    server = EmbeddedPostgres(home)
    url = server.start()
    os.environ["SOUL_PG_URL"] = url  # for code under test and its subprocesses
    try:
        yield url
    finally:
        server.stop()
        del os.environ["SOUL_PG_URL"]
        shutil.rmtree(home)


def pg_home() -> Path:
    """A home outside pytest's temp tree. Run as root, pgserver runs Postgres as the user
    `pgserver` and opens up the path to its data; every pytest session start closes pytest's
    tree again (mode 0700), which would lock out a server another session is using."""
    return Path(tempfile.mkdtemp(prefix="soul-pg-"))


@pytest.fixture
def app_name() -> str:
    """A fresh application name: a fresh, empty journal."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def soul_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOUL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def journal(nats_url: str, pg_url: str, app_name: str) -> Iterator[Journal]:
    """A fresh journal whose projections are dropped afterwards (test_journal.py has its own,
    without Postgres)."""
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        yield journal
    drop_schema(pg_url, app_name)


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_url) as connection:
        yield connection
