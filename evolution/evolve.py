"""One generation end to end (design §6): curate → train → anchored TIES → seal → guard → promote.

Generation N learns the moments between generation N-1's cut and the journal's end, and the
lessons they teach (evolution/lessons.py, journaled before the curation is sealed): a LoRA
adapter trained on generation N-1 (or found in the adapter cache under the same key), then
`W_N = W0 + λ · TIES(Δ_1, …, Δ_N)` with the adapters of every generation 1..N, always from the
base W0, never a merge of a merge. Each step is journaled on the lineage (evolution/lineage.py)
before the next begins. The guard rejects a generation whose largest per-tensor drift from W0
exceeds `max_drift`, or whose anchor-set perplexity exceeds `max_perplexity_ratio` times W0's
(measured against W0, not N-1, so small steps cannot add up past the bound); a rejected
generation is journaled with the reason and the previous one stays active.

`rebuild` derives the lineage again (after `soul forget`): each generation's window and config
again, with the redacted events left out, as a new epoch; it says which generations changed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evolution import evaluate
from evolution.config import EvolutionConfig
from evolution.lessons import lessons, questions, relearned, teach
from evolution.curate import Curation, curate, redacted_ids, summary, training_rows
from evolution.lineage import Generation, chain, current_epoch, lineage, record
from evolution.store import GenerationStore
from evolution.ties import LoraAdapter, MergeSeal, merge_model
from evolution.train import TrainingWork, cache_key, environment, find_cached, rows_digest, train_adapter
from evolution.weights.files import HASH_CACHE, remembered_hashes, root_hash
from evolution.weights.model import embedded_model_dir, load
from journal.journal import Journal

# (stage, done, total): stages are "training" and "merging"
Progress = Callable[[str, int, int], None]


class EvolveError(RuntimeError):
    """Evolution cannot go on; the one-line message says why and what to do."""


@dataclass(frozen=True)
class Base:
    """The golden anchor W0: every generation is merged from it."""

    path: Path
    root_sha256: str
    tensor_sha256: Mapping[str, str] = field(default_factory=dict, compare=False)  # what it is rooted in


def base_model(path: str | Path | None, home: Path) -> Base:
    """W0: the model folder `path` (else SOUL_MODEL, else the embedded SmolLM2) and its root hash."""
    chosen = path or os.environ.get("SOUL_MODEL")
    folder = Path(chosen).expanduser() if chosen else embedded_model_dir(home)
    if not folder.is_dir():
        raise EvolveError(f"no model folder at {folder}")
    hashes = remembered_hashes(folder, Path(home) / HASH_CACHE)  # W0 is hashed once, not at every evolve
    if not hashes:
        raise EvolveError(f"{folder} holds no *.safetensors: not an MLX model folder")
    return Base(folder, root_hash(hashes), hashes)


def adapters_root(home: Path) -> Path:
    """The adapter cache, content-addressed and shared by all souls under one home."""
    return Path(home) / "adapters"


@dataclass
class Outcome:
    """What one evolve run did."""

    generation: int
    status: str  # promoted | rejected | nothing to curate | dry run
    curation: dict[str, Any]  # `curate.summary` of what it learns from
    run: str | None = None
    why: str | None = None
    root_sha256: str | None = None
    cached: bool | None = None  # the adapter came from the cache
    figures: dict[str, Any] = field(default_factory=dict)  # drift and evaluation
    # Wall seconds per stage (curate, lessons, parent, rows, train, merge, evaluate, promote): what
    # this run took, so not journaled (a generation's events stay a function of its inputs).
    seconds: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)  # `TrainingWork.as_dict()`, when it trained


class Stopwatch:
    """Seconds per named stage: `with watch("train"): ...`, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 3)


def evolve(journal: Journal, home: Path, base: Base | None, config: EvolutionConfig, *, dry_run: bool = False,
           progress: Progress | None = None) -> Outcome:
    """Make the next generation from the moments journaled since the last one (`base` may be
    None for a dry run, which only curates)."""
    if dry_run or base is None:
        curation = next_curation(journal, config)
        return Outcome(curation.generation, "dry run", summary(curation), why=shortfall(curation, config))
    store = GenerationStore(home, _app(journal))
    with store.lock():
        store.clear_staging()
        promoted = chain(lineage(journal))
        same_base(base, promoted)
        reconcile(store, promoted)
        watch = Stopwatch()
        with watch("curate"):
            curation = next_curation(journal, config)
        return make_generation(journal, store, base, config, current_epoch(journal), curation, promoted, progress,
                               watch=watch)


