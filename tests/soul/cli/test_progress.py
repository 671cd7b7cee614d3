"""Progress on stderr when it is not a terminal: a line every few seconds (soul/cli/progress.py)."""

from __future__ import annotations

import pytest

from soul.cli.progress import Lines, StageBars


def test_lines_say_where_the_work_is_every_few_seconds_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    with Lines(2000, "ingesting mylib", "files", every=5.0, clock=lambda: now[0]) as bar:
        for _ in range(48):
            now[0] += 0.25  # 12 s in all
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["ingesting mylib: 20/2,000 files (1 %), 5 s, 4.0 files/s",
                     "ingesting mylib: 40/2,000 files (2 %), 10 s, 4.0 files/s",
                     "ingesting mylib: 48/2,000 files (2 %), 12 s, 4.0 files/s"]


def test_short_work_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with Lines(10, "merging", clock=lambda: 0.0) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_stage_bars_follow_each_stage(capsys: pytest.CaptureFixture[str]) -> None:
    bars = StageBars()  # stderr is captured, not a terminal: plain lines
    bars("training", 3, 30)
    assert bars.stage == "training" and (bars.bar.pos, bars.bar.length) == (3, 30)
    bars("merging", 1, 4)
    assert bars.stage == "merging" and bars.bar.pos == 1
    bars.close()
    assert bars.bar is None
