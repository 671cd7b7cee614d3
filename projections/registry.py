"""Every projection the soul keeps, by name: what `soul projections` and the daemon run."""

from __future__ import annotations

from projections.base import Projection
from projections.counts import EventCounts
from projections.memory import Memory

PROJECTIONS: dict[str, type[Projection]] = {p.name: p for p in (EventCounts, Memory)}
