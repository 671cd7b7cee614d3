"""The bifocal event: what was said (prose) and what was meant (vector), immutable.

The envelope carries everything needed to use the event without recomputing anything:
the embedder id and dimension that made the vector travel with it, so replays never
re-embed. Type-specific facts live in `data`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

# Every event type the soul writes, with its current schema version. A type or version
# that is not here (or newer than here) is refused on write and dead-lettered on read.
CATALOGUE: dict[str, int] = {
    "perception": 1,  # data: source (user | agent:NAME | tool:NAME | corpus:NAME)
    "thought": 1,  # data: context fingerprint, model, generation
    "tool_call": 1,  # data: tool, arguments
    "tool_result": 1,  # data: tool, outcome, duration
    "resonance": 1,  # data: event, score 0..1, judge, rationale
    "self_defined": 1,  # the pinned self-definition, rewritten
    "notebook_written": 1,  # the pinned notebook, rewritten
    "summary": 1,  # data: first and last sequence of the evicted range it stands for, by (mind | extract), kept
    "chunk_ingested": 1,  # data: path, content hash, chunk index, the file's chunk count, line range
    "document_removed": 1,  # a corpus file gone or changed: data: path, content hash, ids of its chunk events
    "corpus_mounted": 1,
    "corpus_unmounted": 1,
    "corpus_removed": 1,  # the corpus and all its chunks leave the views
    "corpus_added": 1,  # data: root, the folder the corpus's files are read from (journaled when it changes)
    "lesson": 1,  # data: moment, sources (moment, perception), rule, pairs of (cue, answer): rows a generation learns
    "curation_sealed": 1,
    "adapter_trained": 1,
    "generation_sealed": 1,
    "generation_rejected": 1,
    "generation_promoted": 1,  # data: generation, epoch, root hash: the soul now runs on it
    "redaction": 1,  # data: the event id that must leave projections and generations
    "task_started": 1,  # prose: the goal; data: task, conversation, max_steps, max_seconds, corpus, db, tools, by
    "task_cancelled": 1,  # data: task, by: asked to stop; the worker ends it between two steps
    "task_finished": 1,  # prose: the outcome; data: task, status (done | out_of_budget | cancelled | failed), steps
    "packet_received": 1,  # data: packet id, sender; its own originator makes a redelivered packet journal once
}

_INT64 = 2**63


class EventError(ValueError):
    """An event that must not be journaled; the message says what to fix."""


@dataclass(frozen=True)
class Embedder:
    """Which model made a vector: `name@version` and its output dimension."""

    name: str
    dim: int

    def __str__(self) -> str:
        return f"{self.name}/{self.dim}"


NO_EMBEDDER = Embedder("none", 0)


@dataclass(frozen=True, eq=False)
class BifocalEvent:
    type: str
    prose: str
    vector: np.ndarray  # read-only little-endian float32, shape (embedder.dim,)
    embedder: Embedder = NO_EMBEDDER
    originator_id: uuid.UUID = field(default_factory=uuid.uuid4)
    originator_version: int = 1
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    timestamp: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    schema: int = 0  # 0 means "the catalogue's current version"
    causation_id: uuid.UUID | None = None
    correlation_id: uuid.UUID | None = None
    corpus: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "vector", as_vector(self.vector))
        if self.schema == 0:
            set_(self, "schema", CATALOGUE.get(self.type, 0))
        if self.timestamp.tzinfo is None:
            raise EventError("event timestamp must be timezone-aware (use datetime.now(timezone.utc))")
        try:
            set_(self, "timestamp", self.timestamp.astimezone(timezone.utc))
        except OverflowError:
            raise EventError(f"timestamp {self.timestamp} is outside the representable range in UTC") from None
        self.validate()

    def validate(self) -> None:
        if self.type not in CATALOGUE:
            raise EventError(f"unknown event type {self.type!r}; known types: {', '.join(CATALOGUE)}")
        if not 1 <= self.schema <= CATALOGUE[self.type]:
            raise EventError(
                f"{self.type} schema version {self.schema} is not known to this soul "
                f"(current is {CATALOGUE[self.type]}); upgrade soul to write it"
            )
        if len(self.vector) != self.embedder.dim:
            raise EventError(
                f"vector has {len(self.vector)} dimensions but embedder {self.embedder.name} "
                f"declares {self.embedder.dim}; embed with the declared embedder"
            )
        if not isinstance(self.prose, str):
            raise EventError("prose must be text")
        try:
            self.prose.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EventError(f"prose is not valid unicode (lone surrogate at {e.start})") from None
        if not 0 <= self.originator_version < _INT64:
            raise EventError("originator_version must be a non-negative 64-bit integer")
        check_json(self.data, "data")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BifocalEvent):
            return NotImplemented
        return all(
            getattr(self, f) == getattr(other, f) for f in _SCALAR_FIELDS
        ) and self.vector.tobytes() == other.vector.tobytes()

    __hash__ = None  # type: ignore[assignment]  # vectors are arrays

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector)) if len(self.vector) else 0.0


_SCALAR_FIELDS = tuple(
    f
    for f in BifocalEvent.__dataclass_fields__
    if f != "vector"
)


def as_vector(values: Any) -> np.ndarray:
    """A read-only little-endian float32 copy of `values`, refused unless every entry is finite."""
    if _is_ready(values):
        vec = values
    else:
        try:
            with np.errstate(over="ignore"):  # overflow to inf is refused just below
                vec = np.array(values, dtype="<f4", copy=True)
        except (TypeError, ValueError):
            raise EventError("vector must be a flat sequence of numbers") from None
        if vec.ndim != 1:
            raise EventError(f"vector must be one-dimensional, not of shape {vec.shape}")
    if not np.isfinite(vec).all():
        raise EventError("vector has NaN or infinite entries (or values beyond float32 range)")
    vec.flags.writeable = False
    return vec


def _is_ready(values: Any) -> bool:
    return (
        isinstance(values, np.ndarray)
        and values.dtype == np.dtype("<f4")
        and values.ndim == 1
        and not values.flags.writeable
    )


def check_json(value: Any, where: str) -> None:
    """Refuse what orjson would store lossily or not at all (NaN becomes null, big ints fail)."""
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EventError(f"{where} holds text that is not valid unicode") from None
        return
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise EventError(f"{where} holds an integer beyond 64 bits; store it as text")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise EventError(f"{where} holds a non-finite number; JSON cannot keep it")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventError(f"{where} has a non-text key {key!r}")
            check_json(key, f"{where} key")
            check_json(item, f"{where}.{key}")
    else:
        raise EventError(f"{where} holds a {type(value).__name__}; use JSON values (text, numbers, lists, objects)")
