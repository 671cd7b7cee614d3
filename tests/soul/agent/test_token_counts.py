"""Token counts kept with the turns projection (soul/agent/context.py's Counter): each turn is
counted once per tokenizer and a window's tokens are summed, on a real nats-server and Postgres."""

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
from tokenizers import Tokenizer, pre_tokenizers, processors

from evolution.weights.model import byte_level_bpe, embedded_model_dir
from journal.event import BifocalEvent
from journal.journal import Journal
from projections.base import schema_for
from projections.postgres import connect
from projections.runner import ProjectionRunner
from projections.turns import COUNTS, Turns
from soul.agent.context import (MAX_BUDGET, RECALL, TURN, Block, Counted, Counter, assemble, count, counter_of,
                                render)
from tests.soul.agent.test_context import TOKENIZER, catch_up, journal_each, said
from tests.support import drop_schema
from tests.tiny_model import SPECIAL

# Another tokenizer: the tiny one with "turn" merged into one token, so its counts differ.
MERGED = byte_level_bpe(SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["tu", "rn", "turn"],
                        ["t u", "r n", "tu rn"], SPECIAL)
# Pieces of prose with what a tokenizer may cut otherwise at a block's end: spaces, blank
# lines, tabs, a carriage return, a no-break space, digits, non-ASCII, a special token.
PIECES = ["a", "word", "turn", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "9", "42", ".", "'s", "é", "Tromsø",
          "中", "🙂", "<|im_end|>", "[", "#", "-"]
PROSE = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


class Counting:
    """A tokenizer that notes each text it is asked to encode: our own call counter around a
    real one, seen by Counter as that one (the same serialisation, so the same counts)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self.texts: list[str] = []

    def encode(self, text: str) -> Any:
        self.texts.append(text)
        return self.tokenizer.encode(text)

    def encode_batch(self, texts: list[str]) -> Any:
        self.texts += texts
        return self.backend.encode_batch(texts)

    def to_str(self) -> str:
        return self.backend.to_str()


@pytest.fixture(scope="module")
def named_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model's tokenizer and SmolLM2's own (from the embedded model, converted once here)."""
    return {"tiny": TOKENIZER, "smollm2": load_tokenizer(embedded_model_dir(tmp_path_factory.mktemp("smol-home")))}


def turns_in(texts: Sequence[str]) -> list[str]:
    """Those of `texts` that are turn blocks of the conversations here (their prose says "zebra")."""
    return [t for t in texts if "zebra" in t]


def talk_of(journal: Journal, pg_url: str, n: int) -> tuple[str, list[BifocalEvent], list[int]]:
    talk = uuid.uuid4()
    events = [said(("perception", "thought")[i % 2], f"turn {i}: the zebra said {i * 7} words.", talk)
              for i in range(n)]
    seqs = journal_each(journal, events)
    catch_up(journal, pg_url)
    return str(talk), events, seqs


def stored(conn: psycopg.Connection[Any], app: str) -> list[tuple[int, int]]:
    """(counter, rows) of the counts stored for `app`."""
    return conn.execute(sql.SQL("SELECT counter, count(*) FROM {} GROUP BY counter ORDER BY counter").format(
        sql.Identifier(schema_for(app), COUNTS))).fetchall()


def test_each_turn_is_counted_once_then_windows_add_stored_counts(journal: Journal, conn: psycopg.Connection[Any],
                                                                 pg_url: str) -> None:
    journal_each(journal, [said("self_defined", "I am the soul.", uuid.uuid4()),
                           said("notebook_written", "Keep notes. \n\n", uuid.uuid4())])  # an end cut otherwise
    talk, _, seqs = talk_of(journal, pg_url, 120)
    app = journal.app
    first = Counting(TOKENIZER)
    before = assemble(conn, app, talk, None, first, 1500)
    counted = turns_in(first.texts)
    assert before.evictions and len(counted) == len(set(counted)) >= len(before.turn_seqs)
    assert before.tokens == count(TOKENIZER, before.text) <= 1500
    assert stored(conn, app) == [(counter_of(first).key(TURN), len(counted))]
    again = Counting(TOKENIZER)  # another object, the same tokenizer: it finds the counts stored
    assert assemble(conn, app, talk, None, again, 1500) == before and turns_in(again.texts) == []
    (newest,) = journal_each(journal, [said("perception", "one more zebra.", uuid.UUID(talk))])
    catch_up(journal, pg_url)
    after = assemble(conn, app, talk, None, again, 1500)
    assert turns_in(again.texts) == [f"[{newest} perception] one more zebra.\n"]  # only the new turn is counted
    assert after.turn_seqs[-1] == newest and after.tokens == count(TOKENIZER, after.text) <= 1500
    assert after.turn_seqs[:-1] == seqs[len(seqs) - len(after.turn_seqs) + 1:]


def test_another_tokenizer_counts_afresh_under_its_own_key(journal: Journal, conn: psycopg.Connection[Any],
                                                          pg_url: str) -> None:
    talk, _, _ = talk_of(journal, pg_url, 40)
    app = journal.app
    tiny = assemble(conn, app, talk, None, TOKENIZER, 600)
    merged = Counting(MERGED)
    other = assemble(conn, app, talk, None, merged, 600)
    assert turns_in(merged.texts) and other.tokens == count(MERGED, other.text) <= 600
    assert count(MERGED, other.text) < count(TOKENIZER, other.text)  # "turn" is one token of its
    assert counter_of(MERGED).id != counter_of(TOKENIZER).id and len(stored(conn, app)) == 2
    assert assemble(conn, app, talk, None, TOKENIZER, 600) == tiny  # its counts were not touched


