"""`soul generations --plot FILE.png`: drift and evaluation across generations, as a PNG.

Drawn with numpy and written with zlib (PNG is a few zlib-compressed rows in chunks), so the
plot costs no plotting library: matplotlib would bring about 40 MB of dependencies for one
picture. Each panel is a line over generations 1..N with its title, the values at its top and
bottom, and a dashed guard line where a bound applies; a 3×5 pixel font labels them.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# 3×5 glyphs, rows top to bottom, "#" = ink.
GLYPHS = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. #.. #..", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.", ".": "... ... ... ... .#.", "-": "... ... ### ... ...",
    "/": "..# ..# .#. #.. #..", ":": "... .#. ... .#. ...", " ": "... ... ... ... ...",
    "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", "=": "... ### ... ### ...",
    "a": "... ##. ..# ### ###", "b": "#.. ##. #.# #.# ##.", "c": "... ### #.. #.. ###",
    "d": "..# .## #.# #.# .##", "e": ".#. #.# ### #.. .##", "f": ".## #.. ### #.. #..",
    "g": "### #.# ### ..# ##.", "h": "#.. ##. #.# #.# #.#", "i": ".#. ... .#. .#. .#.",
    "k": "#.. #.# ##. #.# #.#", "l": "##. .#. .#. .#. ###", "m": "... ### ### #.# #.#",
    "n": "... ##. #.# #.# #.#", "o": "... ### #.# #.# ###", "p": "... ### #.# ### #..",
    "r": "... #.# ##. #.. #..", "s": "... .## .#. ..# ##.", "t": ".#. ### .#. .#. .##",
    "u": "... #.# #.# #.# ###", "v": "... #.# #.# #.# .#.", "w": "... #.# #.# ### ###",
    "x": "... #.# .#. .#. #.#", "y": "#.# #.# ### ..# ##.", "z": "... ### .#. #.. ###",
}
SCALE = 2  # font pixels per glyph pixel
WIDTH, PANEL, MARGIN = 640, 200, 48
INK, GRID, GUARD = (40, 40, 40), (225, 225, 225), (200, 40, 40)
COLOURS = ((30, 90, 200), (30, 150, 60), (200, 120, 20))


@dataclass(frozen=True)
class Panel:
    title: str
    series: dict[str, list[float | None]]  # legend label -> one value per generation (None: not measured)
    guard: float | None = None


def plot(path: Path, generations: list[int], panels: list[Panel]) -> None:
    """Write the panels, stacked, one x position per generation, to `path` as a PNG."""
    image = np.full((PANEL * len(panels), WIDTH, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        _draw_panel(image[i * PANEL:(i + 1) * PANEL], generations, panel)
    write_png(path, image)


def _draw_panel(canvas: np.ndarray, generations: list[int], panel: Panel) -> None:
    height, width = canvas.shape[:2]
    left, right, top, bottom = MARGIN, width - 16, 28, height - 24
    values = [v for s in panel.series.values() for v in s if v is not None and math.isfinite(v)]
    values += [panel.guard] if panel.guard is not None else []
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)

    def x_of(i: int) -> int:
        if len(generations) == 1:
            return (left + right) // 2
        return left + (right - left) * i // (len(generations) - 1)

    def y_of(v: float) -> int:
        return round(bottom - (bottom - top) * (v - low) / (high - low))

    canvas[top:bottom + 1, left] = INK
    canvas[bottom, left:right + 1] = INK
    for i, number in enumerate(generations):
        canvas[top:bottom, x_of(i)] = GRID
        _text(canvas, str(number), x_of(i) - 3, bottom + 6)
    if panel.guard is not None:
        y = y_of(panel.guard)
        for x in range(left, right, 8):
            canvas[y, x:x + 4] = GUARD
    _text(canvas, _number(high), 2, top - 2)
    _text(canvas, _number(low), 2, bottom - 10)
    _text(canvas, panel.title, left, 6)
    legend_x = left + 8 + 8 * len(panel.title)
    for (label, series), colour in zip(panel.series.items(), COLOURS):
        canvas[10:13, legend_x:legend_x + 12] = colour
        _text(canvas, label, legend_x + 16, 6)
        legend_x += 16 + 8 * len(label) + 16
        points = [(x_of(i), y_of(v)) for i, v in enumerate(series) if v is not None and math.isfinite(v)]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            _line(canvas, x0, y0, x1, y1, colour)
        for x, y in points:
            canvas[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = colour


def _number(v: float) -> str:
    return f"{v:.4g}".replace("e+0", "e").replace("e-0", "e-")


def _text(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    for char in text.lower():
        rows = GLYPHS.get(char, GLYPHS[" "]).split()
        for r, row in enumerate(rows):
            for c, ink in enumerate(row):
                if ink == "#":
                    y0, x0 = y + r * SCALE, x + c * SCALE
                    canvas[y0:y0 + SCALE, x0:x0 + SCALE] = INK
        x += 4 * SCALE


def _line(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    xs = np.rint(np.linspace(x0, x1, steps + 1)).astype(int)
    ys = np.rint(np.linspace(y0, y1, steps + 1)).astype(int)
    canvas[ys, xs] = colour
    canvas[np.minimum(ys + 1, canvas.shape[0] - 1), xs] = colour


def write_png(path: Path, image: np.ndarray) -> None:
    """An 8-bit RGB PNG of `image` (height × width × 3, uint8)."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                           + chunk(b"IEND", b""))
