"""NATS connections that synchronous code can use: eventsourcing's recorders are
synchronous, nats-py is asyncio.

Two ways to run a coroutine, for two kinds of work:
- `call()` runs it on the calling thread, on that thread's own event loop and NATS client,
  made on first use. Requests and reads go this way: crossing to another thread and back
  costs two wake-ups (~65 µs on this project's 2-vCPU VM, against ~7 µs to drive a loop in
  place), which was a third of a single append.
- `run()` submits it to the connection's background loop thread, which never stops: what
  must keep listening between calls (subscriptions, their callbacks) lives there.
Inside either, `nc` is the client of the loop running the code; outside any loop it is the
background client. So `call()` is for coroutines that look `nc` up as they run (the journal's
own); a coroutine made from `nc` outside a loop (`conn.run(conn.nc.subscribe(...))`) belongs
to `run()`.

A thread's own client is only driven while that thread is in `call()`; one idle for longer
than IDLE is replaced rather than trusted, since the server may have dropped it for
unanswered pings meanwhile.

Connection settings come from the environment (see `options_from_env`):
  SOUL_NATS_URL        one or more servers, comma-separated; user:password@ or token@ in the URL
  SOUL_NATS_CREDS      a .creds file (JWT + nkey seed)
  SOUL_NATS_NKEY_SEED  an nkey seed file
  SOUL_NATS_TLS_CA, SOUL_NATS_TLS_CERT, SOUL_NATS_TLS_KEY   TLS trust and client certificate
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
from eventsourcing.persistence import OperationalError

from journal.secrets import redact_url

log = logging.getLogger("soul.nats")
T = TypeVar("T")
IDLE = 30.0  # seconds: a thread's own client unused for longer is reconnected before use


class JournalUnavailable(OperationalError):
    """NATS could not be reached or stopped answering; the message names where and what to do."""


def options_from_env(setting: Callable[[str], str | None] = os.environ.get) -> dict[str, Any]:
    """nats.connect() keyword arguments for the credentials and TLS files that settings name."""
    options: dict[str, Any] = {}
    if creds := setting("SOUL_NATS_CREDS"):
        options["user_credentials"] = creds
    if seed := setting("SOUL_NATS_NKEY_SEED"):
        options["nkeys_seed"] = seed
    ca, cert, key = (setting(f"SOUL_NATS_TLS_{k}") for k in ("CA", "CERT", "KEY"))
    if ca or cert:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key or None)
        options["tls"] = context
    return options


class _Own:
    """A thread's own event loop and client, and when it last used them."""

    def __init__(self, thread: threading.Thread, loop: asyncio.AbstractEventLoop, client: nats.NATS):
        self.thread, self.loop, self.client = thread, loop, client
        self.used = time.monotonic()
        self.busy = threading.Lock()  # held by its thread while it drives the loop
        self.retired = False  # closed while busy: its thread closes it when done


