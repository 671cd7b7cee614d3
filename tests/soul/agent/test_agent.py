"""The turn loop against real parts: nats-server, PostgreSQL with pgvector, MiniLM, and a tiny
mlx-lm model (tests/tiny_model.py): every step on the journal, restarts, windows, tools."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from psycopg import sql
from tokenizers import pre_tokenizers

from evolution.weights.model import byte_level_bpe, write_config, write_tokenizer
from journal.event import BifocalEvent
from projections.memory import Memory
from projections.resonance import combine
from projections.turns import newest_first
from soul.agent.loop import DEFAULT_SELF, RECALLED, Soul, SoulConfig, TurnError, help_line
from soul.agent.tools import TOOLS, Tool, register, text_parameter
from tests.support import drop_schema
from tests.tiny_model import CHAT_TEMPLATE, SPECIAL, build_tiny_model, tiny_config, tiny_weights

CONFIG = SoulConfig(max_tokens=12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 2,048-token context (rotary positions extend to any length)."""
    folder = build_tiny_model(tmp_path_factory.mktemp("roomy"), seed=3)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return folder


CALL = '{"name": "recall", "arguments": {"query": "lighthouse keeper"}}'


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that answers every prompt with one tool call, in the json_tools syntax mlx_lm
    infers from its chat template. Its layers add nothing (the attention and MLP output
    projections are zero), so the next token depends on the current one alone, and its lm_head
    maps the prompt's last token, the newline, to <tool_call>, then the call, </tool_call>, <|im_end|>."""
    folder = tmp_path_factory.mktemp("caller")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def piece(text: str) -> str:  # text as byte-level BPE vocabularies hold it
        return byte_level.pre_tokenize_str(text)[0][0]

    pieces = ["<tool_call>", piece(CALL), "</tool_call>"]
    tokens = SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()) + pieces
    config = {**tiny_config(len(tokens)), "tie_word_embeddings": False, "max_position_embeddings": 2048}
    weights = tiny_weights(config, seed=5)
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    chain = [tokens.index(piece("\n")), *(tokens.index(p) for p in pieces), SPECIAL.index("<|im_end|>")]
    embed, head = np.array(weights["model.embed_tokens.weight"]), np.array(weights["lm_head.weight"])
    for i, (current, following) in enumerate(zip(chain, chain[1:])):
        embed[current] = np.eye(config["hidden_size"])[i]
        head[following] = 10 * np.eye(config["hidden_size"])[i]
    weights["model.embed_tokens.weight"], weights["lm_head.weight"] = mx.array(embed), mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    write_config(folder, config)
    write_tokenizer(folder, byte_level_bpe(tokens, [], SPECIAL), CHAT_TEMPLATE + "{# <tool_call> tool_call.name #}",
                    bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>", unk="<|endoftext|>",
                    max_length=config["max_position_embeddings"])
    return folder


@pytest.fixture
def opened(nats_url: str, pg_url: str, app_name: str, tiny: Path) -> Iterator[Any]:
    """open(**kwargs) -> a Soul on a fresh journal, each closed (and its projections dropped) after."""
    souls: list[Soul] = []

    def open_(**kwargs: Any) -> Soul:
        soul = Soul.open(app_name, **{"model_dir": tiny, "config": CONFIG, **kwargs})
        souls.append(soul)
        return soul

    yield open_
    for soul in souls:
        soul.close()
    drop_schema(pg_url, app_name)


def events(soul: Soul) -> list[Any]:
    return [e.event for e in soul.journal.read()]


def test_a_turn_journals_perception_thought_and_judgement(opened: Any) -> None:
    soul = opened()
    streamed: list[str] = []
    result = soul.turn("The river floods every spring.", on_token=streamed.append)
    kinds = [(e.type, e.originator_id) for e in events(soul)]
    # The soul journals its default self-definition when it first thinks: its window is all journal.
    assert kinds == [("perception", "main"), ("self_defined", "self"), ("thought", "main"), ("resonance", "main")]
    perception, _, thought, judged = events(soul)
    assert perception.prose == "The river floods every spring." and perception.data == {"source": "user"}
    assert perception.embedder.dim == 384 and perception.norm == pytest.approx(1.0, abs=1e-5)
    assert thought.prose == result.reply == "".join(streamed)
    assert thought.causation_id == perception.id and thought.correlation_id == perception.id
    assert thought.vector.tobytes() == soul.embedder.embed([result.reply])[0].tobytes()
    data = thought.data
    assert data["model"] == soul.mind.model_id and data["generation"] == "external"  # a model outside the lineage
    assert len(data["fingerprint"]) == 64 and data["prompt_tokens"] == result.generation.prompt_tokens
    assert data["generated_tokens"] == result.generation.generated_tokens and data["first_token_s"] > 0
    assert judged.data["event"] == str(thought.id) and judged.data["judge"] == "self"
    assert 0 <= judged.data["score"] <= 1 and judged.prose.startswith("self: P(yes)") and judged.embedder.dim == 384
    assert (result.perception_seq, result.thought_seq) == (1, 3) and result.judges == {"self": judged.data["score"]}
    assert result.resonance == combine(result.judges)


