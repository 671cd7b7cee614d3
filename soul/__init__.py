"""soul's Python face: open a soul, talk to it, and let it evolve, as the `soul` command does.

    import soul

    with soul.open() as me:
        reply = me.say("My sister is called Oona.")
        print(reply.reply)
        me.rate(reply.thought_seq, 0.95)
        print([hit.prose for hit in me.recall("sister")])

Every call is a thin door into the code the command line runs (soul/agent/loop.py, evolution/):
what it journals and how it answers are the same. Nothing heavy is imported here, since the
command line imports this package first: the mind, the embedder and mlx load when `open` is
called.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evolution.config import EvolutionConfig
    from evolution.evolve import Outcome
    from evolution.lineage import Generation
    from journal.journal import Journal
    from projections.search import Hit
    from soul.agent.loop import Soul as Agent
    from soul.agent.loop import TurnResult

__all__ = ["Soul", "open"]


def open(home: str | Path | None = None, nats_url: str | None = None, app: str | None = None,  # noqa: A001
         model: str | Path | None = None) -> Soul:
    """Open the soul named `app` in this process: its journal, its views, its embedder and its mind.

    `home` (SOUL_HOME, default ~/.soul) and `nats_url` (SOUL_NATS_URL: one server or several,
    comma-separated; default the home's embedded server, started if need be) are set for the whole
    process, as the command's --home and --nats are; Postgres is SOUL_PG_URL's, else the home's
    embedded one. `app` defaults to SOUL_APP, else "soul". The mind thinks with `model` (an MLX
    model folder; default SOUL_MODEL), else with the generation `soul evolve` promoted last, else
    with the embedded SmolLM2-135M-Instruct. A running `soul daemon` is not used: the model loads
    here. Close the soul when done (`close()`, or a `with` block).
    """
    from soul.agent.loop import Soul as Agent  # loads numpy and the projections; the mind loads mlx

    if home is not None:
        os.environ["SOUL_HOME"] = str(Path(home).expanduser())
    if nats_url is not None:
        os.environ["SOUL_NATS_URL"] = nats_url
    model = model or os.environ.get("SOUL_MODEL")
    agent = Agent.open(app or os.environ.get("SOUL_APP", "soul"), model_dir=Path(model).expanduser() if model else None)
    return Soul(agent, model)


class Soul:
    """An open soul (made by `soul.open`). Its mistakes are exceptions whose message is one line
    a person can act on: empty words (`TurnError`), an unknown event to rate (`RatingError`),
    too little to evolve from (an `Outcome` that says so), a NATS or Postgres that cannot be
    reached (`OperationalError`)."""

    def __init__(self, agent: Agent, model: str | Path | None = None):
        self.agent = agent  # soul.agent.loop.Soul: the turn loop, for everything not here
        self._model = model

    @property
    def app(self) -> str:
        """The soul's name: its journal is the JetStream stream SOUL_<app>."""
        return self.agent.app

    @property
    def journal(self) -> Journal:
        """The soul's journal (journal.journal.Journal): `read`, `follow`, `stats`, `last_seq`."""
        return self.agent.journal

    def say(self, text: str, conversation: str | None = None, memory: bool = True,
            on_token: Callable[[str], None] | None = None) -> TurnResult:
        """Say `text` to the soul in `conversation` (default "main") and return its turn, as
        `soul say` does: the perception, the thought and the judges' verdicts are journaled.

        The result (soul.agent.loop.TurnResult) holds `reply` (the words), `thought_seq` and
        `perception_seq` (journal sequences; rate the thought with them), `resonance`, `judges`
        and `generation` (token counts and speed). `on_token(piece)` receives the reply as it is
        generated. Without `memory` the mind answers from its weights alone (`soul say
        --no-memory`). Words starting with "/" are a chat command (`/help`), as in `soul chat`.
        """
        return self.agent.turn(text, conversation=conversation, on_token=on_token, memory=memory)

    def perceive(self, text: str, source: str = "user", conversation: str | None = None) -> int:
        """Journal `text` as a perception from `source` without answering it; its sequence.

        By default it is journaled as `soul perceive` does, under `source:<source>`: memory and
        search find it, no conversation waits for an answer. Given a `conversation`, it joins it as
        the newest turn: the next `say` there sees it (and `soul say` would answer it first).
        Secrets are redacted before it is embedded and journaled.
        """
        seq, _ = self.agent.perceive(text, source=source, conversation=conversation or f"source:{source}")
        return seq

    def recall(self, query: str, k: int = 5) -> list[Hit]:
        """The `k` memories that best match `query`, best first, as `soul search` finds them
        (meaning and words fused). Each projections.search.Hit has `seq`, `type`, `prose`, `time`,
        `score`, `resonance` and, for a corpus chunk, `corpus` and `where`."""
        return self.agent.recall(query, limit=k)

    def rate(self, event: int | str | None, score: float, conversation: str | None = None) -> int:
        """Rate `event` (a journal sequence, an event id, or None: the conversation's last
        thought) with `score` between 0 and 1, as `soul rate` does; the rating's sequence. A
        rating is the resonance curation selects by: `evolve` learns from the moments rated 0.9 or more."""
        return self.agent.rate(score, None if event is None else str(event), conversation)

    def evolve(self, dry_run: bool = False, config: EvolutionConfig | str | Path | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> Outcome:
        """Make the next generation of the soul's weights, as `soul evolve` does; what came of it.

        The evolution.evolve.Outcome's `status` is "promoted", "rejected" (`why`), "nothing to
        curate" (`why`: too few moments rated high enough) or, with `dry_run`, "dry run" (what
        would be learnt, in `curation`; nothing trained or journaled). `config` is an
        evolution.config.EvolutionConfig or the path of a YAML file (`soul evolve --config`).
        `progress(stage, done, total)` follows training and merging. W0 is the `model` the soul
        was opened with, else SOUL_MODEL, else the embedded SmolLM2. This soul goes on thinking
        with the weights it was opened with; the promoted generation thinks from the next `open`.
        """
        from evolution import evolve as evolution  # loads mlx-lm's trainer
        from evolution.config import EvolutionConfig
        from journal.embedded import soul_home

        if isinstance(config, (str, Path)):
            config = EvolutionConfig.load(config)
        home = soul_home()
        base = None if dry_run else evolution.base_model(self._model, home)
        return evolution.evolve(self.journal, home, base, config or EvolutionConfig(), dry_run=dry_run,
                                progress=progress)

    def generations(self) -> list[Generation]:
        """Every run of `evolve` that curated something, in order, as `soul generations` lists
        them: each evolution.lineage.Generation has `name` ("gen-N"), `status` (promoted, rejected,
        ...), `why`, `cut`, `event_ids`, `root_sha256`, and its `seal` (drift, perplexity, loss)."""
        from evolution.lineage import runs

        return [r for r in runs(self.journal) if r.status != "nothing to curate"]

    def close(self) -> None:
        """Close the journal and the views' connections (the mind's memory goes with the object)."""
        self.agent.close()

    def __enter__(self) -> Soul:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
