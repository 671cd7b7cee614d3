"""Curation (design §6.1): the moments generation N learns from, and the rows it learns them as.

A moment is a target event (the soul's own `thought`s, and `chunk_ingested` corpus texts)
between the previous cut (exclusive) and this cut (inclusive) whose resonance as of the cut
reaches the threshold. Its resonance is `projections.resonance.combine` of each judge's latest score
among the `resonance` events up to the cut, so judgements made after the cut never change a
sealed curation. A config may narrow the moments to one corpus, or to one cluster of a seeded
k-means over their vectors. Redacted events (`redaction` events name them in `data.event`)
are never curated, and never appear in a training row's context either.

Everything here reads the journal alone and is deterministic: the same journal, window,
config and redactions give the same curation and the same rows, in journal order.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evolution.config import EvolutionConfig
from evolution.lessons import Lesson, lessons as journaled_lessons
from journal.event import BifocalEvent
from journal.journal import Entry, Journal
from projections.resonance import combine
from projections.turns import TURNS

log = logging.getLogger("soul.evolution.curate")

TARGETS = ("thought", "chunk_ingested")
CONTEXT_TURNS = 8  # preceding turns of its conversation in a thought's training row
KMEANS_ROUNDS = 100


@dataclass(frozen=True)
class Curation:
    generation: int
    after_seq: int  # the previous cut: moments after it ...
    cut: int  # ... up to and including this journal sequence
    event_ids: tuple[str, ...]  # in journal order
    scores: tuple[float, ...]  # each moment's combined resonance as of the cut
    corpus: str | None = None
    cluster: int | None = None
    types: tuple[str, ...] = ()  # each moment's event type
    redacted: tuple[str, ...] = ()  # the redactions honoured, sorted: rows skip them too
    lessons: tuple[str, ...] = ()  # ids of the `lesson` events its thoughts teach (evolution/lessons.py)
    relearned: tuple[str, ...] = ()  # ids of earlier generations' lessons taught again (config `relearn`)

    def as_data(self) -> dict[str, Any]:
        """JSON for the `curation_sealed` event; `Curation.from_data` reads it back."""
        return {**asdict(self), **{k: list(getattr(self, k)) for k in _LISTS}}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Curation:
        return cls(**{**data, **{k: tuple(data.get(k, ())) for k in _LISTS}})


_LISTS = ("event_ids", "scores", "types", "redacted", "lessons", "relearned")


def redacted_ids(journal: Journal) -> set[str]:
    """Ids of every event a `redaction` event anywhere in the journal names."""
    ids = set()
    for event in _events(journal.read(types=["redaction"])):
        target = event.data.get("event")
        if isinstance(target, str) and target:
            ids.add(target)
        else:
            log.warning("redaction %s names no event id in data.event: %r", event.id, event.data)
    return ids


def curate(journal: Journal, *, generation: int, after_seq: int, cut: int, config: EvolutionConfig,
           redacted: Collection[str]) -> Curation:
    """The moments of the window (after_seq, cut] that generation `generation` learns from."""
    if not 0 <= after_seq <= cut:
        raise ValueError(f"a curation window runs from a previous cut to a later one, not {after_seq}..{cut}")
    candidates: dict[str, tuple[BifocalEvent, int]] = {}
    judged: dict[str, dict[str, float]] = {}
    for entry in _window(journal, after_seq, cut, (*TARGETS, "resonance")):
        event = entry.event
        assert event is not None
        if event.type == "resonance":
            if (judgement := _judgement(entry)) is not None:
                target, judge, score = judgement
                judged.setdefault(target, {})[judge] = score  # journal order: the latest wins
        elif config.corpus is None or event.corpus == config.corpus:
            candidates.setdefault(str(event.id), (event, entry.seq))
    chosen = []
    for event_id, (event, _) in candidates.items():
        # Judges in a fixed order: float sums depend on order, and the order judgements came in must not matter.
        score = combine(dict(sorted(judged.get(event_id, {}).items())))
        if event_id not in redacted and score is not None and score >= config.threshold:
            chosen.append((event_id, event, score))
    if config.clusters is not None:
        labels = kmeans_labels([event.vector for _, event, _ in chosen], config.clusters, config.seed)
        chosen = [c for c, label in zip(chosen, labels, strict=True) if label == config.cluster]
    return Curation(
        generation, after_seq, cut,
        event_ids=tuple(event_id for event_id, _, _ in chosen),
        scores=tuple(score for _, _, score in chosen),
        corpus=config.corpus, cluster=config.cluster,
        types=tuple(event.type for _, event, _ in chosen),
        redacted=tuple(sorted(redacted)),
    )


def summary(curation: Curation) -> dict[str, Any]:
    """What `soul evolve --dry-run` shows of a curation."""
    scores = curation.scores
    return {
        "generation": curation.generation,
        "window": [curation.after_seq, curation.cut],
        "events": len(curation.event_ids),
        "by_type": dict(sorted(Counter(curation.types).items())),
        "min_resonance": min(scores) if scores else None,
        "mean_resonance": sum(scores) / len(scores) if scores else None,
        "corpus": curation.corpus,
        "cluster": curation.cluster,
        "redactions_honoured": len(curation.redacted),
    }


# -- training rows ---------------------------------------------------------------------------


def training_rows(journal: Journal, curation: Curation) -> list[dict[str, Any]]:
    """mlx-lm chat rows (`{"messages": [...]}`), one per curated moment, in journal order.

    A thought's row: the self-definition as of then (system), the up to CONTEXT_TURNS turns of
    its conversation before it and the perception that caused it (user for perceptions and tool
    results, assistant for earlier thoughts), then the thought (assistant); then a row per
    (cue, answer) of its lesson, if `curation.lessons` names one (evolution/lessons.py). A corpus chunk's
    row: the self-definition, a user line naming the corpus, file and lines, and the chunk
    (assistant). Last, a row per (cue, answer) of each lesson `curation.relearned` names, with the
    latest self-definition. Redacted events never appear, as moments or as context.
    """
    wanted = set(curation.event_ids)
    redacted = set(curation.redacted)
    targets = [(e.seq, e.event) for e in _window(journal, curation.after_seq, curation.cut, TARGETS)
               if str(e.event.id) in wanted]
    if {str(event.id) for _, event in targets} != wanted:
        raise ValueError(f"generation {curation.generation}: curated events are missing from the journal's "
                         f"window {curation.after_seq}..{curation.cut}")
    causes = {str(event.causation_id) for _, event in targets if event.type == "thought" and event.causation_id}
    found_causes: dict[str, tuple[int, BifocalEvent]] = {}
    definitions: list[tuple[int, str]] = []  # (seq, prose) of each self-definition, in order
    recent: dict[str, deque[tuple[int, BifocalEvent]]] = {}
    context: dict[str, list[tuple[int, BifocalEvent]]] = {}  # thought id -> the turns before it
    last = max((seq for seq, _ in targets), default=0)
    for entry in _window(journal, 0, last, (*TURNS, "self_defined")):
        event = entry.event
        assert event is not None
        event_id = str(event.id)
        if event_id in redacted:
            continue
        if event.type == "self_defined":
            definitions.append((entry.seq, event.prose))
            continue
        if event_id in causes:
            found_causes[event_id] = (entry.seq, event)
        turns = recent.setdefault(str(event.originator_id), deque(maxlen=CONTEXT_TURNS))
        if event_id in wanted and event.type == "thought":
            context.setdefault(event_id, list(turns))
        turns.append((entry.seq, event))
    named = set(curation.lessons) - redacted
    again = set(curation.relearned) - redacted
    found = journaled_lessons(journal, named | again) if named | again else {}
    if len(found) != len(named | again):
        raise ValueError(f"generation {curation.generation}: lessons it names are missing from the journal")
    taught = {moment: lesson for moment, lesson in found.items() if not set(lesson.sources) & redacted}
    relearned = {lesson.id: lesson for lesson in taught.values() if lesson.id in again}
    rows = []
    for seq, event in targets:
        messages = []
        at = bisect.bisect_left(definitions, (seq, ""))  # self-definitions before the moment
        if at:
            messages.append({"role": "system", "content": definitions[at - 1][1]})
        system = list(messages)
        if event.type == "thought":
            before = dict(context.get(str(event.id), []))
            cause = found_causes.get(str(event.causation_id))
            if cause is not None and cause[0] < seq:
                before.setdefault(*cause)
            messages += [_message(turn) for _, turn in sorted(before.items())]
        else:
            messages.append({"role": "user", "content": _chunk_cue(event)})
        messages.append({"role": "assistant", "content": event.prose})
        rows.append({"messages": messages})
        if (lesson := taught.get(str(event.id))) is not None:
            rows += _lesson_rows(system, lesson)
    system = [{"role": "system", "content": definitions[-1][1]}] if definitions else []
    for lesson_id in curation.relearned:
        if (lesson := relearned.get(lesson_id)) is not None:
            rows += _lesson_rows(system, lesson)
    return rows


def _lesson_rows(system: list[dict[str, str]], lesson: Lesson) -> list[dict[str, Any]]:
    return [{"messages": [*system, {"role": "user", "content": cue}, {"role": "assistant", "content": answer}]}
            for cue, answer in lesson.pairs]


def _message(event: BifocalEvent) -> dict[str, str]:
    if event.type == "thought":
        return {"role": "assistant", "content": event.prose}
    if event.type == "tool_result":
        return {"role": "user", "content": f"[tool {event.data.get('tool', '?')}] {event.prose}"}
    source = event.data.get("source", "user")
    return {"role": "user", "content": event.prose if source == "user" else f"[{source}] {event.prose}"}


def _chunk_cue(event: BifocalEvent) -> str:
    lines = event.data.get("lines")
    where = f", lines {lines[0]}-{lines[1]}" if isinstance(lines, list) and len(lines) == 2 else ""
    return f"{event.corpus or 'corpus'}: {event.data.get('path', '?')}{where}"


# -- the journal, read for curation ------------------------------------------------------------


def _window(journal: Journal, after_seq: int, cut: int, types: Iterable[str]) -> Iterator[Entry]:
    """Decoded entries of `types` with after_seq < seq <= cut, in journal order."""
    for entry in journal.read(since=after_seq + 1, types=types):
        if entry.seq > cut:
            return
        if entry.event is None:
            log.warning("curation skips undecodable seq %d: %s", entry.seq, entry.error)
            continue
        yield entry


def _events(entries: Iterable[Entry]) -> Iterator[BifocalEvent]:
    for entry in entries:
        if entry.event is None:
            log.warning("curation skips undecodable seq %d: %s", entry.seq, entry.error)
        else:
            yield entry.event


def _judgement(entry: Entry) -> tuple[str, str, float] | None:
    data = entry.event.data  # type: ignore[union-attr]
    try:
        target, judge, score = str(data["event"]), str(data["judge"]), float(data["score"])
    except (KeyError, TypeError, ValueError):
        log.warning("curation: resonance at seq %d names no event, judge and score: %r", entry.seq, data)
        return None
    if not 0.0 <= score <= 1.0:
        log.warning("curation: resonance at seq %d scores %r, outside 0..1", entry.seq, score)
        return None
    return target, judge, score


# -- latent clusters -------------------------------------------------------------------------


def kmeans_labels(vectors: Sequence[np.ndarray], k: int, seed: int) -> np.ndarray:
    """The cluster of each row of `vectors` by seeded k-means (k-means++ start, Lloyd rounds) on
    the unit-normalised vectors. Clusters are numbered by their first member's row, so the
    numbers do not depend on the start; with fewer rows than k there are only as many clusters
    as rows. Distances are plain float64 sums (no BLAS), so the labels are the same everywhere."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len({len(v) for v in vectors}) > 1:
        raise ValueError("cannot cluster vectors of different dimensions (events from different embedders)")
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1, norms)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        nearest = np.min([_squared_distances(x, c) for c in centers], axis=0)
        total = nearest.sum()
        centers.append(x[rng.choice(n, p=nearest / total)] if total > 0 else x[rng.integers(n)])
    labels = np.full(n, -1)
    for _ in range(KMEANS_ROUNDS):
        new = np.argmin([_squared_distances(x, c) for c in centers], axis=0)
        if np.array_equal(new, labels):
            break
        labels = new
        centers = [x[labels == j].mean(axis=0) if np.any(labels == j) else centers[j] for j in range(k)]
    _, first = np.unique(labels, return_index=True)
    order = {label: rank for rank, label in enumerate(labels[np.sort(first)])}
    return np.array([order[label] for label in labels])


def _squared_distances(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    return ((x - center) ** 2).sum(axis=1)
