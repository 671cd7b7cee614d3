"""The context window (design §4): what the mind sees on a turn, assembled from projections.

Blocks, in order: the pinned self-definition (never evicted), the notebook (cut to its token
cap with a marker), retrievals from memory and the mounted corpus (plain lines: a seq or a
bracket here would be copied into replies), then the conversation:
the latest summary (standing for every turn evicted so far) and the most recent turns that
fit the budget. Tokens are counted with the active model's tokenizer on the rendered text, so
`tokens <= budget` holds for what the model will actually read.

Turns are read newest first from the `turns` projection, a page at a time, stopping at the
first that does not fit: the rows read are the window plus one page at most, whatever the
journal's length. What no longer fits and no summary covers yet is reported as `evictions`;
`summarise` journals a summary for it, written by the mind, with the user's sentences that hold
a name or a number the mind left out. Each summary subsumes the one before (its range starts
where the previous one's did), so the latest alone covers the whole evicted past and assembly
never has to look further back than it.

`by_heart` is the window of a turn without memory: the self-definition and the newest turn.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from projections.search import Hit, search
from projections.turns import (PINNED, first_turn, latest_pinned, latest_summary, newest_first, of_conversation,
                               prose_between, snapshot)

if TYPE_CHECKING:
    from soul.agent.mind import Mind

MAX_BUDGET = 128 * 1024  # the largest window any supported model offers
TRUNCATED = " […truncated]"
SUMMARY_ROWS = 200  # at most this many evicted turns are read into a summary
SUMMARY_TOKENS = 96  # the mind's part of a summary, at most (SoulConfig.summary_tokens)
SUMMARY_PROMPT = ("Below is an earlier part of a conversation between a user and an assistant.\n\n{body}\n\n"
                  "Write a short summary of it. Keep names, numbers, dates and decisions exactly as written.")
SPEAKERS = {"perception": "User", "thought": "Assistant", "tool_result": "Tool result"}
_FIRST_SENTENCE = re.compile(r".+?(?:[.!?](?=\s)|$)", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[\w'’-]+")
_CLITIC = re.compile(r"['’](?:s|m|d|ll|re|ve|t)$", re.I)  # Ingrid's -> Ingrid, I'm -> I


class Tokenizer(Protocol):
    def encode(self, text: str) -> Any: ...


@dataclass(frozen=True)
class Block:
    kind: str  # self | notebook | retrieval | summary | turn
    text: str  # as rendered, one or more lines
    seq: int | None = None  # the journal seq it shows (a summary's own seq)


@dataclass(frozen=True)
class Context:
    blocks: tuple[Block, ...]
    text: str
    tokens: int
    fingerprint: str  # sha256 of `text`, for the thought event to cite
    evictions: tuple[tuple[int, int], ...]  # journal seq ranges no longer in the window nor summarised

    @property
    def turn_seqs(self) -> list[int]:
        return [b.seq for b in self.blocks if b.kind == "turn" and b.seq is not None]


def count(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of `text`: mlx_lm's TokenizerWrapper gives a list, a `tokenizers.Tokenizer` an Encoding."""
    encoded = tokenizer.encode(text)
    return len(getattr(encoded, "ids", encoded))


def truncate(tokenizer: Tokenizer, text: str, cap: int) -> str:
    """`text` if it fits `cap` tokens, else its longest prefix that fits with the marker (or '')."""
    if count(tokenizer, text) <= cap:
        return text
    low, high = 0, len(text)  # binary search on characters: O(log n) encodes
    while low < high:
        mid = (low + high + 1) // 2
        if count(tokenizer, text[:mid] + TRUNCATED) <= cap:
            low = mid
        else:
            high = mid - 1
    return text[:low] + TRUNCATED if count(tokenizer, text[:low] + TRUNCATED) <= cap else ""


def render_turn(seq: int, kind: str, prose: str) -> str:
    return f"[{seq} {kind}] {prose}\n"


def parse_turn(text: str) -> tuple[str, str]:
    """The event type and prose of a turn block's text, as `render_turn` wrote them."""
    head, prose = text.split("] ", 1)
    return head.split(" ", 1)[1], prose.removesuffix("\n")


