"""Hostile input: random bytes and headers on the journal's subjects, random payloads through the
codec, random arguments to `soul`. Nothing crashes, nothing is lost, every bad message is shown
and dead-lettered with its reason.

The example counts are fixed and derandomized so CI is repeatable; SOUL_FUZZ_EXAMPLES=N runs N
fresh random examples per property instead (docs/reliability.md records such runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import click
import nats.errors
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from journal import codec
from journal.event import CATALOGUE, BifocalEvent, Embedder
from journal.journal import Journal
from journal.subjects import journal_prefix
from projections.base import schema_for
from projections.postgres import connect
from projections.runner import ProjectionRunner
from soul.cli import main
from tests.journal.test_codec import events, json_values
from tests.projections.test_projections import Ledger
from tests.support import drop_schema, publish_raw

LONG_RUN = int(os.environ.get("SOUL_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> Any:
    return settings(max_examples=LONG_RUN or examples, derandomize=not LONG_RUN, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the codec ---------------------------------------------------------------------------

DOCUMENTED = codec.DecodeError  # UnknownEvent is one too


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes flipped, cut short or grown."""
    payload = bytearray(codec.encode(draw(events())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(payload) - 1))
        payload[at] ^= draw(st.integers(1, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(payload))))
    return bytes(payload[:cut]) + draw(st.binary(max_size=8))


def decode_or_document(payload: bytes) -> BifocalEvent | None:
    try:
        event = codec.decode(payload, uuid.uuid4(), 1)
    except DOCUMENTED:
        return None
    assert codec.decode(codec.encode(event), event.originator_id, 1) == event  # what decodes is an event
    return event


@fuzz(400)
@given(st.binary(max_size=2000) | mutated())
def test_decode_of_random_and_mutated_payloads_raises_only_decode_errors(payload: bytes) -> None:
    decode_or_document(payload)


HEADER_KEYS = ("id", "type", "schema", "ts", "prose", "embedder", "dim", "causation", "correlation", "corpus", "data")


@st.composite
def forged(draw: st.DrawFn) -> bytes:
    """A well-framed payload whose JSON header holds any JSON value under each key."""
    header = {key: draw(json_values | st.sampled_from([uuid.uuid4().hex, "perception", 1, 0]))
              for key in HEADER_KEYS if draw(st.integers(0, 9))}  # now and then a key is missing
    dim = header.get("dim") if isinstance(header.get("dim"), int) and 0 <= header["dim"] < 64 else 0
    head = orjson.dumps(header)
    return codec._PREFIX.pack(codec.MAGIC, codec.FORMAT, len(head)) + head + bytes(4 * dim)


@fuzz(500)
@given(forged())
def test_decode_of_forged_headers_raises_only_decode_errors(payload: bytes) -> None:
    decode_or_document(payload)


# -- raw messages on the journal's subjects -------------------------------------------------

# Headers a foreign publisher might send, soul's own and JetStream's among them (rollups, TTLs,
# batches and expectations must be refused by the stream, not obeyed; status and direct-get
# headers are the server's to set). `Status` has a test of its own below too.
HEADER_NAMES = ("Es-Topic", "Es-Version", "Nats-Msg-Id", "Nats-Rollup", "Nats-TTL", "Nats-Expected-Stream",
                "Nats-Expected-Last-Subject-Sequence", "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit",
                "Status", "Description", "Nats-Sequence", "Nats-Subject", "Nats-Num-Pending")
header_values = st.sampled_from([*CATALOGUE, "1", "0", "-1", "all", "sub", "1s", "99999999999999999999", "a\x00b",
                                 "204", "404", "408", "503"]) | st.text(
    st.characters(blacklist_characters="\r\n"), max_size=30)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES) | st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True),
                          header_values, max_size=4)
tokens = st.uuids().map(str) | st.from_regex(r"[A-Za-z0-9_=-]{1,20}(\.[A-Za-z0-9_-]{1,8}){0,2}", fullmatch=True)
raw_messages = st.tuples(st.just("raw"), tokens, st.binary(max_size=300) | mutated(), headers)
good_events = st.builds(
    lambda prose, origin, data: ("good", BifocalEvent("perception", prose, [0.5, 0.25], Embedder("fuzz@1", 2), origin, data=data)),
    st.text(max_size=60), st.sampled_from(["source:user", "source:tool"]),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)


