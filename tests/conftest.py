"""Real parts for the tests: a nats-server with JetStream started for the session.

SOUL_NATS_URL in the environment points the tests at an external server or cluster instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal.embedded import EmbeddedNats


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


@pytest.fixture
def app_name() -> str:
    """A fresh application name: a fresh, empty journal."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def soul_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOUL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
