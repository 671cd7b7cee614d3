"""The soul's page: a person's look at the soul in a browser, served by `soul daemon --http`.

    GET /                   the page (page.html: one document, its CSS and JS inline; nothing
                            is fetched from elsewhere, so it works with no internet)
    GET /events/{seq}       the same page, opened at one event
    GET /api/lineage        {"chart": the lineage's SVG (evolution/plot.py) or null, "generations": rows}
    GET /api/journal        ?limit=N: the newest N events; ?after=SEQ: the events after SEQ (at most
                            MAX_EVENTS), which the page polls for; {"events": [...], "end": last seq}
    GET /api/search         ?q=WORDS[&mode=hybrid|semantic|keyword][&limit=N]: memory's best hits
    GET /api/events/{seq}   one event: its prose and metadata (the journal's entry JSON, no vector)

Read-only: every route is a GET and nothing here journals. A search brings the memory
projection up to date first, as `soul search` does (a view catching up, not a change to the soul).

The routes run in the HTTP server's worker threads (Starlette runs a plain function endpoint in
its thread pool), not on the thread that thinks, so each request opens its own journal
connection (about 8 ms on NATS over loopback) and, to search, its own Postgres connection, and
closes them when it answers: nothing is shared with the daemon's main thread, and nothing is left
open when the server stops. Search by meaning needs an embedder for the query: `page_routes`
takes one (the daemon's own; it is then called from the server's thread too, which MLX allows
since 0.31.2), and without one the page searches by words only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from typing import Any, Protocol

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from evolution.lineage import Generation, lineage
from evolution.plot import lineage_svg
from journal.connection import JournalUnavailable
from journal.embedded import ServiceError
from journal.errors import one_line
from journal.journal import Journal, entry_json
from projections.memory import Memory
from projections.runner import ProjectionRunner
from projections.search import MODES
from projections.search import search as search_memory

# The paths that serve only the page's HTML (no data: that is under /api/, behind the token): a
# browser opens them without a header, and the page reads the token from the URL's #token=.
SHELL = re.compile(r"/(?:events/\d+)?")
TAIL = 50  # events the page shows first
MAX_EVENTS = 500  # at most this many events in one answer
EXCERPT = 240  # characters of prose in a journal row or a hit; an event's own page has it all
HITS = 10


class QueryEmbedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


class Refused(Exception):
    """A request the page cannot answer as asked; `status` and the message say why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def page_routes(app: str, embedder: QueryEmbedder | None = None) -> list[BaseRoute]:
    """The page's routes for soul `app`; `embedder` embeds search queries (None: search by words)."""
    modes = list(MODES) if embedder is not None else ["keyword"]
    config = orjson.dumps({"app": app, "modes": modes}).decode().replace("<", "\\u003c")  # safe inside <script>
    html = resources.files(__package__).joinpath("page.html").read_text().replace("__CONFIG__", config)

    def page(request: Request) -> Response:
        return HTMLResponse(html)

    def lineage_data(request: Request) -> dict[str, Any]:
        with Journal(app) as journal:
            runs = lineage(journal)
        return {"chart": lineage_svg(runs), "generations": [_generation(g) for g in runs]}

    def journal_data(request: Request) -> dict[str, Any]:
        with Journal(app) as journal:
            end = journal.last_seq()
            if "after" in request.query_params:
                start, limit = _number(request, "after", 0) + 1, MAX_EVENTS
            else:
                limit = min(_number(request, "limit", TAIL, low=1), MAX_EVENTS)
                start = max(end - limit + 1, 1)
            entries = list(journal.read(start, limit=limit)) if start <= end else []
        return {"events": [_row(entry_json(e)) for e in entries], "end": end}

    def search_data(request: Request) -> dict[str, Any]:
        words = request.query_params.get("q", "").strip()
        if not words:
            raise Refused(400, "the search is empty: give some words (?q=...)")
        mode = request.query_params.get("mode") or modes[0]
        if mode not in modes:
            raise Refused(400, f"mode {mode!r} is not one this page searches by; one of {', '.join(modes)}"
                          + ("" if embedder else " (it was given no embedder, so words only)"))
        limit = min(_number(request, "limit", HITS, low=1), 100)
        vector = embedder.embed([words])[0] if embedder is not None and mode != "keyword" else None
        with Journal(app) as journal, ProjectionRunner(journal, Memory()) as runner:
            runner.catch_up()
            hits = search_memory(runner.conn, app, words, vector, mode=mode, limit=limit)
        return {"mode": mode, "hits": [_hit(asdict(h)) for h in hits]}

    def event_data(request: Request) -> dict[str, Any]:
        seq = request.path_params["seq"]
        with Journal(app) as journal:
            found = next(iter(journal.read(seq, limit=1)), None)
        if found is None or found.seq != seq:
            raise Refused(404, f"no event at seq {seq}: not journaled yet, or erased")
        return entry_json(found)

    return [
        Route("/", page, methods=["GET"]),
        Route("/events/{seq:int}", page, methods=["GET"]),
        Route("/api/lineage", _json(lineage_data), methods=["GET"]),
        Route("/api/journal", _json(journal_data), methods=["GET"]),
        Route("/api/search", _json(search_data), methods=["GET"]),
        Route("/api/events/{seq:int}", _json(event_data), methods=["GET"]),
    ]


def _json(read: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Response]:
    """An endpoint answering `read(request)` as JSON, and a refusal or an unreachable journal or
    Postgres as {"error": one line} with its status."""

    def endpoint(request: Request) -> Response:
        try:
            body, status = read(request), 200
        except Refused as e:
            body, status = {"error": str(e)}, e.status
        except (JournalUnavailable, ServiceError) as e:
            body, status = {"error": one_line(e)}, 503
        return Response(orjson.dumps(body), status, media_type="application/json")

    return endpoint


def _number(request: Request, name: str, default: int, low: int = 0) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < low:
        raise Refused(400, f"{name} must be a whole number >= {low}, not {value!r}")
    return int(value)


def _excerpt(prose: str) -> str:
    return prose if len(prose) <= EXCERPT else prose[:EXCERPT - 1] + "…"


def _row(event: dict[str, Any]) -> dict[str, Any]:
    """A journal row: the entry without what only its own page shows (data, hashes of the embedder)."""
    if event.get("undecodable"):
        return event
    return {key: event[key] for key in ("seq", "time", "type", "originator", "corpus")} | {
        "prose": _excerpt(event["prose"])}


def _hit(hit: dict[str, Any]) -> dict[str, Any]:
    return hit | {"prose": _excerpt(hit["prose"])}


def _generation(g: Generation) -> dict[str, Any]:
    seal = g.seal
    return {"generation": g.name, "status": g.status, "why": g.why, "cut": g.cut, "events": len(g.event_ids),
            "time": g.time, "max_drift": max(seal["drift"].values()) if seal.get("drift") else None,
            "perplexity": seal.get("perplexity"), "loss": seal.get("loss"), "recall": seal.get("recall")}
