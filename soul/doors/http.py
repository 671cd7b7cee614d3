"""The daemon's OpenAI-compatible HTTP door: `soul daemon --http [HOST:]PORT`.

    POST /v1/chat/completions   one turn of the soul; "stream": true streams it as server-sent events
    GET  /v1/models             the active generation first, then the promoted past selves, newest first
    GET  /health                {"status": "ok", "soul": ..., "model": the active generation}

A chat completion is a turn like `soul say`'s, journaled the same way (perception, thought,
resonance; a `/` chat command runs its tool), from the source `user`:

- **The perception** is the last message, which must be the user's; its content is text, or
  OpenAI's list of parts of which only `text` ones are read. Earlier messages and system
  messages are not read: the soul's window comes from its journal (the conversation's own turns,
  its summary and retrievals) and its self-definition is its own (`/self`), so a client that
  sends the whole history each time does not journal it twice, nor replace who the soul is.
- **The conversation** is the `Soul-Conversation` header, else the request's `user` field,
  else `main` (`soul say`'s default).
- **The model**: omitted, the soul's name or the active generation's name: the daemon's own
  mind; `gen-N`, a promoted generation: that past self, as `soul say --as gen-N` (its weights,
  remembering the journal up to its cut), opened on first use and kept until another is asked
  for; anything else is a 404 naming the promoted generations.
- **Sampling**: `max_tokens` (or `max_completion_tokens`) and `temperature` as `soul say`'s
  options; `n` must be 1; other fields (top_p, stop, tools, ...) are not used.
- **Errors** are OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`, with a 4xx
  for the client's mistakes (400 a bad request, 401 a missing or wrong token, 404 an unknown
  model or route, 413 a body over MAX_BODY) and 5xx for the daemon's (503 while it stops).
  A streamed turn answers its status once the first token (or its failure) comes; a failure
  after that is one last event `data: {"error": ...}` (the `openai` client raises it).
- **Token**: given one, every request (extra routes included) must carry
  `Authorization: Bearer <token>`, compared in constant time; `soul daemon` requires one
  beyond loopback.

Threads: uvicorn runs the app on a thread and event loop of its own (`Server`). A chat completion
is handed to the daemon's main thread as an `Asked` (soul/doors/daemon.py), which thinks as for
any other door and sends its tokens and result back to the loop with `call_soon_threadsafe`. A
client that disconnects mid-stream does not stop the turn: it completes and is journaled once.

`build_app` takes `extra_routes` (read-only routes served on the same port, under the same
token rule, e.g. the page); the daemon gets them from `HttpDoor.extra_routes(soul)`.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from evolution.lineage import LineageError, chain, lineage, parse_name, resolve
from journal.errors import one_line
from journal.journal import Journal
from soul.agent.loop import DEFAULT_CONVERSATION, Soul, TurnError

CONVERSATION_HEADER = "Soul-Conversation"
SOURCE = "user"  # the person's words, as `soul say`'s: what evolution learns from
MAX_BODY = 1 << 20  # bytes of request body at most: a perception is one journal message
STARTUP = 10.0  # seconds uvicorn has to start listening
GRACE = 5.0  # seconds open responses have to finish when the daemon stops


class HttpError(Exception):
    """A request answered with OpenAI's error JSON and `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return Response(orjson.dumps(self.body()), self.status, headers, media_type="application/json")


def refusal(e: Exception) -> HttpError:
    """What a turn's failure tells the client: the user's mistakes as 4xx, the rest as a 500."""
    if isinstance(e, HttpError):
        return e
    if isinstance(e, TurnError):
        return HttpError(400, str(e))
    if isinstance(e, LineageError):
        return HttpError(404, f"{e} (GET /v1/models lists the models)", param="model", code="model_not_found")
    return HttpError(500, one_line(e), type="server_error")


# -- a turn handed to the main thread --------------------------------------------------------


@dataclass
class Asked:
    """A chat completion waiting for the daemon's main thread; it hears back through `parts`,
    on the server's loop: ("token", text)*, then ("done", TurnResult) or ("error", HttpError)."""

    prose: str
    conversation: str
    model: str | None
    max_tokens: int | None
    temperature: float | None
    loop: asyncio.AbstractEventLoop
    parts: asyncio.Queue[tuple[str, Any]]

    def _post(self, part: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.parts.put_nowait, part)
        except RuntimeError:  # the server's loop has closed: nobody is listening any more
            pass

    def turn(self, selves: Selves, on_token: Callable[[str], None]) -> Any:
        """Take the turn, on the main thread; its TurnResult."""
        return selves.of(self.model).turn(self.prose, source=SOURCE, conversation=self.conversation, on_token=on_token,
                                          max_tokens=self.max_tokens, temperature=self.temperature)

    def token(self, text: str) -> None:
        self._post(("token", text))

    def done(self, result: Any) -> None:
        self._post(("done", result))

    def failed(self, e: Exception) -> HttpError:
        error = refusal(e)
        self._post(("error", error))
        return error

    def refuse(self, message: str) -> None:
        """The daemon cannot take the turn: it is stopping."""
        self._post(("error", HttpError(503, message, type="server_error", code="unavailable")))


