"""The navigation tools (`files`, `read`, `grep`: soul/agent/navigate.py) on a corpus's folder,
and `sql` (soul/agent/databases.py) on a real SQLite file and the test PostgreSQL, each called
through the soul as the mind calls them: journaled call, journaled result."""

from __future__ import annotations

import json
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from projections import corpora
from soul.agent import databases
from soul.agent.corpus import Ingest, list_files
from soul.agent.loop import Soul, SoulConfig
from soul.cli import main
from tests.support import drop_schema
from tests.tiny_model import build_tiny_model


@pytest.fixture
def soul(nats_url: str, pg_url: str, app_name: str, soul_home: Path, tmp_path: Path) -> Iterator[Soul]:
    opened = Soul.open(app_name, model_dir=build_tiny_model(tmp_path / "tiny"), config=SoulConfig(), weights=False)
    yield opened
    opened.close()
    drop_schema(pg_url, app_name)


@pytest.fixture
def mylib(tmp_path: Path, soul: Soul) -> Path:
    root = tmp_path / "mylib"
    (root / "src").mkdir(parents=True)
    (root / "src" / "retry.py").write_text("".join(f"# line {n}\n" for n in range(1, 300)) + "BACKOFF = 2\n")
    (root / "README.md").write_text("mylib retries with backoff.\n")
    (tmp_path / "secret.txt").write_text("outside the corpus\n")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    soul.catch_up()
    Ingest(soul.journal, soul.embedder, "mylib", {}).run(root, list_files(root))
    soul.catch_up()
    return root


def run(soul: Soul, name: str, **arguments: Any) -> tuple[bool, str]:
    outcome = soul.call_tool(name, arguments)
    return outcome.ok, outcome.text


def test_files_read_and_grep_walk_the_corpus_folder(soul: Soul, mylib: Path) -> None:
    assert corpora.root(soul.conn, soul.app, "mylib") == str(mylib.resolve())
    assert run(soul, "files", corpus="mylib") == (True, "README.md\nescape\nsrc/retry.py")
    assert run(soul, "files", corpus="mylib", pattern="*.py") == (True, "src/retry.py")
    ok, text = run(soul, "read", corpus="mylib", path="src/retry.py", first="298")
    assert ok and text == "src/retry.py lines 298-300 of 300\n298: # line 298\n299: # line 299\n300: BACKOFF = 2"
    ok, text = run(soul, "read", corpus="mylib", path="src/retry.py")
    assert text.startswith("src/retry.py lines 1-200 of 300\n1: # line 1") and text.endswith("… read on with first=201")
    assert run(soul, "grep", corpus="mylib", pattern="backoff") == (
        True, "README.md:1: mylib retries with backoff.\nsrc/retry.py:300: BACKOFF = 2")
    assert run(soul, "grep", corpus="mylib", pattern="(unclosed")[1] == "no line of corpus mylib matches '(unclosed'"


def test_paths_outside_the_folder_and_missing_corpora_are_error_results(soul: Soul, mylib: Path) -> None:
    for path in ("../secret.txt", "/etc/passwd", "escape"):
        assert run(soul, "read", corpus="mylib", path=path) == (False, f"{path!r} is outside the corpus's folder")
    assert run(soul, "read", corpus="mylib", path="nope.py") == (False, "cannot read nope.py: no such file")
    assert run(soul, "files") == (False, "no corpus given and none mounted")
    assert run(soul, "files", corpus="other") == (False, "no corpus named 'other'; known: mylib")
    soul.call_tool("mount", {"corpus": "mylib"})
    soul.catch_up()
    assert run(soul, "files", path="src") == (True, "src/retry.py")  # the mounted corpus by default


@pytest.fixture
def shop(tmp_path: Path, soul_home: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE invoices (id integer PRIMARY KEY, customer_id integer, total real);"
                         + "".join(f"INSERT INTO invoices VALUES ({k}, {k % 3}, {k}.5);" for k in range(60)))
    return path