def next_curation(journal: Journal, config: EvolutionConfig) -> Curation:
    """The moments after the last promoted generation's cut, up to the journal's end."""
    promoted = chain(lineage(journal))
    return curate(journal, generation=len(promoted) + 1, after_seq=promoted[-1].cut if promoted else 0,
                  cut=journal.last_seq(), config=config, redacted=redacted_ids(journal))


def make_generation(journal: Journal, store: GenerationStore, base: Base, config: EvolutionConfig, epoch: int,
                    curation: Curation, promoted: list[Generation], progress: Progress | None,
                    rebuilt: bool = False, watch: Stopwatch | None = None) -> Outcome:
    """Seal `curation` as generation len(promoted)+1 of `epoch`, then train, merge, seal, guard
    and promote it (every step journaled with one run id). A `rebuilt` generation needs only one
    moment: `min_events` is the floor for a new generation, not for one that a forget shrank.
    `watch` times its stages (a new one if not given)."""
    watch = watch or Stopwatch()
    run, number = str(uuid.uuid4()), curation.generation
    short = shortfall(curation, replace(config, min_events=1) if rebuilt else config)
    if not short:
        with watch("lessons"):
            earlier = [lesson for g in promoted for lesson in g.curation.get("lessons", [])] if config.relearn else []
            curation = replace(curation, lessons=teach(journal, curation, run, config.lesson_rule),
                               relearned=relearned(journal, earlier, curation.redacted))
    window = f"{curation.after_seq + 1}..{curation.cut}"
    record(journal, "curation_sealed",
           f"gen-{number}: {len(curation.event_ids)} moments curated from {window}"
           + (f"; nothing to curate: {short}" if short else ""),
           run, {**curation.as_data(), "epoch": epoch, "outcome": "nothing to curate" if short else "curated",
                 "config": config.as_dict(), "config_digest": config.digest()})
    if short:
        return Outcome(number, "nothing to curate", summary(curation), run, short, seconds=watch.seconds)

    parent = promoted[-1] if promoted else None
    parent_root = parent.root_sha256 if parent else base.root_sha256
    with watch("parent"):
        parent_dir = weights_of(store, base, promoted)
    with watch("rows"):
        rows = training_rows(journal, curation)
    with watch("train"):
        adapter, cached = adapter_for(parent_dir, parent_root, rows, config, adapters_root(store.home),
                                      retrain=False, progress=progress)
    record(journal, "adapter_trained",
           f"gen-{number}: LoRA adapter {adapter.sha256[:12]} " + ("from the cache" if cached else "trained")
           + f" on {parent.name if parent else 'W0'} with {len(rows)} rows",
           run, {"generation": number, "epoch": epoch, "sha256": adapter.sha256, "cache_key": adapter.key,
                 "cached": cached, "parent_root": parent_root, "rows": len(rows), "rows_sha256": rows_digest(rows),
                 "config": config.training(),
                 "seed": config.seed, "environment": adapter.environment})

    training = adapter.work.as_dict() if adapter.work else {}
    entries = [*(adapter_entry(store, g) for g in promoted), (adapter.path, config.weight, config.density)]
    with watch("merge"):
        made, seal = merge(store, base, entries, config, progress)
        folder = store.keep(made, seal)
    with watch("evaluate"):
        asked = questions(lessons(journal, set(curation.lessons)).values())
        figures = measure(base, parent, parent_dir, folder, rows, config, asked)
    drift_tensor, drift = max(seal.drift.items(), key=lambda item: item[1])
    record(journal, "generation_sealed",
           f"gen-{number}: root {seal.root_sha256[:12]}, largest drift {drift:.4g} ({drift_tensor}), "
           f"anchor perplexity {figures['perplexity']['after']:.4g} (W0 {figures['perplexity']['base']:.4g}), "
           f"curated loss {figures['loss']['before']:.4g} -> {figures['loss']['after']:.4g}"
           + (f", {figures['recall']['answered']} of {figures['recall']['asked']} lesson cues answered with no memory"
              if figures["recall"]["asked"] else ""),
           run, {"generation": number, "epoch": epoch, "root_sha256": seal.root_sha256,
                 "tensor_sha256": seal.tensor_sha256, "base_root": base.root_sha256,
                 "adapters": [*(g.adapter["sha256"] for g in promoted), adapter.sha256],
                 "drift": seal.drift, **figures, "environment": adapter.environment})
    figures = {"max_drift": drift, **figures}

    why = guard(config, drift, drift_tensor, figures["perplexity"])
    if why is not None:
        record(journal, "generation_rejected", f"gen-{number} rejected: {why}", run,
               {"generation": number, "epoch": epoch, "why": why, "root_sha256": seal.root_sha256})
        store.discard(seal.root_sha256)
        return Outcome(number, "rejected", summary(curation), run, why, seal.root_sha256, cached, figures,
                       watch.seconds, training)
    with watch("promote"):
        # The journal says it first: a crash before the switch is caught up by `reconcile`.
        record(journal, "generation_promoted", f"gen-{number} promoted: the soul now runs on it", run,
               {"generation": number, "epoch": epoch, "root_sha256": seal.root_sha256})
        store.promote(f"gen-{number}", seal.root_sha256)
    return Outcome(number, "promoted", summary(curation), run, None, seal.root_sha256, cached, figures, watch.seconds,
                   training)


