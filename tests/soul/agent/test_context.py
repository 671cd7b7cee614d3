"""The context window on a real nats-server and Postgres: pinned blocks, the budget, evictions
and their summaries, retrievals."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.utils import load_tokenizer
from psycopg import sql
from tokenizers import pre_tokenizers

from evolution.weights.model import byte_level_bpe, embedded_model_dir
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from projections.memory import Memory
from projections.postgres import connect
from projections.runner import ProjectionRunner
from projections.turns import Turns
from soul.agent.context import MAX_BUDGET, TRUNCATED, Context, assemble, by_heart, count, key_words, summarise
from tests.support import drop_schema
from tests.tiny_model import SPECIAL

# The tiny model's tokenizer: one token per UTF-8 byte, so budgets are easy to reason about.
TOKENIZER = byte_level_bpe(SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()), [], SPECIAL)
SYNTHETIC = Embedder("synthetic@1", Memory.dim)
rng = np.random.default_rng(20261125)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype("<f4")


def said(kind: str, prose: str, conversation: uuid.UUID, vector: np.ndarray | None = None,
         corpus: str | None = None) -> BifocalEvent:
    if vector is None:
        return BifocalEvent(kind, prose, np.zeros(0), originator_id=conversation, corpus=corpus)
    return BifocalEvent(kind, prose, vector, SYNTHETIC, originator_id=conversation, corpus=corpus)


def journal_each(journal: Journal, events: Sequence[BifocalEvent]) -> list[int]:
    return [journal.add(e)[0] for e in events]


def catch_up(journal: Journal, pg_url: str, *projections: Any) -> None:
    for projection in projections or (Turns(),):
        with ProjectionRunner(journal, projection, pg_url) as runner:
            runner.catch_up()


def conversation_of(journal: Journal, pg_url: str, turns: int, prose: str = "turn {i}. more words follow here") -> tuple[str, list[int]]:
    talk = uuid.uuid4()
    seqs = journal_each(journal, [said(("perception", "thought", "tool_result")[i % 3], prose.format(i=i), talk)
                                  for i in range(turns)])
    catch_up(journal, pg_url)
    return str(talk), seqs


def window(journal: Journal, conn: psycopg.Connection[Any], talk: str, budget: int, **options: Any) -> Context:
    return assemble(conn, journal.app, talk, None, TOKENIZER, budget, **options)


def test_the_self_definition_is_pinned_and_the_latest_wins(journal: Journal, conn: psycopg.Connection[Any],
                                                           pg_url: str) -> None:
    self_ = uuid.uuid4()
    journal_each(journal, [said("self_defined", "I am the first draft.", self_),
                           said("self_defined", "I am the soul, rewritten.", self_)])
    talk, seqs = conversation_of(journal, pg_url, 20)
    for budget in (60, 400, MAX_BUDGET):  # from no room for any turn to all of them
        context = window(journal, conn, talk, budget)
        assert context.blocks[0].kind == "self" and context.blocks[0].text == "# Self\nI am the soul, rewritten.\n"
        assert "first draft" not in context.text and context.tokens <= budget
    assert window(journal, conn, talk, 60).turn_seqs == []
    assert window(journal, conn, talk, MAX_BUDGET).turn_seqs == seqs


def test_the_notebook_is_cut_to_its_cap_with_a_marker(journal: Journal, conn: psycopg.Connection[Any],
                                                      pg_url: str) -> None:
    journal_each(journal, [said("notebook_written", "note " * 1000, uuid.uuid4())])
    talk, _ = conversation_of(journal, pg_url, 3)
    (notebook,) = [b for b in window(journal, conn, talk, 4000, notebook_cap=100).blocks if b.kind == "notebook"]
    body = notebook.text.removeprefix("# Notebook\n").removesuffix("\n")
    assert body.endswith(TRUNCATED) and 90 <= count(TOKENIZER, body) <= 100
    (whole,) = [b for b in window(journal, conn, talk, 8000, notebook_cap=6000).blocks if b.kind == "notebook"]
    assert whole.text == "# Notebook\n" + "note " * 1000 + "\n"


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2's own tokenizer (mlx_lm's TokenizerWrapper), from the embedded model converted once here."""
    return load_tokenizer(embedded_model_dir(tmp_path_factory.mktemp("smol-home")))


def test_the_budget_holds_with_smollm2s_tokenizer(journal: Journal, conn: psycopg.Connection[Any], pg_url: str,
                                                  smollm2_tokenizer: Any) -> None:
    talk, seqs = conversation_of(journal, pg_url, 200, "Turn {i}: the deploy's step {i} needs a retry\n\n  (maybe).")
    for budget in (50, 333, 2000, MAX_BUDGET):
        context = assemble(conn, journal.app, talk, None, smollm2_tokenizer, budget)
        assert context.tokens == len(smollm2_tokenizer.encode(context.text)) <= budget
        assert context.turn_seqs == seqs[len(seqs) - len(context.turn_seqs):]
    assert context.turn_seqs == seqs and count(smollm2_tokenizer, "hello world") < len("hello world")


