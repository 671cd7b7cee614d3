"""Generations rebuilt from the journal: replay with cached adapters and from scratch, divergence,
forgetting by rebuild, and crashes between training and promotion (evolution/replay.py,
evolution/evolve.py, evolution/store.py) on a tiny seeded model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from evolution.evolve import EvolveError, adapters_root, evolve, rebuild
from evolution.lineage import active, chain, events, lineage, runs
from evolution.replay import replay
from evolution.store import GenerationStore
from evolution.weights.files import model_hashes, root_hash
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from tests.evolution_support import CONFIG, journal_moments, tiny_base
from tests.support import ROOT


@pytest.fixture
def two_generations(journal: Journal, soul_home: Path, tmp_path: Path):
    base = tiny_base(tmp_path / "w0")
    first = journal_moments(journal, 3)
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    second = journal_moments(journal, 2, topic="stones")
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    return base, first, second


def test_replay_twice_matches_with_cached_adapters_and_one_merge(
        journal: Journal, soul_home: Path, two_generations) -> None:
    base, _, _ = two_generations
    store = GenerationStore(soul_home, journal.app)
    g1, g2 = chain(lineage(journal))
    shutil.rmtree(store.weights_path(g2.root_sha256))  # replay makes it again, not copies it
    merges: list[int] = []
    reports = [replay(journal, soul_home, "gen-2", base, progress=lambda stage, done, total: merges.append(total)
                      if stage == "merging" and done == 1 else None) for _ in range(2)]
    for report in reports:
        assert report.match and report.root == g2.root_sha256 and report.tensors == []
        assert [a["cached"] for a in report.adapters] == [True, True]
        assert [a["rebuilt"] for a in report.adapters] == [g1.adapter["sha256"], g2.adapter["sha256"]]
        assert report.environment == {} and report.curations == [] and report.base is None
    assert len(merges) == 2  # one merge per replay, not one per generation
    assert root_hash(model_hashes(store.verify(g2.root_sha256))) == g2.root_sha256  # kept in the store again
    assert replay(journal, soul_home, "gen-1", base).match


def test_replay_from_scratch_trains_again_to_the_same_bytes(journal: Journal, soul_home: Path, two_generations) -> None:
    base, _, _ = two_generations
    shutil.rmtree(adapters_root(soul_home))  # nothing cached: a fresh machine with the same journal
    report = replay(journal, soul_home, "gen-2", base, from_scratch=True)
    assert report.match
    assert [a["cached"] for a in report.adapters] == [False, False]
    assert all(a["rebuilt"] == a["sealed"] for a in report.adapters)


def test_replay_on_another_base_names_the_divergence(journal: Journal, soul_home: Path, tmp_path: Path,
                                                     two_generations) -> None:
    other = tiny_base(tmp_path / "other", seed=1)  # same shapes, other values
    report = replay(journal, soul_home, "gen-1", other)
    assert not report.match
    assert report.base and "the seal names" in report.base
    sealed = chain(lineage(journal))[0].seal["tensor_sha256"]
    assert report.tensors == sorted(n for n in sealed if "norm" not in n)  # all but the norms, ones in any seed
    assert report.adapters[0]["cached"] is False  # keyed by the real parent, so not the sealed adapter


def test_forgetting_then_rebuilding_leaves_the_event_out_and_names_the_changes(
        journal: Journal, soul_home: Path, two_generations) -> None:
    base, first, second = two_generations
    app = journal.app
    old = chain(lineage(journal))
    before = len(events(journal))
    assert [(c.was, c.changed) for c in rebuild(journal, soul_home, base)] == [("gen-1", False), ("gen-2", False)]
    assert len(events(journal)) == before  # nothing redacted that they learnt from: no new epoch
    forgotten = second[0]
    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(forgotten.id)}))

    # before the rebuild, replay says what has changed since gen-2 was sealed
    report = replay(journal, soul_home, "gen-2", base)
    assert not report.match and report.curations == ["gen-2: 1 of its moments were redacted since it was sealed"]

    changes = rebuild(journal, soul_home, base)
    assert [(c.was, c.now, c.changed) for c in changes] == [("gen-1", "gen-1", False), ("gen-2", "gen-2", True)]
    assert changes[1].why == "1 moments left out"
    new = chain(lineage(journal))
    assert new[0].root_sha256 == old[0].root_sha256 and new[0].epoch == 1
    assert new[1].root_sha256 != old[1].root_sha256
    assert str(forgotten.id) not in new[1].event_ids and len(new[1].event_ids) == 1
    assert active(soul_home, app)[0] == "gen-2"
    assert GenerationStore(soul_home, app).active()[1].name == new[1].root_sha256
    assert replay(journal, soul_home, "gen-2", base).match  # the new lineage replays

    # forgetting a moment of gen-1 changes it, and gen-2 with it (its parent changed)
    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(first[1].id)}))
    changes = rebuild(journal, soul_home, base)
    assert [(c.was, c.changed) for c in changes] == [("gen-1", True), ("gen-2", True)]
    assert changes[1].why == "its parent changed"
    for generation in lineage(journal):
        assert not {str(forgotten.id), str(first[1].id)} & set(generation.event_ids)


def test_a_lineage_grows_from_one_base_only(journal: Journal, soul_home: Path, tmp_path: Path,
                                            two_generations) -> None:
    other = tiny_base(tmp_path / "other", seed=1)
    journal_moments(journal, 1, topic="clouds")
    for grow in (lambda: evolve(journal, soul_home, other, CONFIG), lambda: rebuild(journal, soul_home, other)):
        with pytest.raises(EvolveError, match="evolve with the same --model"):
            grow()


def test_a_rebuilt_generation_keeps_what_is_left_of_its_moments_below_min_events(
        journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    three = replace(CONFIG, min_events=3)
    moments = journal_moments(journal, 3)
    assert evolve(journal, soul_home, base, three).status == "promoted"
    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(moments[0].id)}))
    (change,) = rebuild(journal, soul_home, base)
    assert (change.was, change.now, change.changed, change.why) == ("gen-1", "gen-1", True, "1 moments left out")
    (gen1,) = chain(lineage(journal))
    assert gen1.event_ids == [str(m.id) for m in moments[1:]] and gen1.curation["config"]["min_events"] == 3
    assert evolve(journal, soul_home, base, three).status == "nothing to curate"  # a new generation still needs 3


def test_forgetting_every_moment_leaves_the_base_active(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    only = journal_moments(journal, 1)
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(only[0].id)}))
    changes = rebuild(journal, soul_home, base)
    assert [(c.was, c.now, c.changed) for c in changes] == [("gen-1", None, True)]
    assert lineage(journal) == [] and active(soul_home, journal.app) is None


# -- crashes --------------------------------------------------------------------------------

CRASH = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from evolution.weights.blas import reexec_with_optimized_blas
    reexec_with_optimized_blas()  # as `soul` does: the BLAS is part of what the adapters depend on
    import evolution.evolve as evolve_module
    import evolution.store as store_module
    import evolution.ties as ties_module
    from evolution.config import EvolutionConfig
    from journal.journal import Journal

    app, base_dir, point, config = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-merge":  # the second merged tensor
        merge_tensor, calls = ties_module._merge_tensor, []
        def die_later(*args, **kwargs):
            calls.append(1)
            return die() if len(calls) == 2 else merge_tensor(*args, **kwargs)
        ties_module._merge_tensor = die_later
    elif point in ("keep", "promote"):
        setattr(store_module.GenerationStore, point, die)
    else:
        setattr(evolve_module, point, die)
    with Journal(app) as journal:
        base = evolve_module.base_model(base_dir, Path(os.environ["SOUL_HOME"]))
        evolve_module.evolve(journal, Path(os.environ["SOUL_HOME"]), base, EvolutionConfig(**config))
    sys.exit("the crash point was never reached")
""")

