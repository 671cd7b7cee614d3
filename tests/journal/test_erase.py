"""`Journal.erase`: the one door out of an append-only journal, and the gap it leaves behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import ProgrammingError

from journal.journal import Journal
from tests.journal.test_journal import perception


@pytest.fixture
def journal(nats_url: str, app_name: str) -> Iterator[Journal]:
    with Journal(app=app_name, env={"SOUL_NATS_URL": nats_url}) as j:
        yield j
        j.delete()


def fill(journal: Journal, n: int, originator: str = "conversation:a") -> list[int]:
    return [journal.add(perception(f"event {i}", originator))[0] for i in range(n)]


def test_erased_events_are_gaps_every_read_steps_over(journal: Journal) -> None:
    seqs = fill(journal, 6)
    assert journal.erase([seqs[2], seqs[4]]) == [seqs[2], seqs[4]]
    kept = [seqs[0], seqs[1], seqs[3], seqs[5]]
    assert [e.seq for e in journal.read()] == kept
    assert [e.seq for e in journal.read(since=seqs[2])] == kept[2:]  # a read that starts in the gap
    assert [e.seq for e in journal.read(since=seqs[1], limit=2)] == [seqs[1], seqs[3]]
    assert [e.event.prose for e in journal.read()] == ["event 0", "event 1", "event 3", "event 5"]
    assert journal.stats()["events"] == 4
    versions = [s.originator_version for s in journal.recorder.select_events("conversation:a")]
    assert versions == [1, 2, 4, 6]  # the aggregate's own sequence has the gaps too


def test_erasing_again_or_nowhere_erases_nothing(journal: Journal) -> None:
    seqs = fill(journal, 2)
    assert journal.erase([seqs[0], seqs[0]]) == [seqs[0]]
    assert journal.erase([seqs[0], 999]) == []
    assert [e.seq for e in journal.read()] == [seqs[1]]


def test_an_originator_whose_last_event_was_erased_takes_new_events(journal: Journal, nats_url: str) -> None:
    seqs = fill(journal, 3)
    assert journal.erase([seqs[-1]]) == [seqs[-1]]
    assert journal.last_seq() == seqs[1]
    with Journal(journal.app, {"SOUL_NATS_URL": nats_url}) as other:  # a fresh process reads the versions
        seq, event = other.add(perception("from another process", "conversation:a"))
        assert seq == seqs[-1] + 1 and event.originator_version == 3  # the erased one's version, at a new seq
    seq, event = journal.add(perception("from this one", "conversation:a"))  # its cached next version
    assert event.originator_version == 4
    assert [e.event.prose for e in journal.read(since=seqs[1])] == ["event 1", "from another process", "from this one"]


def test_a_follower_steps_over_a_gap(journal: Journal) -> None:
    seqs = fill(journal, 3)
    journal.erase([seqs[1]])
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        for entry in journal.follow(since=1):
            seen.append(entry.seq)
            if len(seen) == 3:
                done.set()
                return

    threading.Thread(target=follow, daemon=True).start()
    new, _ = journal.add(perception("new", "conversation:a"))
    assert done.wait(10), seen
    assert seen == [seqs[0], seqs[2], new]


def test_only_the_journals_own_events_can_be_erased(journal: Journal) -> None:
    fill(journal, 1)
    store = journal.factory.store
    tracking = store.subject("t", "elsewhere")
    journal.bus.run(journal.bus.js.publish(tracking, b"", headers={"Es-Tracking": "1"}))
    with pytest.raises(ProgrammingError, match="not ours to erase"):
        journal.erase([2])
