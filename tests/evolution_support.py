"""What the lineage, replay and evolve CLI tests share: a tiny seeded base model, a fast evolution
config for it, and moments journaled as a conversation would leave them."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from evolution.config import EvolutionConfig
from evolution.evolve import Base, base_model
from journal.event import NO_EMBEDDER, BifocalEvent, Embedder
from journal.journal import Journal
from tests.tiny_model import build_tiny_model

EMBEDDER = Embedder("synthetic@1", 4)
# A few quick iterations at a high rate, so each generation visibly moves the tiny model (at λ
# 0.8: at 0.6 a second generation's merge can lose more of its moments than its training won);
# guards wide open unless a test narrows them.
CONFIG = EvolutionConfig(min_events=1, rank=4, iters=3, batch_size=2, max_seq_length=128, learning_rate=1e-2,
                         lam=0.8, max_drift=10.0, max_perplexity_ratio=100.0)


def tiny_base(folder: Path, seed: int = 0) -> Base:
    return base_model(build_tiny_model(folder, seed), folder)


def journal_moments(journal: Journal, count: int, score: float = 0.95, topic: str = "rivers") -> list[BifocalEvent]:
    """`count` exchanges (a user's perception, the soul's thought, the user's rating of it) in
    one conversation; the thoughts, in journal order."""
    talk = uuid.uuid4()
    rng = np.random.default_rng(len(topic) * 1000 + count)
    thoughts = []
    for i in range(count):
        ask = BifocalEvent("perception", f"tell me about {topic} {i}", rng.standard_normal(4), EMBEDDER, talk,
                           data={"source": "user"})
        journal.add(ask)
        _, thought = journal.add(BifocalEvent("thought", f"{topic} {i}: they carry water from the hills.",
                                              rng.standard_normal(4), EMBEDDER, talk, causation_id=ask.id))
        journal.add(BifocalEvent("resonance", f"user rates {score}", [], NO_EMBEDDER, f"judge:{thought.id}",
                                 data={"event": str(thought.id), "score": score, "judge": "user"}))
        thoughts.append(thought)
    return thoughts


def journal_facts(journal: Journal, tellings: list[str], score: float = 0.95,
                  talk: uuid.UUID | None = None) -> list[tuple[BifocalEvent, BifocalEvent]]:
    """Each of `tellings` said by the user in one conversation (`talk`, else a new one), answered
    and rated `score`: the (perception, thought) pairs, in journal order."""
    talk = talk or uuid.uuid4()
    rng = np.random.default_rng(len(tellings))
    pairs = []
    for said in tellings:
        _, ask = journal.add(BifocalEvent("perception", said, rng.standard_normal(4), EMBEDDER, talk,
                                          data={"source": "user"}))
        _, thought = journal.add(BifocalEvent("thought", "Thank you, I will keep that in mind.", rng.standard_normal(4),
                                              EMBEDDER, talk, causation_id=ask.id))
        journal.add(BifocalEvent("resonance", f"user rates {score}", [], NO_EMBEDDER, f"judge:{thought.id}",
                                 data={"event": str(thought.id), "score": score, "judge": "user"}))
        pairs.append((ask, thought))
    return pairs
