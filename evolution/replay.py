"""`soul replay --to gen-N`: rebuild generation N from the journal and check it against its seal.

Each generation 1..N is curated again from its sealed window and config (the event ids must
be the sealed ones, unless events were redacted since), its adapter is taken from the cache
when the cache key matches and the file's hash is the sealed one (`from_scratch` trains every
adapter again, on the rebuilt parent, and compares its hash), and then W0 and the N adapters
are merged once. The rebuilt root hash either matches the sealed one, and the generation is
kept in the store (so `resolve` finds it), or the report says where it diverges: which
tensors, which adapters, which curations, and whether the environment differs. Bit-exact
replay is promised only on the same mlx version, device class and BLAS (mlx issues #878 and
#3568: results are not bitwise equal across chips).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evolution.config import EvolutionConfig
from evolution.curate import curate, redacted_ids, training_rows
from evolution.lessons import relearned, teach
from evolution.evolve import Base, Progress, adapter_for, adapters_root, merge
from evolution.lineage import Generation, chain, find, lineage
from evolution.store import GenerationStore
from evolution.train import environment
from journal.journal import Journal


@dataclass
class Report:
    generation: str
    sealed_root: str
    root: str
    tensors: list[str] = field(default_factory=list)  # tensors whose bytes differ from the seal
    adapters: list[dict[str, Any]] = field(default_factory=list)  # per generation: sealed and rebuilt hash, cached
    curations: list[str] = field(default_factory=list)  # generations whose moments differ, and why
    environment: dict[str, Any] = field(default_factory=dict)  # differing keys: {"sealed": …, "now": …}
    base: str | None = None  # how W0 differs, if it does

    @property
    def match(self) -> bool:
        return self.root == self.sealed_root

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "match": self.match, "sealed_root": self.sealed_root,
                "root": self.root, "tensors": self.tensors, "adapters": self.adapters,
                "curations": self.curations, "environment": self.environment, "base": self.base}


def replay(journal: Journal, home: Path, to: str, base: Base, *, from_scratch: bool = False,
           progress: Progress | None = None) -> Report:
    """Rebuild generation `to` ("gen-N") and compare it with its seal."""
    target = find(journal, to)
    generations = [g for g in chain(lineage(journal)) if g.number <= target.number]
    store = GenerationStore(home, journal.app)
    redacted = redacted_ids(journal)
    report = Report(target.name, target.root_sha256, "")
    if base.root_sha256 != target.seal["base_root"]:
        report.base = f"W0 at {base.path} has root {base.root_sha256[:12]}, the seal names {target.seal['base_root'][:12]}"
    now = environment()
    report.environment = {k: {"sealed": v, "now": now.get(k)} for k, v in target.seal["environment"].items()
                          if now.get(k) != v}
    with store.lock():
        store.clear_staging()
        cache = store.staging_dir() if from_scratch else adapters_root(home)  # afresh: compared, not looked up
        entries: list[tuple[Path, float, float]] = []
        faithful = report.base is None  # every input so far is the sealed one
        for k, generation in enumerate(generations):
            config = EvolutionConfig.journaled(generation.curation["config"])
            curation = curate(journal, generation=generation.number, after_seq=generation.after_seq,
                              cut=generation.cut, config=config, redacted=redacted)
            sealed_lessons = tuple(generation.curation.get("lessons", ()))
            if gone_lessons := set(sealed_lessons) - set(teach(journal, curation, None, config.lesson_rule)):
                faithful = False
                report.curations.append(f"{generation.name}: {len(gone_lessons)} of its lessons were redacted since "
                                        "it was sealed")
            sealed_relearned = tuple(generation.curation.get("relearned", ()))
            if gone_lessons := set(sealed_relearned) - set(relearned(journal, sealed_relearned, redacted)):
                faithful = False
                report.curations.append(f"{generation.name}: {len(gone_lessons)} of the lessons it relearned were "
                                        "redacted since it was sealed")
            # read from the journal, not derived again
            curation = replace(curation, lessons=sealed_lessons, relearned=sealed_relearned)
            if list(curation.event_ids) != generation.event_ids:
                faithful = False
                gone = set(generation.event_ids) - set(curation.event_ids)
                report.curations.append(
                    f"{generation.name}: {len(gone)} of its moments were redacted since it was sealed"
                    if gone and gone <= redacted else f"{generation.name}: curated again, its moments differ")
            parent = generations[k - 1] if k else None
            if parent is None:
                parent_root, parent_dir = base.root_sha256, (lambda: base.path)
            elif faithful and not from_scratch:  # the parent's bytes are the sealed ones: no merge needed
                parent_root = parent.root_sha256
                parent_dir = (lambda: store.weights(parent.root_sha256) or _merged(store, base, entries, parent)[0])
            else:  # training on, or keying by, the rebuilt parent
                folder, parent_root = _merged(store, base, entries, parent)
                parent_dir = (lambda: folder)
            rows = training_rows(journal, curation)
            adapter, cached = adapter_for(parent_dir, parent_root, rows, config, cache, retrain=from_scratch,
                                          progress=progress)
            sealed = generation.adapter["sha256"]
            report.adapters.append({"generation": generation.name, "sealed": sealed, "rebuilt": adapter.sha256,
                                    "cached": cached})
            faithful = faithful and adapter.sha256 == sealed
            entries.append((adapter.path, config.weight, config.density))
        made, seal = merge(store, base, entries, EvolutionConfig.journaled(target.curation["config"]), progress)
        report.root = seal.root_sha256
        sealed_hashes = target.seal["tensor_sha256"]
        report.tensors = sorted(n for n in seal.tensor_sha256.keys() | sealed_hashes.keys()
                                if seal.tensor_sha256.get(n) != sealed_hashes.get(n))
        if report.match:
            store.keep(made, seal)
        store.clear_staging()
    return report


def _merged(store: GenerationStore, base: Base, entries: list[tuple[Path, float, float]],
            parent: Generation) -> tuple[Path, str]:
    """The parent's weights merged again from `entries` into staging, and their root hash."""
    folder, seal = merge(store, base, entries, EvolutionConfig.journaled(parent.curation["config"]), None)
    return folder, seal.root_sha256
