"""The context window (design §4): what the mind sees on a turn, assembled from projections.

Blocks, in order: the pinned self-definition (never evicted), the notebook (cut to its token
cap with a marker), retrievals from memory and the mounted corpus (plain lines: a seq or a
bracket here would be copied into replies), then the conversation:
the latest summary (standing for every turn evicted so far) and the most recent turns that
fit the budget. Tokens are counted with the active model's tokenizer on the rendered text, so
`tokens <= budget` holds for what the model will actually read.

Turns are read newest first from the `turns` projection, stopping at the first that does not
fit: a page, then as many as the room left holds at the tokens a turn seen so far and a quarter
more, so the rows read are about the window's, whatever the journal's length. Each turn is
counted once per tokenizer: its count is stored beside the projection (projections/turns.py)
under its seq and a key of the tokenizer and the block's form (`Counter.key`), and read with the
turn, so a window's assembly adds numbers; retrievals' counts are stored so too. The pinned
blocks, few and rarely changed, are counted once in the process. A window's tokens are its
blocks' summed where that is exact, else its whole text is counted (`Counter`).

What no longer fits and no summary covers yet is reported as `evictions`; `summarise` journals
a summary for it, written by the mind, with the user's sentences that hold a name or a number
the mind left out. Each summary subsumes the one before (its range starts
where the previous one's did), so the latest alone covers the whole evicted past and assembly
never has to look further back than it.

`by_heart` is the window of a turn without memory: the self-definition and the newest turn.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from projections.search import Hit, search
from projections.turns import (NEWEST, PAGE, PINNED, Columns, counted_turns, ensure_counts, first_turn, latest_pinned,
                               latest_summary, newest_first, of_conversation, prose_between, snapshot, store_counts,
                               stored_counts)

if TYPE_CHECKING:
    from soul.agent.mind import Mind

MAX_BUDGET = 128 * 1024  # the largest window any supported model offers
TRUNCATED = " […truncated]"
SUMMARY_ROWS = 200  # at most this many evicted turns are read into a summary
SUMMARY_TOKENS = 96  # the mind's part of a summary, at most (SoulConfig.summary_tokens)
SUMMARY_PROMPT = ("Below is an earlier part of a conversation between a user and an assistant.\n\n{body}\n\n"
                  "Write a short summary of it. Keep names, numbers, dates and decisions exactly as written.")
SPEAKERS = {"perception": "User", "thought": "Assistant", "tool_result": "Tool result"}
# Forms of the blocks stored counts are kept for: each is part of their key (Counter.key), so a
# form changed is counted afresh.
TURN = "[%s %s] %s\n"  # seq, type, prose
RECALL = "- %s\n"  # a retrieval: plain, no marker for a reply to copy
MEMO = 256  # pinned texts (and cuts of them) whose counts a Counter remembers
COUNTERS = 8  # tokenizers whose Counters are kept
MAX_PAGE = 4096  # turns read per round trip, at most
_FIRST_SENTENCE = re.compile(r".+?(?:[.!?](?=\s)|$)", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[\w'’-]+")
_CLITIC = re.compile(r"['’](?:s|m|d|ll|re|ve|t)$", re.I)  # Ingrid's -> Ingrid, I'm -> I


class Tokenizer(Protocol):
    def encode(self, text: str) -> Any: ...


class Block(NamedTuple):  # a tuple, not a dataclass: a wide window makes thousands, and tuples are made faster
    kind: str  # self | notebook | retrieval | summary | header | turn
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
    return TURN % (seq, kind, prose)


def parse_turn(text: str) -> tuple[str, str]:
    """The event type and prose of a turn block's text, as `render_turn` wrote them."""
    head, prose = text.split("] ", 1)
    return head.split(" ", 1)[1], prose.removesuffix("\n")


def render(blocks: Sequence[Block]) -> str:
    return "".join(b.text for b in blocks)


SENTINEL = "["  # stands for the block that follows the one counted: every block starts with "#", "[" or "-"
# Blocks of every kind, as assembly renders them, with words, digits, punctuation, a contraction,
# a double space, non-ASCII, a special token, and a space, a tab or a blank line before the final
# newline: what a tokenizer's counts are checked to add up on (Counter.additive).
_PROBE = ("# Self\nI am the soul; I've kept 3 notes. \n", "# Notebook\nBuy lamp oil (2 litres) at the café.\n",
          "- Ingrid's gate code is 4817.\n", "# Conversation\n", render_turn(12, "perception", "Hello,  world!"),
          render_turn(13, "thought", "Yes: x = [1, 2]; done…\n\n"),
          render_turn(14, "tool_result", '{"ok": true}<|im_end|>'), render_turn(15, "perception", "tabs\t"),
          "# Notebook\nkeep\n \n", "- a memory\n", "# Conversation\n[5-9 summary] They met in Tromsø; it rained.\n",
          render_turn(16, "thought", ""))