def test_the_budget_holds_exactly_and_the_oldest_turns_go_first(journal: Journal, conn: psycopg.Connection[Any],
                                                                pg_url: str) -> None:
    talk, seqs = conversation_of(journal, pg_url, 100)
    for budget in (1, 37, 500, 1234):
        context = window(journal, conn, talk, budget)
        assert context.tokens == count(TOKENIZER, context.text) <= budget
        kept = context.turn_seqs
        assert kept == seqs[len(seqs) - len(kept):]  # a suffix of the conversation
        assert context.evictions == ((seqs[0], seqs[-len(kept) - 1]),)
        j = len(seqs) - len(kept) - 1  # the newest evicted turn: it would not have fitted
        header = "" if kept else "# Conversation\n"
        next_turn = f"{header}[{seqs[j]} {('perception', 'thought', 'tool_result')[j % 3]}] turn {j}. more words follow here\n"
        assert count(TOKENIZER, context.text + next_turn) > budget
    everything = window(journal, conn, talk, MAX_BUDGET)
    assert everything.turn_seqs == seqs and everything.evictions == ()


def test_an_eviction_leaves_a_summary_citing_its_range_and_shown_in_its_place(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    talk, seqs = conversation_of(journal, pg_url, 30, "Turn {i} said something. Then it rambled on.")
    context = window(journal, conn, talk, 400)
    ((first, last),) = context.evictions
    summary_seq = summarise(journal, conn, talk, (first, last), TOKENIZER, 400)
    (entry,) = list(journal.read(since=summary_seq))
    extract, *kept = entry.event.prose.split("\n")
    assert entry.event.type == "summary" and entry.event.data == {
        "first_seq": seqs[0], "last_seq": last, "conversation": talk, "by": "extract", "kept": len(kept)}
    assert extract.startswith("Turn 0 said something. Turn 1 said something.") and count(TOKENIZER, extract) <= 200
    # Then the user's sentences whose numbers the first half left out (every third turn is a perception).
    assert kept == [f"User: Turn {i} said something." for i in range(0, last, 3) if f"Turn {i} " not in extract]
    assert "rambled" not in entry.event.prose and len(kept) >= 3
    catch_up(journal, pg_url)
    after = window(journal, conn, talk, 400)
    summary = [b for b in after.blocks if b.kind == "summary"]
    assert len(summary) == 1 and f"[{seqs[0]}-{last} summary] Turn 0 said something." in summary[0].text
    assert not set(after.turn_seqs) & set(range(first, last + 1)) and after.tokens <= 400
    assert after.fingerprint != context.fingerprint and len(after.fingerprint) == 64



def test_names_and_numbers_are_the_words_with_digits_or_capitals_past_an_opening() -> None:
    assert key_words("User: My sister Ingrid's flat in Tromsø is number 14B.") == {"Ingrid", "Tromsø", "14B"}
    assert key_words("I'm sure \"The gate\" opens at 9, said Ada.") == {"9", "Ada"}
    assert key_words("Nothing here is a name or a number.") == set()


def test_a_fact_said_once_reaches_the_window_through_the_summaries_that_subsume_each_other(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    talk = uuid.uuid4()
    fact = "Let me tell you something. The gate code is 4817 and the keeper is called Ingrid."
    chatter = "We talked about the weather again. It rained."
    seqs = journal_each(journal, [said("perception", fact, talk)] +
                        [said(("thought", "perception")[i % 2], chatter, talk) for i in range(20)])
    catch_up(journal, pg_url)
    windows, summaries = [], []
    for more in range(2):  # a summary, then a later one that subsumes it
        context = window(journal, conn, str(talk), 300)
        ((first, last),) = context.evictions
        summaries.append(next(journal.read(since=summarise(journal, conn, str(talk), (first, last), TOKENIZER, 150))))
        seqs += journal_each(journal, [said("perception", "Later words, nothing to keep.", talk) for _ in range(12)])
        catch_up(journal, pg_url)
        windows.append(window(journal, conn, str(talk), 300))
    for entry, after in zip(summaries, windows):
        data, prose = entry.event.data, entry.event.prose
        assert data["first_seq"] == seqs[0] and data["by"] == "extract" and data["kept"] == 1
        # The first sentences alone lose the fact; its own sentence is kept, verbatim.
        assert prose.endswith("\nUser: The gate code is 4817 and the keeper is called Ingrid.")
        assert count(TOKENIZER, prose) <= 150
        summary = [b.text for b in after.blocks if b.kind == "summary"]
        assert len(summary) == 1 and summary[0].startswith(f"# Conversation\n[{seqs[0]}-{data['last_seq']} summary]")
        assert "4817" in after.text and seqs[0] not in after.turn_seqs
    assert summaries[0].event.data["last_seq"] < summaries[1].event.data["last_seq"]
    assert summaries[1].event.prose.count("4817") == 1  # carried over from the first summary, not repeated


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=30), budget=st.integers(300, 1200),
       rounds=st.integers(1, 3))
