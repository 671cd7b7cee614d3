"""The living soul: the turn loop over the journal, the projections and the mind (design §5, §7).

A turn, every step a bifocal event on the journal:

1. perception (data: source; prose redacted before it is embedded and journaled);
2. the context window, assembled from the projections (soul/agent/context.py), which are first
   brought up to date with the journal;
3. the thought, streamed (data: model, generation, context fingerprint, token counts,
   first-token latency, and the sampling it was generated with: temperature, seed, max_tokens;
   caused by the perception; its vector is the reply's embedding);
4. tool calls parsed from the thought (models with tool calling), each a `tool_call` and a
   `tool_result`, then a further thought that sees the results (at most `tool_rounds`);
5. resonance: the self judge and the similarity judge (soul/agent/judges.py).

Chat commands (`/recall`, `/mount`, `/unmount`, `/self`, `/notebook`, `/rate`, `/help`) reach
the same tools without the mind; they journal the tool call and its result, not a perception.

The window as the mind sees it: one system message (the pinned self-definition, the notebook
and the conversation's latest summary), then the turns as user and assistant messages, the
retrievals (plain lines) put in front of the newest perception. Everything that changes from turn to turn
sits at the end, so the mind's KV cache keeps the rest. When the window overflows, it is cut
to `keep_after_eviction` of the budget at once and the cut summarised by the mind (context.summarise):
the summary at the top then stays the same for many turns instead of changing (and costing
a full prefill) on every one.

Nothing lives only in this process: the conversation, the pinned blocks and the window come
from the journal through the projections, so a soul opened again continues where the last
one stopped, and `pending` finds a perception that a dead process never answered.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from journal.embedded import soul_home
from journal.errors import one_line
from journal.event import BifocalEvent
from journal.journal import Entry, Journal
from journal.secrets import redact_secrets
from projections import corpora
from projections.corpora import Corpora
from projections.memory import Memory
from projections.postgres import pg_url
from projections.registry import PROJECTIONS
from projections.resonance import combine
from projections.runner import ProjectionRunner
from projections.search import Hit, search
from projections.tasks import Tasks
from projections.turns import Turns, last_thought, latest_pinned, newest_first, unanswered
from soul.agent.context import SUMMARY_TOKENS, Context, assemble, by_heart, parse_turn, summarise
from soul.agent.judges import SELF_QUESTION, RatingError, judgement, self_judgement, similarity_judgement
from soul.agent.judges import rate as rate_event
from soul.agent.tools import TOOLS, Tool, ToolError
from soul.agent import databases, navigate  # noqa: F401  (they register their tools)

if TYPE_CHECKING:
    from soul.agent.mind import Generation, Mind

DEFAULT_CONVERSATION = "main"
DEFAULT_SELF = ("I am soul, a small local agent. I remember what I perceive and think, "
                "answer briefly and honestly, and say when I do not know.")
RESULT_CHARS = 16_000  # a tool result is cut to this many characters before it is journaled
RECALLED = "Things you remember:"  # leads the retrievals, plain lines without seqs or brackets a reply could copy


class TurnError(RuntimeError):
    """A turn that cannot be taken: empty words, or a window too small for the pinned blocks."""


@dataclass(frozen=True)
class SoulConfig:
    budget: int = 2048  # context window tokens; capped by the model's context less the reply
    max_tokens: int = 256  # a reply's tokens at most
    keep_after_eviction: float = 0.5  # an overflowing window is cut to this share of the budget
    notebook_cap: int = 512  # tokens of the notebook shown
    summary_share: float = 0.25  # of the budget, at most, for the summary of evicted turns
    summary_tokens: int = SUMMARY_TOKENS  # the mind's own words in a summary, at most (context.summarise)
    retrieval_k: int = 3  # memories recalled into the window each turn
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    repetition_penalty: float | None = 1.1  # SmolLM2-135M loops without one
    self_judge: bool = True
    tool_rounds: int = 2  # thoughts after tool results, at most, per turn
    tool_timeout: float = 30.0  # seconds before a tool call is given up as an error


@dataclass(frozen=True)
class ToolOutcome:
    call_seq: int
    result_seq: int
    text: str
    ok: bool


@dataclass(frozen=True)
class TurnResult:
    conversation: str
    perception_seq: int | None  # None for a chat command
    thought_seq: int | None  # the last thought of the turn; None for a chat command
    reply: str
    tool_seqs: tuple[int, ...] = ()  # tool_call and tool_result seqs, in journal order
    resonance: float | None = None  # combine() of this turn's judges: None while only a user's rating counts
    judges: dict[str, float] = field(default_factory=dict)
    generation: Generation | None = None  # of the last thought

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usage(tool: Tool) -> str:
    """The chat command of `tool` with its parameters: `/recall QUERY`."""
    return f"/{tool.name}" + "".join(f" {p.upper()}" for p in tool.parameters.get("properties", {}))


def help_line() -> str:
    """One line naming every chat command: each registered tool with its parameters, /rate, /help."""
    return "commands: " + ", ".join([*map(usage, TOOLS.values()), "/rate SCORE [EVENT]", "/help"])


@dataclass(frozen=True)
class Brief:
    """What a window for work on a task adds (soul/agent/tasks.py): a section of the system
    message, and the user's words that open a step when no turn of the task is the newest."""

    section: str
    opening: str