def _clean(text: str) -> bool:
    """Whether `text` ends in one newline after a visible character and starts with a visible one."""
    return len(text) >= 2 and text[-1] == "\n" and not text[-2].isspace() and not text[0].isspace()


@dataclass
class Counted:
    """Blocks with their counts, in columns: a wide window holds thousands."""
    blocks: list[Block]
    tokens: list[int]  # each block's alone
    joined: list[int]  # each block's when another block follows it (Counter)

    @staticmethod
    def of(parts: Iterable[Counted]) -> Counted:
        """`parts` one after the other."""
        whole = Counted([], [], [])
        for part in parts:
            whole.blocks += part.blocks
            whole.tokens += part.tokens
            whole.joined += part.joined
        return whole


class Counter:
    """One tokenizer's counts, each made once.

    `id` is a digest of the tokenizer's serialisation (every step from text to tokens): counts
    stored under it stay right while that tokenizer counts, and models sharing a tokenizer share
    them. A tokenizer that cannot be serialised gets none, and its counts are not stored. The
    tokenizer must not change once it counts.

    Blocks rendered together take each one's `joined` tokens but the last one's `tokens`
    (`tokens`). For byte-level BPE with GPT-2's pre-tokenizer (SmolLM2's) that is exact: the text
    is cut into pieces and no token spans two; where a block ends in one newline after a visible
    character and the next starts with a visible one (`_clean`), the newline is a piece of its
    own whatever surrounds it, so each block's pieces are the same alone as together (joined is
    tokens). A space, a tab or a blank line before that newline is cut otherwise when a visible
    character follows than at the end ("\\n\\n" is one piece at the end, two before "["), so
    `joined` counts the block followed by SENTINEL, cut as every block's first character is.
    `additive` says the probe's blocks add up so, pair by pair and whole; a tokenizer adding a
    BOS to every encode, or a space in front of the text, does not, and its windows are counted
    whole. For other tokenizers the probe's agreement is evidence, not proof.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # mlx_lm's wrapper -> HF's -> tokenizers'
        serialise = getattr(backend, "to_str", None)
        self.id = hashlib.sha256(serialise().encode()).hexdigest() if serialise is not None else None
        self._memo: dict[tuple[str, int | None], Any] = {}
        self._sentinel = count(tokenizer, SENTINEL)
        alone = [count(tokenizer, t) for t in _PROBE]
        batch = getattr(backend, "encode_batch", None)  # in parallel, without a call per text
        # Used only if it counts as `encode` does (a tokenizer.json may ask for padding, say).
        self._batch = batch if batch is not None and [len(e.ids) for e in batch(list(_PROBE))] == alone else None
        probe = [Counted([Block("probe", t)], [n], [j]) for t, (n, j) in zip(_PROBE, self.counts(_PROBE))]

        def adds_up(parts: Sequence[Counted]) -> bool:
            whole = Counted.of(parts)
            return count(tokenizer, render(whole.blocks)) == _sum(whole)

        self.additive = all(map(adds_up, itertools.pairwise(probe))) and adds_up(probe)

    def key(self, form: str) -> int | None:
        """What counts of blocks rendered in `form` are stored under: 64 bits of a digest of the
        tokenizer's id and the form (None: not stored)."""
        if self.id is None:
            return None
        return int.from_bytes(hashlib.sha256(f"{self.id}\n{form}".encode()).digest()[:8], "big", signed=True)

    def counts(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """(tokens, joined) of each of `texts`: in a batch where the tokenizer has one, and one
        more for those not `_clean`."""
        tokens = self._encode(texts)
        joined = list(tokens)
        unclean = [i for i, t in enumerate(texts) if not _clean(t)]
        for i, n in zip(unclean, self._encode([texts[i] + SENTINEL for i in unclean])):
            joined[i] = n - self._sentinel
        return list(zip(tokens, joined))

    def measure(self, block: Block) -> Counted:
        """`block` counted, remembered: for the pinned blocks, which come back every turn."""
        tokens, joined = self._measured(block.text)
        return Counted([block], [tokens], [joined])

    def count(self, text: str) -> int:
        """`count(tokenizer, text)`, remembered."""
        return self._measured(text)[0]

    def truncate(self, text: str, cap: int) -> str:
        """`truncate(tokenizer, text, cap)`, remembered."""
        if self.count(text) <= cap:
            return text
        return self._remember((text, cap), lambda: truncate(self.tokenizer, text, cap))

    def tokens(self, counted: Counted) -> int:
        """Tokens of the render of `counted`: summed where the counts add up, else counted whole."""
        return _sum(counted) if self.additive else count(self.tokenizer, render(counted.blocks))

    def _measured(self, text: str) -> tuple[int, int]:
        return self._remember((text, None), lambda: self.counts([text])[0])

    def _encode(self, texts: Sequence[str]) -> list[int]:
        if self._batch is not None and texts:
            return [len(e.ids) for e in self._batch(list(texts))]
        return [count(self.tokenizer, t) for t in texts]

    def _remember(self, key: tuple[str, int | None], make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            if len(self._memo) >= MEMO:
                del self._memo[next(iter(self._memo))]  # the oldest: a notebook rewritten often stays bounded
            self._memo[key] = make()
        return self._memo[key]


def _sum(counted: Counted) -> int:
    return sum(counted.joined[:-1]) + counted.tokens[-1] if counted.blocks else 0


_counters: dict[int, Counter] = {}  # by id(tokenizer): a Counter holds its tokenizer, so the id is not reused


def counter_of(tokenizer: Tokenizer) -> Counter:
    """The Counter of `tokenizer`, made on its first use (a digest and a few encodes)."""
    counter = _counters.get(id(tokenizer))
    if counter is None:
        if len(_counters) >= COUNTERS:
            del _counters[next(iter(_counters))]
        counter = _counters[id(tokenizer)] = Counter(tokenizer)
    return counter


def _fill(counter: Counter, key: int | None, seqs: Sequence[int], text: Callable[[int], str],
          tokens: list[int | None], joined: list[int | None], fresh: list[tuple[int, int | None, int, int]]) -> None:
    """Count, in one batch, the blocks (seqs[i], text(i)) whose tokens[i] is None (none stored),
    and add them to `fresh` (seq, key, tokens, joined) to be stored."""
    missing = [i for i, n in enumerate(tokens) if n is None]
    for i, (t, j) in zip(missing, counter.counts([text(i) for i in missing])):
        tokens[i], joined[i] = t, j
        fresh.append((seqs[i], key, t, j))


def _recalled(cur: Any, app: str, counter: Counter, hits: Sequence[Hit],
              fresh: list[tuple[int, int | None, int, int]]) -> list[Counted]:
    """Each of `hits` as a retrieval block, counted: as stored, or now (_fill)."""
    key = counter.key(RECALL)
    blocks = [Block("retrieval", RECALL % h.prose, h.seq) for h in hits]
    stored = stored_counts(cur, app, key, [h.seq for h in hits]) if hits else {}
    counts = [stored.get(h.seq, (None, None)) for h in hits]
    tokens, joined = [n for n, _ in counts], [j for _, j in counts]
    _fill(counter, key, [h.seq for h in hits], lambda i: blocks[i].text, tokens, joined, fresh)
    return [Counted([b], [n], [j]) for b, n, j in zip(blocks, tokens, joined)]


def _window(counter: Counter, key: int | None, page: Columns, more: Callable[[int, int, int | None], Columns],
            room: int, fresh: list[tuple[int, int | None, int, int]]) -> tuple[Counted, int | None]:
    """The newest turns that fit in `room` tokens at their own counts, oldest first, and the seq
    of the newest that did not fit (None when all did). `page` holds the newest turns, PAGE of
    them asked (counted_turns' columns); `more(before, limit, key)` reads on."""
    parts, asked = [], PAGE
    while page[0]:
        seqs, kinds, proses, tokens, joined = page
        _fill(counter, key, seqs, lambda i: TURN % (seqs[i], kinds[i], proses[i]), tokens, joined, fresh)
        spent = list(itertools.accumulate(tokens))
        fit = bisect.bisect_right(spent, room)  # the turns before the first that does not fit
        texts = map(TURN.__mod__, zip(seqs[:fit], kinds[:fit], proses[:fit]))
        # tuple.__new__ straight: Block(...) goes through a Python-level __new__, 3,600 times at 128k.
        blocks = list(map(tuple.__new__, itertools.repeat(Block), zip(itertools.repeat("turn"), texts, seqs[:fit])))
        parts.append(Counted(blocks[::-1], tokens[:fit][::-1], joined[:fit][::-1]))
        if fit < len(seqs):
            return Counted.of(reversed(parts)), seqs[fit]
        if len(seqs) < asked:
            break
        room -= spent[-1]
        # As many turns as the room left holds at this page's tokens a turn, and a quarter more.
        asked = min(MAX_PAGE, max(PAGE, room * len(seqs) * 5 // (4 * spent[-1]) + 1))
        page = more(seqs[-1], asked, key)
    return Counted.of(reversed(parts)), None


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
    counter = counter_of(tokenizer)
    key = counter.key(TURN)
    ensure_counts(conn, app)
    fresh: list[tuple[int, int | None, int, int]] = []  # (seq, key, tokens, joined) counted now, stored at the end
    with snapshot(conn) as cur:  # every read below, retrievals too, sees one state of the projections
        self_definition, notebook = (latest_pinned(cur, app, kind, max_seq) for kind in PINNED)
        summary = latest_summary(cur, app, conversation)
        covered = summary[3] if summary else 0
        pinned = []
        if self_definition is not None:
            pinned.append(counter.measure(Block("self", f"# Self\n{self_definition}\n")))
        if notebook is not None:
            cut = counter.truncate(notebook, notebook_cap)
            pinned.append(counter.measure(Block("notebook", f"# Notebook\n{cut}\n")))
        used = counter.tokens(Counted.of(pinned))
        if used > budget:
            raise ValueError(f"the self-definition and notebook take {used} tokens, over the budget of {budget}")
        if summary:
            head = f"# Conversation\n[{summary[2]}-{summary[3]} summary] "
            room = budget - used - counter.count(head + "\n")
            text = counter.truncate(summary[1], room if summary_cap is None else min(room, summary_cap))
            pinned.append(counter.measure(Block("summary", f"{head}{text}\n", summary[0])))
        first = counted_turns(cur, app, conversation, covered, NEWEST, PAGE, key)
        newest = first[2][0] if first[0] else None  # its prose
        hits: list[Hit] = []
        if retrieval_k and newest is not None:
            hits = _retrievals(conn, app, newest, query_vector, retrieval_k, mounted_corpus, max_seq)
            # The conversation's own unsummarised turns are in the window or on their way out of
            # it into a summary: recalling them would only repeat them.
            own = of_conversation(cur, app, conversation, [h.seq for h in hits], covered)
            hits = [h for h in hits if h.seq not in own][:retrieval_k]
        header = [] if summary or newest is None else [counter.measure(Block("header", "# Conversation\n"))]
        # The budget is spent at each block's count alone; the window's tokens (below) are its text's.
        used = sum(c.tokens[0] for c in (*pinned, *header))
        recalled = []
        for recall in _recalled(cur, app, counter, hits, fresh):
            if used + recall.tokens[0] <= budget:  # retrievals take what they need first, each only whole
                recalled.append(recall)
                used += recall.tokens[0]
        more = functools.partial(counted_turns, cur, app, conversation, covered)
        window, evicted_from = _window(counter, key, first, more, budget - used, fresh)
        while True:
            counted = Counted.of([*pinned[:2], *recalled, *pinned[2:], *(header if window.blocks else []), window])
            tokens = counter.tokens(counted)
            if tokens <= budget:
                break
            if not window.blocks:
                raise ValueError(f"a budget of {budget} tokens does not hold the pinned blocks and the summary")
            evicted_from = window.blocks[0].seq
            window = Counted(window.blocks[1:], window.tokens[1:], window.joined[1:])
        evictions = ()
        if evicted_from is not None:
            evictions = ((first_turn(cur, app, conversation, covered), evicted_from),)
    if fresh and key is not None:
        store_counts(conn, app, fresh)
    text = render(counted.blocks)
    return Context(tuple(counted.blocks), text, tokens, hashlib.sha256(text.encode()).hexdigest(), evictions)


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
    counter = counter_of(tokenizer)
    pinned = [counter.measure(Block("self", f"# Self\n{self_definition}\n"))] if self_definition is not None else []
    counted = Counted.of(pinned)
    used = counter.tokens(counted)
    if used > budget:
        raise ValueError(f"the self-definition takes {used} tokens, over the budget of {budget}")
    if newest is not None:
        seq, kind, prose = newest
        header = counter.measure(Block("header", "# Conversation\n"))
        room = budget - used - count(tokenizer, header.blocks[0].text + render_turn(seq, kind, ""))
        turn = Block("turn", render_turn(seq, kind, truncate(tokenizer, prose, room)), seq)
        ((tokens, joined),) = counter.counts([turn.text])
        counted = Counted.of([counted, header, Counted([turn], [tokens], [joined])])
    text = render(counted.blocks)
    return Context(tuple(counted.blocks), text, counter.tokens(counted), hashlib.sha256(text.encode()).hexdigest(), ())


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
