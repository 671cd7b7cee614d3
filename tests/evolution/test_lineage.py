"""The lineage as a projection of the journal's evolution events, the generation store, and one
generation end to end (evolution/lineage.py, store.py, evolve.py) on a tiny seeded model."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evolution.cadence import DEFAULT_EVERY, UNITS, due, parse_every, run_scheduled
from evolution.config import LORA_KEYS
from evolution.evolve import evolve, guard
from evolution.lineage import LineageError, active, chain, find, lineage, parse_name, resolve
from evolution.store import GenerationStore, StoreError
from evolution.ties import MergeSeal
from evolution.weights.files import model_hashes, root_hash
from journal.journal import Journal
from tests.evolution_support import CONFIG, journal_moments, tiny_base
from tests.tiny_model import build_tiny_model


def test_two_generations_end_to_end(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    app = journal.app
    assert active(soul_home, app) is None  # no generation yet: the base weights

    first = journal_moments(journal, 3)
    one = evolve(journal, soul_home, base, CONFIG)
    assert one.status == "promoted" and one.generation == 1 and not one.cached
    cut_one = journal.last_seq()
    journal_moments(journal, 2, topic="stones")
    two = evolve(journal, soul_home, base, CONFIG)
    assert two.status == "promoted" and two.generation == 2

    gens = lineage(journal)
    assert [(g.name, g.status) for g in gens] == [("gen-1", "promoted"), ("gen-2", "promoted")]
    g1, g2 = gens
    assert g1.event_ids == [str(t.id) for t in first]
    assert g2.after_seq == g1.cut and g1.cut < cut_one  # the lineage's own events come after the cut
    assert g2.adapter["parent_root"] == g1.root_sha256 and g1.adapter["parent_root"] == base.root_sha256
    assert g2.seal["adapters"] == [g1.adapter["sha256"], g2.adapter["sha256"]]  # merged from W0 with both
    assert g1.seal["base_root"] == base.root_sha256
    assert set(g2.seal["drift"]) == {n for n in g2.seal["tensor_sha256"]
                                     if n.endswith(tuple(f"{key}.weight" for key in LORA_KEYS))}
    assert g2.seal["perplexity"]["before"] == g1.seal["perplexity"]["after"]
    assert g2.seal["loss"]["after"] < g2.seal["loss"]["before"]  # it learnt its moments

    name, folder = active(soul_home, app)
    assert name == "gen-2"
    assert root_hash(model_hashes(folder)) == g2.root_sha256
    assert resolve(journal, soul_home, "gen-1") == (GenerationStore(soul_home, app).weights(g1.root_sha256), g1.cut)
    with pytest.raises(LineageError, match="gen-1, gen-2"):
        find(journal, "gen-3")


def test_nothing_to_curate_is_an_outcome(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    journal_moments(journal, 2, score=0.5)  # below the threshold
    outcome = evolve(journal, soul_home, base, CONFIG)
    assert outcome.status == "nothing to curate" and outcome.curation["events"] == 0
    assert outcome.why == "0 moments reach resonance 0.9; min_events is 1"
    assert lineage(journal) == []
    sealed = [e for e in _lineage_events(journal) if e.type == "curation_sealed"]
    assert len(sealed) == 1 and sealed[0].data["outcome"] == "nothing to curate"
    journal_moments(journal, 2)
    few = evolve(journal, soul_home, base, replace(CONFIG, min_events=3))
    assert few.status == "nothing to curate" and few.curation["events"] == 2
    assert few.why == "2 moments reach resonance 0.9; min_events is 3"


def test_a_generation_beyond_the_guard_is_rejected_and_the_previous_stays(
        journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    app = journal.app
    journal_moments(journal, 2)
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    journal_moments(journal, 2, topic="clouds")
    strict = replace(CONFIG, max_drift=1e-6)
    outcome = evolve(journal, soul_home, base, strict)
    assert outcome.status == "rejected" and "max_drift" in outcome.why
    assert active(soul_home, app)[0] == "gen-1"
    assert [(g.name, g.status) for g in lineage(journal)] == [("gen-1", "promoted"), ("gen-2", "rejected")]
    rejected = [e for e in _lineage_events(journal) if e.type == "generation_rejected"]
    assert len(rejected) == 1 and "max_drift" in rejected[0].data["why"]
    store = GenerationStore(soul_home, app)
    assert store.weights(outcome.root_sha256) is None  # its weights are gone, and the tensors only it held
    gen1 = store.active()[1]
    assert {p.stat().st_ino for p in store.tensors.root.glob("*.safetensors")} == \
        {p.stat().st_ino for p in gen1.glob("model-*.safetensors")}  # gen-1's, each tensor once
    # a retry curates the same window again: nothing was lost to the rejection
    retry = evolve(journal, soul_home, base, CONFIG)
    assert retry.status == "promoted" and retry.generation == 2
    assert chain(lineage(journal))[-1].after_seq == chain(lineage(journal))[0].cut
    assert active(soul_home, app)[0] == "gen-2"


def test_the_guard_bounds_drift_and_anchor_perplexity_against_w0() -> None:
    config = replace(CONFIG, max_drift=0.05, max_perplexity_ratio=1.1)
    fine = {"base": 10.0, "before": 10.9, "after": 11.0}
    assert guard(config, 0.05, "q", fine) is None
    assert "drift 0.0501 of q exceeds max_drift 0.05" in guard(config, 0.0501, "q", fine)
    # against W0, not the parent: 11.2 is within 1.1 of the parent's 10.9 but not of W0's 10
    why = guard(config, 0.01, "q", {"base": 10.0, "before": 10.9, "after": 11.2})
    assert "1.12 times W0's 10" in why and "max_perplexity_ratio 1.1" in why


def _lineage_events(journal: Journal):
    from evolution.lineage import events

    return events(journal)


def test_cadence_evolves_once_a_period_and_journals_nothing_to_curate(
        journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    start = datetime.now(timezone.utc)
    assert due(journal, start)  # never evolved
    outcome = run_scheduled(journal, soul_home, start, config=CONFIG, model=base.path)
    assert outcome.status == "nothing to curate"
    assert [e.type for e in _lineage_events(journal)] == ["curation_sealed"]
    later = datetime.now(timezone.utc)
    assert not due(journal, later) and run_scheduled(journal, soul_home, later, config=CONFIG, model=base.path) is None
    assert len(_lineage_events(journal)) == 1  # not due: nothing journaled
    journal_moments(journal, 1)
    assert not due(journal, later + timedelta(days=6)) and due(journal, later + DEFAULT_EVERY)
    hourly = run_scheduled(journal, soul_home, later + timedelta(hours=1), timedelta(hours=1), CONFIG, base.path)
    assert hourly.status == "promoted" and hourly.generation == 1


@given(st.integers(1, 10_000), st.sampled_from(sorted(UNITS)))
def test_parse_every_reads_any_whole_period(count: int, unit: str) -> None:
    assert parse_every(f"{count}{unit}") == timedelta(**{UNITS[unit]: count})


@given(st.integers(1, 10**9))
def test_generation_names_round_trip(number: int) -> None:
    assert parse_name(f"gen-{number}") == parse_name(str(number)) == number


@given(st.text(max_size=12).filter(lambda t: re.fullmatch(r"\s*(gen-)?[1-9][0-9]*\s*", t) is None))
def test_anything_else_is_not_a_generation(text: str) -> None:
    with pytest.raises(LineageError, match="is not a generation"):
        parse_name(text)


@pytest.mark.parametrize("text, period", [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)),
                                          (" 7d ", timedelta(days=7)), ("1.5w", timedelta(weeks=1.5))])
def test_parse_every(text: str, period: timedelta) -> None:
    assert parse_every(text) == period


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "-1h", "1y", "weekly"])
def test_parse_every_refuses_what_is_not_a_period(text: str) -> None:
    with pytest.raises(ValueError, match="is not a period"):
        parse_every(text)


def test_the_store_keeps_only_what_hashes_to_its_seal(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path / "home", "app")
    made = build_tiny_model(store.staging_dir())
    hashes = model_hashes(made)
    wrong = {**hashes, "model.norm.weight": "0" * 64}
    with pytest.raises(StoreError, match="does not hash to its seal \\(1 tensors differ, e.g. model.norm.weight\\)"):
        store.keep(made, MergeSeal(wrong, root_hash(wrong), {}))
    assert store.weights(root_hash(wrong)) is None
    kept = store.keep(made, MergeSeal(hashes, root_hash(hashes), {}))
    assert store.verify(root_hash(hashes)) == kept
    store.promote("gen-1", root_hash(hashes))
    assert store.active() == ("gen-1", kept)
    with open(kept / "model.safetensors", "r+b") as f:  # a bit flipped on disk afterwards
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(StoreError, match="no longer hashes to its seal"):
        store.verify(root_hash(hashes))
    store.promote(None)
    assert store.active() is None
