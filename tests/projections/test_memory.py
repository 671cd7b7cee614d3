"""Memory and hybrid search on a real nats-server and a real Postgres with pgvector."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from journal.event import BifocalEvent, Embedder
from journal.journal import Entry, Journal
from projections.base import schema_for
from projections.memory import Memory, corpus_key, unembedded
from projections.postgres import connect
from projections.runner import ProjectionRunner
from projections.search import search
from soul.cli.memory import search as search_command
from tests.support import drop_schema

DIM = Memory.dim
SYNTHETIC = Embedder("synthetic@1", DIM)
rng = np.random.default_rng(20261125)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype("<f4")


def random_vector() -> np.ndarray:
    return unit(rng.normal(size=DIM))


def near(direction: np.ndarray, spread: float = 0.3) -> np.ndarray:
    return unit(direction + spread * rng.normal(size=DIM) / np.sqrt(DIM))


def event(kind: str, prose: str, vector: np.ndarray | None = None, corpus: str | None = None,
          embedder: Embedder = SYNTHETIC, data: dict[str, Any] | None = None) -> BifocalEvent:
    vector = random_vector() if vector is None else vector
    return BifocalEvent(kind, prose, vector, embedder, corpus=corpus, data=data or {})


def judgement(target: BifocalEvent, score: Any) -> BifocalEvent:
    return BifocalEvent("resonance", "judged", np.zeros(0), data={"event": str(target.id), "score": score})


def journal_all(journal: Journal, events: Sequence[BifocalEvent]) -> None:
    """Append `events` as the versions of a new originator, 1,000 at a time."""
    origin = uuid.uuid4()
    versioned = [replace(e, originator_id=origin, originator_version=v) for v, e in enumerate(events, 1)]
    for k in range(0, len(versioned), 1000):
        journal.append(versioned[k : k + 1000])


def catch_up(journal: Journal, pg_url: str) -> None:
    with ProjectionRunner(journal, Memory(), pg_url) as runner:
        runner.catch_up()


def snapshot(conn: psycopg.Connection[Any], table: sql.Composable) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(
        "SELECT seq, id, time, type, prose, vector::text, embedder, corpus, resonance, resonance_seq, words::text "
        "FROM {} ORDER BY seq").format(table)).fetchall()


def active_table(conn: psycopg.Connection[Any], app: str) -> str:
    return conn.execute(sql.SQL("SELECT active FROM {} WHERE name = 'memory'").format(
        sql.Identifier(schema_for(app), "_projections"))).fetchone()[0]


# -- the projection ----------------------------------------------------------------------


def test_a_rebuild_equals_the_incremental_run_and_reapplying_changes_nothing(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    memories = [event(("perception", "thought", "tool_result", "summary")[i % 4], f"memory {i}") for i in range(40)]
    chunks = [event("chunk_ingested", f"chunk {i} of corpus {c}", corpus=c) for i, c in enumerate("ab" * 10)]
    others = [event("tool_call", "not remembered"), event("self_defined", "not remembered either"),
              event("perception", "a two-d perception", np.ones(2), embedder=Embedder("tiny@1", 2))]
    judgements = [judgement(memories[3], 0.2), judgement(memories[3], 0.9), judgement(chunks[0], 1),
                  judgement(others[0], 0.5), judgement(memories[5], 7), judgement(memories[6], "high")]
    timeline = [memories[:20], chunks[:10], others, judgements[:3], memories[20:], chunks[10:], judgements[3:],
                [judgement(memories[3], 0.4)]]
    with ProjectionRunner(journal, Memory(), pg_url, page=7) as runner:
        for piece in timeline:  # catching up as the journal grows
            journal_all(journal, piece)
            runner.catch_up()
        incremental = snapshot(conn, Memory.view(app))
        table = runner.status()["table"]
        runner.rebuild()
        rebuilt = snapshot(conn, Memory.view(app))
        rebuilt_table = runner.status()["table"]
    assert incremental == rebuilt and table != rebuilt_table
    assert len(incremental) == 40 + 20 + 1  # the tool call, the self-definition, the judgements: not rows
    resonance = {row[1]: row[8] for row in rebuilt if row[8] is not None}
    assert resonance == {memories[3].id: pytest.approx(0.4), chunks[0].id: 1.0}  # the last judgement wins
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                                          [schema_for(app), rebuilt_table])}
    assert {f"{rebuilt_table}_vector", f"{rebuilt_table}_words", f"{rebuilt_table}_vector_{corpus_key('a')}",
            f"{rebuilt_table}_vector_{corpus_key('b')}"} <= indexes

    entries = list(journal.read())
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        active = sql.Identifier(schema_for(app), rebuilt_table)
        Memory().apply(cur, active, entries[5:40])  # seqs the table already reflects, in two pages
        Memory().apply(cur, active, entries)
        assert snapshot(conn, active) == rebuilt


# What the journal may hold: a memory (in a corpus or not), an event of another dimension, a
# judgement of an earlier memory (or of something not remembered), an event memory ignores.
actions = st.one_of(
    st.tuples(st.just("remember"), st.sampled_from((None, "a", "b"))),
    st.tuples(st.just("small"), st.none()),
    st.tuples(st.just("judge"), st.integers(0, 50), st.sampled_from((0.0, 0.5, 1.0, 2.0))),
    st.tuples(st.just("ignored"), st.none()),
)


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.lists(actions, max_size=8), min_size=1, max_size=4), page=st.integers(1, 7))
def test_incremental_memory_equals_a_rebuild_property(
        nats_url: str, pg_url: str, chunks: list[list[tuple[Any, ...]]], page: int) -> None:
    app = "p" + uuid.uuid4().hex[:12]
    memories: list[BifocalEvent] = []

    def make(action: tuple[Any, ...]) -> BifocalEvent:
        kind = action[0]
        if kind == "judge":
            target = memories[action[1] % len(memories)] if memories else event("tool_call", "not remembered")
            return judgement(target, action[2])
        if kind == "remember":
            memories.append(event("chunk_ingested" if action[1] else "thought", f"memory {len(memories)}", corpus=action[1]))
            return memories[-1]
        if kind == "small":
            return event("perception", "small", np.ones(3), embedder=Embedder("small@1", 3))
        return event("corpus_mounted", "ignored")

    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal, connect(pg_url) as conn, \
                ProjectionRunner(journal, Memory(), pg_url, page=page) as runner:
            for chunk in chunks:
                journal_all(journal, [make(a) for a in chunk])
                runner.catch_up()
            incremental = snapshot(conn, Memory.view(app))
            runner.rebuild()
            assert snapshot(conn, Memory.view(app)) == incremental
    finally:
        drop_schema(pg_url, app)


def test_the_latest_judgement_wins_whatever_order_it_is_applied_in(conn: psycopg.Connection[Any]) -> None:
    judged, other = event("thought", "judged"), event("thought", "never judged")
    page = [Entry(1, "o", "thought", 0, judged), Entry(2, "o", "thought", 0, other)]
    low, high = (Entry(seq, "o", "resonance", 0, judgement(judged, score)) for seq, score in ((3, 0.25), (4, 0.75)))
    stranger = Entry(5, "o", "resonance", 0, judgement(event("thought", "not in memory"), 0.5))
    memory = Memory()

    def resonance(table: sql.Identifier) -> list[tuple[Any, ...]]:
        return conn.execute(sql.SQL("SELECT seq, resonance, resonance_seq FROM {} ORDER BY seq").format(table)).fetchall()

    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        in_order, reversed_, again = (sql.Identifier(f"memory_{uuid.uuid4().hex[:8]}") for _ in range(3))
        for table in (in_order, reversed_, again):
            memory.create(cur, table)
        memory.apply(cur, in_order, [*page, low, high, stranger])
        memory.apply(cur, reversed_, page)
        memory.apply(cur, reversed_, [high])
        memory.apply(cur, reversed_, [low])  # an older judgement arriving late does not win
        memory.apply(cur, again, [*page, low, high])
        memory.apply(cur, again, [high, low, stranger])  # re-applied: nothing changes
        expected = [(1, 0.75, 4), (2, None, None)]
        assert resonance(in_order) == resonance(reversed_) == resonance(again) == expected


def test_events_of_another_dimension_are_remembered_for_their_words_only(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    odd = event("perception", "heliotrope sunset from the small model", np.ones(8), embedder=Embedder("small@1", 8))
    journal_all(journal, [odd, *(event("perception", f"ordinary {i}") for i in range(5))])
    catch_up(journal, pg_url)
    assert unembedded(conn, app) == 1
    assert [h.seq for h in search(conn, app, "heliotrope", mode="keyword")] == [1]
    semantic = search(conn, app, "heliotrope", random_vector(), mode="semantic")
    assert len(semantic) == 5 and 1 not in [h.seq for h in semantic]
    assert 1 in [h.seq for h in search(conn, app, "heliotrope", random_vector())]  # hybrid: the words count


def test_a_recall_result_is_not_remembered_so_no_recall_finds_it(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    kept = event("perception", "the heliotrope grows by the lighthouse")
    direction = kept.vector
    recalled = event("tool_result", "[1 perception] the heliotrope grows by the lighthouse", near(direction),
                     data={"tool": "recall", "outcome": "ok"})
    other = event("tool_result", "heliotrope.txt lighthouse.txt", near(direction), data={"tool": "ls", "outcome": "ok"})
    journal_all(journal, [kept, recalled, other])
    catch_up(journal, pg_url)
    for mode in ("hybrid", "semantic", "keyword"):
        hits = search(conn, app, "heliotrope lighthouse", near(direction), mode=mode)
        assert sorted(h.seq for h in hits) == [1, 3], mode  # the recall's copy (seq 2) is in no search
    assert [e.topic for e in journal.read()] == ["perception", "tool_result", "tool_result"]  # still journaled


def test_keyword_search_finds_identifiers_whole_and_by_their_parts(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    prose = ["the timeout comes from parse_config_v2 now", "parse_config_v3 replaced the old loader",
             "see soul/cli.py for the click group", "runner.catch_up() applies each page",
             "projections.runner.ProjectionRunner keeps one projection current", "parse config v2 by hand"]
    journal_all(journal, [event("thought", p) for p in prose])
    catch_up(journal, pg_url)

    def found(query: str) -> list[int]:
        return sorted(h.seq for h in search(conn, app, query, mode="keyword"))

    assert found("parse_config_v2") == [1, 6]  # the identifier's words in its order: never v3
    assert found('"parse_config_v3"') == [2]
    assert found("soul/cli.py") == found("cli.py") == found("cli") == [3]
    assert found("catch_up") == found("runner.catch_up") == [4]
    assert found("ProjectionRunner") == found("projections.runner") == [5]
    assert found("parse_config_v2 -hand") == [1]  # web-search syntax
    assert found("unheard_of_identifier") == []


def test_the_corpus_filter_returns_only_that_corpus_and_still_fills_the_limit(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    app = journal.app
    home = random_vector()
    journal_all(journal, [event("perception", f"everyday memory {i}", near(home)) for i in range(1500)]
                + [event("chunk_ingested", f"far chunk {i}", near(-home), corpus="far") for i in range(30)])
    catch_up(journal, pg_url)  # builds the indexes, the partial one of "far" among them
    journal_all(journal, [event("chunk_ingested", f"later chunk {i}", near(-home), corpus="later") for i in range(30)])
    catch_up(journal, pg_url)  # a corpus first seen after the build gets its partial index as it arrives
    for corpus in ("far", "later"):
        for mode in ("semantic", "hybrid"):
            hits = search(conn, app, "chunk", home, mode=mode, corpus=corpus, limit=20)
            assert len(hits) == 20 and {h.corpus for h in hits} == {corpus}, (corpus, mode)
    assert len(search(conn, app, "chunk", home, mode="keyword", corpus="far", limit=50)) == 30

    table = active_table(conn, app)
    partial = sql.Identifier(schema_for(app), f"{table}_vector_{corpus_key('far')}")
    with conn.transaction(force_rollback=True):  # what the global index alone gives: pgvector 0.6 filters after the scan
        conn.execute(sql.SQL("DROP INDEX {}").format(partial))
        conn.execute("SET LOCAL enable_seqscan = off")  # as on a big table, where an exact scan costs too much
        assert len(search(conn, app, "chunk", home, mode="semantic", corpus="far", limit=20)) < 20


def test_search_refuses_what_it_cannot_answer(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="query vector of 384 dimensions"):
        search(conn, "any", "words", np.ones(3), mode="semantic")
    with pytest.raises(ValueError, match="needs a query vector"):
        search(conn, "any", "words")
    with pytest.raises(ValueError, match="unknown search mode 'fuzzy'"):
        search(conn, "any", "words", mode="fuzzy")


# -- real embeddings (all-MiniLM-L6-v2): a handful of short texts -----------------------

DOCUMENTS = {
    "deploy": ("chunk_ingested", "ops", "The deploy pipeline pushes container images to the registry every night."),
    "upload": ("thought", None, "The nightly upload kept timing out until we raised the limit read by parse_config_v2."),
    "settings": ("chunk_ingested", "ops", "How the settings file is parsed and validated when the service starts."),
    "v3": ("chunk_ingested", "code", "parse_config_v3 reads the configuration file and checks every key."),
    "dinner": ("perception", None, "We had pasta for dinner and watched a film about sailing."),
}
PARAPHRASE = "nightly upload of docker builds"
IDENTIFIER = "parse_config_v2"


@pytest.fixture(scope="module")
def minilm() -> Any:
    from soul.agent.embedder import load_default_embedder

    return load_default_embedder()


@pytest.fixture(scope="module")
def remembered(minilm: Any, nats_url: str, pg_url: str) -> Iterator[tuple[str, dict[str, int], dict[str, np.ndarray]]]:
    """An app whose memory holds DOCUMENTS, really embedded; its name, seq per key, query vectors."""
    app = "m" + uuid.uuid4().hex[:12]
    texts = [prose for _, _, prose in DOCUMENTS.values()]
    vectors = minilm.embed([*texts, PARAPHRASE, IDENTIFIER])
    with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal:
        journal_all(journal, [BifocalEvent(kind, prose, v, minilm.id, corpus=corpus)
                              for (kind, corpus, prose), v in zip(DOCUMENTS.values(), vectors)])
        catch_up(journal, pg_url)
    try:
        yield app, {key: i for i, key in enumerate(DOCUMENTS, 1)}, {PARAPHRASE: vectors[-2], IDENTIFIER: vectors[-1]}
    finally:
        drop_schema(pg_url, app)


def test_hybrid_search_finds_a_corpus_document_first_for_a_paraphrase(
        remembered: Any, conn: psycopg.Connection[Any]) -> None:
    app, seq, queries = remembered
    for corpus in (None, "ops"):
        hits = search(conn, app, PARAPHRASE, queries[PARAPHRASE], corpus=corpus)
        assert hits[0].seq == seq["deploy"] and hits[0].corpus == "ops" and hits[0].semantic_rank == 1
    in_ops = search(conn, app, PARAPHRASE, queries[PARAPHRASE], corpus="ops")
    assert [h.seq for h in in_ops] == [seq["deploy"], seq["settings"]]  # all of that corpus, nothing else


def test_keyword_search_finds_an_exact_identifier_that_semantic_search_misses(
        remembered: Any, conn: psycopg.Connection[Any]) -> None:
    app, seq, queries = remembered
    semantic = search(conn, app, IDENTIFIER, queries[IDENTIFIER], mode="semantic", limit=2)
    assert seq["upload"] not in [h.seq for h in semantic] and semantic[0].seq == seq["v3"]  # v3 looks closest
    keyword = search(conn, app, IDENTIFIER, mode="keyword")
    assert [h.seq for h in keyword] == [seq["upload"]]
    assert search(conn, app, IDENTIFIER, queries[IDENTIFIER])[0].seq == seq["upload"]  # hybrid: in both lists


# -- the command line --------------------------------------------------------------------


def test_search_command_prints_json_or_lines_after_catching_up(
        remembered: Any, journal: Journal, nats_url: str, pg_url: str) -> None:
    app, seq, _ = remembered
    hybrid = CliRunner().invoke(search_command, [PARAPHRASE, "--corpus", "ops", "--json", "-n", "1"],
                                env={"SOUL_APP": app, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url})
    assert hybrid.exit_code == 0, hybrid.output
    (line,) = hybrid.stdout.splitlines()
    hit = json.loads(line)
    assert {k: hit[k] for k in ("seq", "type", "corpus", "semantic_rank", "prose")} == {
        "seq": seq["deploy"], "type": "chunk_ingested", "corpus": "ops", "semantic_rank": 1, "prose": DOCUMENTS["deploy"][2]}
    assert set(hit) == {"score", "type", "time", "seq", "id", "corpus", "path", "lines", "resonance", "semantic_rank",
                        "keyword_rank", "prose"}

    journal_all(journal, [event("thought", "remember zebra_crossing_v9 for later " + "padding " * 20)])  # not caught up
    env = {"SOUL_APP": journal.app, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url}
    lines = CliRunner().invoke(search_command, ["zebra_crossing_v9", "--mode", "keyword"], env=env)
    assert lines.exit_code == 0, lines.output
    (line,) = lines.stdout.splitlines()
    score, kind, day, time, seq_, excerpt = line.split(maxsplit=5)
    assert (kind, seq_) == ("thought", "1") and float(score) > 0
    assert excerpt == "'remember zebra_crossing_v9 for later padding padding padding padding…'"  # whole words
    nothing = CliRunner().invoke(search_command, ["absent_word", "--mode", "keyword"], env=env)
    assert nothing.exit_code == 0 and nothing.stdout == "" and "no memory matches" in nothing.stderr
