"""`soul search`: find memories by meaning, by words, or both (projections/search.py)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click
import orjson

from journal.journal import Journal
from projections.memory import Memory
from projections.runner import ProjectionRunner
from projections.search import MODES, Hit
from projections.search import search as search_memory

EXCERPT = 72


@click.command()
@click.argument("query")
@click.option("--corpus", metavar="NAME", help="Only memories of this corpus.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True,
              help="hybrid: meaning and words fused; semantic: meaning only; "
                   "keyword: the exact words and identifiers.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="At most this many hits.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
@click.pass_context
def search(ctx: click.Context, query: str, corpus: str | None, mode: str, limit: int, as_json: bool) -> None:
    """Search the soul's memory for QUERY, best first.

    Brings the memory projection up to date with the journal first. One line per hit: score,
    type, time (UTC), journal sequence, and an excerpt around the first word of QUERY it holds.
    Keyword queries take web-search syntax: "a phrase", or, -word.
    """
    app = ctx.obj["app"] if ctx.obj else os.environ.get("SOUL_APP", "soul")
    with Journal(app) as journal, ProjectionRunner(journal, Memory()) as runner:
        _catch_up(runner)
        vector = None if mode == "keyword" else _embed(query)
        hits = search_memory(runner.conn, app, query, vector, mode=mode, corpus=corpus, limit=limit)
    for hit in hits:
        click.echo(orjson.dumps(hit_json(hit)).decode() if as_json else format_hit(hit, query))
    if not hits and not as_json:
        click.echo("no memory matches", err=True)


def _catch_up(runner: ProjectionRunner) -> None:
    figures = runner.status()
    if figures["lag"] < 10_000 or not sys.stderr.isatty():
        runner.catch_up()
        return
    start = figures["position"]
    with click.progressbar(length=figures["lag"], label="bringing memory up to date", file=sys.stderr) as bar:
        runner.catch_up(lambda position, end: bar.update(position - start - bar.pos))


def _embed(query: str) -> Any:
    from soul.agent.embedder import load_default_embedder  # loads MLX: only when a query vector is needed

    return load_default_embedder().embed([query])[0]


def excerpt(prose: str, query: str, width: int = EXCERPT) -> str:
    """About `width` characters of `prose` on one line, in whole words, starting a little before
    the first word of `query` it holds."""
    flat = " ".join(prose.split())
    lowered = flat.lower()
    found = [i for i in (lowered.find(w) for w in re.findall(r"[\w./:-]{3,}", query.lower())) if i >= 0]
    start = min(max(min(found) - width // 4, 0), max(len(flat) - width, 0)) if found else 0  # a full window
    text = flat[start : start + width]
    if start:
        text = "…" + text.split(" ", 1)[-1]
    if start + width < len(flat):
        text = text.rsplit(" ", 1)[0] + "…"
    return text


def format_hit(hit: Hit, query: str) -> str:
    return f"{hit.score:8.4f}  {hit.type:<14}  {hit.time:%Y-%m-%d %H:%M:%S}  {hit.seq:>8}  {excerpt(hit.prose, query)!r}"


def hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "score": round(hit.score, 6),
        "type": hit.type,
        "time": hit.time.isoformat(),
        "seq": hit.seq,
        "id": str(hit.id),
        "corpus": hit.corpus,
        "resonance": hit.resonance,
        "semantic_rank": hit.semantic_rank,
        "keyword_rank": hit.keyword_rank,
        "prose": hit.prose,
    }
