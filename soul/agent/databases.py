"""Databases the user lets the soul read (issue 15): `$SOUL_HOME/databases.json` and the `sql` tool.

The file maps a name to a database, `{"shop": {"kind": "sqlite", "path": "/abs/shop.db"}}` or
`{"kind": "postgres", "url": "postgresql://..."}`; it is written with mode 0600, since a URL
may hold a password (`soul db list` masks it). Every query is read-only by the database's own
means, not by looking at the SQL: SQLite opens the file read-only (`mode=ro`, `query_only`),
PostgreSQL runs it in a READ ONLY transaction. A query is given up after TIMEOUT seconds
(SQLite's progress handler, PostgreSQL's statement_timeout) and shows at most MAX_ROWS rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from journal.embedded import soul_home
from soul.agent.tools import Tool, ToolError, ToolHost, register, required

MAX_ROWS = 50
TIMEOUT = 10.0  # seconds
CELL_CHARS = 200
FILE = "databases.json"
KINDS = ("sqlite", "postgres")


class DatabaseError(ValueError):
    """A database that cannot be configured or queried; the message says why."""


def config_path(home: Path | None = None) -> Path:
    return (home or soul_home()) / FILE


def configured(home: Path | None = None) -> dict[str, dict[str, str]]:
    """The configured databases by name ({} without the file)."""
    path = config_path(home)
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise DatabaseError(f"{path} is not JSON ({e}); fix or remove it") from None
    if not isinstance(found, dict) or not all(isinstance(v, dict) and v.get("kind") in KINDS for v in found.values()):
        raise DatabaseError(f"{path}: each entry must be {{\"kind\": \"sqlite\" | \"postgres\", ...}}")
    return found


def _write(databases: dict[str, dict[str, str]], home: Path | None = None) -> None:
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(databases, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def add(name: str, database: dict[str, str], home: Path | None = None) -> dict[str, str]:
    """Configure database `name` (replacing one of that name) once a query of it works."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise DatabaseError(f"database name {name!r} is invalid: use letters, digits, '-' and '_'")
    if database.get("kind") == "sqlite":
        path = Path(database.get("path", "")).expanduser().resolve()
        if not path.is_file():
            raise DatabaseError(f"{path} is not a file")
        database = {"kind": "sqlite", "path": str(path)}
    elif database.get("kind") != "postgres" or not database.get("url"):
        raise DatabaseError("give a SQLite file or a PostgreSQL URL")
    query(database, "SELECT 1")
    _write({**configured(home), name: database}, home)
    return database


def remove(name: str, home: Path | None = None) -> None:
    databases = configured(home)
    if databases.pop(name, None) is None:
        raise DatabaseError(f"no database named {name!r}; `soul db list` shows them")
    _write(databases, home)


def masked(database: dict[str, str]) -> str:
    """Where the database is, without a password."""
    if database["kind"] == "sqlite":
        return database["path"]
    parts = urlsplit(database["url"])
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def named(name: str | None, home: Path | None = None) -> tuple[str, dict[str, str]]:
    """The database `name`, or the only one configured when `name` is None."""
    databases = configured(home)
    if name is None:
        if len(databases) != 1:
            raise DatabaseError(f"name the database: {', '.join(databases) or 'none is configured (soul db add)'}")
        name = next(iter(databases))
    if name not in databases:
        raise DatabaseError(f"no database named {name!r}; configured: {', '.join(databases) or 'none (soul db add)'}")
    return name, databases[name]


def query(database: dict[str, str], statement: str, max_rows: int = MAX_ROWS,
          timeout: float = TIMEOUT) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """(columns, at most `max_rows` rows, whether there were more) of a read-only `statement`."""
    try:
        if database["kind"] == "sqlite":
            return _sqlite(database["path"], statement, max_rows, timeout)
        return _postgres(database["url"], statement, max_rows, timeout)
    except (sqlite3.Error, OSError) as e:
        raise DatabaseError(f"sqlite: {' '.join(str(e).split())}") from None
    except Exception as e:
        import psycopg

        if isinstance(e, psycopg.Error):
            raise DatabaseError(f"postgres: {' '.join(str(e).split())}") from None
        raise


def _sqlite(path: str, statement: str, max_rows: int, timeout: float) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    if not Path(path).is_file():
        raise DatabaseError(f"sqlite: {path} is gone")
    db = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        db.execute("PRAGMA query_only = ON")
        deadline = time.monotonic() + timeout
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = db.execute(statement)
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as e:
            if str(e) == "interrupted":
                raise DatabaseError(f"sqlite: the query took longer than {timeout:g} s and was stopped") from None
            raise
        columns = [d[0] for d in cursor.description or []]
        return columns, rows[:max_rows], len(rows) > max_rows
    finally:
        db.close()


def _postgres(url: str, statement: str, max_rows: int, timeout: float) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(timeout * 1000)}"])
            try:
                cur.execute(statement)
            except psycopg.errors.QueryCanceled:
                raise DatabaseError(f"postgres: the query took longer than {timeout:g} s and was stopped") from None
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchmany(max_rows + 1) if cur.description else []
        conn.rollback()
    return columns, rows[:max_rows], len(rows) > max_rows


def table(columns: list[str], rows: list[tuple[Any, ...]], more: bool) -> str:
    """The rows as text: a header of column names, then one line a row, cells separated by ` | `."""
    if not columns:
        return "the statement returned no rows"

    def cell(value: Any) -> str:
        text = "NULL" if value is None else " ".join(str(value).split())
        return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"

    lines = [" | ".join(columns), *(" | ".join(map(cell, row)) for row in rows)]
    if not rows:
        lines.append("(no rows)")
    if more:
        lines.append(f"… more rows not shown (at most {len(rows)}): narrow the query or add LIMIT/OFFSET")
    return "\n".join(lines)


def sql(soul: ToolHost, arguments: dict[str, Any]) -> str:
    statement = required(arguments, "query")
    try:
        _, database = named(arguments.get("db") or None)
        return table(*query(database, statement))
    except DatabaseError as e:
        raise ToolError(str(e)) from None


register(Tool(
    "sql", f"Query a database the user configured, read-only (at most {MAX_ROWS} rows, {TIMEOUT:g} s): "
           "SQLite or PostgreSQL SQL.",
    {"type": "object",
     "properties": {"db": {"type": "string", "description": "the database (default: the only one configured)"},
                    "query": {"type": "string", "description": "one SQL statement"}},
     "required": ["query"]},
    sql, read_only=True))
