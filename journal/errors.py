"""Errors shown to a person: one line each."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The first non-blank line of `e`'s message (the rest is detail), or its type's name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