def test_secrets_never_reach_the_journal(opened: Any) -> None:
    soul = opened()
    soul.turn("my token is ghp_" + "a" * 36 + " keep it")
    perception = next(e for e in events(soul) if e.type == "perception")
    assert "ghp_" not in perception.prose and perception.data["redacted"] == ["github_token"]


def test_a_reopened_soul_continues_the_conversation(opened: Any) -> None:
    first = opened()
    first.turn("Remember the word heliotrope.")
    first.close()
    again = opened()
    _, messages = again.window("main", None)
    assert messages[0] == {"role": "system", "content": f"# Self\n{DEFAULT_SELF}"}
    assert messages[1] == {"role": "user", "content": "Remember the word heliotrope."}
    assert messages[2]["role"] == "assistant"
    result = again.turn("What was the word?")
    assert result.perception_seq == 5
    assert [e.type for e in events(again)].count("self_defined") == 1


def test_a_perception_left_unanswered_is_pending_until_answered(opened: Any) -> None:
    soul = opened()
    assert soul.pending() is None
    seq, perception = soul.perceive("Are you there?")
    # Before the default self-definition is journaled, the window shows it as the pinned block will.
    assert soul.window("main", None)[1][0] == {"role": "system", "content": f"# Self\n{DEFAULT_SELF}"}
    soul.close()
    restarted = opened()
    pending = restarted.pending()
    assert pending is not None and pending.seq == seq and pending.event.id == perception.id
    result = restarted.answer(pending)
    assert result.perception_seq == seq and restarted.pending() is None
    thought = next(e for e in events(restarted) if e.type == "thought")
    assert thought.causation_id == perception.id


def test_same_journal_and_seed_give_the_same_reply_bytes(nats_url: str, pg_url: str, tiny: Path) -> None:
    replies = []
    for _ in range(2):
        app = "t" + uuid.uuid4().hex[:12]
        try:
            with Soul.open(app, model_dir=tiny, config=SoulConfig(max_tokens=12, temperature=0.9, seed=5)) as soul:
                replies.append([(r.reply, r.generation.prompt_tokens) for r in
                                (soul.turn(p) for p in ("one", "two", "three"))])
                replies[-1].append([e.data.get("fingerprint") for e in events(soul) if e.type == "thought"])
        finally:
            drop_schema(pg_url, app)
    assert replies[0] == replies[1]


def test_a_prompt_longer_than_the_window_is_cut_by_the_window_rule(opened: Any) -> None:
    soul = opened(config=SoulConfig(max_tokens=12, budget=300))
    for i in range(4):
        soul.turn(f"turn {i}: " + "the quick brown fox jumps over the lazy dog " * 3)
    huge = "flood " * 2000  # far beyond the tiny model's 512-token context
    result = soul.turn(huge)
    assert result.thought_seq is not None
    assert result.generation.prompt_tokens + soul.max_tokens <= soul.mind.max_context
    summaries = [e for e in events(soul) if e.type == "summary"]
    assert summaries and summaries[-1].data["conversation"] == "main"
    context, _ = soul.window("main", None)
    assert context.tokens <= soul.budget and any(b.kind == "summary" for b in context.blocks)


def test_eviction_cuts_the_window_once_then_keeps_its_prefix(opened: Any, roomy: Path) -> None:
    soul = opened(model_dir=roomy, config=SoulConfig(max_tokens=8, budget=900, retrieval_k=0, self_judge=False))
    results = [soul.turn(f"note {i}: rivers, lakes and the sea") for i in range(24)]
    summaries = [e for e in events(soul) if e.type == "summary"]
    assert 2 <= len(summaries) <= 6  # cut to half the window at once, not a turn at a time
    # Between evictions a turn reuses the whole previous prompt from the KV cache.
    steady = [i for i in range(1, 24) if results[i].generation.reused_tokens >= results[i - 1].generation.prompt_tokens]
    assert len(steady) >= 24 - 1 - 2 * len(summaries)
    assert all(r.generation.prompt_tokens <= 900 + 64 for r in results)