def shortfall(curation: Curation, config: EvolutionConfig) -> str | None:
    """Why `curation` is too little to train a generation on, or None when it is enough."""
    count = len(curation.event_ids)
    if count >= config.min_events:
        return None
    return (f"{count} moments reach resonance {config.threshold:g}"
            + (f" in corpus {config.corpus}" if config.corpus else "")
            + (f" and cluster {config.cluster}" if config.cluster is not None else "")
            + f"; min_events is {config.min_events}")


def same_base(base: Base, promoted: list[Generation]) -> None:
    """Refuse to grow a lineage from another W0 than the one it grew from."""
    if promoted and promoted[0].seal["base_root"] != base.root_sha256:
        raise EvolveError(f"the lineage grew from a W0 with root {promoted[0].seal['base_root'][:12]}, but "
                          f"{base.path} has root {base.root_sha256[:12]}; evolve with the same --model")


def guard(config: EvolutionConfig, drift: float, tensor: str, perplexity: dict[str, float]) -> str | None:
    """Why a generation must not be promoted, or None."""
    if drift > config.max_drift:
        return f"drift {drift:.4g} of {tensor} exceeds max_drift {config.max_drift:g}"
    ratio = perplexity["after"] / perplexity["base"]
    if ratio > config.max_perplexity_ratio:
        return (f"anchor perplexity {perplexity['after']:.4g} is {ratio:.4g} times W0's "
                f"{perplexity['base']:.4g}, beyond max_perplexity_ratio {config.max_perplexity_ratio:g}")
    return None


def reconcile(store: GenerationStore, promoted: list[Generation]) -> None:
    """Point the store at the lineage's last promoted generation (a crash may have come between
    journaling a promotion and switching to it), if the store holds its weights."""
    current = store.active()
    if not promoted:
        return
    last = promoted[-1]
    if (current is None or current[0] != last.name or current[1] != store.weights_path(last.root_sha256)) \
            and store.weights(last.root_sha256) is not None:
        store.promote(last.name, last.root_sha256)


# -- the steps, shared with replay -------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    path: Path
    sha256: str
    key: str
    environment: dict[str, Any]
    work: TrainingWork | None = field(default=None, compare=False)  # trained in this run: its arithmetic


def adapter_for(parent_dir: Callable[[], Path] | Path, parent_root: str, rows: list[dict[str, Any]],
                config: EvolutionConfig, root: Path, *, retrain: bool,
                progress: Progress | None) -> tuple[Adapter, bool]:
    """The adapter for `rows` on the parent weights: from the cache when its key is there (and
    `retrain` is off), else trained (into `root`). `parent_dir` may be a callable, so the parent's
    weights are made only when training needs them. Returns (adapter, came from the cache)."""
    env = environment()
    key = cache_key(parent_root, rows, config, env)
    if not retrain and (found := find_cached(root, key)) is not None:
        return Adapter(found.path, found.sha256, key, found.environment), True
    folder = parent_dir() if callable(parent_dir) else parent_dir

    def ticks(done: int, total: int, loss: float) -> None:
        if progress is not None:
            progress("training", done, total)

    trained = train_adapter(folder, rows, config, root, ticks, base_root_hash=parent_root)
    return Adapter(trained.path, trained.sha256, key, trained.environment, trained.work), False


