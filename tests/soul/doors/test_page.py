"""The soul's page in a real headless Chromium, served by uvicorn from a real journal and Postgres:
the lineage chart, a memory search with links to its events, the journal's tail, one event's page;
and its JSON routes, which the page polls."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html import unescape
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from evolution.config import EvolutionConfig
from evolution.lineage import record
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from soul.doors.page import page_routes

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 1100)
BRIDGE = "The bridge over the Ouse opens at noon on Fridays."


@pytest.fixture(scope="module")
def browser() -> Path:
    if not CHROMIUM.exists():
        message = "Chromium is not installed: ops/test installs it (apt-get install chromium) when run as root"
        if sys.platform == "linux":
            pytest.fail(message)
        pytest.skip(message + "; this test runs on Linux")
    return CHROMIUM


@pytest.fixture(scope="module")
def embedder():
    from soul.agent.embedder import load_default_embedder

    return load_default_embedder()


@contextmanager
def serving(routes: Sequence[BaseRoute]) -> Iterator[str]:
    """The routes served by uvicorn on a free loopback port, in a thread; the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=list(routes)), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def chromium(browser: Path, profile: Path, url: str, *action: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on `url` with `action` (--dump-dom, --screenshot=FILE), after the page's
    scripts have run: virtual time stands still while its requests are answered."""
    done = subprocess.run([str(browser), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                           "--virtual-time-budget=5000", *action, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def journal_talk(journal: Journal, embedder) -> dict[str, int]:
    """A short conversation, embedded by the real MiniLM; each prose's seq."""
    talk, seqs, cause = uuid.uuid4(), {}, None
    for kind, prose in (("perception", BRIDGE), ("thought", "Noted: the bridge opens at noon on Fridays."),
                        ("perception", "My sister Oona keeps bees in Lewes."),
                        ("thought", "Bees in Lewes, kept by your sister Oona: I will remember.")):
        event = BifocalEvent(kind, prose, embedder.embed([prose])[0], embedder.id, talk, causation_id=cause,
                             data={"source": "user"} if kind == "perception" else {})
        seqs[prose], event = journal.add(event)
        cause = event.id
    return seqs


def journal_generation(journal: Journal, number: int, outcome: str, drift: float, perplexity: float,
                       loss: tuple[float, float], cut: int) -> None:
    """One evolve run's lineage events, as evolution/evolve.py journals them (figures given)."""
    run, config = str(uuid.uuid4()), EvolutionConfig().as_dict()
    base = {"generation": number, "epoch": 1}
    record(journal, "curation_sealed", f"gen-{number}: curated", run,
           {**base, "after_seq": 0, "cut": cut, "event_ids": [str(uuid.uuid4())] * 3, "config": config})
    root = uuid.uuid4().hex * 2
    record(journal, "generation_sealed", f"gen-{number}: sealed", run,
           {**base, "root_sha256": root, "drift": {"model.layers.0.mlp.up_proj.weight": drift},
            "perplexity": {"base": 19.6, "before": 19.6, "after": perplexity},
            "loss": {"before": loss[0], "after": loss[1]}})
    if outcome == "promoted":
        record(journal, "generation_promoted", f"gen-{number} promoted", run, {**base, "root_sha256": root})
    else:
        record(journal, "generation_rejected", f"gen-{number} rejected", run,
               {**base, "why": outcome, "root_sha256": root})


@pytest.fixture
def soul(journal: Journal, embedder) -> dict[str, int]:
    """A journal with a conversation and a lineage of gen-1, a rejected gen-2 and gen-2."""
    seqs = journal_talk(journal, embedder)
    cut = journal.last_seq()
    journal_generation(journal, 1, "promoted", 0.081, 27.4, (2.91, 1.12), cut)
    journal_generation(journal, 2, "anchor perplexity 40.2 is 2.05 times W0's", 0.12, 40.2, (2.5, 0.9), cut)
    journal_generation(journal, 2, "promoted", 0.1, 30.1, (2.6, 1.3), cut)
    return seqs


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_page_shows_the_lineage_chart_a_search_and_the_journal_in_chromium(
        browser: Path, journal: Journal, soul: dict[str, int], embedder, tmp_path: Path) -> None:
    with serving(page_routes(journal.app, embedder)) as base:
        shot = tmp_path / "page.png"
        chromium(browser, tmp_path / "profile", f"{base}/?q=when+does+the+bridge+open", f"--screenshot={shot}")
        dom = unescape(chromium(browser, tmp_path / "profile", f"{base}/?q=when+does+the+bridge+open",
                                "--dump-dom").stdout)
        event_dom = unescape(chromium(browser, tmp_path / "profile", f"{base}/events/{soul[BRIDGE]}",
                                      "--dump-dom").stdout)

    assert png_size(shot) == WINDOW and shot.stat().st_size > 40_000  # a blank page is a few KB
    chart = dom.split('<div id="chart" class="">', 1)[1].split("</div>", 1)[0]
    assert chart.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    for title in ("Largest per-tensor drift from W0", "Anchor-set perplexity (lower is better)",
                  "Loss on the generation's curated rows", "rejected by the guard", "guard: 2 × W0's 19.6"):
        assert title in chart
    assert "rejected (anchor perplexity 40.2 is 2.05 times W0's)" in dom  # the lineage's table

    hits = dom.split('<ol id="hits">', 1)[1].split("</ol>", 1)[0]
    first = hits.split('<li class="hit">')[1]
    assert f'href="/events/{soul[BRIDGE]}"' in hits and "bridge" in first and "meaning and words" in dom

    end = journal.last_seq()
    assert f"live · last event #{end}" in dom
    tail = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert tail.index(f'href="/events/{end}"') < tail.index(f'href="/events/{soul[BRIDGE]}"')  # newest first
    assert BRIDGE in tail and "gen-2 promoted" in tail

    assert f"Event #{soul[BRIDGE]} · perception" in event_dom and f"<pre id=\"event-prose\">{BRIDGE}</pre>" in event_dom
    assert '"source": "user"' in event_dom and "all-MiniLM-L6-v2" in event_dom


def test_the_journal_route_gives_the_newest_then_what_came_after(journal: Journal, soul: dict[str, int]) -> None:
    with serving(page_routes(journal.app)) as base:
        status, newest = get(f"{base}/api/journal?limit=3")
        end = newest["end"]
        assert status == 200 and [e["seq"] for e in newest["events"]] == [end - 2, end - 1, end]
        assert get(f"{base}/api/journal?after={end}")[1] == {"events": [], "end": end}
        seq, _ = journal.add(BifocalEvent("perception", "a new thing, said " + "at length " * 40, [], NO_EMBEDDER,
                                          uuid.uuid4()))
        [row] = get(f"{base}/api/journal?after={end}")[1]["events"]
        assert row["seq"] == seq and row["type"] == "perception" and len(row["prose"]) == 240
        assert row["prose"].endswith("…") and "data" not in row

        status, event = get(f"{base}/api/events/{seq}")
        assert status == 200 and event["prose"].endswith("at length ") and "vector" not in event
        assert get(f"{base}/api/events/{seq + 1}") == (404, {"error": f"no event at seq {seq + 1}: not journaled yet, "
                                                                       "or erased"})
        assert get(f"{base}/api/journal?limit=0")[0] == 400


def test_without_an_embedder_the_page_searches_by_words(journal: Journal, soul: dict[str, int]) -> None:
    with serving(page_routes(journal.app)) as base:
        status, found = get(f"{base}/api/search?q=Oona")
        assert status == 200 and found["mode"] == "keyword"
        assert {h["seq"] for h in found["hits"]} == {soul["My sister Oona keeps bees in Lewes."],
                                                     soul["Bees in Lewes, kept by your sister Oona: I will remember."]}
        status, refused = get(f"{base}/api/search?q=Oona&mode=semantic")
        assert status == 400 and refused["error"] == ("mode 'semantic' is not one this page searches by; one of "
                                                      "keyword (it was given no embedder, so words only)")
        assert get(f"{base}/api/search?q=+")[1] == {"error": "the search is empty: give some words (?q=...)"}
        with urllib.request.urlopen(f"{base}/", timeout=30) as page:
            html = page.read().decode()
        assert f'"app":"{journal.app}","modes":["keyword"]' in html and "://" not in html  # nothing from elsewhere


def test_an_unreachable_journal_is_one_line_the_page_shows(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(page_routes(journal.app)) as base:
        monkeypatch.setenv("SOUL_NATS_URL", "nats://127.0.0.1:9")  # each request opens its connection anew
        monkeypatch.setenv("SOUL_NATS_TIMEOUT", "1")
        status, answer = get(f"{base}/api/journal")
    assert status == 503 and "127.0.0.1:9" in answer["error"] and "\n" not in answer["error"]