def test_chat_commands_reach_the_tools(opened: Any) -> None:
    soul = opened()
    soul.turn("The lighthouse keeper is called Ada.")
    before = soul.journal.last_seq()
    assert soul.turn("/help").reply == help_line() and "/recall QUERY, /mount CORPUS, /unmount, /self TEXT" in help_line()
    assert soul.turn("/frobnicate now").reply == f"unknown command /frobnicate; {help_line()}"
    assert soul.journal.last_seq() == before  # help and unknown commands journal nothing

    recalled = soul.turn("/recall lighthouse keeper")
    assert "Ada" in recalled.reply and len(recalled.tool_seqs) == 2
    call, result = (e for e in events(soul)[-2:])
    assert call.type == "tool_call" and call.data == {"tool": "recall", "arguments": {"query": "lighthouse keeper"}}
    assert call.prose == 'recall {"query": "lighthouse keeper"}' and call.embedder.dim == 384
    assert result.type == "tool_result" and result.data["outcome"] == "ok" and result.causation_id == call.id

    assert soul.turn("/self I am Tern, a careful keeper of lights.").reply == "self-definition rewritten"
    assert soul.turn("/notebook Ada keeps the lighthouse.").reply == "notebook rewritten"
    _, messages = soul.window("main", None)
    assert messages[0]["content"].startswith("# Self\nI am Tern, a careful keeper of lights.\n\n# Notebook\nAda keeps")
    assert soul.turn("/mount nothing").reply.startswith("error: no corpus named 'nothing'")
    assert soul.turn("/unmount").reply == "error: no corpus is mounted"


def test_a_recall_is_never_recalled_again_and_empty_words_journal_nothing(opened: Any) -> None:
    soul = opened()
    soul.turn("The lighthouse keeper is called Ada.")
    first = soul.turn("/recall lighthouse keeper Ada")
    second = soul.turn("/recall lighthouse keeper Ada")
    # The first recall's result is no memory: the second finds what the first found, not a copy of it.
    assert "Ada" in first.reply and second.reply == first.reply and "tool_result" not in second.reply
    soul.catch_up()
    turns = [seq for seq, _, _ in newest_first(soul.conn, soul.app, "main", 0)]
    assert first.tool_seqs[1] in turns and second.tool_seqs[1] in turns  # still in the conversation's turns

    before = soul.journal.last_seq()
    assert soul.turn("/recall").reply == soul.turn("/recall   ").reply == "usage: /recall QUERY"
    for words in ("", "  \n "):
        with pytest.raises(TurnError, match="the words are empty"):
            soul.turn(words)
        with pytest.raises(TurnError, match="the words are empty"):
            soul.perceive(words)
    assert soul.journal.last_seq() == before


def test_a_recalled_corpus_chunk_says_where_it_comes_from(opened: Any) -> None:
    soul = opened()
    text = "The harbour lantern is lit at dusk by the keeper."
    soul.journal.add(BifocalEvent("chunk_ingested", text, soul.embedder.embed([text])[0], soul.embedder.id,
                                  "corpus:lore", corpus="lore",
                                  data={"path": "docs/harbour.md", "sha256": "0" * 64, "chunk": 0, "chunks": 1,
                                        "lines": [3, 9]}))
    soul.turn("The lantern needs oil.")
    recalled = soul.turn("/recall harbour lantern").reply.splitlines()
    assert f"[1 chunk_ingested lore:docs/harbour.md:3-9] {text}" in recalled
    assert any(line.startswith("[2 perception] The lantern needs oil.") for line in recalled)  # no corpus: no place


