"""The lineage: a soul's generations of weights as a projection of its evolution events (design §6).

Every evolve run journals its steps on one aggregate, `LINEAGE`, with the run's id as their
correlation id, so the lineage is read from that aggregate alone:

    lesson               moment, sources, rule, pairs: rows a moment teaches (evolution/lessons.py)
    curation_sealed      generation, epoch, after_seq, cut, event_ids, scores, corpus, cluster,
                         lessons, config, config_digest, outcome; "nothing to curate" when it
                         names no event, or fewer than min_events
    adapter_trained      generation, epoch, sha256, cache_key, cached, parent_root, rows,
                         rows_sha256, config, seed, environment
    generation_sealed    generation, epoch, root_sha256, tensor_sha256, base_root, adapters,
                         drift, perplexity {base, before, after}, loss {before, after},
                         recall {asked, answered} (its lessons' cues), environment
    generation_rejected  generation, epoch, why
    generation_promoted  generation, epoch, root_sha256

Generation N is trained on generation N-1 and merged from W0 with the adapters of generations
1..N. An epoch is one derivation of the whole lineage: `soul evolve --rebuild` starts the next
(after a redaction) and the lineage is the latest epoch's runs, so a generation derived from a
forgotten event is no longer part of it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolution.store import GenerationStore
from journal import codec
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal

LINEAGE = "lineage"
STAGES = ("curation_sealed", "adapter_trained", "generation_sealed", "generation_rejected", "generation_promoted")
STATUS = {"curation_sealed": "curated", "adapter_trained": "trained", "generation_sealed": "sealed",
          "generation_rejected": "rejected", "generation_promoted": "promoted"}


class LineageError(LookupError):
    """A generation that the lineage does not hold; the message says which exist."""


@dataclass
class Generation:
    """One evolve run: what it curated, trained, sealed, and how it ended (`status`)."""

    number: int
    epoch: int
    run: str  # the run's id: the correlation id of its events
    status: str  # curated | trained | sealed | rejected | promoted; "nothing to curate"
    curation: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    seal: dict[str, Any] = field(default_factory=dict)
    why: str | None = None  # why it was rejected
    time: str = ""  # when its last event was journaled (UTC, ISO)

    @property
    def name(self) -> str:
        return f"gen-{self.number}"

    @property
    def cut(self) -> int:
        return self.curation["cut"]

    @property
    def after_seq(self) -> int:
        return self.curation["after_seq"]

    @property
    def event_ids(self) -> list[str]:
        return self.curation["event_ids"]

    @property
    def root_sha256(self) -> str | None:
        return self.seal.get("root_sha256")


def record(journal: Journal, kind: str, prose: str, run: str, data: dict[str, Any]) -> int:
    """Journal one step of run `run` on the lineage; its sequence number. Lineage events carry
    no vector: they are bookkeeping about weights, not something the soul said or meant."""
    event = BifocalEvent(kind, prose, [], NO_EMBEDDER, LINEAGE, correlation_id=uuid.UUID(run), data=data)
    return journal.add(event)[0]


def events(journal: Journal) -> list[BifocalEvent]:
    """Every event of the lineage aggregate, oldest first."""
    return [codec.decode(s.state, s.originator_id, s.originator_version)
            for s in journal.recorder.select_events(LINEAGE)]


def last_event(journal: Journal) -> BifocalEvent | None:
    """The lineage's newest event (one direct read), or None before the first evolve run."""
    found = journal.recorder.select_events(LINEAGE, desc=True, limit=1)
    return codec.decode(found[0].state, LINEAGE, found[0].originator_version) if found else None


def runs(journal: Journal) -> list[Generation]:
    """Every evolve run ever journaled, in the order they started."""
    found: dict[str, Generation] = {}
    for event in events(journal):
        if event.type not in STAGES:
            continue
        run, data = str(event.correlation_id), event.data
        if event.type == "curation_sealed":
            # Too few moments (under min_events) is nothing to curate too, though it names them.
            curated = data["event_ids"] and data.get("outcome") != "nothing to curate"
            status = "curated" if curated else "nothing to curate"
            found[run] = Generation(data["generation"], data["epoch"], run, status, curation=data)
        generation = found.get(run)
        if generation is None:  # a step whose curation is missing: not a run this code wrote
            continue
        generation.time = event.timestamp.isoformat()
        if event.type == "curation_sealed":
            continue
        generation.status = STATUS[event.type]
        if event.type == "adapter_trained":
            generation.adapter = data
        elif event.type == "generation_sealed":
            generation.seal = data
        elif event.type == "generation_rejected":
            generation.why = data["why"]
    return list(found.values())


def lineage(journal: Journal) -> list[Generation]:
    """The runs of the latest epoch that curated something, in order (rejected and interrupted
    ones included; `chain` keeps the promoted ones)."""
    every = runs(journal)
    epoch = max((r.epoch for r in every), default=0)
    return [r for r in every if r.epoch == epoch and r.status != "nothing to curate"]


def current_epoch(journal: Journal) -> int:
    return max((r.epoch for r in runs(journal)), default=0)


def chain(generations: list[Generation]) -> list[Generation]:
    """The promoted generations, 1..N: the weights the soul has been."""
    return [g for g in generations if g.status == "promoted"]


def parse_name(name: str) -> int:
    match = re.fullmatch(r"(?:gen-)?([1-9][0-9]*)", name.strip())
    if match is None:
        raise LineageError(f"{name!r} is not a generation; name one as gen-N (N >= 1)")
    return int(match.group(1))


def find(journal: Journal, name: str) -> Generation:
    """The promoted generation called `name` ("gen-N") in the current lineage."""
    number = parse_name(name)
    promoted = chain(lineage(journal))
    for generation in promoted:
        if generation.number == number:
            return generation
    known = ", ".join(g.name for g in promoted) or "none yet: `soul evolve` makes gen-1"
    raise LineageError(f"no generation gen-{number} in the lineage; promoted generations: {known}")


def active(home: Path, app: str) -> tuple[str, Path] | None:
    """(name, model folder) of the generation the soul runs on, or None for the base weights W0."""
    return GenerationStore(home, app).active()


def resolve(journal: Journal, home: Path, name: str) -> tuple[Path, int]:
    """(model folder, journal cut) of generation `name`, to talk as that past self; LineageError
    if the lineage lacks it, or if the store does not hold its weights (a replay rebuilds them)."""
    generation = find(journal, name)
    folder = GenerationStore(home, journal.app).weights(generation.root_sha256)
    if folder is None:
        raise LineageError(f"{generation.name}'s weights are not in the store; "
                           f"`soul replay --to {generation.name}` rebuilds them")
    return folder, generation.cut
