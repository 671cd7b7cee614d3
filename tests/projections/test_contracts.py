"""Every real projection held to the projection contract (contract.py), each fed the events it
reads as a living soul journals them: turns of two conversations, corpus chunks re-ingested and
removed, mounts, judgements of every judge (some of nothing, some out of range), summaries,
pinned rewrites, redactions (some naming nothing)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from journal.event import NO_EMBEDDER, BifocalEvent, Embedder
from projections.corpora import Corpora
from projections.counts import EventCounts
from projections.memory import Memory
from projections.tasks import Tasks
from projections.turns import Turns
from tests.projections.contract import ProjectionContract

MINILM = Embedder("test-minilm@1", Memory.dim)
SMALL = Embedder("small@1", 8)  # another dimension: remembered for its words only
A, B = "conversation:a", "conversation:b"
rng = np.random.default_rng(10)


def said(kind: str, prose: str, origin: str, embedder: Embedder = MINILM, **fields: Any) -> BifocalEvent:
    return BifocalEvent(kind, prose, rng.standard_normal(embedder.dim), embedder, origin, **fields)


def fact(kind: str, origin: str, corpus: str | None = None, **data: Any) -> BifocalEvent:
    """An event of facts in `data`, with no prose worth embedding."""
    return BifocalEvent(kind, kind, np.zeros(0), NO_EMBEDDER, origin, corpus=corpus, data=data)


def chunk(corpus: str, path: str, index: int, chunks: int, digit: str) -> BifocalEvent:
    """Chunk `index` of the file's `chunks`; `digit` repeated is its content hash."""
    return said("chunk_ingested", f"{path} part {index}: def handler_{index}(): pass", f"corpus:{corpus}", corpus=corpus,
                data={"path": path, "sha256": digit * 64, "index": index, "chunks": chunks,
                      "lines": [1 + 34 * index, 40 + 34 * index]})


def removed(corpus: str, path: str, chunks: list[BifocalEvent]) -> BifocalEvent:
    return fact("document_removed", f"corpus:{corpus}", corpus, path=path, chunk_ids=[str(c.id) for c in chunks])


def judged(target: BifocalEvent, score: Any, judge: str | None = None) -> BifocalEvent:
    data = {"event": str(target.id), "score": score, **({"judge": judge} if judge else {})}
    return said("resonance", f"{judge or 'user'} judges it {score}", str(target.originator_id), data=data)


def forget(target: BifocalEvent | str) -> BifocalEvent:
    return fact("redaction", "self", event=str(target.id) if isinstance(target, BifocalEvent) else target)


def summary(conversation: str, first: int, last: int) -> BifocalEvent:
    return said("summary", f"what happened in {conversation} from {first} to {last}", conversation,
                data={"conversation": conversation, "first_seq": first, "last_seq": last})


def memory_history() -> list[BifocalEvent]:
    hello, plan = said("perception", "hello, can you read the retry loop?", A), said("thought", "it retries six times", A)
    call, result = said("tool_call", "read src/retry.py", A), said("tool_result", "def retry(): ...", A)
    retry = [chunk("lib", "src/retry.py", i, 2, "1") for i in range(2)]
    io, guide = chunk("lib", "src/io.py", 0, 1, "2"), chunk("docs", "guide.md", 0, 1, "3")
    retry_again = [chunk("lib", "src/retry.py", i, 2, "4") for i in range(2)]
    later = [said("perception", "and the journal?", B), said("thought", "it is append-only", B), said("tool_result", "ok", B)]
    last = said("thought", "something I should not have said", A)
    return [
        hello, plan, call, result, *retry, io, guide,
        judged(plan, 0.9), judged(plan, 0.2, "self"), judged(retry[0], 0.8, "similarity"),
        judged(call, 0.5), judged(result, 7), fact("resonance", A, score=0.5),  # not remembered, out of range, of nothing
        said("perception", "from the small model", B, SMALL), said("thought", "small talk", B), summary(A, 1, 4),
        removed("lib", "src/retry.py", retry), *retry_again,
        forget(hello), judged(hello, 1.0), judged(plan, 0.1),  # a judgement of the forgotten; the user re-rates
        fact("corpus_removed", "corpus:docs", "docs"), chunk("docs", "guide.md", 0, 1, "5"),  # removed, then added again
        *later, judged(later[1], 0.95, "similarity"), judged(retry_again[1], 0.3),
        forget("not-an-id"), said("perception", "one more thing", A), last, forget(last),
    ]