def render(blocks: Sequence[Block]) -> str:
    return "".join(b.text for b in blocks)


def _retrievals(conn: Any, app: str, text: str, vector: np.ndarray | None, k: int,
                corpus: str | None, max_seq: int | None) -> list[Hit]:
    """Up to 2k hits, alternating the mounted corpus's and the soul's own memories (not other corpora's chunks)."""
    mode = "hybrid" if vector is not None else "keyword"
    own = [h for h in search(conn, app, text, vector, mode=mode, limit=2 * k, max_seq=max_seq) if h.corpus is None]
    mounted = (search(conn, app, text, vector, mode=mode, corpus=corpus, limit=k, max_seq=max_seq)
               if corpus is not None else [])
    return [h for pair in zip(mounted, own) for h in pair] + mounted[len(own):] + own[len(mounted):]


def assemble(conn: Any, app: str, conversation: str, query_vector: np.ndarray | None,
             tokenizer: Tokenizer, budget: int, notebook_cap: int = 2048, retrieval_k: int = 0,
             mounted_corpus: str | None = None, max_seq: int | None = None,
             summary_cap: int | None = None) -> Context:
    """The context window of `conversation` for soul `app`, within `budget` tokens. With
    `max_seq`, the pinned blocks and retrievals are those of the journal up to that seq (a
    past self talking); the conversation's own turns are all shown. `summary_cap` limits the
    summary's tokens (default: whatever the pinned blocks leave)."""
    if not 1 <= budget <= MAX_BUDGET:
        raise ValueError(f"budget must be between 1 and {MAX_BUDGET} tokens, not {budget}")
    if notebook_cap < 0 or retrieval_k < 0:
        raise ValueError("notebook_cap and retrieval_k must not be negative")
    with snapshot(conn) as cur:  # every read below, retrievals too, sees one state of the projections
        self_definition, notebook = (latest_pinned(cur, app, kind, max_seq) for kind in PINNED)
        summary = latest_summary(cur, app, conversation)
        covered = summary[3] if summary else 0
        pinned = []
        if self_definition is not None:
            pinned.append(Block("self", f"# Self\n{self_definition}\n"))
        if notebook is not None:
            pinned.append(Block("notebook", f"# Notebook\n{truncate(tokenizer, notebook, notebook_cap)}\n"))
        used = count(tokenizer, render(pinned))
        if used > budget:
            raise ValueError(f"the self-definition and notebook take {used} tokens, over the budget of {budget}")
        if summary:
            head = f"# Conversation\n[{summary[2]}-{summary[3]} summary] "
            room = budget - used - count(tokenizer, head + "\n")
            text = truncate(tokenizer, summary[1], room if summary_cap is None else min(room, summary_cap))
            pinned.append(Block("summary", f"{head}{text}\n", summary[0]))
        turns = newest_first(cur, app, conversation, covered)
        newest = next(turns, None)
        hits: list[Hit] = []
        if retrieval_k and newest is not None:
            hits = _retrievals(conn, app, newest[2], query_vector, retrieval_k, mounted_corpus, max_seq)
            # The conversation's own unsummarised turns are in the window or on their way out of
            # it into a summary: recalling them would only repeat them.
            own = of_conversation(cur, app, conversation, [h.seq for h in hits], covered)
            hits = [h for h in hits if h.seq not in own][:retrieval_k]
        header = [] if summary or newest is None else [Block("header", "# Conversation\n")]
        # Blocks end in a newline, so (for byte-level BPE) their counts add up; the whole text is
        # counted once more below in case a tokenizer merges across a boundary.
        used = sum(count(tokenizer, b.text) for b in (*pinned, *header))
        recalled = []
        for h in hits:  # retrievals take what they need first, each only if it fits whole
            block = Block("retrieval", f"- {h.prose}\n", h.seq)  # plain: no marker for a reply to copy
            cost = count(tokenizer, block.text)
            if used + cost <= budget:
                recalled.append(block)
                used += cost
        window: list[Block] = []
        evicted_from = None  # seq of the newest turn that did not fit
        for row in ([newest, *turns] if newest is not None else []):
            block = Block("turn", render_turn(*row), row[0])
            cost = count(tokenizer, block.text)
            if used + cost > budget:
                evicted_from = row[0]
                break
            window.insert(0, block)
            used += cost
        while True:
            blocks = [*pinned[:2], *recalled, *pinned[2:], *(header if window else []), *window]
            text = render(blocks)
            tokens = count(tokenizer, text)
            if tokens <= budget:
                break
            if not window:
                raise ValueError(f"a budget of {budget} tokens does not hold the pinned blocks and the summary")
            evicted_from = window.pop(0).seq
        evictions = ()
        if evicted_from is not None:
            evictions = ((first_turn(cur, app, conversation, covered), evicted_from),)
    return Context(tuple(blocks), text, tokens, hashlib.sha256(text.encode()).hexdigest(), evictions)