def adapter_entry(store: GenerationStore, generation: Generation) -> tuple[Path, float, float]:
    """(adapter folder, weight, density) of a sealed generation, from the adapter cache."""
    found = find_cached(adapters_root(store.home), generation.adapter["cache_key"])
    if found is None or found.sha256 != generation.adapter["sha256"]:
        raise EvolveError(f"{generation.name}'s adapter {generation.adapter['sha256'][:12]} is not in the adapter "
                          f"cache; `soul replay --to {generation.name} --from-scratch` trains it again")
    config = generation.curation["config"]
    return found.path, config["weight"], config["density"]


def merge(store: GenerationStore, base: Base, entries: list[tuple[Path, float, float]], config: EvolutionConfig,
          progress: Progress | None) -> tuple[Path, MergeSeal]:
    """`W0 + λ·TIES(...)` of the (adapter folder, weight, density) entries into a new folder of
    the store's staging, its tensors shared through the store; λ, normalize and int8_mask from
    `config` (the newest generation's). The folder and its seal."""
    adapters = [LoraAdapter(path) for path, _, _ in entries]
    total, done = sum(len(a.names) for a in adapters), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("merging", done, total)

    made = store.staging_dir()
    return made, merge_model(base.path, made, [_Counted(a, tick) for a in adapters],
                             [w for _, w, _ in entries], [d for _, _, d in entries],
                             lam=config.lam, normalize=config.normalize, int8_mask=config.int8_mask,
                             tensors=store.tensors, base_hashes=base.tensor_sha256)


class _Counted:
    """A task vector that reports each delta it rebuilds (the merge's unit of work)."""

    def __init__(self, adapter: LoraAdapter, tick: Callable[[], None]) -> None:
        self.adapter, self.names, self.tick = adapter, adapter.names, tick

    def delta(self, name: str):
        delta = self.adapter.delta(name)
        self.tick()
        return delta


def weights_of(store: GenerationStore, base: Base, promoted: list[Generation]) -> Path:
    """The model folder of the last of `promoted` (W0 if none): from the store, or merged again
    from the cached adapters and checked against its sealed root hash."""
    if not promoted:
        return base.path
    last = promoted[-1]
    folder = store.weights(last.root_sha256)
    if folder is not None:
        return folder
    config = EvolutionConfig.journaled(last.curation["config"])
    made, seal = merge(store, base, [adapter_entry(store, g) for g in promoted], config, None)
    if seal.root_sha256 != last.root_sha256:
        raise EvolveError(f"{last.name} merged again from its cached adapters hashes to {seal.root_sha256[:12]}, "
                          f"not its sealed {last.root_sha256[:12]}; `soul replay --to {last.name}` says why")
    return store.keep(made, seal)


