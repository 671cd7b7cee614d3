"""The soul's daemon: one per soul home, serving turns over NATS and taking in its peers' packets.

- **Lock**: `$SOUL_HOME/daemon.lock`, held with `fcntl.flock` for the daemon's life and holding
  its pid, start time, app and subject as JSON. A second daemon finds it held and refuses, naming
  the pid; the kernel lets go of a killed daemon's lock, so a stale file is simply taken over.
  Nothing signals the pid unless it is still the process that started then (`same_process`).
- **Turns**: request-reply on `soulrpc.<app>.turn`, outside every journal stream's subjects
  (`soul.<app>.>`). The daemon answers each request on its reply inbox with `accepted`, then
  one `token` message per streamed piece of text, then `done` (the turn's result as JSON) or
  `error` (one line); the `Soul-Part` header says which. A request is JSON: prose, source,
  conversation, memory (false: a turn without memory, Soul.answer's), max_tokens and
  temperature (null: the soul's own). Turns run one at a time, in arrival order, on the main thread.
- **Peers**: packets from other souls are taken from the inbox (soul/doors/peers.py) by a thread that
  hands them to the main thread, which journals each once and answers it like any perception:
  all of the soul's work (journal, embedder, mind) happens on the main thread.
- **MCP**: the external agents the soul calls (soul/doors/mcp_client.py) keep one session per
  server for the daemon's life, reused across turns and closed when it stops.
- **HTTP** (opt-in, soul/doors/http.py): an OpenAI-compatible API served by uvicorn on a thread
  of its own; its chat completions join the same queue as NATS turns, for the main thread.
- **Tasks**: when no turn waits, it takes one step of the open task left longest
  (soul/agent/tasks.py), so a user's turn goes first between two steps. A step that fails is
  tried again after a pause; after TASK_FAILURES in a row the task finishes as failed.
- **Evolution** (opt-in): when idle and no task is open, it runs the evolution cadence it was given (a weekly
  `soul evolve`, evolution/cadence.py); turns that come meanwhile wait for it.
- **State**: none of its own. On start it answers the perceptions a crash left unanswered; on
  SIGTERM or SIGINT it abandons the turn in progress before its thought is journaled (the
  perception stays pending and is answered at the next start), releases the lock and closes
  its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from journal.embedded import same_process, soul_home, started_at
from journal.errors import one_line
from journal.journal import Journal
from journal.subjects import turn_subject
from projections.turns import Turns, unanswered
from soul.doors.mcp_client import kept_sessions
from soul.doors.peers import ACK_WAIT, Inbox

if TYPE_CHECKING:
    import socket

    from soul.doors.http import Asked, HttpDoor, Selves, Server

log = logging.getLogger("soul.daemon")

PART = "Soul-Part"  # header naming what a reply message is: accepted | token | done | error
ACCEPT_TIMEOUT = 10.0  # seconds a client waits for a running daemon to take its request
INBOX_POLL = 1.0  # seconds the inbox thread waits for a packet before looking at the stop flag
EVOLVE_CHECK = 60.0  # seconds between two looks at the evolution cadence
TASK_CHECK = 1.0  # seconds between two looks for open tasks while there are none
TASK_FAILURES = 3  # failed steps in a row that end a task as failed
TASK_PAUSE = 5.0  # seconds before a failed step is tried again, doubled with each failure
COMMAND = "soul daemon"  # in a daemon's command line: how a lock without a start time (an older one) is verified


class DaemonError(RuntimeError):
    """The daemon cannot start, or a client cannot get its turn served; the message says why."""


class Abandoned(Exception):
    """Raised from the token callback to stop a turn when the daemon is asked to stop."""


# -- the lock --------------------------------------------------------------------------------


def lock_path(home: Path) -> Path:
    return home / "daemon.lock"


class DaemonLock:
    """The exclusive lock that makes a daemon the one of its soul home."""

    def __init__(self, home: Path):
        self.path = lock_path(home)
        self.file: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        for attempt in range(5):  # a client's look at the lock (`running`) holds it for a moment
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05 * attempt)
        else:
            file.seek(0)
            pid = _state(file.read()).get("pid", "unknown")
            file.close()
            raise DaemonError(f"a soul daemon already runs for {self.path.parent} (pid {pid})")
        self.file = file
        self.write()

    def write(self, **state: Any) -> None:
        """Replace what the lock file says (clients read it to find the daemon): this process's pid
        and start time, and `state`."""
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "started": started_at(os.getpid()), **state}))
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def running(home: Path) -> dict[str, Any] | None:
    """What the running daemon of `home` wrote in its lock ({} while it starts), or None if
    no daemon holds the lock."""
    try:
        file = open(lock_path(home))
    except FileNotFoundError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _state(file.read())
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


def _state(text: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except ValueError:  # being written: the daemon is starting
        return {}
    return state if isinstance(state, dict) else {}


# -- the daemon ------------------------------------------------------------------------------


class Daemon:
    """Serves the turns of soul `app` from `home` until SIGTERM or SIGINT."""

    def __init__(self, app: str, home: Path, open_soul: Callable[[], Any],
                 evolve: Callable[[Journal], Any] | None = None, http: HttpDoor | None = None):
        self.app, self.home, self.open_soul = app, home, open_soul
        self.evolve, self.next_evolve = evolve, 0.0  # evolve(journal): an Outcome, or None when not due
        self.http, self.http_url = http, None  # the HTTP door asked for; its URL once it serves
        self.lock = DaemonLock(home)
        self.work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self.next_task_check = 0.0
        self.task_failures: dict[Any, tuple[int, float]] = {}  # task id -> (failures in a row, when to try again)

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def serve(self, on_ready: Callable[[str], None] = lambda _: None) -> None:
        self.lock.acquire()
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with self._listen() or contextlib.nullcontext() as sock:  # before the model: a taken port fails at once
                soul = self.open_soul()
                try:
                    with kept_sessions(self.home):  # MCP servers the soul calls stay connected between calls
                        self._serve(soul, sock, on_ready)
                finally:
                    soul.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.lock.release()

    def _listen(self) -> socket.socket | None:
        if self.http is None:
            return None
        from soul.doors.mcp_server import listen

        try:
            return listen(self.http.host, self.http.port)
        except OSError as e:
            raise DaemonError(f"cannot listen on {self.http.host}:{self.http.port}: {e.strerror or e}") from None

    def _serve(self, soul: Any, sock: socket.socket | None, on_ready: Callable[[str], None]) -> None:
        connection = soul.journal.bus
        subject = turn_subject(self.app)

        async def take(msg: Any) -> None:  # on the connection's loop: queue it, say it is queued
            self.work.put(("turn", msg))
            await connection.nc.publish(msg.reply, b"", headers={PART: "accepted"})

        # A queue group: daemons of other homes on the same NATS and journal share the work.
        subscription = connection.run(connection.nc.subscribe(subject, queue="daemon", cb=take))
        inbox = Inbox(soul.journal, self.app, soul.embedder)
        inbox_thread = threading.Thread(target=self._take_packets, args=(inbox,), name="soul-inbox", daemon=True)
        inbox_thread.start()
        server = selves = None
        try:
            if sock is not None:
                server, selves = self._serve_http(soul, sock)
            self.lock.write(app=self.app, subject=subject, model=soul.mind.model_id,
                            **({"http": self.http_url} if self.http_url else {}))
            on_ready(subject)
            soul.catch_up(Turns.name)
            for conversation, _ in unanswered(soul.conn, soul.app):
                self._answer_pending(soul, conversation)
            while not self.stopping.is_set():
                try:
                    kind, item = self.work.get(timeout=0.25)
                except queue.Empty:
                    if not self._step_task(soul):
                        self._evolve_if_due(soul)
                    continue
                if kind == "turn":
                    self._turn(soul, connection, item)
                elif kind == "http":
                    self._http_turn(selves, item)
                else:
                    self._packet(soul, inbox, *item)
        finally:
            self.stopping.set()
            connection.run(subscription.unsubscribe())
            inbox_thread.join()
            inbox.close()
            self._refuse_queued(connection)
            if server is not None:
                server.stop()  # its open responses end with the refusals just sent
                self._refuse_queued(connection)  # requests that came meanwhile
            if selves is not None:
                selves.close()

    def _serve_http(self, soul: Any, sock: socket.socket) -> tuple[Server, Selves]:
        """Serve the HTTP door on `sock` (soul/doors/http.py); the server and the selves it talks to."""
        from soul.doors.http import Selves, Server, build_app

        assert self.http is not None
        web = build_app(self.app, soul.generation, self._submit_http, self.http.token, self.http.extra_routes(soul),
                        self.http.open_paths)
        server = Server(web, sock)
        self.http_url = server.start()
        log.info("HTTP at %s/v1%s", self.http_url, " (bearer token required)" if self.http.token else "")
        return server, Selves(soul, self.home)

    def _submit_http(self, asked: Asked) -> None:
        """On the server's loop: queue a chat completion for the main thread."""
        if self.stopping.is_set():
            asked.refuse("the daemon is stopping; try again when it runs")
        else:
            self.work.put(("http", asked))

    def _http_turn(self, selves: Selves, asked: Asked) -> None:
        try:
            result = asked.turn(selves, self._checked(asked.token))
        except Abandoned:
            asked.refuse("the daemon is stopping; your words are journaled and are answered when it starts again")
            return
        except Exception as e:  # the soul goes on; the client gets the reason in OpenAI's error shape
            if asked.failed(e).status >= 500:
                log.exception("HTTP turn failed")
            return
        log.info("turn in %s over HTTP: perception %s, thought %s", result.conversation, result.perception_seq,
                 result.thought_seq)
        asked.done(result)

    def _step_task(self, soul: Any) -> bool:
        """When idle: one step of the open task left longest; whether a task was worked on."""
        from soul.agent import tasks

        now = time.monotonic()
        if now < self.next_task_check:
            return False
        try:
            ready = [t for t in tasks.open_tasks(soul) if self.task_failures.get(t.task, (0, 0.0))[1] <= now]
        except Exception as e:  # a dead server: look again later
            log.warning("tasks: %s", one_line(e))
            ready = []
        if not ready:
            self.next_task_check = now + TASK_CHECK
            return False
        task = ready[0]
        try:
            after = tasks.step(soul, task, on_token=self._checked(None))
        except Abandoned:
            log.info("stopping: task %s goes on from its last journaled step at the next start", task.short)
            return True
        except Exception as e:  # the soul goes on; the step is tried again, then the task given up
            failures = self.task_failures.get(task.task, (0, 0.0))[0] + 1
            log.exception("task %s: step %d failed (%d of %d)", task.short, task.steps + 1, failures, TASK_FAILURES)
            self.task_failures[task.task] = (failures, now + TASK_PAUSE * 2 ** (failures - 1))
            if failures >= TASK_FAILURES:
                with contextlib.suppress(Exception):
                    tasks.finish(soul, task, "failed", f"Failed at step {task.steps + 1}, {failures} times: {one_line(e)}")
            return True
        self.task_failures.pop(task.task, None)
        log.info("task %s: %s", task.short, f"step {after.steps}" if after.status in ("open", "cancelling")
                 else f"{after.status} after {after.steps} steps")
        return True

    def _evolve_if_due(self, soul: Any) -> None:
        """When idle, at most once a minute: run the evolution cadence (evolution/cadence.py)."""
        if self.evolve is None or time.monotonic() < self.next_evolve:
            return
        self.next_evolve = time.monotonic() + EVOLVE_CHECK
        try:
            outcome = self.evolve(soul.journal)
        except Exception:  # the soul goes on; the cadence asks again at the next check
            log.exception("evolve failed")
            return
        if outcome is not None:
            log.info("evolve: generation %d %s%s", outcome.generation, outcome.status,
                     f" ({outcome.why})" if outcome.why else "")
            if outcome.status == "promoted":
                log.info("the daemon thinks with gen-%d from its next start", outcome.generation)

    def _take_packets(self, inbox: Inbox) -> None:
        """Hand each packet to the main thread, one at a time, keeping it from being offered
        again while the main thread finishes a turn before it."""
        while not self.stopping.is_set():
            try:
                msg = inbox.fetch(INBOX_POLL)
                if msg is None:
                    continue
                settled, since = threading.Event(), time.monotonic()
                self.work.put(("packet", (msg, settled)))
                while not settled.wait(INBOX_POLL) and not self.stopping.is_set():
                    if time.monotonic() - since > ACK_WAIT / 3:
                        inbox.working(msg)
                        since = time.monotonic()
            except Exception as e:  # a dead server: say so and keep trying; unacknowledged packets wait
                log.warning("inbox: %s", one_line(e))
                time.sleep(INBOX_POLL)

    def _packet(self, soul: Any, inbox: Inbox, msg: Any, settled: threading.Event) -> None:
        """Journal a packet (once), acknowledge it, then answer it."""
        try:
            taken = inbox.settle(msg)
        except Exception as e:  # not acknowledged: the server offers it again
            log.warning("inbox: a packet is not journaled yet (%s); it is offered again", one_line(e))
            return
        finally:
            settled.set()
        if taken is not None:
            seq, event = taken
            log.info("packet %s from %s journaled%s", event.id, event.data["sender"],
                     "" if seq else " before (a redelivery)")
            self._answer_pending(soul, str(event.originator_id))

    def _checked(self, on_token: Callable[[str], None] | None) -> Callable[[str], None]:
        def check(text: str) -> None:
            if self.stopping.is_set():
                raise Abandoned
            if on_token is not None:
                on_token(text)

        return check

    def _answer_pending(self, soul: Any, conversation: str) -> None:
        if self.stopping.is_set():
            return
        try:
            perception = soul.pending(conversation)
            if perception is None:
                return
            log.info("answering perception %d in %s", perception.seq, conversation)
            soul.answer(perception, on_token=self._checked(None))
        except Abandoned:
            log.info("stopping: the answer in %s is left pending for the next start", conversation)
        except Exception:  # the soul goes on; the perception stays pending for the next start
            log.exception("answering the pending perception in %s failed", conversation)

    def _turn(self, soul: Any, connection: Any, msg: Any) -> None:
        def reply(part: str, data: bytes = b"") -> Any:
            """Publish on the loop thread without waiting (a token must not wait for the network);
            publishes run in the order they were asked for, so waiting for the last waits for all."""
            return asyncio.run_coroutine_threadsafe(connection.nc.publish(msg.reply, data, headers={PART: part}),
                                                    connection.loop)

        unsent: list[str] = []  # streamed text the loop thread has not published yet
        guard = threading.Lock()

        async def send_unsent() -> None:
            with guard:
                text = "".join(unsent)
                unsent.clear()
            await connection.nc.publish(msg.reply, text.encode(), headers={PART: "token"})

        def stream(text: str) -> None:
            """One message per token while the loop keeps up; tokens that come faster than it
            publishes travel together, so a fast model is not slowed down by its listeners."""
            with guard:
                unsent.append(text)
                if len(unsent) > 1:  # a publish is scheduled already and will take this too
                    return
            asyncio.run_coroutine_threadsafe(send_unsent(), connection.loop)

        try:
            request = orjson.loads(msg.data)
            prose = request["prose"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            reply("error", b"the request is not a turn: send JSON with prose, source and conversation").result()
            return
        try:
            result = soul.turn(prose, source=request.get("source") or "user", conversation=request.get("conversation"),
                               on_token=self._checked(stream), memory=request.get("memory") is not False,
                               max_tokens=request.get("max_tokens"), temperature=request.get("temperature"))
        except Abandoned:
            reply("error", b"the daemon is stopping; your words are journaled and are answered when it starts again").result()
            return
        except Exception as e:  # the soul goes on; the client gets the reason in one line
            log.exception("turn failed")
            reply("error", one_line(e).encode()).result()
            return
        log.info("turn in %s from %s: perception %s, thought %s", result.conversation, request.get("source") or "user",
                 result.perception_seq, result.thought_seq)
        reply("done", orjson.dumps(result.as_dict())).result()

    def _refuse_queued(self, connection: Any) -> None:
        """Turns still queued at shutdown get an answer instead of silence."""
        while True:
            try:
                kind, msg = self.work.get_nowait()
            except queue.Empty:
                return
            if kind == "turn":
                connection.run(connection.nc.publish(
                    msg.reply, b"the daemon is stopping; try again when it runs", headers={PART: "error"}))
            elif kind == "http":
                msg.refuse("the daemon is stopping; try again when it runs")


# -- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteMind:
    model_id: str


class DaemonClient:
    """The running daemon, standing in for an in-process Soul where `soul say`, `soul chat` and
    the MCP server use one: `turn` is served by the daemon; `pending` is None, since the daemon
    answers what a crash left unanswered itself."""

    def __init__(self, journal: Journal, app: str, state: dict[str, Any]):
        self.journal, self.app, self.pid, self.started = journal, app, state["pid"], state.get("started")
        self.mind = RemoteMind(f"{state.get('model', '?')} (daemon pid {self.pid})")
        self.connection, self.subject = journal.bus, turn_subject(app)

    def close(self) -> None:
        self.journal.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pending(self, conversation: str | None = None) -> None:
        return None

    def turn(self, prose: str, *, source: str = "user", conversation: str | None = None,
             on_token: Callable[[str], None] | None = None, memory: bool = True,
             max_tokens: int | None = None, temperature: float | None = None) -> Any:
        """The turn's result (a TurnResult) as the daemon reports it; tokens go to `on_token`
        as they come. `memory`, `max_tokens` and `temperature` as Soul.turn's."""
        nc = self.connection.nc
        replies: asyncio.Queue[Any] = asyncio.Queue()

        async def start() -> Any:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=replies.put)
            request = orjson.dumps({"prose": prose, "source": source, "conversation": conversation, "memory": memory,
                                    "max_tokens": max_tokens, "temperature": temperature})
            await nc.publish(self.subject, request, reply=inbox)
            return sub

        async def next_replies(timeout: float) -> list[Any]:
            """The replies that came, at least one: a fast stream costs one thread hop per batch."""
            batch = [await asyncio.wait_for(replies.get(), timeout)]
            while not replies.empty():
                batch.append(replies.get_nowait())
            return batch

        subscription = self.connection.run(start())
        try:
            accepted = False
            while True:
                try:
                    batch = self.connection.run(next_replies(1.0 if accepted else ACCEPT_TIMEOUT))
                except (TimeoutError, asyncio.TimeoutError):
                    if not accepted:
                        raise DaemonError(f"the soul daemon (pid {self.pid}) did not take the turn within "
                                          f"{ACCEPT_TIMEOUT:g}s; is it stuck? (`soul daemon --status`)") from None
                    if not same_process(self.pid, self.started, named=COMMAND):
                        raise DaemonError(f"the soul daemon (pid {self.pid}) died during the turn; your words are "
                                          "journaled and are answered when it starts again") from None
                    continue
                for msg in batch:
                    headers = msg.headers or {}
                    if headers.get("Status") == "503":
                        raise DaemonError(f"the soul daemon (pid {self.pid}) does not serve turns on {self.subject}")
                    part = headers.get(PART)
                    if part == "accepted":
                        accepted = True
                    elif part == "token":
                        if on_token is not None:
                            on_token(msg.data.decode())
                    elif part == "done":
                        return turn_result(orjson.loads(msg.data))
                    elif part == "error":
                        raise DaemonError(msg.data.decode())
        finally:
            self.connection.run(subscription.unsubscribe())


def turn_result(data: dict[str, Any]) -> Any:
    """A TurnResult again, from the daemon's JSON of it."""
    from soul.agent.loop import TurnResult
    from soul.agent.mind import Generation

    generation = data.pop("generation", None)
    return TurnResult(**{**data, "tool_seqs": tuple(data.get("tool_seqs", ())),
                         "generation": Generation(**generation) if generation else None})


def attach(app: str, home: Path | None = None, wait: float = 60.0) -> DaemonClient | None:
    """A client of the daemon running for `home` (default: SOUL_HOME) if it serves soul `app`,
    else None. A daemon still loading its model is waited for, up to `wait` seconds."""
    home = home or soul_home()
    deadline = time.monotonic() + wait
    while (state := running(home)) is not None and not state.get("subject"):
        if time.monotonic() > deadline:
            raise DaemonError(f"the soul daemon (pid {state.get('pid', 'unknown')}) is still starting after {wait:g}s")
        time.sleep(0.2)
    if state is None or state.get("app") != app:
        return None
    return DaemonClient(Journal(app), app, state)