def publish(url: str, subject: str, payload: bytes, headers: dict[str, str]) -> int | None:
    """The sequence the server stored the message at, or None if it refused it."""
    try:
        ack = publish_raw(url, subject, payload, headers)
    except (nats.errors.Error, ValueError):  # refused by the client (bad header) or the server
        return None
    return None if ack.duplicate else ack.seq


@fuzz(40)
@given(items=st.lists(good_events | raw_messages, min_size=1, max_size=12))
def test_hostile_messages_are_shown_and_dead_lettered_and_good_events_applied(
    nats_url: str, pg_url: str, items: list[tuple[Any, ...]]
) -> None:
    app = "f" + uuid.uuid4().hex[:12]
    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal:
            stored: dict[int, BifocalEvent | None] = {}
            for item in items:
                if item[0] == "good":
                    seq, event = journal.add(item[1])
                    stored[seq] = event
                elif (seq := publish(nats_url, f"{journal_prefix(journal.app)}.e.{item[1]}", item[2], item[3])) is not None:
                    stored[seq] = None
            entries = list(journal.read())
            assert [e.seq for e in entries] == sorted(stored)  # every stored message, in order
            for e in entries:
                assert (e.event is None) == bool(e.error)  # decoded, or undecodable with its reason
                if stored[e.seq] is not None:
                    assert e.event == stored[e.seq]
            undecodable = [e.seq for e in entries if e.event is None]

            tail = CliRunner().invoke(main, ["--app", app, "tail", "--since", "1", "--no-follow", "--json"],
                                      env={"SOUL_NATS_URL": nats_url})
            assert tail.exit_code == 0 and tail.exception is None, tail.output
            lines = [orjson.loads(line) for line in tail.output.split("\n") if line]  # not splitlines(): prose may hold U+0085
            assert [line["seq"] for line in lines] == [e.seq for e in entries]
            assert [line["seq"] for line in lines if line.get("undecodable")] == undecodable

            with ProjectionRunner(journal, Ledger(), pg_url, page=3) as runner, connect(pg_url) as conn:
                assert runner.catch_up() == (entries[-1].seq if entries else 0)
                applied = [r[0] for r in conn.execute(sql.SQL("SELECT seq FROM {} ORDER BY seq").format(Ledger.view(app)))]
                letters = dict(conn.execute(sql.SQL("SELECT seq, error FROM {}").format(
                    sql.Identifier(schema_for(app), "_dead_letters"))).fetchall())
            assert sorted(applied + list(letters)) == [e.seq for e in entries]  # each applied or a dead letter
            assert set(undecodable) <= set(letters) and all(letters.values())
            assert all(e.seq in applied for e in entries if e.event and "\x00" not in e.event.prose)
    finally:
        drop_schema(pg_url, app)


def test_a_nul_in_a_foreign_header_is_a_dead_letter_not_a_stuck_projection(journal: Journal, nats_url: str, pg_url: str) -> None:
    publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.{uuid.uuid4()}", b"junk", {"Es-Topic": "a\x00b", "Es-Version": "1"})
    journal.add(BifocalEvent("perception", "after", [], Embedder("none", 0), "o"))
    with ProjectionRunner(journal, Ledger(), pg_url) as runner:
        assert runner.catch_up() == 2
        assert (runner.status()["rows"], runner.status()["dead_letters"]) == (1, 1)
    with connect(pg_url) as conn:
        assert conn.execute(sql.SQL("SELECT topic FROM {}").format(
            sql.Identifier(schema_for(journal.app), "_dead_letters"))).fetchone()[0] == "a\\x00b"


@pytest.mark.parametrize("status", ["404", "503"])
def test_a_message_with_a_status_header_is_shown_like_any_other(journal: Journal, nats_url: str, status: str) -> None:
    journal.add(BifocalEvent("perception", "before", [], Embedder("none", 0), "o"))
    publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.foreign", b"x", {"Status": status})
    journal.add(BifocalEvent("perception", "after", [], Embedder("none", 0), "o"))
    try:
        seqs = [e.seq for e in journal.read()]
    except Exception as e:
        seqs = [f"{type(e).__name__}: {e}"]
    assert seqs == [1, 2, 3]


# -- random arguments to `soul` ------------------------------------------------------------

def commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


COMMANDS = commands(main)
# Run for real with any arguments: commands that read, or journal small events, and end by
# themselves. Every other command (it trains, loads the model, serves, or runs until stopped) is
# fuzzed on its parsing only: click builds its context from the arguments but never calls it.
RUN = {("tail",), ("search",), ("journal", "stats"), ("projections", "status"), ("projections", "rebuild"),
       ("corpus", "list"), ("corpus", "mount"), ("corpus", "unmount"), ("corpus", "remove"), ("services", "status")}
