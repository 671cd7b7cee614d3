#!/usr/bin/env python
"""Turns through the daemon against the same turns in process; peer packets against raw JetStream.

    python ops/bench/daemon_bench.py [--model DIR] [--turns 3] [--packets 200] [--repeats 3] [--json]
    python ops/bench/daemon_bench.py --quick --model DIR     # seconds: the tests

Starts its own embedded nats-server and Postgres under a temporary SOUL_HOME (unless
SOUL_NATS_URL / SOUL_PG_URL name servers). The model is `--model`, else the embedded
SmolLM2-135M-Instruct, converted into the temporary home first (~1 minute).

1. Turns: a `soul daemon` process thinking for one soul, and a Soul opened in this process for
   another, on the same model with the same (default) configuration, each on a fresh journal.
   Turns alternate, in-process then daemon, each in a fresh conversation with the same words,
   so both think over the same window and (greedy decoding) stream the same reply. Measured as
   the caller sees it: time to the first streamed token, streamed characters a second after it
   (the same text either way), and the whole turn. The first turn of each is a warm-up.
   Baseline: in process. Target: the daemon's streaming rate >= 0.9 of in-process; the
   first-token and whole-turn overheads are shown in ms.
2. Packets: N packets to another soul, `send` (publish, acknowledged, into its inbox) then
   `Inbox.take` (journaled once with its receipt, then acknowledged), against raw nats-py on
   the same server with the same bytes: N `js.publish` into a work-queue stream, then N
   fetch-and-ack. Rates and their ratios, for information (the journaling is the point).

Exit status 1 if the target is missed. --quick: one measured turn of each and one round of 20
packets, to show that it runs (give it a small --model); it judges no target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (this folder: python puts a script's own folder on sys.path)

import nats  # noqa: E402
import numpy as np  # noqa: E402
from nats.js.api import RetentionPolicy, StreamConfig  # noqa: E402

from journal import codec  # noqa: E402
from journal.event import Embedder  # noqa: E402
from journal.journal import Journal  # noqa: E402
from evolution.weights.blas import reexec_with_optimized_blas  # noqa: E402
from soul.doors.daemon import attach, running  # noqa: E402
from soul.doors.peers import Inbox, packet, send  # noqa: E402
from journal.subjects import inbox

TARGET = 0.9
WORDS = "Tell me about the lighthouse on the northern cape and who keeps it."


def timed_turn(turn: Any, conversation: str) -> dict[str, float]:
    """One turn as its caller sees it: first streamed text, streaming rate, whole turn. The rate
    is in characters a second after the first piece: the daemon sends tokens that come faster
    than it publishes together, so pieces are not tokens; the text is the same."""
    pieces: list[tuple[float, int]] = []
    start = time.perf_counter()
    result = turn(WORDS, conversation=conversation, on_token=lambda text: pieces.append((time.perf_counter(), len(text))))
    end = time.perf_counter()
    streamed = sum(n for _, n in pieces[1:])
    return {"first_token_s": pieces[0][0] - start, "tokens": result.generation.generated_tokens,
            "chars_per_s": streamed / (pieces[-1][0] - pieces[0][0]), "turn_s": end - start}


def start_daemon(home: Path, app: str, model: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SOUL_HOME": str(home), "SOUL_APP": app, "SOUL_MODEL": str(model)}
    daemon = subprocess.Popen([sys.executable, "-m", "soul", "daemon"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(home / "daemon.log", "w"))
    deadline = time.monotonic() + 600
    while not ((state := running(home)) and state.get("pid") == daemon.pid and "subject" in state):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start; see {home / 'daemon.log'}")
        time.sleep(0.2)
    return daemon


def turns(home: Path, pg_url: str, model: Path, count: int) -> dict[str, Any]:
    from soul.agent.loop import Soul

    local_app, daemon_app = f"benchlocal{uuid.uuid4().hex[:8]}", f"benchdaemon{uuid.uuid4().hex[:8]}"
    daemon = start_daemon(home, daemon_app, model)
    local = Soul.open(local_app, model_dir=model)
    client = attach(daemon_app, home)
    assert client is not None
    rows: dict[str, list[dict[str, float]]] = {"in-process": [], "daemon": []}
    try:
        for i in range(count + 1):  # the first is a warm-up
            for name, turn in (("in-process", local.turn), ("daemon", client.turn)):
                row = timed_turn(turn, f"bench-{i}")
                if i:
                    rows[name].append(row)
    finally:
        client.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        local.close()
        served = Journal(daemon_app)
        delete_inbox(served, daemon_app)
        common.forget(served, pg_url)
        common.forget(Journal(local_app), pg_url)
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}
    base, served = median["in-process"], median["daemon"]
    return {
        "median": median,
        "stream_ratio": served["chars_per_s"] / base["chars_per_s"],
        "first_token_overhead_ms": 1000 * (served["first_token_s"] - base["first_token_s"]),
        "turn_overhead_ms": 1000 * (served["turn_s"] - base["turn_s"]),
        "same_reply_length": served["tokens"] == base["tokens"],
    }


def delete_inbox(journal: Journal, app: str) -> None:
    async def delete() -> None:
        try:
            await journal.bus.nc.jetstream().delete_stream(inbox(app)[0])
        except nats.js.errors.NotFoundError:
            pass

    journal.bus.run(delete())


def packets_soul(pg_url: str, count: int, vectors: np.ndarray) -> tuple[float, float]:
    sender_app, receiver_app = f"benchs{uuid.uuid4().hex[:8]}", f"benchr{uuid.uuid4().hex[:8]}"
    embedder = Embedder("bench@1", vectors.shape[1])
    with Journal(sender_app) as sender:
        receiver = Journal(receiver_app)
        start = time.perf_counter()
        for i, vector in enumerate(vectors):
            send(sender, receiver_app, packet(sender_app, f"packet {i} " + "x" * 200, vector, embedder))
        sent = time.perf_counter()
        box = Inbox(receiver, receiver_app)
        taken = 0
        while taken < count:
            taken += box.take(5) is not None
        done = time.perf_counter()
        box.close()
        delete_inbox(receiver, receiver_app)
        common.forget(receiver, pg_url)
    return count / (sent - start), count / (done - sent)


def packets_raw(url: str, count: int, vectors: np.ndarray) -> tuple[float, float]:
    embedder = Embedder("bench@1", vectors.shape[1])
    payloads = [codec.encode(packet("raw", f"packet {i} " + "x" * 200, v, embedder)) for i, v in enumerate(vectors)]
    name = f"BENCHRAW_{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[float, float]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[name.lower()], retention=RetentionPolicy.WORK_QUEUE))
        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            await js.publish(name.lower(), payload, headers={"Nats-Msg-Id": f"{name}-{i}"})
        sent = time.perf_counter()
        sub = await js.pull_subscribe(name.lower(), durable="bench", stream=name)
        for _ in range(count):
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack_sync()
        done = time.perf_counter()
        await js.delete_stream(name)
        await nc.close()
        return count / (sent - start), count / (done - sent)

    return asyncio.run(run())


def packets(url: str, pg_url: str, count: int, repeats: int) -> dict[str, Any]:
    vectors = np.random.default_rng(0).standard_normal((count, 384)).astype("<f4")
    soul_rates, raw_rates = [], []
    for _ in range(repeats):
        soul_rates.append(packets_soul(pg_url, count, vectors))
        raw_rates.append(packets_raw(url, count, vectors))
    soul_send, soul_take = (statistics.median(r[k] for r in soul_rates) for k in (0, 1))
    raw_send, raw_take = (statistics.median(r[k] for r in raw_rates) for k in (0, 1))
    return {"send_per_s": soul_send, "raw_publish_per_s": raw_send, "send_ratio": soul_send / raw_send,
            "take_per_s": soul_take, "raw_fetch_ack_per_s": raw_take, "take_ratio": soul_take / raw_take}


def main() -> None:
    reexec_with_optimized_blas()  # the daemon runs on it (soul's entry point): so must the baseline
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--turns", type=int, default=3, help="measured turns of each path (after one warm-up)")
    parser.add_argument("--packets", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="packet rounds of each path, interleaved")
    parser.add_argument("--quick", action="store_true", help="1 turn, 20 packets once, no target: for tests")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.packets, args.repeats = 1, min(args.packets, 20), 1
    with common.real_parts() as (home, url, pg_url):
        from evolution.weights.model import embedded_model_dir

        model = args.model or embedded_model_dir(home)
        figures = {"machine": common.machine(), "model": str(model.name),
                   "turns": turns(home, pg_url, model, args.turns), "packets": packets(url, pg_url, args.packets, args.repeats)}
    figures["pass"] = None if args.quick else figures["turns"]["stream_ratio"] >= TARGET  # tiny: timings mean nothing
    if args.json:
        print(json.dumps(figures))
    else:
        t, p = figures["turns"], figures["packets"]
        for name, row in t["median"].items():
            print(f"turn {name:<11} first token {row['first_token_s'] * 1000:8.1f} ms  {row['chars_per_s']:8.1f} chars/s  "
                  f"turn {row['turn_s']:7.2f} s  ({row['tokens']:.0f} tokens)")
        print(f"daemon/in-process streaming {t['stream_ratio']:.3f} (target >= {TARGET}"
              f"{'; not judged' if args.quick else ''}); first token "
              f"{t['first_token_overhead_ms']:+.1f} ms, whole turn {t['turn_overhead_ms']:+.1f} ms")
        print(f"packets send {p['send_per_s']:8.1f}/s vs raw publish {p['raw_publish_per_s']:8.1f}/s  ratio {p['send_ratio']:.3f}")
        print(f"packets take {p['take_per_s']:8.1f}/s vs raw fetch+ack {p['raw_fetch_ack_per_s']:8.1f}/s  ratio {p['take_ratio']:.3f}")
    if figures["pass"] is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
