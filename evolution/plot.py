"""The lineage as a chart: `soul generations --plot FILE.svg` and the soul's page (soul/doors/page.py).

One panel per measure that `generation_sealed` journals for every generation: the largest
per-tensor drift from W0, the anchor-set perplexity (W0's at generation 0), and the curated
rows' loss before and after training, and, for generations sealed with it, the share of their
lessons' cues they answer with no memory (taught-fact recall in the words it was taught:
ops/bench/learning_bench.py measures recall of questions phrased otherwise). Every y axis
starts at zero, so a line's height compares with the others'; a dashed red line is the guard's
bound where one applies, and the runs the guard rejected are red crosses at their generation.

Written as SVG text, with no plotting library: matplotlib would bring about 40 MB of
dependencies for one picture, and a browser or any image viewer renders SVG with real fonts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from evolution.lineage import Generation

WIDTH, PANEL_HEIGHT = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 58, 44  # a panel's margins around its plot area
INSET = 28  # the first and last generation's distance from the plot area's sides
FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
INK, GRID, MUTED, GUARD = "#222", "#e3e3e3", "#777", "#c62828"
COLOURS = ("#1565c0", "#2e7d32")
LABELLED_POINTS = 12  # up to this many generations each point shows its value
OFF_CHART = 2.5  # a guard bound above this many times the largest value is named, not drawn


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[int, float]]  # (generation number, value); 0 is W0


@dataclass(frozen=True)
class Panel:
    title: str
    series: list[Series]
    guard: float | None = None  # the bound the guard holds this measure to
    guard_label: str = ""
    rejected: tuple[tuple[int, float, str], ...] = ()  # (generation, value, why)


def sealed(generations: list[Generation]) -> list[Generation]:
    """The runs of a lineage that got as far as a seal (promoted or rejected): those with figures."""
    return [g for g in generations if g.seal.get("perplexity") and g.status in ("promoted", "rejected")]


def lineage_panels(generations: list[Generation]) -> list[Panel]:
    """The panels of a lineage (`evolution.lineage.lineage`): promoted generations as lines,
    rejected runs as crosses, the latest run's guard bounds as dashed lines."""
    runs = sealed(generations)
    if not runs:
        return []
    promoted = [g for g in runs if g.status == "promoted"]
    rejected = [g for g in runs if g.status == "rejected"]
    config = runs[-1].curation["config"]
    base = runs[0].seal["perplexity"]["base"]

    def drift(g: Generation) -> float:
        return max(g.seal["drift"].values())

    def ppl(g: Generation) -> float:
        return g.seal["perplexity"]["after"]

    def crosses(measure: Callable[[Generation], float],
                among: list[Generation] = rejected) -> tuple[tuple[int, float, str], ...]:
        return tuple((g.number, measure(g), f"{g.name} rejected: {g.why}") for g in among)

    max_drift, ratio = config["max_drift"], config["max_perplexity_ratio"]
    panels = [
        Panel("Largest per-tensor drift from W0", [Series("drift", [(0, 0.0)] + [(g.number, drift(g)) for g in promoted])],
              max_drift, f"guard: max_drift {max_drift:g}", crosses(drift)),
        Panel("Anchor-set perplexity (lower is better)",
              [Series("anchor perplexity", [(0, base)] + [(g.number, ppl(g)) for g in promoted])],
              base * ratio, f"guard: {ratio:g} × W0's {number(base)}", crosses(ppl)),
        Panel("Loss on the generation's curated rows",
              [Series("before training", [(g.number, g.seal["loss"]["before"]) for g in promoted]),
               Series("after training", [(g.number, g.seal["loss"]["after"]) for g in promoted])],
              rejected=crosses(lambda g: g.seal["loss"]["after"])),
    ]
    def was_asked(g: Generation) -> bool:
        return bool((g.seal.get("recall") or {}).get("asked"))

    asked = [g for g in promoted if was_asked(g)]
    if asked:
        def recall(g: Generation) -> float:
            return g.seal["recall"]["answered"] / g.seal["recall"]["asked"]

        panels.append(Panel("Its lessons' cues answered with no memory (share)",
                            [Series("answered", [(g.number, recall(g)) for g in asked])],
                            rejected=crosses(recall, [g for g in rejected if was_asked(g)])))
    return panels


def lineage_svg(generations: list[Generation]) -> str | None:
    """The lineage's chart as an SVG document, or None when no run was sealed yet."""
    panels = lineage_panels(generations)
    if not panels:
        return None
    last = max(g.number for g in sealed(generations))
    return svg(panels, last)