def test_the_window_is_a_suffix_and_summaries_cover_every_evicted_turn_property(
        nats_url: str, pg_url: str, lengths: list[int], budget: int, rounds: int) -> None:
    app = "p" + uuid.uuid4().hex[:12]
    talk = uuid.uuid4()
    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal, connect(pg_url) as conn:
            seqs: list[int] = []
            for part in np.array_split(np.array(lengths), rounds):  # the conversation grows between assemblies
                seqs += journal_each(journal, [said("perception", f"{n}. " + "w" * int(n), talk) for n in part])
                catch_up(journal, pg_url)
                context = window(journal, conn, str(talk), budget)
                while context.evictions:  # summarise until the window settles
                    summarise(journal, conn, str(talk), context.evictions[0], TOKENIZER, budget // 4)
                    catch_up(journal, pg_url)
                    context = window(journal, conn, str(talk), budget)
                kept = context.turn_seqs
                assert context.tokens <= budget and kept == seqs[len(seqs) - len(kept):]
                covered: set[int] = set()
                for block in context.blocks:
                    if block.kind == "summary":
                        first, last = map(int, block.text.split("[", 1)[1].split(" ", 1)[0].split("-"))
                        covered |= {s for s in seqs if first <= s <= last}
                assert covered | set(kept) == set(seqs), "no turn lost"
    finally:
        drop_schema(pg_url, app)


def test_retrievals_come_from_the_mounted_corpus_and_memory(journal: Journal, conn: psycopg.Connection[Any],
                                                            pg_url: str) -> None:
    topic = unit(rng.normal(size=Memory.dim))
    near = [unit(topic + 0.2 * rng.normal(size=Memory.dim) / np.sqrt(Memory.dim)) for _ in range(12)]
    other_talk, talk = uuid.uuid4(), uuid.uuid4()
    journal_each(journal, [said("chunk_ingested", f"docs chunk {i}", uuid.uuid4(), near[i], "docs") for i in range(3)]
                 + [said("chunk_ingested", f"other chunk {i}", uuid.uuid4(), near[3 + i], "other") for i in range(3)]
                 + [said("thought", f"an older thought {i}", other_talk, near[6 + i]) for i in range(3)])
    turn_seqs = journal_each(journal, [said("perception", "what about the deploy?", talk, near[9])])
    catch_up(journal, pg_url, Turns(), Memory())
    app = journal.app
    mounted = assemble(conn, app, str(talk), topic, TOKENIZER, 4000, retrieval_k=6, mounted_corpus="docs")
    recalled = [b.text for b in mounted.blocks if b.kind == "retrieval"]
    # Plain lines: a seq or a bracket in the window would be copied into replies.
    assert {(b.seq, b.text) for b in mounted.blocks if "chunk" in b.text} == {(s, f"- docs chunk {s - 1}\n")
                                                                                for s in range(1, 4)}
    assert sum("older thought" in t for t in recalled) == 3
    assert not any("what about the deploy" in t for t in recalled)  # in the window already: not recalled again
    assert mounted.turn_seqs == turn_seqs
    unmounted = assemble(conn, app, str(talk), topic, TOKENIZER, 4000, retrieval_k=6)
    assert not any("chunk" in b.text for b in unmounted.blocks if b.kind == "retrieval")


def test_by_heart_is_the_self_definition_and_the_newest_turn_alone(journal: Journal, conn: psycopg.Connection[Any],
                                                                   pg_url: str) -> None:
    topic = unit(rng.normal(size=Memory.dim))
    journal_each(journal, [said("self_defined", "I am the soul.", uuid.uuid4()),
                           said("notebook_written", "buy lamp oil", uuid.uuid4()),
                           said("thought", "an older thought about the deploy", uuid.uuid4(), topic)])
    talk, seqs = conversation_of(journal, pg_url, 12)
    journal_each(journal, [BifocalEvent("summary", "turns 0 to 5 happened", np.zeros(0), originator_id=uuid.UUID(talk),
                                        data={"first_seq": seqs[0], "last_seq": seqs[5], "conversation": talk})])
    asked = "what about the deploy? " * 20
    (newest,) = journal_each(journal, [said("perception", asked, uuid.UUID(talk), topic)])
    catch_up(journal, pg_url, Turns(), Memory())
    full = assemble(conn, journal.app, talk, topic, TOKENIZER, 4000, retrieval_k=3)
    assert {"self", "notebook", "retrieval", "summary", "turn"} <= {b.kind for b in full.blocks}  # memory has hits
    bare = by_heart(conn, journal.app, talk, TOKENIZER, 4000)
    assert bare.text == f"# Self\nI am the soul.\n# Conversation\n[{newest} perception] {asked}\n"
    assert [b.kind for b in bare.blocks] == ["self", "header", "turn"] and bare.turn_seqs == [newest]
    assert bare.tokens == count(TOKENIZER, bare.text) and bare.evictions == ()
    tight = by_heart(conn, journal.app, talk, TOKENIZER, 200)  # the words to answer are cut, never dropped
    assert tight.tokens <= 200 and tight.text.endswith(TRUNCATED + "\n") and tight.turn_seqs == [newest]
    with pytest.raises(ValueError, match="over the budget of 5"):
        by_heart(conn, journal.app, talk, TOKENIZER, 5)


def test_a_forgotten_event_leaves_the_window_and_memory(journal: Journal, conn: psycopg.Connection[Any],
                                                       pg_url: str) -> None:
    talk = uuid.uuid4()
    topic = unit(rng.normal(size=Memory.dim))
    kept, secret, later = (said(kind, prose, talk, topic) for kind, prose in (
        ("perception", "the plan is ready"), ("thought", "my bank pin is four digits"), ("perception", "go on")))
    journal_each(journal, [kept, secret])
    catch_up(journal, pg_url, Turns(), Memory())  # remembered first, forgotten by a later page
    journal_each(journal, [later, BifocalEvent("redaction", "forget it", np.zeros(0), originator_id="redactions",
                                               data={"event": str(secret.id)}),
                           BifocalEvent("redaction", "names nothing", np.zeros(0), originator_id="redactions",
                                        data={"event": "not an id"})])
    catch_up(journal, pg_url, Turns(), Memory())
    app = journal.app
    context = assemble(conn, app, str(talk), topic, TOKENIZER, 4000, retrieval_k=5)
    assert "bank pin" not in context.text and "the plan is ready" in context.text and "go on" in context.text
    remembered = conn.execute(sql.SQL("SELECT prose FROM {} ORDER BY seq").format(Memory.view(app))).fetchall()
    assert remembered == [("the plan is ready",), ("go on",)]


def test_turns_rebuilt_from_the_journal_equal_the_incremental_run_and_bad_summaries_are_skipped(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    talk = uuid.uuid4()
    app = journal.app
    seqs = journal_each(journal, [said("perception", f"turn {i}", talk) for i in range(5)])
    journal_each(journal, [BifocalEvent("summary", "cites nothing", np.zeros(0), originator_id=talk),
                           BifocalEvent("summary", "cites the future", np.zeros(0), originator_id=talk,
                                        data={"first_seq": 1, "last_seq": 99}),
                           BifocalEvent("summary", "cites turns 1-2", np.zeros(0), originator_id=talk,
                                        data={"first_seq": seqs[0], "last_seq": seqs[1], "conversation": str(talk)})])

    def rows() -> list[tuple[Any, ...]]:
        return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY seq").format(Turns.view(app))).fetchall()

    with ProjectionRunner(journal, Turns(), pg_url, page=2) as runner:
        runner.catch_up()
        incremental = rows()
        runner.rebuild()
    assert rows() == incremental and [r[3] for r in incremental] == ["perception"] * 5 + ["summary"]
    assert incremental[-1][5:] == (seqs[0], seqs[1])
    assert window(journal, conn, str(talk), 1000).turn_seqs == seqs[2:]


def test_bad_arguments_are_one_line_errors(journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    journal_each(journal, [said("self_defined", "I am " + "very " * 50 + "long.", uuid.uuid4())])
    talk, _ = conversation_of(journal, pg_url, 2)
    for budget, message in ((0, "budget must be between 1 and 131072"), (MAX_BUDGET + 1, "budget must be between"),
                            (100, "over the budget of 100")):
        with pytest.raises(ValueError, match=message):
            window(journal, conn, talk, budget)
    with pytest.raises(ValueError, match="must not be negative"):
        window(journal, conn, talk, 1000, notebook_cap=-1)
    with pytest.raises(ValueError, match="evicted range"):
        summarise(journal, conn, talk, (5, 2), TOKENIZER, 100)