def measure(base: Base, parent: Generation | None, parent_dir: Path, folder: Path, rows: list[dict[str, Any]],
            config: EvolutionConfig, asked: list[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """Anchor-set perplexity of W0, the parent and the new generation, the curated rows' loss
    on the parent and the new generation, and how many of its lessons' cues (`asked`:
    `lessons.questions`) the new generation answers with no memory, as `soul say --no-memory`
    asks: the self-definition of its rows and the cue. W0's and the parent's perplexity are the
    parent's sealed figures when it was measured on the same anchor set (evaluation is deterministic)."""
    texts = evaluate.anchor_texts(config.anchor)
    sealed = parent.seal.get("perplexity") if parent and parent.seal.get("anchor") == config.anchor else None
    if sealed:
        base_ppl, before = sealed["base"], sealed["after"]
    else:
        base_ppl = evaluate.perplexity(base.path, texts)
        before = base_ppl if parent is None else evaluate.perplexity(parent_dir, texts)
    model, tokenizer = load(parent_dir)
    loss_before = evaluate.loss(model, tokenizer, rows)
    model, tokenizer = load(folder)
    return {
        "anchor": config.anchor,
        "perplexity": {"base": base_ppl, "before": before, "after": evaluate.perplexity((model, tokenizer), texts)},
        "loss": {"before": loss_before, "after": evaluate.loss(model, tokenizer, rows)},
        "recall": {"asked": len(asked), "answered": evaluate.answered((model, tokenizer), _system(rows), asked)},
    }


def _system(rows: list[dict[str, Any]]) -> str | None:
    """The self-definition the newest rows were curated under (their system message), if any."""
    first = rows[-1]["messages"][0] if rows and rows[-1]["messages"] else {}
    return first.get("content") if first.get("role") == "system" else None


def _app(journal: Journal) -> str:
    return journal.app


# -- forgetting: the lineage derived again -----------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What a rebuild made of one generation of the previous lineage."""

    was: str
    now: str | None  # its name in the new lineage; None when it is gone
    changed: bool
    why: str


def rebuild(journal: Journal, home: Path, base: Base, config: EvolutionConfig | None = None,
            progress: Progress | None = None) -> list[Change]:
    """Derive the lineage again as a new epoch: every promoted generation's window curated again
    without the redacted events, with its own sealed config (or `config` for all). A generation
    whose moments, parent and config are all unchanged is carried over as it is; from the first
    change on, each is trained and merged again (cached adapters still serve where the key
    matches) from what is left of its moments, even fewer than `min_events` (forgetting one of
    eight must not unlearn the other seven); one left with no moment, or rejected by the guard,
    is gone."""
    store = GenerationStore(home, _app(journal))
    with store.lock():
        store.clear_staging()
        old = chain(lineage(journal))
        if not old:
            raise EvolveError("there is no generation to rebuild yet; `soul evolve` makes gen-1")
        same_base(base, old)
        redacted = redacted_ids(journal)
        if config is None and all(_difference(journal, was, redacted, None) is None for was in old):
            return [Change(was.name, was.name, False, "unchanged") for was in old]  # no new epoch needed
        epoch = current_epoch(journal) + 1
        changes: list[Change] = []
        promoted: list[Generation] = []
        unchanged = True
        for was in old:
            own = config or EvolutionConfig.journaled(was.curation["config"])
            difference = _difference(journal, was, redacted, own, len(promoted) + 1)
            curation = curate(journal, generation=len(promoted) + 1, after_seq=was.after_seq, cut=was.cut,
                              config=own, redacted=redacted)
            unchanged = unchanged and difference is None
            if unchanged:
                carry_over(journal, was, epoch)
                changes.append(Change(was.name, was.name, False, "unchanged"))
            else:
                outcome = make_generation(journal, store, base, own, epoch, curation, promoted, progress, rebuilt=True)
                why = (difference or "its parent changed") \
                    + ("" if outcome.status == "promoted" else f"; {outcome.why or outcome.status}")
                now = f"gen-{outcome.generation}" if outcome.status == "promoted" else None
                changes.append(Change(was.name, now, True, why))
            promoted = chain(lineage(journal))
        if promoted:
            weights_of(store, base, promoted)
            store.promote(promoted[-1].name, promoted[-1].root_sha256)
        else:
            store.promote(None)
        return changes


def _difference(journal: Journal, was: Generation, redacted: set[str], config: EvolutionConfig | None,
                number: int | None = None) -> str | None:
    """What a generation's curation would change if derived again now (moments or lessons left
    out, other rows, another config), or None when it would teach exactly the rows it was
    trained on."""
    own = config or EvolutionConfig.journaled(was.curation["config"])
    again = curate(journal, generation=number or was.number, after_seq=was.after_seq, cut=was.cut, config=own,
                   redacted=redacted)
    again = replace(again, lessons=teach(journal, again, None, own.lesson_rule),
                    relearned=relearned(journal, was.curation.get("relearned", []), redacted))
    if left_out := len(set(was.event_ids) - set(again.event_ids)):
        return f"{left_out} moments left out"
    if left_out := len(set(was.curation.get("lessons", [])) - set(again.lessons)):
        return f"{left_out} lessons left out"
    if left_out := len(set(was.curation.get("relearned", [])) - set(again.relearned)):
        return f"{left_out} relearned lessons left out"
    if own.digest() != was.curation["config_digest"]:
        return "its config changed"
    if list(again.event_ids) != was.event_ids or list(again.lessons) != was.curation.get("lessons", []):
        return "its moments changed"
    sealed = was.adapter.get("rows_sha256")  # absent from generations sealed before it was journaled
    if sealed is not None and rows_digest(training_rows(journal, again)) != sealed:
        return "the context of its moments changed"
    return None


def carry_over(journal: Journal, was: Generation, epoch: int) -> None:
    """Journal generation `was` again, unchanged, in `epoch` (one new run)."""
    run = str(uuid.uuid4())
    note = f"{was.name}: carried into the rebuilt lineage unchanged (run {was.run})"
    steps = (("curation_sealed", was.curation), ("adapter_trained", was.adapter),
             ("generation_sealed", was.seal), ("generation_promoted", {"generation": was.number,
                                                                       "root_sha256": was.root_sha256}))
    for kind, data in steps:
        record(journal, kind, note, run, {**data, "epoch": epoch, "carried_from": was.run})