def svg(panels: list[Panel], last: int) -> str:
    """`panels` stacked, each over generations 0 (W0) .. `last`."""
    height = PANEL_HEIGHT * len(panels)
    body = "".join(_panel(p, last, i * PANEL_HEIGHT) for i, p in enumerate(panels))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}" font-size="13" role="img">'
            f'<title>The lineage: drift, anchor perplexity and curated loss per generation</title>'
            f'<rect width="{WIDTH}" height="{height}" fill="white"/>{body}</svg>\n')


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / (count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def number(v: float) -> str:
    """A value as a person reads it: up to 4 significant digits, no exponent for everyday sizes."""
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return f"{v:.3g}"


def _panel(panel: Panel, last: int, y0: int) -> str:
    left, right, top, bottom = LEFT, WIDTH - RIGHT, y0 + TOP, y0 + PANEL_HEIGHT - BOTTOM
    values = [v for s in panel.series for _, v in s.points] + [v for _, v, _ in panel.rejected]
    # A guard far above the data (a test's wide-open bounds) would flatten every line: named only.
    drawn = panel.guard if panel.guard is not None and panel.guard <= OFF_CHART * max(values, default=0.0) else None
    ticks = nice_ticks(max([*values, drawn] if drawn is not None else values, default=1.0) * 1.15)
    high = ticks[-1]
    span = max(last, 1)

    def x(generation: int) -> float:  # inset from the axes, so the end points and their values stay clear
        return left + INSET + (right - left - 2 * INSET) * generation / span

    def y(v: float) -> float:
        return bottom - (bottom - top) * v / high

    out = [f'<g class="panel"><text x="{left}" y="{y0 + 24}" font-size="15" font-weight="bold" fill="{INK}">'
           f'{escape(panel.title)}</text>']
    for tick in ticks:  # horizontal grid and the y axis's values, from zero
        out.append(f'<line x1="{left}" x2="{right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="{GRID}"/>'
                   f'<text class="y-tick" x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="{MUTED}">'
                   f'{number(tick)}</text>')
    every = max(1, math.ceil((last + 1) / 16))  # at most ~16 labels on the x axis
    for generation in range(0, last + 1, every):
        label = "W0" if generation == 0 else str(generation)
        out.append(f'<text class="x-tick" x="{x(generation):.1f}" y="{bottom + 18}" text-anchor="middle" '
                   f'fill="{MUTED}">{label}</text>')
    out.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 36}" text-anchor="middle" fill="{MUTED}">'
               f'generation</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="{INK}"/>'
               f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{INK}"/>')
    legend = [(s.label, COLOURS[i % len(COLOURS)], "line") for i, s in enumerate(panel.series)]
    if drawn is not None:
        g = y(drawn)
        out.append(f'<line x1="{left}" x2="{right}" y1="{g:.1f}" y2="{g:.1f}" stroke="{GUARD}" '
                   f'stroke-width="1.5" stroke-dasharray="6 4"/>')
        legend.append((panel.guard_label, GUARD, "dash"))
    elif panel.guard is not None:
        legend.append((f"{panel.guard_label} (above the chart)", GUARD, "dash"))
    labelled = last + 1 <= LABELLED_POINTS
    for i, series in enumerate(panel.series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in series.points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        for n, v in series.points:
            out.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="4" fill="{colour}">'
                       f'<title>{"W0" if n == 0 else f"gen-{n}"}: {escape(series.label)} {number(v)}</title></circle>')
            if labelled:  # the first series' values above its points, the second's below
                dy = -9 if i == 0 else 19
                out.append(f'<text x="{x(n):.1f}" y="{y(v) + dy:.1f}" text-anchor="middle" font-size="12" '
                           f'fill="{colour}" stroke="white" stroke-width="3" paint-order="stroke">{number(v)}</text>')
    promoted = {n for s in panel.series for n, _ in s.points}
    for n, v, why in panel.rejected:  # a rejected run came before the promoted one of its number: just left of it
        cx, cy = x(n) - (12 if n in promoted else 0), y(v)
        out.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},{cy + 5:.1f} '
                   f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="{GUARD}" stroke-width="2.5"><title>{escape(why)}</title></path>')
    if panel.rejected:
        legend.append(("rejected by the guard", GUARD, "cross"))
    out.append(_legend(legend, left, y0 + 44))
    out.append("</g>")
    return "".join(out)


def _legend(entries: list[tuple[str, str, str]], x: float, y: float) -> str:
    out = []
    for label, colour, kind in entries:
        if kind == "cross":
            out.append(f'<path d="M{x + 5},{y - 9} L{x + 15},{y + 1} M{x + 5},{y + 1} L{x + 15},{y - 9}" '
                       f'stroke="{colour}" stroke-width="2.5"/>')
        else:
            dash = ' stroke-dasharray="6 4"' if kind == "dash" else ""
            out.append(f'<line x1="{x}" x2="{x + 20}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{x + 26}" y="{y}" fill="{INK}">{escape(label)}</text>')
        x += 26 + 7.5 * len(label) + 22  # DejaVu Sans at 13 px: about 7.5 px a character
    return "".join(out)
