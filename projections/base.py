"""The projection contract: a read model of the journal, kept in one Postgres table.

A projection says which table it needs (`create`) and how a page of journal entries changes
it (`apply`). The runner owns everything else: reading the journal in order, one transaction
per page holding the rows and the tracked position, dead letters, rebuilds. Each soul (`app`)
has its own Postgres schema; in it the projection's rows live in a table named after its
version and build (`counts_v1_1`), and readers use the stable name, a view called `name` that
a rebuild re-points to the new table in the same transaction that swaps it in.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from journal.journal import Entry
from journal.subjects import app_token

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # leaves room in Postgres' 63 bytes for `_v<version>_<build>`


def schema_for(app: str) -> str:
    """The Postgres schema holding the projections of the soul named `app`."""
    return f"soul_{app_token(app)}"


class Projection(ABC):
    name: ClassVar[str]
    """The stable name readers use (a view in the app's schema); lower case, digits, `_`."""
    version: ClassVar[int]
    """The schema version: when it differs from the stored one, the view is rebuilt from seq 1."""
    types: ClassVar[tuple[str, ...]] = ()
    """The event types `apply` wants; empty for all of them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not _NAME.fullmatch(cls.name):
            raise ValueError(f"projection name {cls.name!r} must match {_NAME.pattern}")

    @classmethod
    def view(cls, app: str) -> sql.Identifier:
        """What readers select from: it survives rebuilds, which swap the table behind it."""
        return sql.Identifier(schema_for(app), cls.name)

    @abstractmethod
    def create(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        """Create `table` empty, with its indexes (unnamed, so Postgres names them uniquely),
        except those it defers to `finish`."""

    @abstractmethod
    def apply(self, cur: psycopg.Cursor[Any], table: sql.Identifier, entries: Sequence[Entry]) -> None:
        """Apply `entries` (decoded, of the wanted types, in journal order) to `table`.

        Runs inside the page's transaction, so a bulk `cur.copy(...)` is welcome. The runner
        applies each entry once: it hands over only entries past the table's position, read
        under a row lock in this same transaction, which also stores the new position. So a
        page delivered again (a second runner, a stale read) changes nothing. Apply itself
        cannot always tell an entry it has seen from its rows alone: a row a later event
        deleted leaves no trace.
        """

    def finish(self, cur: psycopg.Cursor[Any], table: sql.Identifier) -> None:
        """Build what is cheaper to build over all rows at once than row by row (ANN indexes):
        called after a fill from the journal, before a rebuilt table is swapped in, and once per
        runner for the table it keeps up. Must be idempotent. By default nothing."""
