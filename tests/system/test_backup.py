"""`soul backup` and `soul restore` as a user meets them: a soul with perceptions, an erased event
(a gap in the sequence), a generation made with the tiny model; backed up, restored into a fresh
home on its own embedded NATS and into a 3-node cluster under another name; the same journal
stats, search results and lineage, and `soul replay --to gen-1` MATCH. A truncated or foreign
file is one error and restores nothing."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from click.testing import CliRunner, Result
from psycopg.conninfo import make_conninfo

from journal import archive
from journal.embedded import EmbeddedNats
from journal.journal import Journal
from soul.backup import HEAD
from soul.cli import main
from tests.evolution_support import CONFIG, journal_moments
from tests.support import drop_schema
from tests.system.test_cluster import cluster, open_journal  # noqa: F401  # the 3-node cluster fixture
from tests.tiny_model import build_tiny_model

Invoke = Callable[..., Result]
LOOKS = (("journal", "stats", "--json"), ("search", "where is the deploy", "--json"),
         ("search", "locker", "--mode", "keyword", "--json"), ("generations", "--json"))


@dataclass
class Soul:
    invoke: Invoke
    journal: Journal
    model: Path  # W0: the tiny model
    backup: Path

    def elsewhere(self, **env: str | None) -> Invoke:
        """`soul` in another place: `env` overrides the test session's (None unsets)."""
        return invoker(self.model, **env)


def invoker(model: Path, **env: str | None) -> Invoke:
    """`invoke(*args)`: `soul *args` with the tiny model as W0 and `env`."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env={"SOUL_MODEL": str(model), **env})

    return invoke


def looks(invoke: Invoke, app: str) -> dict[str, object]:
    """What the soul answers to each of LOOKS, as data; `soul journal stats` without the stream's name."""
    answers = {}
    for args in LOOKS:
        result = invoke("--app", app, *args)
        assert result.exit_code == 0, result.output
        answers[" ".join(args)] = [json.loads(line) for line in result.stdout.splitlines()]
    answers["journal stats --json"][0].pop("stream")
    return answers


@pytest.fixture
def soul(journal: Journal, soul_home: Path, tmp_path: Path) -> Soul:
    """A soul with perceptions, an erased one, three rated moments and gen-1 (tiny model), and
    its backup."""
    model = build_tiny_model(tmp_path / "w0")
    config = tmp_path / "evolution.yaml"
    values = CONFIG.as_dict()
    values["lambda"] = values.pop("lam")
    config.write_text(yaml.safe_dump(values))
    invoke = invoker(model, SOUL_HOME=str(soul_home))
    app = journal.app
    for words in ("the deploy is on friday", "my locker code is 4417", "the deploy moved to monday"):
        assert invoke("--app", app, "perceive", words).exit_code == 0
    journal_moments(journal, 3)
    evolved = invoke("--app", app, "evolve", "--config", str(config))
    assert evolved.exit_code == 0 and evolved.stdout.startswith("gen-1 promoted"), evolved.output
    locker = next(e.seq for e in journal.read() if "locker" in e.event.prose)
    assert invoke("--app", app, "forget", "--erase", str(locker)).exit_code == 0
    assert invoke("--app", app, "perceive", "the deploy went well").exit_code == 0
    assert locker not in [e.seq for e in journal.read()] and locker < journal.last_seq()  # a gap
    backup = tmp_path / "soul.tar"
    backed = invoke("--app", app, "backup", str(backup))
    assert backed.exit_code == 0, backed.output
    assert backed.stdout.startswith(f"backed up soul {app!r} to {backup}: ")
    assert "the weights of 1 generation (active gen-1), 1 adapter; " in backed.stdout
    again = invoke("--app", app, "backup", str(backup))
    assert again.exit_code == 1 and f"{backup} exists: back up into a new file" in again.stderr
    return Soul(invoke, journal, model, backup)


@pytest.fixture
def fresh_database(pg_url: str) -> Iterator[str]:
    """An empty database on the test Postgres: the Postgres of a home that never saw the soul."""
    name = "restored_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(pg_url, dbname=name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def replays(invoke: Invoke, app: str) -> None:
    replayed = invoke("--app", app, "replay", "--to", "gen-1")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.startswith("MATCH gen-1") and "(1 of 1 adapters from the cache)" in replayed.stdout