class Connection:
    def __init__(self, servers: list[str], options: dict[str, Any] | None = None, timeout: float = 5.0):
        self.servers = servers
        self.timeout = timeout
        self._options = options or {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="soul-nats", daemon=True)
        self._thread.start()
        try:
            self._background = self.run(self._connect(self._options), timeout=timeout + 5)
        except TimeoutError:  # the client's own timeouts did not fire in time: a starved machine
            self._stop_loop()
            raise JournalUnavailable(
                f"NATS at {self.where} did not finish connecting within {timeout + 5:g} s; check that it runs "
                "and answers, or allow more time with SOUL_NATS_TIMEOUT") from None
        except BaseException:
            self._stop_loop()
            raise
        self._clients: dict[asyncio.AbstractEventLoop, nats.NATS] = {self.loop: self._background}
        self._own: dict[int, _Own] = {}  # thread id -> its own loop and client
        self._own_lock = threading.Lock()
        self.js = self._background.jetstream(timeout=timeout)

    @property
    def where(self) -> str:
        return ",".join(redact_url(s) for s in self.servers)

    @property
    def nc(self) -> nats.NATS:
        """The client of the event loop running this code; outside any loop, the background one."""
        try:
            return self._clients[asyncio.get_running_loop()]
        except (RuntimeError, KeyError):
            return self._background

    async def _connect(self, options: dict[str, Any]) -> nats.NATS:
        last_error: list[Exception] = []

        async def quiet_error(e: Exception) -> None:  # nats-py would print a traceback
            last_error.append(e)
            # Before the first connection the caller gets one error; after it, each is news.
            log.log(logging.WARNING if client.is_connected or client.is_reconnecting else logging.DEBUG,
                    "nats %s: %s", self.where, e)

        # Reconnect forever once connected, but give the first connection a deadline:
        # nats-py would otherwise retry the first connect forever too.
        client = nats.NATS()
        try:
            await asyncio.wait_for(
                client.connect(
                    self.servers,
                    connect_timeout=min(self.timeout, 2.0),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    error_cb=quiet_error,
                    **options,
                ),
                self.timeout,
            )
        except Exception as e:
            try:
                await client.close()
            except Exception:  # nats-py refuses to close a client that never parsed its URLs
                pass
            refused = [x for x in last_error if "authorization" in str(x).lower()]
            if refused:  # later retries only say "connection reset": the refusal is the news
                raise JournalUnavailable(
                    f"NATS at {self.where} refused the credentials ({refused[0]}); "
                    "check the user, password, token or creds file in SOUL_NATS_URL / SOUL_NATS_CREDS"
                ) from None
            cause = last_error[-1] if last_error else e
            reason = str(cause) or type(cause).__name__
            raise JournalUnavailable(
                f"cannot reach NATS at {self.where} ({reason}); start it with `soul services start` "
                "or point SOUL_NATS_URL at a running server"
            ) from None
        return client

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the background loop thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` here, on this thread's own loop and client (see the module's docstring).

        Code already inside an event loop cannot drive another one: it goes to the background thread.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return self.run(coro)
        try:
            own = self._own_client()
        except BaseException:
            coro.close()  # never to run: say so quietly rather than as "never awaited"
            raise
        with own.busy:
            try:
                return own.loop.run_until_complete(coro)
            finally:
                own.used = time.monotonic()
                if own.retired:
                    self._close_own(own)

    def _own_client(self) -> _Own:
        if self.loop.is_closed():
            raise nats.errors.ConnectionClosedError()
        thread = threading.current_thread()
        own = self._own.get(thread.ident)  # type: ignore[arg-type]
        if own is not None and own.thread is thread and own.client.is_connected and time.monotonic() - own.used < IDLE:
            return own
        with self._own_lock:
            # Clients of threads that have ended, and this thread's stale one, are closed first.
            for ident, other in list(self._own.items()):
                if other.thread is thread or not other.thread.is_alive():
                    self._retire(self._own.pop(ident))
            loop = asyncio.new_event_loop()
            try:
                client = loop.run_until_complete(self._connect(self._options))
            except BaseException:
                loop.close()
                raise
            own = self._own[thread.ident] = _Own(thread, loop, client)  # type: ignore[index]
            self._clients[loop] = client
        return own

    def _retire(self, own: _Own) -> None:
        """Close `own` now, or mark it for its thread to close when its current call ends."""
        own.retired = True
        if own.busy.acquire(blocking=False):
            try:
                self._close_own(own)
            finally:
                own.busy.release()

    def _close_own(self, own: _Own) -> None:
        self._clients.pop(own.loop, None)
        if own.loop.is_closed():
            return
        try:
            if not own.client.is_closed:
                own.loop.run_until_complete(asyncio.wait_for(own.client.close(), self.timeout))
        except Exception as e:  # a dead server: nothing to say goodbye to
            log.debug("closing a thread's connection to %s: %s", self.where, e)
        own.loop.run_until_complete(_cancel_leftovers())
        own.loop.close()

    def close(self) -> None:
        """Close every thread's client, then drain the background one when connected."""
        if self.loop.is_closed():
            return
        with self._own_lock:
            for own in self._own.values():
                self._retire(own)
            self._own.clear()
        nc = self._background
        try:
            if nc.is_connected:
                self.run(nc.drain(), timeout=self.timeout)
            elif not nc.is_closed:
                self.run(nc.close(), timeout=self.timeout)
        except Exception as e:  # a dead server: nothing left to flush to
            log.warning("closing the connection to %s: %s", self.where, e)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.run(_cancel_leftovers(), timeout=self.timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_leftovers() -> None:
    """Cancel and await nats-py's tasks left on a loop about to close (after a failed close, or
    the flusher a close cancels but does not await), so none is destroyed while pending."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