def by_heart(conn: Any, app: str, conversation: str, tokenizer: Tokenizer, budget: int,
             max_seq: int | None = None) -> Context:
    """The window without memory: the self-definition and the conversation's newest turn (the
    words to answer, cut to fit), nothing else: no notebook, summary, retrievals nor earlier
    turns. What the weights know by heart; it evicts nothing."""
    if not 1 <= budget <= MAX_BUDGET:
        raise ValueError(f"budget must be between 1 and {MAX_BUDGET} tokens, not {budget}")
    with snapshot(conn) as cur:
        self_definition = latest_pinned(cur, app, "self_defined", max_seq)
        newest = next(newest_first(cur, app, conversation, 0), None)
    blocks = [Block("self", f"# Self\n{self_definition}\n")] if self_definition is not None else []
    used = count(tokenizer, render(blocks))
    if used > budget:
        raise ValueError(f"the self-definition takes {used} tokens, over the budget of {budget}")
    if newest is not None:
        seq, kind, prose = newest
        header = Block("header", "# Conversation\n")
        room = budget - used - count(tokenizer, header.text + render_turn(seq, kind, ""))
        blocks += [header, Block("turn", render_turn(seq, kind, truncate(tokenizer, prose, room)), seq)]
    text = render(blocks)
    return Context(tuple(blocks), text, count(tokenizer, text), hashlib.sha256(text.encode()).hexdigest(), ())


def first_sentence(prose: str) -> str:
    match = _FIRST_SENTENCE.match(prose.strip())
    return match.group(0).strip() if match else ""


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def key_words(sentence: str) -> set[str]:
    """The names and numbers in `sentence`: words with a digit, and capitalised words ("I"
    aside) that do not open the sentence, a quotation or what follows a label like "User:"."""
    found = set()
    for match in _WORD.finditer(sentence):
        word = _CLITIC.sub("", match.group(0))
        before = sentence[:match.start()].rstrip()
        opening = not before or before[-1] in ':"“(\''
        if any(c.isdigit() for c in word) or (word[:1].isupper() and word != "I" and not opening):
            found.add(word)
    return found


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def dropped(written: str, candidates: Sequence[str]) -> list[str]:
    """Those of `candidates` (sentences) holding a name or number that `written` leaves out, in order, each once."""
    kept: list[str] = []
    for sentence in candidates:
        if sentence not in kept and any(not mentions(written, w) for w in key_words(sentence)):
            kept.append(sentence)
    return kept