def test_restored_into_a_fresh_home_the_soul_answers_as_before(soul: Soul, tmp_path: Path, fresh_database: str) -> None:
    app, before = soul.journal.app, looks(soul.invoke, soul.journal.app)
    assert before["search locker --mode keyword --json"] == []  # erased before the backup
    home = tmp_path / "new-home"
    # Its own embedded NATS (SOUL_NATS_URL unset) and a Postgres that never saw the soul.
    elsewhere = soul.elsewhere(SOUL_HOME=str(home), SOUL_NATS_URL=None, SOUL_PG_URL=fresh_database)
    try:
        restored = elsewhere("restore", str(soul.backup))
        assert restored.exit_code == 0, restored.output
        assert restored.stdout.startswith(f"restored soul {app!r} from {soul.backup}: ")
        assert restored.stdout.rstrip().endswith("views rebuilt: event_counts, memory, corpora, turns, tasks")
        assert looks(elsewhere, app) == before
        replays(elsewhere, app)

        again = elsewhere("restore", str(soul.backup))
        assert again.exit_code == 1 and again.stderr.count("\n") == 1
        assert f"soul {app!r} already has a journal at nats://127.0.0.1:" in again.stderr
    finally:
        EmbeddedNats(home).stop()


def test_restored_into_a_cluster_under_another_name(soul: Soul, cluster: tuple[str, Path], tmp_path: Path,  # noqa: F811
                                                    pg_url: str) -> None:
    url, _ = cluster
    before, app = looks(soul.invoke, soul.journal.app), "t" + uuid.uuid4().hex[:12]
    open_journal(url, app).close()  # once the cluster's JetStream answers; an empty stream may be restored into
    elsewhere = soul.elsewhere(SOUL_HOME=str(tmp_path / "cluster-home"), SOUL_NATS_URL=url, SOUL_NATS_REPLICAS="3")
    try:
        restored = elsewhere("--app", app, "restore", str(soul.backup))
        assert restored.exit_code == 0, restored.output
        assert restored.stdout.startswith(f"restored soul {app!r} (backed up as {soul.journal.app!r}) from ")
        assert looks(elsewhere, app) == before
        replays(elsewhere, app)
        with Journal(app, {"SOUL_NATS_URL": url}) as journal:
            assert journal.replicas == 3
    finally:
        drop_schema(pg_url, app)


def nothing_restored(app: str, home: Path) -> None:
    with Journal(app) as journal:
        assert archive.last_sequence(journal) == 0
        journal.delete()
    assert not home.exists() or list(home.iterdir()) == []  # no generation, adapter or staging folder


def cut_points(backup: Path) -> dict[str, int]:
    """Where to cut the archive: halfway; where its manifest begins; inside the manifest."""
    with tarfile.open(backup) as tar:
        manifest = tar.getmember("manifest.json")
    return {"halfway": backup.stat().st_size // 2, "before the manifest": manifest.offset,
            "inside the manifest": manifest.offset_data + manifest.size // 2}


@pytest.mark.parametrize("where", ["halfway", "before the manifest", "inside the manifest"])
def test_a_truncated_archive_restores_nothing(soul: Soul, tmp_path: Path, where: str) -> None:
    short = tmp_path / "short.tar"
    short.write_bytes(soul.backup.read_bytes()[: cut_points(soul.backup)[where]])
    home, app = tmp_path / "home-short", "t" + uuid.uuid4().hex[:12]
    result = soul.elsewhere(SOUL_HOME=str(home))("--app", app, "restore", str(short))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(f"Error: {short} is cut short")
    nothing_restored(app, home)


def test_a_foreign_or_damaged_file_restores_nothing(soul: Soul, tmp_path: Path) -> None:
    foreign_tar = tmp_path / "photos.tar"
    with tarfile.open(foreign_tar, "w") as tar:
        info = tarfile.TarInfo("holiday.jpg")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"\xff\xd8\xff\xe0\x00"))
    text = tmp_path / "notes.txt"
    text.write_text("not an archive at all\n" * 100)
    damaged = tmp_path / "damaged.tar"
    data = bytearray(soul.backup.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a member
    damaged.write_bytes(bytes(data))
    home = tmp_path / "home-foreign"
    elsewhere = soul.elsewhere(SOUL_HOME=str(home))
    for path, complaint in ((foreign_tar, f"{foreign_tar} is not a soul backup (it does not begin with {HEAD})"),
                            (text, f"{text} is not a soul backup (not a tar archive)"),
                            (damaged, f"{damaged} is ")):
        app = "t" + uuid.uuid4().hex[:12]
        result = elsewhere("--app", app, "restore", str(path))
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith(f"Error: {complaint}")
        nothing_restored(app, home)
