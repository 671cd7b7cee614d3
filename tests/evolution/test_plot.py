"""The lineage chart: valid SVG, axes from zero with round ticks, guard bounds and rejected runs marked."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from evolution.config import EvolutionConfig
from evolution.lineage import Generation
from evolution.plot import lineage_panels, lineage_svg, nice_ticks, number

SVG = "{http://www.w3.org/2000/svg}"


def generation(number_: int, status: str, drift: float, perplexity: float, loss: tuple[float, float],
               why: str | None = None, **config: float) -> Generation:
    return Generation(number_, 1, f"run-{number_}-{status}", status,
                      curation={"config": EvolutionConfig(**config).as_dict()},
                      seal={"drift": {"a": drift / 2, "b": drift}, "perplexity": {"base": 20.0, "before": 20.0,
                                                                                  "after": perplexity},
                            "loss": {"before": loss[0], "after": loss[1]}}, why=why)


def texts(svg: str, kind: str | None = None) -> list[str]:
    """The chart's words, or those of one kind: x-tick (generations), y-tick (values), panel by panel."""
    return [t.text or "" for t in ElementTree.fromstring(svg).iter(f"{SVG}text") if kind in (None, t.get("class"))]


@pytest.mark.parametrize(("high", "ticks"), [
    (0.33, [0.0, 0.1, 0.2, 0.3, 0.4]), (46.0, [0.0, 20.0, 40.0, 60.0]), (4.2, [0.0, 2.0, 4.0, 6.0]),
    (9.0, [0.0, 2.5, 5.0, 7.5, 10.0]), (0.0, [0.0, 1.0]),
])
def test_ticks_start_at_zero_and_reach_the_highest_value_in_round_steps(high: float, ticks: list[float]) -> None:
    assert nice_ticks(high) == pytest.approx(ticks)


def test_numbers_read_as_a_person_writes_them() -> None:
    assert [number(v) for v in (0.0, 0.08123, 27.44, 19.6, 12345.6, 2.5e-05)] == [
        "0", "0.08123", "27.44", "19.6", "12,346", "2.5e-05"]


def test_the_chart_has_a_panel_per_measure_with_guards_and_rejected_runs() -> None:
    runs = [generation(1, "promoted", 0.08, 27.4, (2.9, 1.1)),
            generation(2, "rejected", 0.12, 41.0, (2.5, 0.9), why="anchor perplexity 41 is 2.05 times W0's"),
            generation(2, "promoted", 0.1, 30.1, (2.6, 1.3)),
            Generation(3, 1, "run-3", "trained")]  # interrupted before its seal: not drawn
    drift, perplexity, loss = lineage_panels(runs)
    assert drift.series[0].points == [(0, 0.0), (1, 0.08), (2, 0.1)] and drift.guard == 0.3
    assert perplexity.series[0].points == [(0, 20.0), (1, 27.4), (2, 30.1)] and perplexity.guard == 40.0
    assert [s.label for s in loss.series] == ["before training", "after training"] and loss.guard is None
    assert perplexity.rejected == ((2, 41.0, "gen-2 rejected: anchor perplexity 41 is 2.05 times W0's"),)

    svg = lineage_svg(runs)
    assert svg is not None
    shown = texts(svg)
    assert {"W0", "1", "2", "generation", "guard: max_drift 0.3", "guard: 2 × W0's 20", "rejected by the guard",
            "27.4", "30.1", "0.08"} <= set(shown)
    assert texts(svg, "x-tick") == ["W0", "1", "2"] * 3  # up to the last sealed generation, in every panel
    titles = [t.text for t in ElementTree.fromstring(svg).iter(f"{SVG}title")]
    assert "gen-2 rejected: anchor perplexity 41 is 2.05 times W0's" in titles


def test_lessons_recalled_get_a_panel_once_a_generation_was_sealed_with_them() -> None:
    older = generation(1, "promoted", 0.08, 27.4, (2.9, 1.1))  # sealed before recall was measured
    newer = generation(2, "promoted", 0.1, 30.1, (2.6, 1.3))
    newer.seal["recall"] = {"asked": 16, "answered": 12}
    unmeasured = generation(3, "rejected", 0.4, 27.0, (2.4, 1.0), why="drift 0.4 is above 0.3")
    measured = generation(3, "rejected", 0.5, 27.0, (2.4, 1.0), why="drift 0.5 is above 0.3")
    measured.seal["recall"] = {"asked": 16, "answered": 4}
    *_, recall = lineage_panels([older, newer, unmeasured, measured])
    assert recall.title.startswith("Its lessons' cues answered") and recall.series[0].points == [(2, 0.75)]
    assert recall.rejected == ((3, 0.25, "gen-3 rejected: drift 0.5 is above 0.3"),)  # no cross at 0 for no figure
    assert len(lineage_panels([older])) == 3


def test_a_guard_far_above_the_values_is_named_not_drawn() -> None:
    svg = lineage_svg([generation(1, "promoted", 0.01, 21.0, (3.0, 2.0), max_drift=10.0)])
    assert svg is not None
    assert "guard: max_drift 10 (above the chart)" in texts(svg)
    drift_ticks = texts(svg, "y-tick")[:4]
    assert drift_ticks == ["0", "0.005", "0.01", "0.015"]  # the axis fits the drift, not the bound


def test_no_chart_before_a_generation_is_sealed() -> None:
    assert lineage_svg([]) is None and lineage_svg([Generation(1, 1, "run", "curated")]) is None
