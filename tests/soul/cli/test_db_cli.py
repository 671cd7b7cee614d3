"""`soul db add/list/query/remove` against a SQLite file and the test Postgres."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
from click.testing import CliRunner

from soul.agent import databases
from soul.cli import main


def test_db_commands(tmp_path: Path, soul_home: Path, pg_url: str) -> None:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE item (id integer, name text)")
        conn.execute("INSERT INTO item VALUES (1, 'pen')")
    run = CliRunner().invoke
    assert run(main, ["db", "add", "shop", "--sqlite", str(path)]).exit_code == 0
    assert run(main, ["db", "add", "pg", "--postgres", pg_url]).exit_code == 0
    listed = [orjson.loads(line) for line in run(main, ["db", "list", "--json"]).output.splitlines()]
    assert [d["name"] for d in listed] == ["pg", "shop"]
    assert databases.masked({"kind": "postgres", "url": "postgresql://u:secret@h/db"}) == "postgresql://u:***@h/db"
    out = run(main, ["db", "query", "shop", "SELECT name FROM item", "--json"]).output
    assert orjson.loads(out) == {"columns": ["name"], "rows": [["pen"]], "more": False}
    refused = run(main, ["db", "query", "shop", "DELETE FROM item"])
    assert refused.exit_code == 1 and "readonly" in refused.output and "Traceback" not in refused.output
    both = run(main, ["db", "add", "x", "--sqlite", str(path), "--postgres", pg_url])
    assert both.exit_code == 2
    assert run(main, ["db", "remove", "shop"]).exit_code == 0
    gone = run(main, ["db", "remove", "shop"])
    assert gone.exit_code == 1 and "no database named 'shop'" in gone.output