def summary_messages(mind: Mind, previous: str | None, turns: Sequence[tuple[str, str]],
                     max_tokens: int) -> list[dict[str, str]]:
    """What the mind is asked to summarise `turns` ((type, prose), oldest first) after the
    summary `previous` with: SUMMARY_PROMPT, the turns cut at their end if they do not fit
    the mind's context with `max_tokens` left to write."""
    lines = [f"Summary of what came before: {previous}"] if previous else []
    body = "\n".join(lines + [f"{SPEAKERS.get(kind, kind)}: {prose}" for kind, prose in turns])

    def asking(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": SUMMARY_PROMPT.format(body=text)}]

    while body and (over := len(mind.encode(asking(body))) + max_tokens - mind.max_context) > 0:
        body = truncate(mind.tokenizer, body, count(mind.tokenizer, body) - over)
    return asking(body)


def summarise(journal: Journal, conn: Any, conversation: str, evicted: tuple[int, int], tokenizer: Tokenizer,
              cap: int, *, mind: Mind | None = None, max_tokens: int = SUMMARY_TOKENS, generation: str | None = None,
              embedder: Any = None) -> int:
    """Journal a summary of the turns `evicted` (a range from Context.evictions), at most `cap`
    tokens of `tokenizer`; its seq.

    The mind writes it, greedily, from the previous summary and the evicted turns
    (`summary_messages`), in at most `max_tokens` and half of `cap`. Then come, verbatim and one
    a line, the sentences of the user's evicted words and of the previous summary that hold a
    name or a number (`key_words`) the mind's words leave out, the newest first while they fit
    the rest of `cap`. The mind alone does not do: SmolLM2-135M copies the first exchange it is
    shown or wanders off, and of 8 made-up facts said once it kept 2 (those that opened the
    evicted turns), the first sentences 4, the two together 8 (ops/bench/summary_bench.py,
    docs/benchmarks.md). Without a mind, or when it writes nothing, the first sentence of the
    previous summary and of each evicted turn stand in for its words. `data` says who wrote
    it: by "mind" (with the model, `generation`, the tokens it generated and why it stopped)
    or "extract" (with why, if a mind wrote nothing), and how many sentences were `kept`. The
    vector is `embedder`'s embedding of the prose (none without an embedder).

    The summary cites the range from the previous summary's first seq (it subsumes it) to the
    last evicted seq, so the latest summary alone stands for everything evicted so far.
    """
    first, last = evicted
    if not 1 <= first <= last:
        raise ValueError(f"an evicted range runs from a first to a last seq >= 1, not {first}..{last}")
    previous = latest_summary(conn, journal.app, conversation)
    before = previous[1] if previous else None
    turns = prose_between(conn, journal.app, conversation, first, last, SUMMARY_ROWS)
    limit = min(max_tokens, cap // 2)  # the other half, at least, is for the sentences kept verbatim
    written = ""
    data: dict[str, Any] = {}
    if mind is not None and limit > 0:
        wrote = mind.generate(summary_messages(mind, before, turns, limit), max_tokens=limit, temperature=0.0)
        written = wrote.text.strip()
        data = {"by": "mind", "model": mind.model_id, **({"generation": generation} if generation else {}),
                "generated_tokens": wrote.generated_tokens, "finish": wrote.finish_reason}
    if not written:
        extract = [before or ""] + [first_sentence(prose) for _, prose in turns]
        written = " ".join(s for s in extract if s)
        data = {"by": "extract", **({"because": "the mind wrote nothing"} if mind is not None else {})}
    written = truncate(tokenizer, written, limit)
    candidates = sentences(before or "") + [
        f"User: {s}" for kind, prose in turns if kind == "perception" for s in sentences(prose)]
    room = cap - count(tokenizer, written)
    kept: list[str] = []
    # The newest first: an older one has been in summaries for longer, and memory still recalls its turn.
    for sentence in reversed(dropped(written, candidates)):
        cost = count(tokenizer, "\n" + sentence)
        if cost <= room:
            kept.insert(0, sentence)
            room -= cost
    prose = truncate(tokenizer, "\n".join(s for s in (written, *kept) if s), cap)
    if previous:
        first = min(first, previous[2])
    try:
        originator: uuid.UUID | str = uuid.UUID(conversation)
    except ValueError:
        originator = conversation
    vector = embedder.embed([prose])[0] if embedder is not None else np.zeros(0, dtype="<f4")
    event = BifocalEvent("summary", prose, vector, embedder.id if embedder is not None else NO_EMBEDDER,
                         originator_id=originator,  # type: ignore[arg-type]
                         data={"first_seq": first, "last_seq": last, "conversation": conversation, **data,
                               "kept": len(kept)})
    seq, _ = journal.add(event)
    return seq