def test_a_forgotten_turn_leaves_the_window_and_its_count_is_not_read(journal: Journal, conn: psycopg.Connection[Any],
                                                                     pg_url: str) -> None:
    talk, events, seqs = talk_of(journal, pg_url, 10)
    app = journal.app
    assert assemble(conn, app, talk, None, TOKENIZER, MAX_BUDGET).turn_seqs == seqs
    journal_each(journal, [BifocalEvent("redaction", "forget it", np.zeros(0), originator_id="redactions",
                                        data={"event": str(events[4].id)})])
    catch_up(journal, pg_url)
    again = Counting(TOKENIZER)
    context = assemble(conn, app, talk, None, again, MAX_BUDGET)
    assert context.turn_seqs == seqs[:4] + seqs[5:] and "turn 4:" not in context.text
    assert turns_in(again.texts) == [] and context.tokens == count(TOKENIZER, context.text)


def test_counts_stay_right_through_a_rebuild_of_the_turns(journal: Journal, conn: psycopg.Connection[Any],
                                                         pg_url: str) -> None:
    talk, _, _ = talk_of(journal, pg_url, 30)
    app = journal.app
    with ProjectionRunner(journal, Turns(), pg_url) as runner:
        before = assemble(conn, app, talk, None, TOKENIZER, 400)
        table = runner.status()["table"]
        runner.rebuild()
        assert runner.status()["table"] != table  # the rows are new; the seqs and their events are not
    again = Counting(TOKENIZER)
    assert assemble(conn, app, talk, None, again, 400) == before and turns_in(again.texts) == []


def test_a_tokenizer_whose_counts_do_not_add_up_has_its_windows_counted_whole(
        journal: Journal, conn: psycopg.Connection[Any], pg_url: str) -> None:
    bos = Tokenizer.from_str(TOKENIZER.to_str())
    bos.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    assert not Counter(bos).additive and Counter(TOKENIZER).additive
    talk, _, seqs = talk_of(journal, pg_url, 30)
    context = assemble(conn, journal.app, talk, None, bos, 500)
    assert context.tokens == count(bos, context.text) <= 500 and context.evictions
    kept = context.turn_seqs
    assert kept and kept == seqs[len(seqs) - len(kept):]


def block(kind: str, prose: str, seq: int) -> Block:
    """A block of `kind` as assembly renders it."""
    texts = {"self": f"# Self\n{prose}\n", "notebook": f"# Notebook\n{prose}\n", "retrieval": RECALL % prose,
             "summary": f"# Conversation\n[1-{seq} summary] {prose}\n", "header": "# Conversation\n",
             "turn": TURN % (seq, ("perception", "thought", "tool_result")[seq % 3], prose)}
    return Block(kind, texts[kind], seq)


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from(["self", "notebook", "retrieval", "summary", "header", "turn"]), PROSE),
                      min_size=1, max_size=8))
def test_the_counts_of_blocks_add_up_to_the_count_of_their_render_property(
        named_tokenizers: dict[str, Any], name: str, parts: list[tuple[str, str]]) -> None:
    tokenizer = named_tokenizers[name]
    counter = counter_of(tokenizer)
    blocks = [block(kind, prose, seq) for seq, (kind, prose) in enumerate(parts, 1)]
    counted = Counted.of(Counted([b], [n], [j]) for b, (n, j) in zip(blocks, counter.counts([b.text for b in blocks])))
    assert counter.additive and counter.tokens(counted) == count(tokenizer, render(blocks))


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
@settings(max_examples=10, deadline=None)
@given(proses=st.lists(PROSE, min_size=1, max_size=40), budget=st.integers(80, 600))
def test_a_window_of_stored_counts_holds_the_budget_and_is_the_window_counted_afresh_property(
        nats_url: str, pg_url: str, named_tokenizers: dict[str, Any], name: str, proses: list[str],
        budget: int) -> None:
    tokenizer = named_tokenizers[name]
    app = "p" + uuid.uuid4().hex[:12]
    talk = uuid.uuid4()
    try:
        with Journal(app, {"SOUL_NATS_URL": nats_url}) as journal, connect(pg_url) as conn:
            # A notebook of at most 10 characters: it fits any budget drawn, whatever it ends with.
            journal_each(journal, [said("notebook_written", proses[0][:10], uuid.uuid4())])
            seqs = journal_each(journal, [said(("perception", "thought")[i % 2], f"{p}zebra{p}", talk)
                                          for i, p in enumerate(proses)])
            catch_up(journal, pg_url)
            counting = Counting(tokenizer)
            first = assemble(conn, app, str(talk), None, counting, budget)
            assert first.tokens == count(tokenizer, first.text) <= budget
            kept = first.turn_seqs
            assert kept == seqs[len(seqs) - len(kept):] and (first.evictions or kept == seqs)
            counting.texts.clear()
            assert assemble(conn, app, str(talk), None, counting, budget) == first
            assert turns_in(counting.texts) == []  # every turn read was counted once, by the first
    finally:
        drop_schema(pg_url, app)
