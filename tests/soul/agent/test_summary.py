"""Summaries of evicted turns written by the mind, in the turn loop on real parts: nats-server,
PostgreSQL, MiniLM and tiny mlx-lm models (tests/tiny_model.py). The tiny model writes noise, so a
fact reaches the window through the sentences kept verbatim beside its words; that SmolLM2's
own words keep few facts is measured in ops/bench/summary_bench.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from evolution.weights.model import write_config, write_tokenizer
from projections.turns import prose_between
from soul.agent.context import SUMMARY_ROWS, first_sentence, summary_messages, truncate
from soul.agent.loop import SoulConfig
from tests.soul.agent.test_agent import events, opened, roomy, tiny  # noqa: F401  (opened, roomy, tiny are fixtures)
from tests.tiny_model import CHAT_TEMPLATE, SPECIAL, build_tiny_model, tiny_config, tiny_weights

FACT = "My sister Ingrid keeps the lighthouse, and its door code is 4817."
CHATTER = "Tell me more about rivers, lakes and the sea."  # no name nor number of its own to keep
CONFIG = SoulConfig(max_tokens=8, budget=600, retrieval_k=0, self_judge=False, summary_tokens=40)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that says nothing: its layers add nothing (output projections zero), every
    token embeds alike, and its lm_head gives <|im_end|> alone a logit: every reply ends at once."""
    folder = build_tiny_model(tmp_path_factory.mktemp("quiet"), seed=3)
    config = {**tiny_config(len(SPECIAL) + 256), "tie_word_embeddings": False, "max_position_embeddings": 2048}
    weights = tiny_weights(config, seed=3)
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    alike = np.eye(config["hidden_size"], dtype=np.float32)[0]
    weights["model.embed_tokens.weight"] = mx.array(np.tile(alike, (config["vocab_size"], 1)))
    head = np.zeros((config["vocab_size"], config["hidden_size"]), dtype=np.float32)
    head[SPECIAL.index("<|im_end|>")] = 10 * alike
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    write_config(folder, config)
    return folder


def talk_until_evicted(soul: Any, summaries: int) -> list[Any]:
    """The fact, then chatter until `summaries` summaries are journaled; the summary events."""
    soul.turn(FACT)
    for _ in range(60):
        written = [e for e in events(soul) if e.type == "summary"]
        if len(written) >= summaries:
            return written
        soul.turn(CHATTER)
    raise AssertionError(f"{len(written)} summaries in 60 turns")


def test_the_mind_writes_the_summary_and_a_fact_said_once_reaches_the_window_through_it(
        opened: Any, roomy: Path) -> None:
    soul = opened(model_dir=roomy, config=CONFIG)
    first, second = talk_until_evicted(soul, 2)
    fact_seq = next(e.seq for e in soul.journal.read() if e.event.prose == FACT)
    # What the mind writes for the first summary's prompt, greedy: its text opens the summary.
    data = first.data
    assert data["by"] == "mind" and data["model"] == soul.mind.model_id and data["generation"] == "external"
    assert data["first_seq"] == fact_seq and data["kept"] == 1
    limit = min(CONFIG.summary_tokens, int(soul.budget * CONFIG.summary_share) // 2)
    turns = prose_between(soul.conn, soul.app, "main", data["first_seq"], data["last_seq"], SUMMARY_ROWS)
    wrote = soul.mind.generate(summary_messages(soul.mind, None, turns, limit), max_tokens=limit, temperature=0.0)
    assert wrote.text.strip() and data["generated_tokens"] == wrote.generated_tokens
    assert first.prose == f"{truncate(soul.mind.tokenizer, wrote.text.strip(), limit)}\nUser: {FACT}"
    assert first.embedder.dim == 384 and first.vector.tobytes() == soul.embedder.embed([first.prose])[0].tobytes()
    # The later summary subsumes the first and still holds the fact, which only it brings to the window.
    assert second.data["first_seq"] == fact_seq and second.data["last_seq"] > data["last_seq"]
    assert second.data["by"] == "mind" and second.prose.endswith(f"\nUser: {FACT}")
    context, messages = soul.window("main", None)
    assert fact_seq not in context.turn_seqs and not any(b.kind == "retrieval" for b in context.blocks)
    (summary,) = [b for b in context.blocks if b.kind == "summary"]
    assert FACT in summary.text and FACT in messages[0]["content"]


def test_a_mind_that_writes_nothing_leaves_the_first_sentences_and_says_so(opened: Any, quiet: Path) -> None:
    soul = opened(model_dir=quiet, config=CONFIG)
    (summary,) = talk_until_evicted(soul, 1)
    data = summary.data
    assert data["by"] == "extract" and data["because"] == "the mind wrote nothing" and data["kept"] == 1
    limit = min(CONFIG.summary_tokens, int(soul.budget * CONFIG.summary_share) // 2)
    turns = prose_between(soul.conn, soul.app, "main", data["first_seq"], data["last_seq"], SUMMARY_ROWS)
    extract = " ".join(s for s in map(first_sentence, (prose for _, prose in turns)) if s)  # its replies are empty
    assert extract.startswith(f"{FACT} {CHATTER}")
    assert summary.prose == f"{truncate(soul.mind.tokenizer, extract, limit)}\nUser: {FACT}"
    context, _ = soul.window("main", None)
    assert "4817" in context.text and data["first_seq"] not in context.turn_seqs
