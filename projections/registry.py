"""Every projection the soul keeps, by name: what `soul projections` and the daemon run."""

from __future__ import annotations

from projections.base import Projection
from projections.corpora import Corpora
from projections.counts import EventCounts
from projections.memory import Memory
from projections.tasks import Tasks
from projections.turns import Turns

PROJECTIONS: dict[str, type[Projection]] = {p.name: p for p in (EventCounts, Memory, Corpora, Turns, Tasks)}