def test_a_turn_samples_and_takes_the_tokens_asked_for_and_its_thought_says_how(opened: Any) -> None:
    # No retrievals, no self judge: the same words in a new conversation meet the same window.
    soul = opened(config=SoulConfig(max_tokens=12, retrieval_k=0, self_judge=False))

    def said(conversation: str, **sampling: Any) -> tuple[str, dict[str, Any]]:
        result = soul.turn("Tell me about rivers.", conversation=conversation, **sampling)
        thought = next(e.event for e in soul.journal.read(since=result.thought_seq, limit=1))
        assert thought.prose == result.reply
        return result.reply, thought.data["sampling"]

    greedy, again = said("a"), said("b")
    assert greedy == again and greedy[1] == {"temperature": 0.0, "seed": 0, "max_tokens": 12}
    warm, warm_again = said("c", temperature=1.5), said("d", temperature=1.5)
    assert warm == warm_again != greedy  # seeded: the same bytes again, not the greedy ones
    assert warm[1] == {"temperature": 1.5, "seed": 0, "max_tokens": 12}
    short = soul.turn("Tell me about rivers.", conversation="e", max_tokens=3)
    assert short.generation.generated_tokens <= 3 and greedy[0].startswith(short.reply)
    longer, data = said("f", max_tokens=40)
    assert longer.startswith(greedy[0]) and data["max_tokens"] == 40

    before = soul.journal.last_seq()
    cap = soul.mind.max_context // 4
    with pytest.raises(TurnError, match=f"a reply takes 1 to {cap} tokens with this model"):
        soul.turn("too long a reply", max_tokens=cap + 1)
    with pytest.raises(TurnError, match="the temperature is at least 0"):
        soul.turn("too cold", temperature=-1.0)
    assert soul.journal.last_seq() == before  # refused before anything is journaled


def test_look_shows_the_window_of_the_next_thought_with_plain_memories_and_journals_nothing(opened: Any) -> None:
    soul = opened()
    soul.turn("The lighthouse keeper is called Ada.", conversation="facts")
    seq, _ = soul.perceive("Who keeps the lighthouse?")
    context, messages = soul.look()
    assert soul.journal.last_seq() == seq
    recalled = [b for b in context.blocks if b.kind == "retrieval"]
    assert "- The lighthouse keeper is called Ada.\n" in [b.text for b in recalled]
    # No seq, type or bracket for a reply to copy: the memories are plain lines before the words.
    lines = [RECALLED, *(b.text.strip() for b in recalled), "", "Who keeps the lighthouse?"]
    assert messages[-1]["content"] == "\n".join(lines)
    result = soul.answer(soul.pending())
    thought = next(e.event for e in soul.journal.read(since=result.thought_seq, limit=1))
    assert thought.data["fingerprint"] == context.fingerprint and "window" not in thought.data


def test_a_turn_without_memory_sees_the_self_definition_and_its_words_alone(opened: Any) -> None:
    soul = opened(config=SoulConfig(max_tokens=12, budget=400, retrieval_k=1, self_judge=False))
    soul.turn("/notebook Ada keeps the lighthouse.")
    soul.turn("The lighthouse keeper is called Ada.", conversation="facts")
    for i in range(8):
        soul.turn(f"turn {i}: the quick brown fox")
    seq, _ = soul.perceive("Who is the lighthouse keeper?")
    full, _ = soul.look()
    assert {"notebook", "summary", "retrieval", "turn"} <= {b.kind for b in full.blocks}  # memory has much to show
    bare, messages = soul.look(memory=False)
    assert [b.kind for b in bare.blocks] == ["self", "header", "turn"] and bare.turn_seqs == [seq]
    assert messages == [{"role": "system", "content": f"# Self\n{DEFAULT_SELF}"},
                        {"role": "user", "content": "Who is the lighthouse keeper?"}]
    assert soul.journal.last_seq() == seq  # looking journals nothing
    result = soul.answer(soul.pending(), memory=False)
    thought = next(e.event for e in soul.journal.read(since=result.thought_seq, limit=1))
    assert thought.type == "thought" and thought.data["window"] == "no-memory"
    assert thought.data["fingerprint"] == bare.fingerprint
    assert result.generation.prompt_tokens == len(soul.mind.encode(messages))
    again = soul.turn("And who is that?", memory=False)  # Soul.turn takes it too: still only the newest words
    alone = [messages[0], {"role": "user", "content": "And who is that?"}]
    assert again.generation.prompt_tokens == len(soul.mind.encode(alone))


