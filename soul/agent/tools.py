"""The soul's tools (design §7): what the mind (tool calls) and the user (chat commands) can do.

A tool is a name, a description, the JSON schema of its arguments (what a tool-calling model
is shown) and `run(soul, arguments) -> str`, the soul being a `ToolHost`: what tools may use
of it, declared here so that tools need not know the turn loop. `register` adds one to
`TOOLS`; soul/doors adds `message` and `agent` this way. The soul journals each call
(`tool_call`, then `tool_result` with the outcome and duration, see `Soul.call_tool`); a tool
only does its work and returns what it has to say, raising `ToolError` (or anything else)
when it cannot.

A chat command `/NAME ARGS` calls tool NAME: ARGS fill its parameters in order, one word each,
the last one taking the rest of the line (so `/recall what did we decide` is one query).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from projections import corpora
from projections.search import Hit
from soul.agent.context import Tokenizer, count
from soul.agent.corpus import originator as corpus_originator

RECALL_LIMIT = 5
RECALL_EXCERPT = 300  # characters of each recalled memory


class ToolError(ValueError):
    """A tool could not do what was asked; the message says why (it becomes the tool result)."""


class Tokenized(Protocol):
    tokenizer: Tokenizer  # counts a self-definition's tokens


class ToolHost(Protocol):
    """What tools use of the soul that runs them (soul.agent.loop.Soul is one)."""

    app: str
    journal: Journal
    embedder: Any
    conn: Any  # the connection the projections are read through
    budget: int  # the context window's tokens

    @property
    def mind(self) -> Tokenized: ...

    def recall(self, query: str, limit: int = 5) -> list[Hit]: ...

    def pin(self, kind: str, text: str) -> int: ...


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    run: Callable[[ToolHost, dict[str, Any]], str]
    read_only: bool = False  # changes nothing outside the journal's record of the call: safe to run again

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function description chat templates render for tool-calling models."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def arguments(self, line: str) -> dict[str, Any]:
        """The arguments of a chat command's text: one word per parameter, the last takes the rest."""
        names = list(self.parameters.get("properties", {}))
        if not names:
            return {}
        words = line.split(maxsplit=len(names) - 1)
        return dict(zip(names, words))


TOOLS: dict[str, Tool] = {}


def register(tool: Tool) -> Tool:
    """Make `tool` available to every soul in this process (a later one with the same name wins)."""
    TOOLS[tool.name] = tool
    return tool


def text_parameter(name: str, description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}},
            "required": [name]}


def required(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"give the {name}")
    return value.strip()


# -- the built-in tools -------------------------------------------------------------------


def recall(soul: ToolHost, arguments: dict[str, Any]) -> str:
    query = required(arguments, "query")
    hits = soul.recall(query, limit=RECALL_LIMIT)
    if not hits:
        return f"nothing recalled for {query!r}"
    lines = []
    for h in hits:
        prose = " ".join(h.prose.split())
        prose = prose if len(prose) <= RECALL_EXCERPT else prose[: RECALL_EXCERPT - 1] + "…"
        where = h.where or h.corpus  # a corpus chunk: corpus:path:first-last
        lines.append(f"[{h.seq} {h.type}{' ' + where if where else ''}] {prose}")
    return "\n".join(lines)


def _corpus_event(soul: ToolHost, kind: str, name: str, prose: str) -> None:
    soul.journal.add(BifocalEvent(kind, prose, [], NO_EMBEDDER, corpus_originator(name), corpus=name))


def mount(soul: ToolHost, arguments: dict[str, Any]) -> str:
    name = required(arguments, "corpus")
    known = [c["name"] for c in corpora.listing(soul.conn, soul.app)]
    if name not in known:
        raise ToolError(f"no corpus named {name!r}; known: {', '.join(known) or 'none (soul corpus add NAME PATH)'}")
    _corpus_event(soul, "corpus_mounted", name, f"mounted corpus {name}")
    return f"mounted corpus {name}"


def unmount(soul: ToolHost, arguments: dict[str, Any]) -> str:
    name = corpora.mounted(soul.conn, soul.app)
    if name is None:
        raise ToolError("no corpus is mounted")
    _corpus_event(soul, "corpus_unmounted", name, f"unmounted corpus {name}")
    return f"unmounted corpus {name}"


def define_self(soul: ToolHost, arguments: dict[str, Any]) -> str:
    text = required(arguments, "text")
    cap = soul.budget // 4  # the pinned self must leave the window room for the conversation
    if count(soul.mind.tokenizer, text) > cap:
        raise ToolError(f"a self-definition may take at most {cap} tokens (a quarter of the window)")
    soul.pin("self_defined", text)
    return "self-definition rewritten"


def write_notebook(soul: ToolHost, arguments: dict[str, Any]) -> str:
    text = required(arguments, "text")
    soul.pin("notebook_written", text)
    return "notebook rewritten"


for _tool in (
    Tool("recall", "Search memory (what was perceived, thought, and the mounted corpus) by meaning and words.",
         text_parameter("query", "what to recall"), recall, read_only=True),
    Tool("mount", "Mount a corpus: the one the context window retrieves from.",
         text_parameter("corpus", "the corpus name"), mount),
    Tool("unmount", "Unmount the mounted corpus.", {"type": "object", "properties": {}}, unmount),
    Tool("self", "Rewrite the soul's self-definition, pinned at the top of every context window.",
         text_parameter("text", "the new self-definition"), define_self),
    Tool("notebook", "Rewrite the notebook, the soul's pinned working notes.",
         text_parameter("text", "the new notebook"), write_notebook),
):
    register(_tool)