def turns_history() -> list[BifocalEvent]:
    aside = said("thought", "an aside in b", B)
    last = said("perception", "please forget I said this", B)
    return [
        said("self_defined", "I am a careful reader of code", "self"), said("notebook_written", "todo: the retry loop", "notebook"),
        said("perception", "hello", A), said("thought", "hi", A), said("tool_call", "ls", A), said("tool_result", "a b c", A),
        said("thought", "three files", A), said("perception", "and you?", B), aside,
        summary(A, 1, 4), said("summary", "b so far", "summariser", data={"conversation": B, "first_seq": 8, "last_seq": 9}),
        summary(A, 2, 10**6), said("summary", "names no range", A, data={"conversation": A}),  # neither is kept
        said("notebook_written", "todo: the journal", "notebook"),
        forget(aside), forget(str(uuid.uuid4())), forget("nothing"),
        said("perception", "next", A), said("thought", "on it", A), said("tool_result", "done", A),
        said("self_defined", "I am a careful reader, and brief", "self"), said("thought", "noted", B), last, forget(last),
    ]


def corpora_history() -> list[BifocalEvent]:
    b_py, c_py = chunk("lib", "b.py", 0, 1, "2"), chunk("lib", "c.py", 0, 3, "3")  # c.py: an interrupted ingest
    return [
        chunk("lib", "a.py", 0, 2, "1"), chunk("lib", "a.py", 1, 2, "1"), fact("corpus_added", "corpus:lib", "lib", root="/src/lib"),
        b_py, fact("corpus_mounted", "corpus:lib", "lib"), fact("corpus_added", "corpus:docs", "docs", root="/docs"),
        chunk("docs", "x.md", 0, 1, "4"), fact("corpus_mounted", "corpus:docs", "docs"),  # lib is mounted no more
        chunk("lib", "a.py", 0, 2, "5"), c_py, said("perception", "not about a corpus", A),  # a.py changed: starts over
        chunk("lib", "a.py", 1, 2, "5"), removed("lib", "b.py", [b_py]),
        fact("corpus_mounted", "corpus:ghost", "ghost"), fact("corpus_unmounted", "corpus:docs", "docs"),  # unknown: ignored
        fact("corpus_removed", "corpus:docs", "docs"), chunk("docs", "y.md", 0, 1, "6"),  # removed, then added again
        fact("corpus_mounted", "corpus:lib", "lib"), removed("lib", "c.py", [c_py]), chunk("lib", "d.py", 0, 1, "7"),
        fact("corpus_added", "corpus:lib", "lib", root="/src/lib2"),  # moved
        fact("corpus_removed", "corpus:lib", "lib"), fact("corpus_mounted", "corpus:docs", "docs"),
        fact("corpus_added", "corpus:new", "new", root="/new"),  # added before its chunks
    ]


class TestMemoryContract(ProjectionContract):
    projection = Memory

    def history(self) -> list[BifocalEvent]:
        return memory_history()


class TestTurnsContract(ProjectionContract):
    projection = Turns

    def history(self) -> list[BifocalEvent]:
        return turns_history()


class TestCorporaContract(ProjectionContract):
    projection = Corpora

    def history(self) -> list[BifocalEvent]:
        return corpora_history()


class TestEventCountsContract(ProjectionContract):
    projection = EventCounts

    def history(self) -> list[BifocalEvent]:  # counts read everything: all of the above, and what no view reads
        return [*memory_history(), *turns_history(), *corpora_history(), fact("curation_sealed", "lineage")]


def tasks_history() -> list[BifocalEvent]:
    one, two, ghost = (str(uuid.uuid4()) for _ in range(3))

    def of(task: str, kind: str, prose: str, **data: Any) -> BifocalEvent:
        return said(kind, prose, f"task:{task}", data={"task": task, **data})

    return [
        of(one, "task_started", "read the retry loop", conversation=f"task:{one}", max_steps=5, max_seconds=60.0,
           corpus="lib", db=None, tools=["recall", "files", "read", "grep"], by="user"),
        of(one, "thought", "<tool_call>files</tool_call>", step=1), of(one, "tool_call", "files"),
        said("thought", "a conversation's thought, not a task's", A), said("tool_call", "recall x", A),
        of(two, "task_started", "count the invoices", max_steps=2, max_seconds=30.0, db="shop", tools=["sql"]),
        of(one, "tool_result", "src/retry.py"), of(two, "thought", "<tool_call>sql</tool_call>", step=1),
        of(ghost, "thought", "of a task never started"), of("not-a-uuid", "thought", "ignored"),
        of(two, "task_cancelled", "cancel it", by="user"), of(one, "thought", "it retries six times", step=2),
        of(two, "task_finished", "Cancelled after 1 steps.", status="cancelled", steps=1),
        of(two, "task_cancelled", "too late: it ended", by="user"),
        of(one, "task_finished", "it retries six times", status="done", steps=2),
    ]


class TestTasksContract(ProjectionContract):
    projection = Tasks

    def history(self) -> list[BifocalEvent]:
        return tasks_history()
