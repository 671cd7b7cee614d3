"""Progress of long commands on stderr: click's bar on a terminal, else a line every few seconds,
so a user whose stderr goes to a log, a pipe or a CI job still sees the work move."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

EVERY = 5.0  # seconds between two lines when stderr is not a terminal


class Lines:
    """click's progress bar as plain lines: `label: 120/2,000 files (6 %), 14 s, 8.6 files/s`,
    at most one every `every` seconds, and a last one at the end if any was written."""

    def __init__(self, length: int, label: str, unit: str = "", every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.length, self.label, self.unit, self.every, self.clock = length, label, unit, every, clock
        self.pos, self.said = 0, False
        self.started = self.last = clock()

    def __enter__(self) -> Lines:
        self.started = self.last = self.clock()
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None and self.said:
            self._say(self.clock())

    def update(self, steps: int) -> None:
        self.pos += steps
        now = self.clock()
        if now - self.last >= self.every:
            self._say(now)

    def _say(self, now: float) -> None:
        took = now - self.started
        unit = f" {self.unit}" if self.unit else ""
        share = f" ({100 * self.pos // self.length} %)" if self.length else ""
        rate = f", {self.pos / took:,.1f}{unit}/s" if took > 0 else ""
        click.echo(f"{self.label}: {self.pos:,}/{self.length:,}{unit}{share}, {took:,.0f} s{rate}", err=True)
        self.last, self.said = now, True


def progressbar(length: int, label: str, unit: str = "") -> Any:
    """A progress bar for `length` steps (`with ... as bar: bar.update(n)`; `bar.pos`, `bar.length`)."""
    if sys.stderr.isatty():
        return click.progressbar(length=length, label=label, file=sys.stderr)
    return Lines(length, label, unit)


class StageBars:
    """One progress bar per stage ("training", "merging"): call it with (stage, done, total)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = progressbar(total, f"{stage:<8}")
            self.bar.__enter__()
        self.bar.length = total
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.stage = None, None
