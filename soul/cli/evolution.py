"""`soul evolve`, `soul generations`, `soul replay`, `soul export`, `soul forget`: the weights as a
projection of the journal (design §6, evolution/evolve.py and evolution/replay.py)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import click
import orjson

from evolution.lineage import Generation, LineageError, chain, find, lineage, runs
from evolution.merge_config import MergeConfigError
from evolution.plot import lineage_svg, sealed
from evolution.store import GenerationStore, StoreError
from evolution.weights.tensors import pack
from journal.embedded import soul_home
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Entry, Journal
from soul.cli.options import app_of, base_model_option, json_option, open_journal
from soul.cli.progress import StageBars

FORGETTABLE_NOT = ("redaction", "curation_sealed", "adapter_trained", "generation_sealed",
                   "generation_rejected", "generation_promoted")


def _errors() -> tuple[type[BaseException], ...]:
    """The mistakes and missing pieces a user can fix: shown as one line, not a traceback."""
    from evolution.evolve import EvolveError  # imports mlx-lm: only when a command runs
    from evolution.weights.model import ModelError

    return (EvolveError, StoreError, LineageError, MergeConfigError, ModelError, ValueError)


def _run(work):
    """Run `work(progress)` with progress bars, turning a user-fixable error into one line."""
    bars = StageBars()
    try:
        return work(bars)
    except _errors() as e:
        bars.close()
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    finally:
        bars.close()


# -- evolve ----------------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what the next generation would learn from, and change nothing.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Evolution config (YAML; mergekit's ties vocabulary is accepted). Default: the built-in one.")
@click.option("--rebuild", is_flag=True,
              help="Derive every generation again without the events `soul forget` redacted; say which changed.")
@base_model_option
@json_option("Print the result as JSON.")
@click.pass_context
def evolve(ctx: click.Context, dry_run: bool, config_path: str | None, rebuild: bool, model: str | None,
           as_json: bool) -> None:
    """Make the next generation of the soul's weights from its high-resonance moments.

    Curates the moments since the last generation's cut, trains a LoRA adapter on the current
    generation (reusing a cached one with the same inputs), merges W0 with the adapters of all
    generations (anchored TIES), seals the result with its hashes, drift and evaluation, and
    promotes it unless the guard (max_drift, max_perplexity_ratio) rejects it. Every step is
    journaled. With --rebuild, the whole lineage is derived again (after `soul forget`).
    """
    if dry_run and rebuild:
        raise click.UsageError("--dry-run and --rebuild do not go together")
    journal = open_journal(ctx)

    def work(progress):
        from evolution import evolve as evolution
        from evolution.config import EvolutionConfig

        home = soul_home()
        config = EvolutionConfig.load(config_path) if config_path else None
        if rebuild:
            base = evolution.base_model(model, home)
            return evolution.rebuild(journal, home, base, config, progress)
        base = None if dry_run else evolution.base_model(model, home)
        return evolution.evolve(journal, home, base, config or EvolutionConfig(), dry_run=dry_run,
                                progress=progress)

    result = _run(work)
    if rebuild:
        for change in result:
            if as_json:
                click.echo(orjson.dumps(change.__dict__).decode())
            else:
                now = f"-> {change.now}" if change.now else "-> gone"
                click.echo(f"{change.was:<8} {'changed' if change.changed else 'unchanged':<9} {now:<10} {change.why}")
        return
    if as_json:
        click.echo(orjson.dumps(result.__dict__).decode())
        return
    click.echo(_outcome_line(result))


def _outcome_line(outcome) -> str:
    c = outcome.curation
    window = f"seq {c['window'][0] + 1}..{c['window'][1]}"
    moments = f"{c['events']} moments from {window}"
    if outcome.status == "dry run":
        if outcome.why:
            return f"gen-{outcome.generation} would have nothing to curate in {window}: {outcome.why}"
        types = ", ".join(f"{n} {t}" for t, n in c["by_type"].items())
        return (f"gen-{outcome.generation} would learn {moments} ({types}); resonance min {c['min_resonance']:.3g} "
                f"mean {c['mean_resonance']:.3g}; corpus {c['corpus'] or 'any'}, cluster "
                f"{'any' if c['cluster'] is None else c['cluster']}; {c['redactions_honoured']} redactions honoured")
    if outcome.status == "nothing to curate":
        return f"nothing to curate in {window}: {outcome.why}"
    f = outcome.figures
    figures = (f"root {outcome.root_sha256[:12]}, adapter {'from the cache' if outcome.cached else 'trained'}, "
               f"largest drift {f['max_drift']:.4g}, anchor perplexity {f['perplexity']['after']:.4g} "
               f"(W0 {f['perplexity']['base']:.4g}), curated loss {f['loss']['before']:.4g} -> {f['loss']['after']:.4g}"
               + (f", {f['recall']['answered']} of {f['recall']['asked']} lesson cues answered with no memory"
                  if f.get("recall", {}).get("asked") else ""))
    stages = ", ".join(f"{stage} {s:.0f} s" for stage, s in outcome.seconds.items() if s >= 0.5)
    figures += f"; took {sum(outcome.seconds.values()):.0f} s" + (f" ({stages})" if stages else "")
    if t := outcome.training:
        figures += (f"; training ~{t['gflop']:g} GFLOP at {t['gflop_per_s']:g} GFLOP/s, {t['of_matmul']:.2f} of "
                    f"this machine's matmul rate ({t['matmul_gflop_per_s']:g})")
    if outcome.status == "rejected":
        previous = f"gen-{outcome.generation - 1}" if outcome.generation > 1 else "W0"
        return f"gen-{outcome.generation} rejected: {outcome.why}; {previous} stays active ({figures})"
    return f"gen-{outcome.generation} promoted: {moments}; {figures}"


# -- generations -----------------------------------------------------------------------------


@click.command()
@json_option("Print the result as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.svg",
              help="Also chart drift, anchor perplexity and curated loss per generation (the guard's bounds and "
                   "rejected runs marked) as an SVG, which any browser opens.")
@click.pass_context
def generations(ctx: click.Context, as_json: bool, plot_path: str | None) -> None:
    """The lineage: every generation of the soul's weights, its rejected and interrupted runs too.

    One line each: generation, journal cut, moments learnt, adapter hash, root hash, largest
    drift from W0, evaluation (anchor perplexity against W0's; curated loss before -> after),
    and status. The active generation is marked with *. The runs of earlier epochs, which
    `soul evolve --rebuild` replaced (after `soul forget`), come first, marked superseded.
    """
    if plot_path and Path(plot_path).suffix.lower() != ".svg":
        raise click.ClickException(f"--plot writes an SVG chart: name the file FILE.svg, not {plot_path}")
    journal = open_journal(ctx)
    journaled = runs(journal)
    every = [r for r in journaled if r.status != "nothing to curate"]
    epoch = max((r.epoch for r in journaled), default=0)  # a rebuild that kept nothing still supersedes
    try:
        current = GenerationStore(soul_home(), app_of(ctx)).active()
    except StoreError as e:
        click.echo(f"warning: {e}", err=True)
        current = None
    active_root = current[1].name if current else None
    for g in every:
        row = _generation_row(g, active_root, epoch)
        click.echo(orjson.dumps(row).decode() if as_json else _format_generation(row))
    if not every and not as_json:
        click.echo("no generations yet: the soul runs on its base weights W0; `soul evolve` makes gen-1", err=True)
    if plot_path:
        current_runs = [g for g in every if g.epoch == epoch]
        chart = lineage_svg(current_runs)
        if chart is None:
            raise click.ClickException("no sealed generation to plot yet: `soul evolve` makes gen-1")
        Path(plot_path).write_text(chart)
        count = len(sealed(current_runs))
        click.echo(f"lineage charted in {plot_path}: {count} sealed run{'' if count == 1 else 's'}", err=True)


def _generation_row(g: Generation, active_root: str | None, epoch: int) -> dict[str, Any]:
    seal = g.seal
    drift = max(seal["drift"].values()) if seal.get("drift") else None
    superseded = g.epoch < epoch
    return {
        "generation": g.name, "epoch": g.epoch, "status": g.status, "why": g.why, "superseded": superseded,
        "active": g.status == "promoted" and g.root_sha256 == active_root and not superseded,
        "after_seq": g.after_seq, "cut": g.cut, "events": len(g.event_ids),
        "adapter_sha256": g.adapter.get("sha256"), "cached": g.adapter.get("cached"),
        "root_sha256": g.root_sha256, "max_drift": drift,
        "perplexity": seal.get("perplexity"), "loss": seal.get("loss"), "recall": seal.get("recall"), "time": g.time,
    }


def _format_generation(row: dict[str, Any]) -> str:
    def short(value: str | None) -> str:
        return value[:12] if value else "-"

    drift = f"{row['max_drift']:.3g}" if row["max_drift"] is not None else "-"
    ppl, loss = row["perplexity"], row["loss"]
    evaluation = (f"ppl {ppl['after']:.4g}/{ppl['base']:.4g} loss {loss['before']:.3g}->{loss['after']:.3g}"
                  if ppl and loss else "-")
    recall = row.get("recall") or {}
    if recall.get("asked"):
        evaluation += f" cues {recall['answered']}/{recall['asked']}"
    status = row["status"] + (f" ({row['why']})" if row["why"] else "")
    if row["superseded"]:
        status += f", superseded (epoch {row['epoch']})"
    return (f"{'*' if row['active'] else ' '} {row['generation']:<7} cut {row['cut']:>8}  events {row['events']:>5}  "
            f"adapter {short(row['adapter_sha256']):<12}  root {short(row['root_sha256']):<12}  drift {drift:<9} "
            f"{evaluation:<46}  {status}")


# -- replay ----------------------------------------------------------------------------------


@click.command()
@click.option("--to", "to", required=True, metavar="gen-N", help="The generation to rebuild.")
@click.option("--from-scratch", is_flag=True, help="Train every adapter again instead of using cached ones.")
@base_model_option
@json_option("Print the result as JSON.")
@click.pass_context
def replay(ctx: click.Context, to: str, from_scratch: bool, model: str | None, as_json: bool) -> None:
    """Rebuild a generation from the journal and check it against its sealed root hash.

    Prints MATCH, or where the rebuild diverges (tensors, adapters, curations, environment)
    and exits with status 1. Bit-exact replay holds on the same mlx version, device class and
    BLAS. A matching generation is kept in the store, so `soul export` and talking as that past
    self can use it.
    """
    journal = open_journal(ctx)

    def work(progress):
        from evolution.evolve import base_model
        from evolution.replay import replay as rebuild_generation

        home = soul_home()
        return rebuild_generation(journal, home, to, base_model(model, home), from_scratch=from_scratch,
                                  progress=progress)

    report = _run(work)
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
    elif report.match:
        cached = sum(1 for a in report.adapters if a["cached"])
        click.echo(f"MATCH {report.generation} root {report.root} "
                   f"({cached} of {len(report.adapters)} adapters from the cache)")
    else:
        click.echo(f"DIVERGED {report.generation}: root {report.root[:16]}, sealed {report.sealed_root[:16]}")
        if report.base:
            click.echo(f"  base: {report.base}")
        for line in report.curations:
            click.echo(f"  curation: {line}")
        for a in report.adapters:
            if a["rebuilt"] != a["sealed"]:
                click.echo(f"  adapter {a['generation']}: rebuilt {a['rebuilt'][:12]}, sealed {a['sealed'][:12]}")
        shown = ", ".join(report.tensors[:5]) + (f" and {len(report.tensors) - 5} more" if len(report.tensors) > 5 else "")
        click.echo(f"  tensors differing: {len(report.tensors)}: {shown}")
        if report.environment:
            for key, values in report.environment.items():
                click.echo(f"  environment {key}: sealed {values['sealed']}, now {values['now']}")
            click.echo("  (bit-exact replay holds only on the same mlx version, device class and BLAS)")
        else:
            click.echo("  environment: the same as when sealed")
    if not report.match:
        ctx.exit(1)


# -- export ----------------------------------------------------------------------------------


@click.command()
@click.argument("generation", metavar="gen-N")
@click.argument("folder", type=click.Path(file_okay=False))
@click.pass_context
def export(ctx: click.Context, generation: str, folder: str) -> None:
    """Write generation gen-N as an MLX model folder FOLDER that `mlx_lm.load` opens.

    Its tensors are hashed against the seal before they are copied, into one model.safetensors
    (shards of at most 5 GB with an index, for a larger model).
    """
    journal = open_journal(ctx)
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} is not empty; export into a new folder")
    try:
        found = find(journal, generation)
        source = GenerationStore(soul_home(), app_of(ctx)).verify(found.root_sha256)
    except StoreError as e:
        raise click.ClickException(f"{e}; `soul replay --to {generation}` rebuilds it") from None
    except LineageError as e:
        raise click.ClickException(str(e)) from None
    partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        partial.mkdir()
        for path in source.iterdir():  # the store's one file per tensor, packed as a model is usually laid out
            if path.is_file() and path.suffix != ".safetensors" and not path.name.endswith(".safetensors.index.json"):
                shutil.copyfile(path, partial / path.name)
        pack(source, partial)
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    click.echo(f"{found.name} (root {found.root_sha256[:12]}) exported to {out}")


# -- forget ----------------------------------------------------------------------------------


@click.command()
@click.argument("event", metavar="EVENT")
@click.option("--erase", is_flag=True,
              help="Also delete its bytes: from the journal (on every replica), the views and Postgres' files. "
                   "Cannot be undone.")
@click.pass_context
def forget(ctx: click.Context, event: str, erase: bool) -> None:
    """Redact EVENT (its id, or its journal sequence number): it leaves future curations.

    The journal is append-only, so without --erase the event stays stored, but a `redaction`
    event names it and every curation from now on leaves it out. Generations that already
    learnt from it keep it until `soul evolve --rebuild` derives the lineage again without it.

    With --erase the event is deleted from the journal for good, with what was derived from it
    (its lessons): JetStream overwrites the message with random bytes on every replica, the
    views that held it are rebuilt without it, and Postgres is made to drop the old rows'
    bytes. A generation that learnt from it can then no longer be replayed to MATCH; the
    lineage `soul evolve --rebuild` derives can. docs/reliability.md says what erase cannot reach.
    """
    journal = open_journal(ctx)
    if erase:
        _erase(journal, event)
        return
    target = _find_event(journal, event)
    chosen = _forgettable(target, event)
    from evolution.curate import redacted_ids

    if str(chosen.id) in redacted_ids(journal):
        click.echo(f"{chosen.id} was already forgotten")
    else:
        seq, _ = journal.add(BifocalEvent(
            "redaction", f"forget the {chosen.type} at seq {target.seq}", [], NO_EMBEDDER, "redactions",
            causation_id=chosen.id, data={"event": str(chosen.id)}))
        click.echo(f"redaction journaled at seq {seq}: {chosen.type} {chosen.id} (seq {target.seq}) is forgotten")
    _learnt(journal, {str(chosen.id)})


def _forgettable(target: Entry, event: str) -> BifocalEvent:
    chosen = target.event
    assert chosen is not None
    if chosen.type in FORGETTABLE_NOT:
        raise click.ClickException(f"{event} is a {chosen.type} event: the lineage's bookkeeping cannot be forgotten")
    return chosen


def _learnt(journal: Journal, ids: set[str], erased: bool = False) -> None:
    """Name the generations of the current lineage that learnt from any of `ids`."""
    learnt = [g.name for g in chain(lineage(journal)) if ids & set(g.event_ids)]
    if learnt:
        replay = f"; `soul replay` of {', '.join(learnt)} can no longer MATCH" if erased else ""
        click.echo(f"{', '.join(learnt)} learnt from it: `soul evolve --rebuild` derives the lineage without it"
                   f"{replay}", err=True)


# Events made from another one, whose data names it: erased with it (evolution/lessons.py).
DERIVED = ("lesson",)
QUOTABLE = 12  # characters: a shorter prose found in another is a common phrase, not a quote of it


def _erase(journal: Journal, event: str) -> None:
    """`soul forget --erase EVENT`: redaction first (it also takes the event out of the views at
    once), then the erase, then the views rebuilt and Postgres cleared; run again, it finishes
    an erase that was interrupted."""
    from projections.erasure import let_go, rebuild
    from projections.postgres import connect, pg_url

    earlier = _erased_before(journal, event)
    if earlier is not None:
        seqs, topics, ids = earlier.data["erased"], None, {earlier.data["event"]}  # topics unknown: rebuild all
        click.echo(f"{earlier.data['event']} was already erased (seq {', '.join(map(str, seqs))}); finishing the erase")
    else:
        target = _find_event(journal, event)
        chosen = _forgettable(target, event)
        derived, answers, quotes = _around(journal, target)
        gone = [target, *derived]
        seqs, topics = [e.seq for e in gone], {e.topic for e in gone}
        ids = {str(e.event.id) for e in gone if e.event is not None} | answers
        redaction, _ = journal.add(BifocalEvent(
            "redaction", f"erase the {chosen.type} at seq {target.seq}", [], NO_EMBEDDER, "redactions",
            causation_id=chosen.id, data={"event": str(chosen.id), "erased": seqs}))
        with_derived = f" and {len(derived)} event{'s' * (len(derived) != 1)} derived from it" if derived else ""
        click.echo(f"redaction journaled at seq {redaction}: {chosen.type} {chosen.id} (seq {target.seq})"
                   f"{with_derived} is forgotten and erased")
        if quotes:
            shown = ", ".join(str(e.seq) for e in quotes[:10])
            shown += f" and {len(quotes) - 10} more" if len(quotes) > 10 else ""
            click.echo(f"seq {shown} quote it word for word and stay: erase them too with `soul forget --erase SEQ`",
                       err=True)
    erased = journal.erase(seqs)
    replicas = f"{journal.replicas} {'replica' if journal.replicas == 1 else 'replicas'}"
    click.echo(f"journal: seq {', '.join(map(str, erased))} erased ({replicas})" if erased else
               "journal: nothing left to erase")
    url = pg_url()
    rebuilt = rebuild(journal, topics, url)
    with connect(url) as conn:
        limits = let_go(conn, journal.app)
    click.echo(f"views rebuilt without it: {', '.join(rebuilt)}; Postgres "
               f"{'cleared' if not limits else 'partly cleared'} (statistics, WAL)")
    for limit in limits:
        click.echo(f"warning: {limit}", err=True)
    _learnt(journal, ids, erased=True)


def _erased_before(journal: Journal, event: str) -> BifocalEvent | None:
    """The redaction that erased EVENT (its id, or a sequence it erased), if one did."""
    try:
        wanted = str(uuid.UUID(event)) if not event.isdigit() else None
    except ValueError:
        return None
    for entry in journal.read(types=["redaction"]):
        data = entry.event.data if entry.event is not None else {}
        if "erased" in data and (data.get("event") == wanted or (wanted is None and int(event) in data["erased"])):
            return entry.event
    return None


def _around(journal: Journal, target: Entry) -> tuple[list[Entry], set[str], list[Entry]]:
    """What goes with `target` and what stays: the events derived from it (erased with it), the
    ids of the thoughts that answer it (a generation that learnt one learnt it as their
    context), and the later events whose prose holds its prose word for word (they stay)."""
    event = target.event
    assert event is not None
    me = str(event.id)
    derived, answers, quotes = [], set(), []
    for entry in journal.read(since=target.seq + 1):
        other = entry.event
        if other is None:
            continue
        if other.type in DERIVED and me in _named(other.data):
            derived.append(entry)
        elif other.type == "thought" and other.causation_id == event.id:
            answers.add(str(other.id))
        if other.type not in DERIVED and len(event.prose.strip()) >= QUOTABLE and event.prose in other.prose:
            quotes.append(entry)
    return derived, answers, quotes


def _named(data: dict[str, Any]) -> set[str]:
    """The strings `data` holds at its top level, in lists too: the ids it names."""
    named: set[str] = set()
    for value in data.values():
        named.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return named


def _find_event(journal: Journal, event: str) -> Entry:
    """The journal entry with this sequence number or event id."""
    if event.isdigit():
        entries = list(journal.read(since=int(event), limit=1))
        if entries and entries[0].seq == int(event) and entries[0].event is not None:
            return entries[0]
        raise click.ClickException(f"no decodable event at seq {event}")
    try:
        wanted = uuid.UUID(event)
    except ValueError:
        raise click.ClickException(f"{event!r} is neither a sequence number nor an event id") from None
    for entry in journal.read():
        if entry.event is not None and entry.event.id == wanted:
            return entry
    raise click.ClickException(f"no event {event} in the journal")
