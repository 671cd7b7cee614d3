"""One NATS connection on a private event-loop thread, so synchronous code can use it.

eventsourcing's recorders are synchronous; nats-py is asyncio. Each Connection owns a
loop thread; `run()` submits a coroutine to it and waits. Many threads may call `run()`
at once: their coroutines interleave on the one connection, which is what NATS wants.

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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import nats
from eventsourcing.persistence import OperationalError

log = logging.getLogger("soul.nats")
T = TypeVar("T")


class JournalUnavailable(OperationalError):
    """NATS could not be reached or stopped answering; the message names where and what to do."""


def redact(url: str) -> str:
    """The URL without its password or token, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


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


class Connection:
    def __init__(self, servers: list[str], options: dict[str, Any] | None = None, timeout: float = 5.0):
        self.servers = servers
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="soul-nats", daemon=True)
        self._thread.start()
        try:
            self.nc = self.run(self._connect(options or {}), timeout=timeout + 5)
        except BaseException:
            self._stop_loop()
            raise
        self.js = self.nc.jetstream(timeout=timeout)

    @property
    def where(self) -> str:
        return ",".join(redact(s) for s in self.servers)

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
            await client.close()
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
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Flush what was published (drain) when connected; otherwise just let go."""
        if self.loop.is_closed():
            return
        try:
            if self.nc.is_connected:
                self.run(self.nc.drain(), timeout=self.timeout)
            elif not self.nc.is_closed:
                self.run(self.nc.close(), timeout=self.timeout)
        except Exception as e:  # a dead server: nothing left to flush to
            log.warning("closing the connection to %s: %s", self.where, e)
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_leftovers() -> None:  # nats-py's subscription tasks, after a failed close
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_leftovers(), timeout=self.timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
