"""Corpora on a real nats-server and Postgres, with the real embedder on a handful of small files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from journal.journal import Journal
from projections.base import schema_for
from projections.corpora import Corpora
from projections.memory import Memory
from projections.postgres import connect
from projections.runner import ProjectionRunner, status
from projections.search import search
from soul.agent.corpus import CHUNK_CHARS, CHUNK_LINES, OVERLAP_LINES, chunk_text, list_files
from soul.cli.memory import corpus
from soul.cli.memory import search as search_command

FILES = {
    "README.md": "Tidepool is a tiny library for measuring ocean tides and the moon's pull on harbours.\n",
    "tides.py": "def high_tide(hour):\n    \"\"\"When the sea is highest in the harbour.\"\"\"\n    return (hour + 12) % 24\n",
    "notes/bread.txt": "Sourdough bread needs flour, water, salt and a lively starter kept warm overnight.\n",
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "tidepool"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    (root / "untracked.txt").write_text("not in git, so not in the corpus\n")
    git(root.parent, "init", "-q", str(root))
    git(root, "add", *FILES, "logo.png")
    git(root, "commit", "-qm", "init")
    return root


def cli(app: str, *args: str) -> Result:
    return CliRunner().invoke(corpus, list(args), obj={"app": app}, catch_exceptions=False)


def entries(app: str, since: int = 1) -> list[Any]:
    with Journal(app) as journal:
        return list(journal.read(since=since))


def last_seq(app: str) -> int:
    with Journal(app) as journal:
        return journal.last_seq()


def hits(app: str, pg_url: str, text: str, corpus: str | None = None) -> list[Any]:
    with Journal(app) as journal, ProjectionRunner(journal, Memory(), pg_url) as runner:
        runner.catch_up()
        return search(runner.conn, app, text, mode="keyword", corpus=corpus)


def test_chunks_overlap_and_stay_small() -> None:
    text = "".join(f"line {i}\n" for i in range(1, 101)) + "x" * (3 * CHUNK_CHARS) + "\n"
    chunks = chunk_text(text)
    assert chunks[0].first_line == 1 and chunks[0].last_line == CHUNK_LINES
    assert chunks[1].first_line == CHUNK_LINES - OVERLAP_LINES + 1
    assert all(len(c.text) <= CHUNK_CHARS for c in chunks)
    assert chunks[-1].last_line == 101
    assert "".join(c.text for c in chunks).count("line 100\n") >= 1


def test_lists_git_tracked_files_or_all_outside_git(repo: Path, tmp_path: Path) -> None:
    assert list_files(repo) == sorted([*FILES, "logo.png"])
    plain = tmp_path / "plain"
    (plain / ".git").mkdir(parents=True)  # not a work tree: a folder named .git is skipped anyway
    (plain / ".git" / "x").write_text("x")
    (plain / "a.txt").write_text("a")
    assert list_files(plain) == ["a.txt"]


def test_add_is_incremental_with_tombstones(repo: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    result = cli(app_name, "add", "tide", str(repo), "--json")
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ingested"] == 3 and report["skipped"] == {"binary": 1} and report["chunks"] == 3
    events = [e.event for e in entries(app_name)]
    (added,) = [e for e in events if e.type == "corpus_added"]
    assert added.data == {"root": str(repo.resolve())}  # where its files are read
    chunks = [e for e in events if e is not added]
    assert {e.type for e in chunks} == {"chunk_ingested"}
    assert {e.corpus for e in chunks} == {"tide"} and {e.originator_id for e in chunks} == {"corpus:tide"}
    assert {e.data["path"] for e in chunks} == set(FILES)
    assert chunks[0].vector.shape == (384,) and chunks[0].data["lines"] == [1, 1]

    before = last_seq(app_name)
    assert json.loads(cli(app_name, "add", "tide", str(repo), "--json").output.splitlines()[-1])["unchanged"] == 3
    assert last_seq(app_name) == before  # nothing changed: nothing journaled

    (repo / "tides.py").write_text("def low_tide(hour):\n    return hour % 24\n")
    (repo / "notes" / "bread.txt").unlink()
    cli(app_name, "add", "tide", str(repo))
    new = [e.event for e in entries(app_name, before + 1)]
    assert [(e.type, e.data["path"]) for e in new] == [
        ("document_removed", "notes/bread.txt"), ("document_removed", "tides.py"), ("chunk_ingested", "tides.py")]
    assert len(new[1].data["chunk_ids"]) == 1

    assert hits(app_name, pg_url, "sourdough") == []  # the deleted file's chunk is forgotten
    assert hits(app_name, pg_url, "high_tide") == []  # so is the old version of the changed one
    new_tides = "def low_tide(hour):\n    return hour % 24\n"
    assert [h.prose for h in hits(app_name, pg_url, "low_tide", corpus="tide")] == [new_tides]
    listed = json.loads(cli(app_name, "list", "--json").output)
    assert listed == {"name": "tide", "mounted": False, "files": 2, "chunks": 2, "root": str(repo.resolve())}

    with Journal(app_name) as journal:  # rebuilt from the journal, the views agree
        for projection in (Corpora(), Memory()):
            with ProjectionRunner(journal, projection, pg_url) as runner:
                runner.rebuild()
    assert json.loads(cli(app_name, "list", "--json").output) == listed
    assert hits(app_name, pg_url, "sourdough") == [] and len(hits(app_name, pg_url, "low_tide")) == 1


def test_mount_unmount_remove_are_events(repo: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    cli(app_name, "add", "tide", str(repo))
    cli(app_name, "add", "other", str(repo / "notes"))  # inside the same work tree: its tracked files
    start = last_seq(app_name) + 1
    assert cli(app_name, "mount", "tide").exit_code == 0
    assert cli(app_name, "mount", "other").exit_code == 0  # mounting one unmounts the other
    assert "* other" in cli(app_name, "list").output
    assert "  tide" in cli(app_name, "list").output
    assert cli(app_name, "unmount").exit_code == 0
    assert "*" not in cli(app_name, "list").output
    assert cli(app_name, "remove", "other").exit_code == 0
    assert [(e.topic, e.event.corpus) for e in entries(app_name, start)] == [
        ("corpus_mounted", "tide"), ("corpus_mounted", "other"), ("corpus_unmounted", "other"),
        ("corpus_removed", "other")]
    assert [json.loads(line)["name"] for line in cli(app_name, "list", "--json").output.splitlines()] == ["tide"]
    assert hits(app_name, pg_url, "sourdough", corpus="other") == []
    assert len(hits(app_name, pg_url, "sourdough", corpus="tide")) == 1  # still in the other corpus


def test_user_mistakes_are_one_line(repo: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    runner = CliRunner()
    for args, message in [
        (["add", "tide", str(repo / "missing")], "missing does not exist"),
        (["add", "bad name", str(repo)], "corpus name 'bad name' is invalid"),
        (["mount", "nowhere"], "no corpus named 'nowhere'"),
        (["unmount"], "no corpus is mounted"),
        (["remove", "nowhere"], "no corpus named 'nowhere'"),
    ]:
        result = runner.invoke(corpus, args, obj={"app": app_name})
        assert result.exit_code == 1, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_folder_that_yields_no_text_file_says_why_and_journals_nothing(
        repo: Path, tmp_path: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    empty, ignored, unreadable = tmp_path / "empty", repo / "build", tmp_path / "unreadable"
    for folder in (empty / "sub", ignored, unreadable):
        folder.mkdir(parents=True)
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore build")
    (ignored / "out.txt").write_text("generated\n")
    (repo / "notes" / "drafts").mkdir()
    (repo / "notes" / "drafts" / "a.txt").write_text("a draft\n")
    (unreadable / "logo.png").write_bytes(b"\x89PNG\0")
    (unreadable / "blank.txt").write_text("  \n")
    for path, message in [
        (repo / "tides.py", f"{repo / 'tides.py'} is a file, not a directory"),
        (empty, f"{empty} holds no files"),
        (ignored, f"git tracks no file under {ignored} (1 ignored by git): in a git work tree only tracked files"),
        (repo / "notes" / "drafts", "git tracks no file under " + str(repo / "notes" / "drafts") + " (1 untracked)"),
        (unreadable, f"no text file under {unreadable}: of 2 files, 1 binary, 1 empty"),
    ]:
        result = CliRunner().invoke(corpus, ["add", "tide", str(path)], obj={"app": app_name})
        assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith(f"Error: {message}"), result.output
    assert last_seq(app_name) == 0


def test_search_in_a_corpus_finds_its_document_and_says_where_it_is(
        repo: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    cli(app_name, "add", "tide", str(repo))
    result = CliRunner().invoke(search_command, ["when is the sea highest", "--corpus", "tide", "--json"],
                                obj={"app": app_name}, catch_exceptions=False)
    found = [json.loads(line) for line in result.output.splitlines()]
    assert found[0]["prose"] == FILES["tides.py"] and {h["corpus"] for h in found} == {"tide"}
    assert (found[0]["path"], found[0]["lines"]) == ("tides.py", [1, 3])
    lines = CliRunner().invoke(search_command, ["high_tide", "--mode", "keyword"], obj={"app": app_name},
                               catch_exceptions=False)
    (line,) = lines.stdout.splitlines()
    assert line.split()[5:7] == ["tide:tides.py:1-3", "'def"]


def test_a_memory_view_without_places_is_rebuilt_with_them(repo: Path, nats_url: str, pg_url: str,
                                                            app_name: str) -> None:
    cli(app_name, "add", "tide", str(repo))
    hits(app_name, pg_url, "tides")  # the memory view, built
    # As version 5 of the memory projection left it: no path or lines, and the version says so.
    with connect(pg_url) as conn:
        schema = sql.Identifier(schema_for(app_name))
        (active,) = conn.execute(sql.SQL("SELECT active FROM {}._projections WHERE name = 'memory'").format(schema)).fetchone()
        table = sql.Identifier(schema_for(app_name), active)
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN path CASCADE, DROP COLUMN first_line, DROP COLUMN last_line")
                     .format(table))
        conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(Memory.view(app_name), table))
        conn.execute(sql.SQL("UPDATE {}._projections SET version = 5 WHERE name = 'memory'").format(schema))
    result = CliRunner().invoke(search_command, ["high_tide", "--mode", "keyword", "--json"], obj={"app": app_name},
                                catch_exceptions=False)
    (hit,) = [json.loads(line) for line in result.output.splitlines()]
    assert (hit["corpus"], hit["path"], hit["lines"]) == ("tide", "tides.py", [1, 3])
    with connect(pg_url) as conn, Journal(app_name) as journal:
        assert status(conn, journal, Memory())["stored_version"] == Memory.version == 6


def test_secrets_in_files_never_reach_the_journal(tmp_path: Path, nats_url: str, pg_url: str, app_name: str) -> None:
    folder = tmp_path / "plain"  # outside git: every text file
    folder.mkdir()
    (folder / "settings.py").write_text('AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\nDEBUG = True\n')
    assert cli(app_name, "add", "cfg", str(folder)).exit_code == 0
    (chunk,) = [e.event for e in entries(app_name) if e.topic == "chunk_ingested"]
    assert "AKIAIOSFODNN7EXAMPLE" not in chunk.prose and "[REDACTED:aws_access_key]" in chunk.prose
    assert chunk.data["redacted"] == ["aws_access_key"]


def test_the_first_files_are_journaled_while_the_rest_are_still_read(tmp_path: Path, nats_url: str,
                                                                     app_name: str) -> None:
    from soul.agent.corpus import FIRST_BATCH, Ingest
    from soul.agent.embedder import load_default_embedder

    for k in range(3 * FIRST_BATCH):
        (tmp_path / f"note{k:02}.txt").write_text(f"Note {k}: the harbour master logs tide number {k}.\n")
    seen = []
    with Journal(app_name) as journal:
        ingest = Ingest(journal, load_default_embedder(), "notes", {})
        report = ingest.run(tmp_path, list_files(tmp_path), progress=lambda _: seen.append(journal.last_seq()))
        assert report.chunks == 3 * FIRST_BATCH and report.events == report.chunks + 1  # and its root
    # one chunk a file: the first batch is journaled as its last file is read, long before the end
    assert seen[FIRST_BATCH - 2] == 0 and seen[FIRST_BATCH - 1] == FIRST_BATCH
    assert seen[-1] == 3 * FIRST_BATCH  # then one batch twice as large
