"""`soul backup FILE` and `soul restore FILE`: a soul in one archive and back, into an empty home
or an external NATS server or cluster (soul/backup.py). No `nats` CLI is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from evolution.store import StoreError
from journal.embedded import soul_home
from soul.cli.options import app_of, json_option, open_journal
from soul.cli.progress import StageBars


def _run(work: Any) -> dict[str, Any]:
    """`work(backups, progress)` with soul/backup.py (imported only when a backup or restore runs:
    the other commands need not wait for tarfile and the dump code) and progress on stderr
    (soul/cli/progress.py); its mistakes as one line."""
    from journal import archive
    from soul import backup as backups

    bars = StageBars()
    try:
        return work(backups, bars)
    except (backups.BackupError, archive.DumpError, archive.RestoreError, StoreError) as e:
        bars.close()
        raise click.ClickException(str(e)) from None
    finally:
        bars.close()


def _held(figures: dict[str, Any]) -> str:
    """What an archive holds, in a few words."""
    journal, generations = figures["journal"], figures["generations"]
    span = f"seq {journal['first_seq']}..{journal['last_seq']}" if journal["messages"] else "none stored"
    weights, adapters = len(generations["weights"]), len(figures["adapters"]["kept"])
    active = f" (active {generations['active']})" if generations["active"] else ""
    size = sum(m["size"] for m in figures["members"].values())
    return (f"{_count(journal['messages'], 'message')} ({span}), the weights of {_count(weights, 'generation')}"
            f"{active}, {_count(adapters, 'adapter')}; {size:,} bytes")


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'s' * (n != 1)}"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option("Print the archive's manifest as JSON.")
@click.pass_context
def backup(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Write the soul to FILE, one archive (a tar file): its journal, every message with its
    sequence, headers and bytes; its generation store; and the adapters its lineage trained, so a
    replay after `soul restore` merges instead of training again.

    The journal is taken as it is when the backup starts; the soul may go on meanwhile, but an
    evolve or replay is refused while the backup runs. The views in Postgres are not in it:
    `soul restore` rebuilds them. FILE must not exist; it appears only once whole.
    """
    journal = open_journal(ctx)
    figures = _run(lambda backups, progress: backups.backup(journal, soul_home(), file, progress))
    if as_json:
        click.echo(orjson.dumps(figures).decode())
        return
    missing = figures["adapters"]["not_in_cache"]
    if missing:
        click.echo(f"warning: {len(missing)} adapters the lineage names are not in the cache (a replay trains "
                   "them again)", err=True)
    click.echo(f"backed up soul {journal.app!r} to {file}: {_held(figures)}")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option("Print the restored archive's manifest as JSON.")
@click.pass_context
def restore(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Restore the soul in FILE (written by `soul backup`) into this home and NATS: SOUL_HOME, and
    SOUL_NATS_URL (an external server or cluster; SOUL_NATS_REPLICAS=3 replicates the stream)
    or else the home's embedded server.

    It is restored under the name it was backed up as, or as NAME with `soul --app NAME restore`.
    That soul must not exist there yet: its stream must never have held a message and its store no
    generation. Everything is checked before anything is written; a truncated, damaged or foreign
    FILE restores nothing. Each message keeps its sequence number; the views are then rebuilt from
    the journal, so `soul journal stats`, `soul search` and `soul replay --to gen-N` answer as
    they did where it was backed up.
    """
    app = app_of(ctx) if _named(ctx) else None
    figures = _run(lambda backups, progress: backups.restore(file, soul_home(), app, progress))
    if as_json:
        click.echo(orjson.dumps(figures).decode())
        return
    renamed = f" (backed up as {figures['backed_up_as']!r})" if figures["backed_up_as"] != figures["app"] else ""
    click.echo(f"restored soul {figures['app']!r}{renamed} from {file}: {_held(figures)}; "
               f"views rebuilt: {', '.join(figures['views'])}")


def _named(ctx: click.Context) -> bool:
    """Whether the soul's name was given (`--app` or SOUL_APP), not left to its default."""
    root = ctx.find_root()
    return root.get_parameter_source("app") not in (None, click.core.ParameterSource.DEFAULT)