# In the order evolve reaches them: after training, inside the merge, before the folder is
# kept, before the seal is journaled, before the guard, and after the promotion is journaled
# but before the store switches to it.
CRASH_POINTS = ("merge", "mid-merge", "keep", "measure", "guard", "promote")


def test_a_crash_between_training_and_promotion_never_leaves_a_half_written_generation_active(
        journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    app = journal.app
    store = GenerationStore(soul_home, app)
    journal_moments(journal, 2)
    gen1 = evolve(journal, soul_home, base, CONFIG)
    journal_moments(journal, 2, topic="stones")
    for point in CRASH_POINTS:
        done = subprocess.run([sys.executable, "-c", CRASH, app, str(base.path), point, json.dumps(CONFIG.as_dict())],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, (point, done.stderr[-2000:])
        name, folder = active(soul_home, app)
        assert name == "gen-1", point
        assert root_hash(model_hashes(folder)) == gen1.root_sha256, point  # whole, as sealed
        if point != "promote":
            assert [g.name for g in chain(lineage(journal))] == ["gen-1"], point
    assert (store.root / "staging").exists()  # the interrupted runs left their partial work there
    assert [r.status for r in runs(journal)][1:] == ["trained", "trained", "trained", "trained", "sealed", "promoted"]

    # The journal says gen-2 was promoted before the crash: the next run switches to it, then
    # clears what the interrupted runs left.
    nothing = evolve(journal, soul_home, base, CONFIG)
    assert nothing.status == "nothing to curate"
    name, folder = active(soul_home, app)
    gen2 = chain(lineage(journal))[-1]
    assert name == "gen-2" and root_hash(model_hashes(folder)) == gen2.root_sha256
    assert not (store.root / "staging").exists() or not any((store.root / "staging").iterdir())
    assert replay(journal, soul_home, "gen-2", base).match


def test_another_run_holding_the_store_is_refused(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    from evolution.store import StoreError

    base = tiny_base(tmp_path / "w0")
    journal_moments(journal, 1)
    with GenerationStore(soul_home, journal.app).lock():
        with pytest.raises(StoreError, match="another evolve or replay"):
            evolve(journal, soul_home, base, CONFIG)
    assert os.path.exists(soul_home / "generations")