def messages_of(context: Context, self_default: str, brief: Brief | None = None) -> list[dict[str, str]]:
    """The chat messages the mind reads for `context` (and `brief`): see the module's docstring."""
    system, recalled, turns = [], [], []
    for block in context.blocks:
        if block.kind in ("self", "notebook", "summary"):
            system.append(block.text.strip())
        elif block.kind == "retrieval":
            recalled.append(block.text.strip())
        elif block.kind == "turn":
            kind, prose = parse_turn(block.text)
            if kind == "thought":
                turns.append({"role": "assistant", "content": prose})
            else:  # a tool result reads as something perceived: every chat template knows the user role
                turns.append({"role": "user", "content": prose if kind == "perception" else f"(tool result) {prose}"})
    if not any(b.kind == "self" for b in context.blocks):  # as the pinned block renders it
        system.insert(0, f"# Self\n{self_default}")
    if brief is not None:
        system.append(brief.section.strip())
        if not turns or turns[-1]["role"] != "user":
            turns.append({"role": "user", "content": brief.opening})
    if recalled and turns and turns[-1]["role"] == "user":
        turns[-1] = {"role": "user", "content": "\n".join([RECALLED, *recalled, "", turns[-1]["content"]])}
    return [{"role": "system", "content": "\n\n".join(system)}, *turns]