class Selves:
    """The souls a chat completion talks to, on the main thread: the daemon's own, and one past
    self at a time (`model: "gen-N"`), opened when first asked for and kept until another is."""

    def __init__(self, soul: Any, home: Path):
        self.soul, self.home = soul, home
        self.past: tuple[str, Any] | None = None

    def of(self, model: str | None) -> Any:
        if model in (None, self.soul.app, self.soul.generation):
            return self.soul
        name = f"gen-{parse_name(model)}"  # LineageError for a name that is not a generation
        if name == self.soul.generation:
            return self.soul
        if self.past is not None and self.past[0] == name:
            return self.past[1]
        folder, cut = resolve(self.soul.journal, self.home, name)
        self.close()
        self.past = (name, Soul.open(self.soul.app, model_dir=folder, generation=name, as_of=cut))
        return self.past[1]

    def close(self) -> None:
        if self.past is not None:
            self.past[1].close()
            self.past = None


# -- the app ---------------------------------------------------------------------------------


class BearerToken:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <token>` gets a 401, except
    a GET of a path `open_paths` matches (a page's HTML shell, which a browser opens without a header)."""

    def __init__(self, app: Any, token: str, open_paths: re.Pattern[str] | None = None):
        self.app, self.expected, self.open_paths = app, f"Bearer {token}".encode(), open_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        shell = self.open_paths is not None and scope.get("method") == "GET" and self.open_paths.fullmatch(scope["path"])
        if scope["type"] == "http" and not shell:
            given = next((value for name, value in scope["headers"] if name == b"authorization"), None)
            if given is None or not hmac.compare_digest(given, self.expected):  # constant time: not guessed by timing
                message = ("a bearer token is required: send Authorization: Bearer <token>" if given is None
                           else "the bearer token is not this daemon's")
                await HttpError(401, message, code="invalid_api_key").response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(app: str, active: str, submit: Callable[[Asked], None], token: str | None = None,
              extra_routes: Sequence[BaseRoute] = (), open_paths: re.Pattern[str] | None = None) -> Starlette:
    """The HTTP API of soul `app`, whose daemon thinks with generation `active`; `submit` hands
    an Asked to the daemon's main thread. `extra_routes` are served too, under the same token."""
    started = int(time.time())

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.body()
            if len(body) > MAX_BODY:
                raise HttpError(413, f"the request is larger than {MAX_BODY} bytes")
            asked, stream, usage = parse_chat(orjson_loads(body), request.headers, asyncio.get_running_loop())
            submit(asked)
            first = await asked.parts.get()  # the status waits for it: a refused turn is a 4xx, not a broken stream
            if first[0] == "error":
                raise first[1]
        except HttpError as e:
            return e.response()
        reply = Reply(answering(asked.model, app, active), asked.parts)
        if stream:
            return StreamingResponse(reply.events(first, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            return Response(orjson.dumps(await reply.whole(first)), media_type="application/json")
        except HttpError as e:
            return e.response()

    def models(request: Request) -> Response:  # a plain function: Starlette runs it in a worker thread
        with Journal(app) as journal:
            promoted = chain(lineage(journal))
        listed = [{"id": active, "object": "model", "created": started, "owned_by": app}]
        listed += [{"id": g.name, "object": "model", "created": epoch(g.time), "owned_by": app}
                   for g in reversed(promoted) if g.name != active]
        return Response(orjson.dumps({"object": "list", "data": listed}), media_type="application/json")

    def health(request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok", "soul": app, "model": active}), media_type="application/json")

    async def http_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        return HttpError(e.status_code, f"{request.method} {request.url.path}: {e.detail}").response()

    async def server_error(request: Request, e: Exception) -> Response:
        return HttpError(500, one_line(e), type="server_error").response()

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              *extra_routes]
    guard = [Middleware(BearerToken, token=token, open_paths=open_paths)] if token else []
    return Starlette(routes=routes, middleware=guard,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def orjson_loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"the body is not JSON: {e}") from None


def parse_chat(body: Any, headers: Any, loop: asyncio.AbstractEventLoop) -> tuple[Asked, bool, bool]:
    """The Asked of an OpenAI chat completion request, whether to stream it, and whether to
    end the stream with the usage; HttpError(400) for a request that is not one."""
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object (an OpenAI chat completion request)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise HttpError(400, "the last message must be the user's (role \"user\"): it is what the soul perceives",
                        param="messages")
    prose = text_of(last.get("content"))
    if not prose.strip():
        raise HttpError(400, "the last message is empty: there is nothing to perceive", param="messages")
    model = field(body, "model", str, "a string")
    stream = field(body, "stream", bool, "true or false") or False
    max_tokens = field(body, "max_completion_tokens", int, "a whole number")
    if max_tokens is None:
        max_tokens = field(body, "max_tokens", int, "a whole number")
    temperature = field(body, "temperature", (int, float), "a number")
    user = field(body, "user", str, "a string")
    if field(body, "n", int, "a whole number") not in (None, 1):
        raise HttpError(400, "n must be 1: the soul gives one reply a turn", param="n")
    options = field(body, "stream_options", dict, "an object") or {}
    conversation = headers.get(CONVERSATION_HEADER) or user or DEFAULT_CONVERSATION
    asked = Asked(prose, conversation, model, max_tokens, None if temperature is None else float(temperature),
                  loop, asyncio.Queue())
    return asked, stream, bool(options.get("include_usage"))


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """body[name] if it is of `kind` (`what`, for the error), or None if null or missing."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:  # JSON true is not a number
        raise HttpError(400, f"{name} must be {what}, not {orjson.dumps(value).decode()[:40]}", param=name)
    return value


def text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of OpenAI's list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content} - {"text"}
        if kinds:
            raise HttpError(400, f"only text content is perceived, not {', '.join(sorted(map(str, kinds)))}",
                            param="messages")
        return "\n".join(str(p.get("text", "")) for p in content)
    raise HttpError(400, "a message's content must be text, or a list of {\"type\": \"text\", \"text\"} parts",
                    param="messages")


def answering(model: str | None, app: str, active: str) -> str:
    """The model a response names: the past self asked for, else the active generation."""
    return active if model in (None, app) else model


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0


class Reply:
    """The OpenAI shapes of one turn's reply, from the parts the main thread sends."""

    def __init__(self, model: str, parts: asyncio.Queue[tuple[str, Any]]):
        self.model, self.parts = model, parts
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    async def whole(self, part: tuple[str, Any]) -> dict[str, Any]:
        while part[0] == "token":
            part = await self.parts.get()
        if part[0] == "error":
            raise part[1]
        result = part[1]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.reply},
                             "finish_reason": finish(result)}],
                "usage": usage(result), "soul": turn_of(result)}

    async def events(self, part: tuple[str, Any], with_usage: bool) -> AsyncIterator[bytes]:
        yield self.chunk({"role": "assistant", "content": ""})
        streamed = False
        while True:
            kind, value = part
            if kind == "token":
                pieces, after = [value], None
                while after is None and not self.parts.empty():  # tokens that came meanwhile travel together
                    after = self.parts.get_nowait()
                    if after[0] == "token":
                        pieces.append(after[1])
                        after = None
                yield self.chunk({"content": "".join(pieces)})
                streamed = True
                if after is not None:
                    part = after
                    continue
            elif kind == "done":
                if not streamed and value.reply:  # a chat command: its reply is not streamed by the soul
                    yield self.chunk({"content": value.reply})
                yield self.chunk({}, finish(value), soul=turn_of(value))
                if with_usage:
                    yield sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "choices": [], "usage": usage(value)})
                yield b"data: [DONE]\n\n"
                return
            else:
                yield sse(value.body())
                return
            part = await self.parts.get()

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None, **extra: Any) -> bytes:
        return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def finish(result: Any) -> str:
    return result.generation.finish_reason if result.generation is not None else "stop"


def usage(result: Any) -> dict[str, int]:
    g = result.generation
    prompt, completion = (g.prompt_tokens, g.generated_tokens) if g is not None else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def turn_of(result: Any) -> dict[str, Any]:
    """The journal's side of the turn, beyond OpenAI's shape: where to find it (`soul tail`)."""
    return {"conversation": result.conversation, "perception_seq": result.perception_seq,
            "thought_seq": result.thought_seq, "resonance": result.resonance}


# -- serving ---------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of `[HOST:]PORT` (an IPv6 host in brackets); the host defaults to loopback."""
    host, colon, port = text.strip().rpartition(":")
    host = host.strip("[]") if colon else ""
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not [HOST:]PORT (a port is 0 to 65535; e.g. 8765 or 127.0.0.1:8765)")
    return host or "127.0.0.1", int(port)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class HttpDoor:
    """How the daemon serves HTTP: where, with what token, and which routes besides the API,
    made from the daemon's soul once it is open (e.g. `lambda soul: page_routes(app, soul.embedder)`)."""

    host: str
    port: int
    token: str | None = None
    extra_routes: Callable[[Any], Sequence[BaseRoute]] = lambda soul: ()
    open_paths: re.Pattern[str] | None = None  # of the extra routes: served without the token (HTML, no data)


class Server:
    """uvicorn serving `app` on the listening `sock`, from a thread and event loop of its own."""

    def __init__(self, app: Starlette, sock: socket.socket):
        import uvicorn

        self.sock = sock
        # uvicorn installs no signal handlers off the main thread: the daemon's stop it, through stop()
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                    timeout_graceful_shutdown=GRACE))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="soul-http",
                                       daemon=True)

    def start(self) -> str:
        """Start serving; the base URL."""
        self.thread.start()
        deadline = time.monotonic() + STARTUP
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {url_of(self.sock)}")
            time.sleep(0.01)
        return url_of(self.sock)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