# No live follow (an option left dangling, `--type`, takes the first word: the rest is then an
# extra argument, a usage error, never a follow); no embedder to load.
FORCED_LAST = {("tail",): ["--last", "1", "-F"], ("search",): ["--mode", "keyword"]}


@st.composite
def argv(draw: st.DrawFn) -> tuple[list[str], tuple[str, ...], list[str]]:
    """(options of `soul` itself, the command's path, its arguments)."""
    path = draw(st.sampled_from(sorted(COMMANDS)))
    options = [o for p in COMMANDS[path].params for o in getattr(p, "opts", [])] + ["--help", "--json", "--"]
    junk = st.sampled_from(options) | st.text(max_size=12) | st.sampled_from(
        ["1", "0", "-1", "99999999999999999999", "2026-11-25T10:00", "not-a-date", "perception", "memory", "keyword", "", "-"])
    args = draw(st.lists(junk, max_size=6))
    # Not a URL nats-py cannot parse: see BAD_URL.
    prefix = draw(st.lists(st.sampled_from(["--app", "--nats", "--home"]).flatmap(
        lambda o: st.tuples(st.just(o), st.sampled_from(["", "nats://127.0.0.1:1", "x y", "\u2603"]))), max_size=1))
    return [a for pair in prefix for a in pair], path, args + FORCED_LAST.get(path, [])


def parse_only(main_args: list[str], path: tuple[str, ...], args: list[str]) -> int:
    """The exit status click gives if it stops while parsing these arguments, else 0; the
    command itself is never called."""
    try:
        ctx = main.make_context("soul", [*main_args, path[0]])
        for depth, name in enumerate(path[:-1]):
            ctx = ctx.command.get_command(ctx, name).make_context(name, [path[depth + 1]], parent=ctx)  # type: ignore[union-attr]
        COMMANDS[path].make_context(path[-1], args, parent=ctx)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        return e.exit_code
    return 0


@pytest.fixture(scope="module")
def fuzz_app(nats_url: str, pg_url: str) -> Any:
    app = "f" + uuid.uuid4().hex[:12]
    with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal:
        journal.add(BifocalEvent("perception", "something to find", [0.5] * 384, Embedder("fuzz@1", 384), "source:user"))
        publish_raw(nats_url, f"{journal_prefix(journal.app)}.e.garbage", b"\x00\xff")
    yield app
    drop_schema(pg_url, app)


@fuzz(400)
@given(argv=argv())
def test_random_arguments_never_end_in_a_traceback(
    fuzz_app: str, nats_url: str, pg_url: str, tmp_path_factory: Any, argv: tuple[list[str], tuple[str, ...], list[str]]
) -> None:
    main_args, path, args = argv
    if path not in RUN:
        code = parse_only(main_args, path, args)
        event(f"parsed, exit {code}")
        assert code in (0, 1, 2)
        return
    env = {"SOUL_APP": fuzz_app, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url, "SOUL_NATS_TIMEOUT": "1",
           "SOUL_HOME": str(tmp_path_factory.getbasetemp() / "fuzz-home")}  # all restored after each run
    result = CliRunner().invoke(main, [*main_args, *path, *args], env=env)
    event(f"run, exit {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    assert "Traceback" not in result.output


BAD_URL = pytest.param(["--nats", "nats://[::1", "tail", "-F"], id="--nats nats://[::1 tail -F")
SAMPLE = [["tail", "--since", "x", "-F"], ["journal", "stats", "--json", "extra"], ["projections", "rebuild", "\u2603"],
          ["search", "", "--mode", "keyword", "-n", "0"], ["--app", "", "corpus", "mount", "nope"]]


@pytest.mark.parametrize("args", [*(pytest.param(a, id=" ".join(a)) for a in SAMPLE), BAD_URL])
def test_random_arguments_through_the_real_entry_point(fuzz_app: str, nats_url: str, pg_url: str, tmp_path: Any, args: list[str]) -> None:
    env = {**os.environ, "SOUL_APP": fuzz_app, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
           "SOUL_NATS_TIMEOUT": "1", "SOUL_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "soul", *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode in (0, 1, 2) and "Traceback" not in done.stderr, done.stderr
    if done.returncode == 1:
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