class Soul:
    def __init__(self, app: str, journal: Journal, mind: Mind, embedder: Any, url: str, *,
                 config: SoulConfig, generation: str, as_of: int | None):
        self.app, self.journal, self.mind, self.embedder = app, journal, mind, embedder
        self.config, self.generation, self.as_of = config, generation, as_of
        self.conversation = DEFAULT_CONVERSATION
        # The views a turn and a task read, taken from the registry: a view the soul keeps is one that
        # `soul projections`, the daemon, a restore and an erase know too.
        self.runners = {name: ProjectionRunner(journal, PROJECTIONS[name](), url)
                        for name in (Turns.name, Memory.name, Corpora.name, Tasks.name)}
        self.conn = self.runners[Turns.name].conn  # reads go through one of the runners' connections
        # A reply takes at most a quarter of the model's context; the window leaves room for it
        # and for the self judge's question.
        self.max_tokens = min(config.max_tokens, mind.max_context // 4)

    @functools.cached_property
    def question_tokens(self) -> int:
        """The self judge's question, in tokens (counted when first needed: a tool call alone
        never loads the tokenizer)."""
        return len(self.mind.encode([{"role": "user", "content": SELF_QUESTION}]))

    @property
    def reserve(self) -> int:
        return self.max_tokens + self.question_tokens

    @property
    def budget(self) -> int:
        """The window's tokens: the config's, within what the model's context leaves."""
        return min(self.config.budget, self.mind.max_context - self.reserve)

    @classmethod
    def open(cls, app: str, *, model_dir: Path | None = None, config: SoulConfig | None = None,
             generation: str | None = None, as_of: int | None = None, mind: Mind | None = None,
             weights: bool = True) -> Soul:
        """The soul named `app`: its journal, projections, embedder and mind (or `mind`); without
        `weights`, the mind's are read when it first thinks (not at all for tool calls alone).

        Without `model_dir` it thinks with the generation `soul evolve` promoted last, else with
        the base weights W0 (the embedded model), named "gen-0". `generation` names the weights
        in thought events: by default that generation's name, or "external" for a `model_dir`
        outside the lineage. `as_of` makes it a past self: recall and retrievals see the journal
        up to that seq."""
        from evolution.lineage import active
        from soul.agent.embedder import load_default_embedder  # loads MLX, as the mind does
        from soul.agent.mind import Mind

        if model_dir is None and mind is None and generation is None and (found := active(soul_home(), app)):
            generation, model_dir = found
        generation = generation or ("external" if model_dir is not None else "gen-0")
        config = config or SoulConfig()
        mind = mind or Mind(model_dir, temperature=config.temperature, seed=config.seed,
                            repetition_penalty=config.repetition_penalty, weights=weights)
        journal = Journal(app)
        try:
            return cls(app, journal, mind, load_default_embedder(), pg_url(), config=config,
                       generation=generation, as_of=as_of)
        except BaseException:
            journal.close()
            raise

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.journal.close()

    def __enter__(self) -> Soul:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the turn --------------------------------------------------------------------------

    def turn(self, prose: str, *, source: str = "user", conversation: str | None = None,
             on_token: Callable[[str], None] | None = None, memory: bool = True,
             max_tokens: int | None = None, temperature: float | None = None) -> TurnResult:
        """Perceive `prose` from `source` in `conversation` and answer it (or run a chat command).
        Without `memory` the mind answers from its weights alone; `max_tokens` and `temperature`
        replace the soul's own for this turn (see `answer`)."""
        conversation = conversation or self.conversation
        if source == "user" and prose.startswith("/"):
            return self.command(prose, conversation)
        self.sampling(max_tokens, temperature)  # a bad setting journals no perception either
        seq, perception = self.perceive(prose, source=source, conversation=conversation)
        return self.answer(Entry(seq, perception.originator_id, perception.type, 0, perception), on_token=on_token,
                           memory=memory, max_tokens=max_tokens, temperature=temperature)

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None) -> dict[str, Any]:
        """How a reply is generated: the soul's own settings, or those given (TurnError when out of
        range). A thought's data holds them, since they decide its words with the prompt and weights."""
        cap = self.mind.max_context // 4  # as for the soul's own: the window keeps the rest
        if max_tokens is not None and not 1 <= max_tokens <= cap:
            raise TurnError(f"a reply takes 1 to {cap} tokens with this model (a quarter of its context); "
                            f"{max_tokens} asked")
        if temperature is not None and not temperature >= 0:
            raise TurnError(f"the temperature is at least 0 (0: greedy); {temperature} asked")
        return {"temperature": self.mind.temperature if temperature is None else temperature, "seed": self.mind.seed,
                "max_tokens": self.max_tokens if max_tokens is None else max_tokens}

    def perceive(self, prose: str, *, source: str = "user", conversation: str | None = None) -> tuple[int, BifocalEvent]:
        """Journal a perception (redacted, embedded); its seq and event. Empty words are refused
        (TurnError): a perception of nothing would be a memory of nothing."""
        if not prose.strip():
            raise TurnError("the words are empty: there is nothing to perceive")
        prose, redacted = redact_secrets(prose)
        event = BifocalEvent("perception", prose, self.embedder.embed([prose])[0], self.embedder.id,
                             conversation or self.conversation,
                             data={"source": source, **({"redacted": redacted} if redacted else {})})
        return self.journal.add(event)

    def pending(self, conversation: str | None = None) -> Entry | None:
        """The conversation's newest perception if no thought or tool result came after it:
        a turn a process died in. `answer` it to go on."""
        self.catch_up(Turns.name)
        found = unanswered(self.conn, self.app, conversation or self.conversation)
        if not found:
            return None
        ((_, seq),) = found
        return next(self.journal.read(since=seq, limit=1), None)

    def answer(self, perception: Entry, *, on_token: Callable[[str], None] | None = None,
               memory: bool = True, max_tokens: int | None = None, temperature: float | None = None) -> TurnResult:
        """Think about a journaled perception: thoughts, tool calls, resonance. Without `memory`
        the window holds the self-definition and the perception alone, and no tools are offered
        (recall would bring memory back): what the weights know by heart. The thought's data then
        says `"window": "no-memory"`. `max_tokens` and `temperature` (0: greedy) replace the soul's
        own for this answer; a longer reply leaves the window less room."""
        event = perception.event
        assert event is not None
        sampling = self.sampling(max_tokens, temperature)
        conversation = str(event.originator_id)
        self.pin_default_self()
        cause, tool_seqs = event, []
        for _ in range(self.config.tool_rounds + 1):
            context, messages = self.window(conversation, event.vector, memory=memory,
                                            reserve=sampling["max_tokens"] + self.question_tokens)
            thought_seq, thought, generation = self.think(
                conversation, context, messages, sampling, cause=cause, on_token=on_token,
                tools=self.tool_schemas(memory), correlation=event.correlation_id or event.id,
                data={} if memory else {"window": "no-memory"})
            calls = self.mind.tool_calls(generation.text) if memory else []
            if not calls:
                break
            for name, arguments in calls:
                outcome = self.call_tool(name, arguments, conversation, cause=thought)
                tool_seqs += [outcome.call_seq, outcome.result_seq]
            cause = thought
        judges = self.judge(thought, messages, generation.text)
        return TurnResult(conversation, perception.seq, thought_seq, generation.text, tuple(tool_seqs),
                          combine(judges), judges, generation)

    def think(self, conversation: str, context: Context, messages: list[dict[str, str]], sampling: dict[str, Any], *,
              cause: BifocalEvent, on_token: Callable[[str], None] | None = None,
              tools: list[dict[str, Any]] | None = None, correlation: Any = None,
              data: dict[str, Any] | None = None) -> tuple[int, BifocalEvent, Generation]:
        """Generate a reply to `messages` (the window `context`) and journal it as a thought caused
        by `cause`, its data saying how it was made (and `data`); its seq, event and generation."""
        generation = self.mind.generate(messages, max_tokens=sampling["max_tokens"], on_token=on_token,
                                        tools=tools, temperature=sampling["temperature"])
        seq, thought = self.journal.add(BifocalEvent(
            "thought", generation.text, self.embedder.embed([generation.text])[0], self.embedder.id, conversation,
            causation_id=cause.id, correlation_id=correlation,
            data={"model": self.mind.model_id, "generation": self.generation, "fingerprint": context.fingerprint,
                  "prompt_tokens": generation.prompt_tokens, "reused_tokens": generation.reused_tokens,
                  "generated_tokens": generation.generated_tokens, "first_token_s": round(generation.first_token_s, 4),
                  "tokens_per_s": round(generation.tokens_per_s, 2), "finish": generation.finish_reason,
                  "sampling": sampling, **(data or {})}))
        return seq, thought, generation

    def window(self, conversation: str, vector: np.ndarray | None, *, memory: bool = True,
               read_only: bool = False, reserve: int | None = None, brief: Brief | None = None,
               tools: list[dict[str, Any]] | None = None) -> tuple[Context, list[dict[str, str]]]:
        """The context window and its messages, within the budget and the model's context less
        `reserve` tokens (default: the soul's reply and the self judge's question); `vector` is the
        newest turn's, for the retrievals. Without `memory`: the self-definition and the newest
        turn alone (context.by_heart). `read_only` journals no summary of the turns that no longer
        fit (they stay in `Context.evictions`): a look, as `soul window`. `brief` adds a task's
        section (see Brief); `tools` are the schemas the mind is shown, default tool_schemas(memory)."""
        tools = self.tool_schemas(memory) if tools is None else tools
        reserve = self.reserve if reserve is None else reserve
        self.catch_up(Turns.name, Memory.name, Corpora.name)  # what the window reads
        context = self._assemble(conversation, vector, self.budget, memory)
        if context.evictions and not read_only:
            evicted = context.evictions[0]
            try:
                cut = self._assemble(conversation, vector, max(1, int(self.budget * self.config.keep_after_eviction)))
                evicted = cut.evictions[0] if cut.evictions else evicted
            except TurnError:  # the pinned blocks and summary alone take more than the cut: evict less
                pass
            summarise(self.journal, self.conn, conversation, evicted, self.mind.tokenizer,
                      int(self.budget * self.config.summary_share), mind=self.mind,
                      max_tokens=self.config.summary_tokens, generation=self.generation, embedder=self.embedder)
            self.catch_up(Turns.name)
            context = self._assemble(conversation, vector, self.budget)
        # The chat template's markup is not in the window's count: shrink until the prompt fits.
        budget = self.budget
        while True:
            messages = messages_of(context, DEFAULT_SELF, brief)
            over = len(self.mind.encode(messages, tools)) + reserve - self.mind.max_context
            if over <= 0:
                return context, messages
            budget -= over
            context = self._assemble(conversation, vector, budget, memory)

    def _assemble(self, conversation: str, vector: np.ndarray | None, budget: int, memory: bool = True) -> Context:
        try:
            if not memory:
                return by_heart(self.conn, self.app, conversation, self.mind.tokenizer, budget, max_seq=self.as_of)
            return assemble(self.conn, self.app, conversation, vector, self.mind.tokenizer, budget,
                            notebook_cap=self.config.notebook_cap, retrieval_k=self.config.retrieval_k,
                            summary_cap=int(budget * self.config.summary_share),
                            mounted_corpus=corpora.mounted(self.conn, self.app), max_seq=self.as_of)
        except ValueError as e:  # the pinned blocks alone overflow the window
            raise TurnError(f"{e}; shorten the self-definition (/self) or the notebook (/notebook)") from None

    def look(self, conversation: str | None = None, *, memory: bool = True) -> tuple[Context, list[dict[str, str]]]:
        """The window the mind would think in if it answered `conversation` now (`soul window`),
        journaling nothing: retrievals are searched with the newest turn's words and vector."""
        conversation = conversation or self.conversation
        self.catch_up(Turns.name)
        newest = next(newest_first(self.conn, self.app, conversation, 0), None)
        entry = next(self.journal.read(since=newest[0], limit=1), None) if newest else None
        event = entry.event if entry is not None else None
        vector = event.vector if event is not None and event.vector.size else None  # none: keyword search alone
        return self.window(conversation, vector, memory=memory, read_only=True)

    def catch_up(self, *names: str) -> None:
        for name in names or self.runners:
            self.runners[name].catch_up()

    def judge(self, thought: BifocalEvent, messages: list[dict[str, str]], reply: str) -> dict[str, float]:
        """The automatic judgements of a thought, journaled; each judge's score."""
        verdicts = []
        if self.config.self_judge and (judged := self_judgement(self.mind, messages, reply)) is not None:
            verdicts.append(("self", *judged))
        self.catch_up(Memory.name)
        if (similar := similarity_judgement(self.conn, self.app, thought.vector, self.as_of)) is not None:
            verdicts.append(("similarity", *similar))
        for judge, score, rationale in verdicts:
            self.journal.add(judgement(thought, score, judge, rationale, self.embedder))
        return {judge: score for judge, score, _ in verdicts}

    # -- tools and commands ----------------------------------------------------------------

    def tool_schemas(self, memory: bool = True, names: Iterable[str] | None = None) -> list[dict[str, Any]] | None:
        """The tools' schemas (those `names`, default all) for a model with tool calling; none for a
        turn without memory."""
        if not memory or not self.mind.tokenizer.has_tool_calling:
            return None
        return [t.schema() for t in TOOLS.values() if names is None or t.name in names]

    def call_tool(self, name: str, arguments: dict[str, Any], conversation: str | None = None, *,
                  cause: BifocalEvent | None = None, data: dict[str, Any] | None = None,
                  refused: str | None = None) -> ToolOutcome:
        """Run tool `name`, journaling the call and its result; an error or a timeout is a result
        too. `data` joins both events' data (a task's id); a call `refused` (why) is journaled
        with that error as its result and not run."""
        conversation = conversation or self.conversation
        prose = f"{name} {json.dumps(arguments, ensure_ascii=False)}" if arguments else name
        call_seq, call = self.journal.add(BifocalEvent(
            "tool_call", prose, self.embedder.embed([prose])[0], self.embedder.id, conversation,
            causation_id=cause.id if cause else None, data={"tool": name, "arguments": arguments, **(data or {})}))
        return self.result_of(Entry(call_seq, call.originator_id, call.type, 0, call), refused=refused, data=data)

    def result_of(self, call: Entry, *, refused: str | None = None, data: dict[str, Any] | None = None) -> ToolOutcome:
        """Run the journaled tool call `call` (unless `refused`) and journal its result, caused by it."""
        event = call.event
        assert event is not None
        name, arguments = str(event.data.get("tool", "")), dict(event.data.get("arguments") or {})
        start = time.perf_counter()
        tool = TOOLS.get(name)
        if refused is not None:
            ok, text = False, refused
        elif not name:
            ok, text = False, f"could not parse the tool call {arguments.get('text', '')!r}"
        elif tool is None:
            ok, text = False, f"no tool named {name!r}; tools: {', '.join(TOOLS)}"
        else:
            ok, text = self._run(tool.run, arguments)
        duration = round(time.perf_counter() - start, 4)
        text, redacted = redact_secrets(text)
        if len(text) > RESULT_CHARS:
            text = text[: RESULT_CHARS - 1] + "…"
        result_seq, _ = self.journal.add(BifocalEvent(
            "tool_result", text, self.embedder.embed([text])[0], self.embedder.id, str(event.originator_id),
            causation_id=event.id,
            data={"tool": name, "outcome": "ok" if ok else "error", "duration_s": duration,
                  **({"redacted": redacted} if redacted else {}), **(data or {})}))
        return ToolOutcome(call.seq, result_seq, text, ok)

    def _run(self, run: Callable[[Soul, dict[str, Any]], str], arguments: dict[str, Any]) -> tuple[bool, str]:
        """(ok, text) of `run`, in a thread given up after tool_timeout seconds (a thread cannot
        be killed: a hung tool's thread is left behind as a daemon; the soul goes on)."""
        outcome: list[tuple[bool, str]] = []

        def work() -> None:
            try:
                outcome.append((True, str(run(self, arguments))))
            except ToolError as e:
                outcome.append((False, str(e)))
            except Exception as e:  # a tool's failure is its result, never the soul's end
                outcome.append((False, f"{type(e).__name__}: {one_line(e)}"))

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(self.config.tool_timeout)
        return outcome[0] if outcome else (False, f"timed out after {self.config.tool_timeout:g} s")

    def command(self, line: str, conversation: str | None = None) -> TurnResult:
        """A chat command: a tool call (journaled), a rating, or help or a usage line (nothing journaled)."""
        conversation = conversation or self.conversation
        name, _, rest = line[1:].partition(" ")
        if name == "help":
            return TurnResult(conversation, None, None, help_line())
        if name == "rate":
            return self._rate_command(rest.split(), conversation)
        tool = TOOLS.get(name)
        if tool is None:
            return TurnResult(conversation, None, None, f"unknown command /{name}; {help_line()}")
        arguments = tool.arguments(rest)
        if any(not arguments.get(p) for p in tool.parameters.get("required", [])):  # `/recall` alone: journal nothing
            return TurnResult(conversation, None, None, f"usage: {usage(tool)}")
        self.catch_up()  # tools read the projections
        outcome = self.call_tool(name, arguments, conversation)
        return TurnResult(conversation, None, None, outcome.text if outcome.ok else f"error: {outcome.text}",
                          (outcome.call_seq, outcome.result_seq))

    def _rate_command(self, words: list[str], conversation: str) -> TurnResult:
        try:
            score = float(words[0])
        except (IndexError, ValueError):
            return TurnResult(conversation, None, None, "usage: /rate SCORE [EVENT] (SCORE 0..1; EVENT a seq or "
                                                        "event id, default the last thought)")
        try:
            seq = self.rate(score, words[1] if len(words) > 1 else None, conversation)
        except RatingError as e:
            return TurnResult(conversation, None, None, str(e))
        return TurnResult(conversation, None, None, f"rated: resonance event {seq}", (seq,))

    def rate(self, score: float, event: str | None = None, conversation: str | None = None,
             rationale: str | None = None) -> int:
        """Journal the user's rating of `event` (a seq or event id; default the conversation's
        last thought); the resonance event's seq."""
        self.catch_up(Turns.name, Memory.name)
        if event is None:
            thought = last_thought(self.conn, self.app, conversation or self.conversation)
            if thought is None:
                raise RatingError("no thought to rate yet in this conversation")
            event = str(thought)
        seq, _ = rate_event(self.journal, self.conn, self.app, event, score, self.embedder, rationale=rationale)
        return seq

    # -- the pinned blocks and memory ------------------------------------------------------

    def pin(self, kind: str, text: str) -> int:
        """Journal a new self-definition (`self_defined`) or notebook (`notebook_written`)."""
        text, _ = redact_secrets(text)
        seq, _ = self.journal.add(BifocalEvent(kind, text, self.embedder.embed([text])[0], self.embedder.id,
                                               "self" if kind == "self_defined" else "notebook"))
        return seq

    def pin_default_self(self) -> None:
        """A soul without a self-definition journals the default one, so the window it thinks
        in is the journal's, all of it."""
        self.catch_up(Turns.name)
        if latest_pinned(self.conn, self.app, "self_defined") is None:
            self.pin("self_defined", DEFAULT_SELF)

    def recall(self, query: str, limit: int = 5) -> list[Hit]:
        """Memories for `query` (hybrid search), as of `as_of` when talking as a past self."""
        self.catch_up(Memory.name)
        return search(self.conn, self.app, query, self.embedder.embed([query])[0], limit=limit, max_seq=self.as_of)

