"""When the daemon evolves the soul on its own: once every `every` (a week by default) since the
last evolve run ended, whatever that run's outcome ("nothing to curate" counts: it is journaled
like any other, so an idle soul is not asked again every minute)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from evolution.config import EvolutionConfig
from evolution.lineage import last_event
from journal.journal import Journal

DEFAULT_EVERY = timedelta(days=7)
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_every(text: str) -> timedelta:
    """A period written as a number and a unit: 90s, 30m, 12h, 7d, 1w."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a period; write a positive number and a unit: 90s, 30m, 12h, 7d or 1w")
    return timedelta(**{UNITS[match.group(2)]: float(match.group(1))})


def due(journal: Journal, now: datetime, every: timedelta = DEFAULT_EVERY) -> bool:
    """Whether `every` has passed since the lineage's last event (always, before the first run)."""
    last = last_event(journal)
    return last is None or now - last.timestamp >= every


def run_scheduled(journal: Journal, home: Path, now: datetime, every: timedelta = DEFAULT_EVERY,
                  config: EvolutionConfig | None = None, model: Path | None = None):
    """Evolve once if it is due; the journaled `Outcome` (promoted, rejected, nothing to curate),
    or None when it is not due yet. `model` (else SOUL_MODEL, else the embedded SmolLM2) is W0.
    Raises what `evolve` raises, e.g. StoreError while a manual `soul evolve` holds the store."""
    if not due(journal, now, every):
        return None
    from evolution.evolve import base_model, evolve  # mlx-lm: only when a run is due

    return evolve(journal, home, base_model(model, home), config or EvolutionConfig())