def test_sql_reads_sqlite_capped_and_timed_and_the_database_refuses_writes(soul: Soul, shop: Path,
                                                                         soul_home: Path) -> None:
    databases.add("shop", {"kind": "sqlite", "path": str(shop)})
    assert stat.S_IMODE((soul_home / "databases.json").stat().st_mode) == 0o600
    assert run(soul, "sql", query="SELECT id, total FROM invoices WHERE id < 2") == (True, "id | total\n0 | 0.5\n1 | 1.5")
    ok, text = run(soul, "sql", db="shop", query="SELECT * FROM invoices")
    assert ok and len(text.splitlines()) == 1 + databases.MAX_ROWS + 1 and text.endswith("add LIMIT/OFFSET")
    assert run(soul, "sql", query="DELETE FROM invoices") == (False, "sqlite: attempt to write a readonly database")
    columns, rows, _ = databases.query(databases.named("shop")[1], "SELECT count(*) FROM invoices")
    assert rows == [(60,)]  # nothing deleted
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(databases.DatabaseError, match=r"took longer than 0.2 s"):
        databases.query(databases.named("shop")[1], endless, timeout=0.2)
    assert run(soul, "sql", db="nope", query="SELECT 1") == (False, "no database named 'nope'; configured: shop")


def test_sql_reads_postgres_in_a_read_only_transaction(soul: Soul, pg_url: str) -> None:
    schema = f"shop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id int, name text);"
                     f"INSERT INTO {schema}.customers VALUES (1, 'Ada')")
    try:
        databases.add("crm", {"kind": "postgres", "url": pg_url})
        assert run(soul, "sql", db="crm", query=f"SELECT * FROM {schema}.customers") == (True, "id | name\n1 | Ada")
        ok, text = run(soul, "sql", db="crm", query=f"INSERT INTO {schema}.customers VALUES (2, 'Eve')")
        assert not ok and text.startswith("postgres: cannot execute INSERT in a read-only transaction")
        with pytest.raises(databases.DatabaseError, match="took longer than 1 s"):
            databases.query(databases.named("crm")[1], "SELECT pg_sleep(5)", timeout=1)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_soul_db_adds_lists_queries_and_removes(shop: Path, soul_home: Path, pg_url: str) -> None:
    def soul_db(*args: str) -> Any:
        return CliRunner().invoke(main, ["db", *args])

    assert soul_db("add", "shop", "--sqlite", str(shop)).output == f"database shop: sqlite {shop}\n"
    assert soul_db("add", "pg", "--postgres", pg_url).exit_code == 0
    listed = [json.loads(line) for line in soul_db("list", "--json").output.splitlines()]
    assert [(d["name"], d["kind"]) for d in listed] == [("pg", "postgres"), ("shop", "sqlite")]
    assert soul_db("remove", "pg").exit_code == 0
    databases.add("crm", {"kind": "sqlite", "path": str(shop)})
    assert databases.masked({"kind": "postgres", "url": "postgresql://ada:" + "s3cret" + "@db.local/crm"}) == (
        "postgresql://ada:***@db.local/crm")
    assert soul_db("list").output == f"crm                  sqlite    {shop}\nshop                 sqlite    {shop}\n"
    assert soul_db("query", "shop", "SELECT count(*) AS n FROM invoices").output == "n\n60\n"
    assert json.loads(soul_db("query", "shop", "SELECT id, total FROM invoices WHERE id = 1", "--json").output) == {
        "columns": ["id", "total"], "rows": [[1, 1.5]], "more": False}
    refused = soul_db("query", "shop", "DELETE FROM invoices")
    assert refused.exit_code == 1 and refused.output == "Error: sqlite: attempt to write a readonly database\n"
    wrong = soul_db("add", "x", "--sqlite", str(shop), "--postgres", "postgresql://h/db")
    assert wrong.exit_code == 2 and "give one of --sqlite FILE or --postgres URL" in wrong.output
    assert soul_db("remove", "crm").output == "database crm removed\n"
    gone = soul_db("query", "crm", "SELECT 1")
    assert gone.exit_code == 1 and gone.output == "Error: no database named 'crm'; configured: shop\n"