def test_rating_the_last_thought_makes_it_resonate(opened: Any) -> None:
    soul = opened()
    first = soul.turn("The harbour is quiet tonight.")
    rated = soul.turn("/rate 0.95")
    assert rated.reply.startswith("rated: resonance event")
    judgement = events(soul)[-1]
    thought = next(e for e in events(soul) if e.type == "thought")
    assert judgement.data == {"event": str(thought.id), "score": 0.95, "judge": "user", "rationale": "user rated 0.95"}
    soul.catch_up()
    resonance, judges = soul.conn.execute(sql.SQL("SELECT resonance, judges FROM {} WHERE seq = %s").format(
        Memory.view(soul.app)), [first.thought_seq]).fetchone()
    assert resonance == pytest.approx(combine({"user": 0.95, **first.judges}))
    assert set(judges) == {"user", *first.judges}
    # A perception rated 1 (no other judge) is high-resonance: later thoughts are judged by similarity too.
    assert soul.turn(f"/rate 1 {first.perception_seq}").reply.startswith("rated")
    nxt = soul.turn("The harbour is calm again.")
    assert set(nxt.judges) == {"self", "similarity"} and 0 <= nxt.judges["similarity"] <= 1
    assert soul.turn("/rate 2").reply == "a resonance score lies between 0 and 1, not 2.0"
    assert soul.turn("/rate high").reply.startswith("usage: /rate SCORE [EVENT]")
    assert soul.turn("/rate 0.5 99999").reply.startswith("no readable event at sequence 99999")


def test_unrated_start_says_so(opened: Any) -> None:
    assert opened().turn("/rate 0.9").reply.startswith("no thought to rate yet")


def test_a_failing_or_hanging_tool_is_a_result_and_the_soul_goes_on(opened: Any) -> None:
    def explode(soul: Soul, arguments: dict[str, Any]) -> str:
        raise RuntimeError("the tool broke\nwith details")

    def hang(soul: Soul, arguments: dict[str, Any]) -> str:
        time.sleep(5)
        return "too late"

    register(Tool("explode", "fails", text_parameter("why", "why"), explode))
    register(Tool("hang", "hangs", {"type": "object", "properties": {}}, hang))
    try:
        soul = opened(config=SoulConfig(max_tokens=8, tool_timeout=0.3))
        broke = soul.call_tool("explode", {"why": "test"})
        assert not broke.ok and broke.text == "RuntimeError: the tool broke"
        started = time.perf_counter()
        hung = soul.turn("/hang")
        assert time.perf_counter() - started < 3 and hung.reply == "error: timed out after 0.3 s"
        unknown = soul.call_tool("nosuch", {})
        assert not unknown.ok and unknown.text.startswith("no tool named 'nosuch'")
        results = [e for e in events(soul) if e.type == "tool_result"]
        assert [r.data["outcome"] for r in results] == ["error"] * 3 and all(r.data["duration_s"] >= 0 for r in results)
        assert soul.turn("still here?").thought_seq is not None
    finally:
        TOOLS.pop("explode")
        TOOLS.pop("hang")


def test_a_past_self_recalls_only_what_it_knew(opened: Any, app_name: str) -> None:
    soul = opened()
    soul.turn("The first ship was called Albatross.")
    cut = soul.journal.last_seq()
    soul.turn("The second ship was called Cormorant.")
    past = opened(as_of=cut, mind=soul.mind)
    assert "Albatross" in past.turn("/recall ship called").reply
    assert "Cormorant" not in past.turn("/recall Cormorant ship").reply
    assert "Cormorant" in soul.turn("/recall Cormorant ship").reply



def test_a_model_that_calls_tools_sees_their_results_in_its_next_thought(opened: Any, caller: Path) -> None:
    soul = opened(model_dir=caller, config=SoulConfig(max_tokens=8, tool_rounds=1, self_judge=False))
    assert soul.mind.tokenizer.has_tool_calling
    soul.perceive("The lighthouse keeper is called Ada.")
    result = soul.turn("Who keeps the light?")
    steps = [e for e in events(soul) if e.type in ("thought", "tool_call", "tool_result")]
    assert [e.type for e in steps] == ["thought", "tool_call", "tool_result"] * 2
    first, call, outcome, second, _, _ = steps
    assert first.prose == f"<tool_call>{CALL}</tool_call>"
    assert call.data == {"tool": "recall", "arguments": {"query": "lighthouse keeper"}} and call.causation_id == first.id
    assert outcome.data["outcome"] == "ok" and "Ada" in outcome.prose and outcome.causation_id == call.id
    assert second.causation_id == first.id and second.data["prompt_tokens"] > first.data["prompt_tokens"]
    assert result.thought_seq == soul.journal.last_seq() - 2 and len(result.tool_seqs) == 4
    # The second thought's window held the first round's result.
    _, messages = soul.window("main", None)
    assert any(m["content"].startswith("(tool result) [") and "Ada" in m["content"] for m in messages)
