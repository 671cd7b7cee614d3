"""A journal dumped to a file and loaded into an empty stream (journal/archive.py): every message
at its own sequence, gaps included, on a real nats-server."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator

import nats
import numpy as np
import pytest

from journal import archive
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from tests.support import publish_raw

MINI = Embedder("test-embedder@1", 8)


def perception(prose: str, originator: str = "conversation:a") -> BifocalEvent:
    return BifocalEvent("perception", prose, np.random.default_rng(len(prose)).standard_normal(8), MINI, originator)


@pytest.fixture
def journals(nats_url: str) -> Iterator:
    """open(name=None): a journal on a fresh stream (a new app), deleted afterwards."""
    opened: list[Journal] = []

    def open_journal(name: str | None = None) -> Journal:
        opened.append(Journal(name or "t" + uuid.uuid4().hex[:12], {"SOUL_NATS_URL": nats_url}))
        return opened[-1]

    yield open_journal
    for journal in opened:
        journal.delete()


def stored(url: str, journal: Journal) -> tuple[object, list[tuple[int, str, dict[str, str], bytes]]]:
    """The stream's state and every message in it as the server holds it."""

    async def go():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(journal.stream)
            messages = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    m = await js.get_msg(journal.stream, seq)
                except nats.js.errors.NotFoundError:
                    continue
                messages.append((m.seq, m.subject, m.headers or {}, m.data or b""))
            return info.state, messages
        finally:
            await nc.close()

    return asyncio.run(go())


def filled(journal: Journal, url: str) -> list[int]:
    """A journal with a batch, a foreign message and erased events at its start, middle and end."""
    seqs = [journal.add(perception(f"event {i}"))[0] for i in range(4)]
    seqs += journal.append([perception("batch one", "conversation:b"),
                            BifocalEvent("thought", "batch two", [0.5] * 8, MINI, "conversation:c")])
    seqs.append(publish_raw(url, f"soul.{journal.app}.e.foreign", b"not ours", {"X-Tool": "other"}).seq)
    seqs += [journal.add(perception(f"late {i}"))[0] for i in range(2)]
    journal.erase([seqs[0], seqs[2], seqs[-1]])
    return seqs


def test_a_loaded_dump_holds_every_message_at_its_own_sequence(journals, nats_url: str) -> None:
    source, target = journals(), journals()
    seqs = filled(source, nats_url)
    out = io.BytesIO()
    dumped = archive.dump(source, out)
    assert (dumped.messages, dumped.last_seq, dumped.prefix) == (len(seqs) - 3, seqs[-1], f"soul.{source.app}")
    assert archive.check(io.BytesIO(out.getvalue())) == dumped

    loaded = archive.load(target, io.BytesIO(out.getvalue()))
    assert loaded == dumped
    (was, before), (now, after) = stored(nats_url, source), stored(nats_url, target)
    assert (now.first_seq, now.last_seq, now.messages) == (was.first_seq, was.last_seq, was.messages)
    assert [seq for seq, *_ in after] == [seq for seq, *_ in before]
    for (_, subject, headers, data), (_, old_subject, old_headers, old_data) in zip(after, before):
        assert subject == old_subject.replace(f"soul.{source.app}.", f"soul.{target.app}.")  # under its new name
        assert data == old_data
        assert headers == {k: v for k, v in old_headers.items() if not k.startswith("Nats-") or k == "Nats-Msg-Id"}
    assert any("Nats-Batch-Id" in h for _, _, h, _ in before)  # what the server would act on again is dropped
    assert {**source.stats(), "stream": None} == {**target.stats(), "stream": None}
    assert [e.event for e in target.read()] == [e.event for e in source.read()]
    assert target.add(perception("after the restore"))[0] == seqs[-1] + 1  # on from where the original was


def test_a_stream_that_holds_anything_is_refused(journals, nats_url: str) -> None:
    source, target = journals(), journals()
    filled(source, nats_url)
    out = io.BytesIO()
    archive.dump(source, out)
    target.add(perception("already here"))
    target.erase([1])  # even one whose only message is gone: it has a history
    with pytest.raises(archive.RestoreError, match=r"is not empty \(last sequence 1\)"):
        archive.load(target, io.BytesIO(out.getvalue()))
    assert stored(nats_url, target)[0].last_seq == 1


@pytest.mark.parametrize("cut", [5, 30, -40, -10, -1])
def test_a_dump_cut_short_is_refused_and_loads_nothing(journals, nats_url: str, cut: int) -> None:
    source = journals()
    filled(source, nats_url)
    out = io.BytesIO()
    archive.dump(source, out)
    short = out.getvalue()[:cut]
    with pytest.raises(archive.DumpError, match="cut short|not a soul journal dump|damaged"):
        archive.check(io.BytesIO(short))
    target = journals()
    with pytest.raises(archive.DumpError):  # read as it loads: what was published goes again
        archive.load(target, io.BytesIO(short))
    with Journal(target.app, {"SOUL_NATS_URL": nats_url}) as again:
        assert archive.last_sequence(again) == 0 and list(again.read()) == []


def test_foreign_bytes_are_not_a_dump() -> None:
    with pytest.raises(archive.DumpError, match="not a soul journal dump"):
        archive.check(io.BytesIO(b"PK\x03\x04 a zip file, say"))
    with pytest.raises(archive.DumpError, match="cut short"):
        archive.check(io.BytesIO(b""))


def test_an_empty_journal_and_one_whose_every_event_is_gone(journals, nats_url: str) -> None:
    empty, target = journals(), journals()
    out = io.BytesIO()
    assert archive.dump(empty, out).messages == 0
    archive.load(target, io.BytesIO(out.getvalue()))
    assert archive.last_sequence(target) == 0

    gone, target = journals(), journals()
    gone.add(perception("soon erased"))
    gone.add(perception("this too"))
    gone.erase([1, 2])
    out = io.BytesIO()
    archive.dump(gone, out)
    archive.load(target, io.BytesIO(out.getvalue()))
    assert archive.last_sequence(target) == 2 and list(target.read()) == []
    assert target.add(perception("the next"))[0] == 3
