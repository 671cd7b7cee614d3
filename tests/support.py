"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.js.api import PubAck
from psycopg import sql

from projections.base import schema_for
from projections.postgres import connect

TESTS = Path(__file__).parent  # tests/: the suite's data and helpers
ROOT = TESTS.parent  # the checkout


def publish_raw(url: str, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PubAck:
    """Publish onto the journal's subjects as a foreign tool would, bypassing soul; the server's ack."""

    async def go() -> PubAck:
        nc = await nats.connect(url)
        try:
            return await nc.jetstream().publish(subject, payload, headers=headers)
        finally:
            await nc.close()

    return asyncio.run(go())


def drop_schema(pg_url: str, app: str) -> None:
    """Remove an application's projections, so a long test session does not pile them up."""
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_for(app))))
