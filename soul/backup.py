"""`soul backup` and `soul restore`: a whole soul in one file, and back, into an empty home or an
external NATS server or cluster.

The archive is a tar file:

    soul-backup.json     first: format, version, the soul's name, when
    journal.bin          every message of its journal's stream, sequences and all (journal/archive.py)
    generations/...      its generation store, $SOUL_HOME/generations/<app>/: weights/<root>/, active.json
    adapters/...         the adapters its lineage trained, from the shared cache $SOUL_HOME/adapters/
                         (<sha256>/ and by-key/<cache key>): a replay merges them instead of training
    manifest.json        last: what the journal dump holds, and every other member's size and sha256

Projections are not in it: they are the journal's views, rebuilt from it by `restore`.

`restore` verifies everything before it writes anything: the first member must say it is a soul
backup of a format this code reads; the soul must not exist where it goes (its stream has never
held a message, its store holds no generation); then the rest is read into a staging folder in the
home, each member hashed against the manifest and the journal dump read through. Only then is the
journal loaded (each message at its own sequence, or the stream is deleted again), the files moved
into place (undone if that fails) and the views rebuilt. A truncated, damaged or foreign file is one
error (`BackupError`) and nothing is restored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any, BinaryIO

from evolution.lineage import runs
from evolution.store import ACTIVE_FILE, GenerationStore
from evolution.weights.files import sha256_file
from journal import archive
from journal.errors import one_line
from journal.journal import Journal
from projections.erasure import rebuild
from projections.postgres import pg_url

FORMAT, VERSION = "soul-backup", 1
HEAD, JOURNAL, MANIFEST = "soul-backup.json", "journal.bin", "manifest.json"
GENERATIONS, ADAPTERS = "generations", "adapters"
CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class BackupError(RuntimeError):
    """An archive that cannot be written or restored; the one-line message says why."""


# -- backup --------------------------------------------------------------------------------


def backup(journal: Journal, home: Path, path: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Write the soul of `journal` (with its files under `home`) to a new archive at `path`; its
    manifest. The journal is taken as it is when the backup starts; an evolve or replay of this
    soul is refused while it runs, so the generations match it. `path` appears only when whole."""
    path = Path(path)
    if path.exists():
        raise BackupError(f"{path} exists: back up into a new file")
    store = GenerationStore(home, journal.app)
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        # No store yet: nothing to lock, and a backup should not create one.
        with store.lock() if store.root.is_dir() else nullcontext(), tarfile.open(partial, "w") as tar:
            head = {"format": FORMAT, "version": VERSION, "app": journal.app,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "soul": version("soul")}
            members = {HEAD: _add_bytes(tar, HEAD, _json(head))}
            with tempfile.TemporaryFile(dir=path.parent) as dumped:
                summary = archive.dump(journal, dumped, _stage(progress, "journal"))
                size = dumped.tell()
                dumped.seek(0)
                members[JOURNAL] = _add(tar, JOURNAL, dumped, size)
            files, kept, missing = _soul_files(journal, home, store)
            total, done = sum(f.stat().st_size for _, f in files), 0
            for name, file in files:
                with open(file, "rb") as f:
                    members[name] = _add(tar, name, f, file.stat().st_size)
                done += members[name]["size"]
                if progress is not None:
                    progress("files", done, total)
            manifest = {"journal": summary.as_dict(), "generations": _generations(store),
                        "adapters": {"kept": kept, "not_in_cache": missing}, "members": members}
            _add_bytes(tar, MANIFEST, _json(manifest))
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return {**head, **manifest}


def _soul_files(journal: Journal, home: Path,
                store: GenerationStore) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
    """(archive name, file) of the generation store and of the adapters the lineage names, and
    the adapters kept and those not in the cache (a replay must train those again)."""
    from evolution.evolve import adapters_root  # loads mlx-lm's tuner: only when a backup runs
    from evolution.train import KEYS

    files = [(f"{GENERATIONS}/{p.relative_to(store.root).as_posix()}", p)
             for p in sorted((store.root / "weights").rglob("*")) if p.is_file()]
    if (store.root / ACTIVE_FILE).is_file():
        files.append((f"{GENERATIONS}/{ACTIVE_FILE}", store.root / ACTIVE_FILE))
    cache, kept, missing = adapters_root(home), [], []
    named = {g.adapter["sha256"]: g.adapter.get("cache_key") for g in runs(journal) if g.adapter.get("sha256")}
    for sha256, key in named.items():
        folder = cache / sha256
        if not _intact(folder, sha256):
            missing.append(sha256)
            continue
        kept.append(sha256)
        files += [(f"{ADAPTERS}/{sha256}/{p.name}", p) for p in sorted(folder.iterdir()) if p.is_file()]
        pointer = cache / KEYS / str(key)
        if key and pointer.is_file() and pointer.read_text().strip() == sha256:
            files.append((f"{ADAPTERS}/{KEYS}/{key}", pointer))
    return files, kept, missing


def _intact(folder: Path, sha256: str) -> bool:
    """Whether the cached adapter `folder` holds the adapter it is named by."""
    from evolution.train import ADAPTER_FILE

    return (folder / ADAPTER_FILE).is_file() and sha256_file(folder / ADAPTER_FILE) == sha256


def _generations(store: GenerationStore) -> dict[str, Any]:
    weights = store.root / "weights"
    active = store.root / ACTIVE_FILE
    return {"weights": sorted(p.name for p in weights.iterdir()) if weights.is_dir() else [],
            "active": json.loads(active.read_text())["generation"] if active.is_file() else None}


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    return _add(tar, name, io.BytesIO(data), len(data))


def _add(tar: tarfile.TarFile, name: str, source: BinaryIO | IO[bytes], size: int) -> dict[str, Any]:
    """Add `size` bytes of `source` as member `name`; its size and sha256."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    hashing = _Hashing(source)
    tar.addfile(info, hashing)
    if hashing.size != size:
        raise BackupError(f"{name} changed while it was backed up ({hashing.size:,} bytes read of {size:,})")
    return {"size": size, "sha256": hashing.sha256.hexdigest()}


class _Hashing:
    """A file read through, hashed on the way."""

    def __init__(self, source: BinaryIO | IO[bytes]):
        self.source, self.sha256, self.size = source, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


# -- restore -------------------------------------------------------------------------------


def read_head(path: Path) -> dict[str, Any]:
    """The archive's first member: which soul, written when, in which format; BackupError for a
    file `soul backup` did not write, or one of a newer format."""
    with _opened(path) as tar:
        return _head(path, tar)[0]


def restore(path: Path, home: Path, app: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Restore the soul in the archive at `path` as `app` (default: the name it was backed up as)
    into `home` and the NATS the journal connects to (SOUL_NATS_URL, else the home's embedded
    server), then rebuild its views in Postgres; its manifest, with "app" the name restored as."""
    path, home = Path(path), Path(home)
    head = read_head(path)
    app = app or head["app"]
    with Journal(app) as journal:
        store = GenerationStore(home, app)
        _refuse_unless_empty(journal, store)
        home.mkdir(parents=True, exist_ok=True)
        staging = home / f".restore-{uuid.uuid4().hex[:8]}"
        try:
            manifest = _unpack(path, staging, progress)
            with store.lock():
                _refuse_unless_empty(journal, store)
                with open(staging / JOURNAL, "rb") as dump:
                    archive.load(journal, dump, _stage(progress, "journal"))
                try:
                    _place(staging, home, store)
                except BaseException:
                    journal.delete()  # the journal goes again with the files: nothing restored
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            views = rebuild(journal, None, pg_url())
        except Exception as e:
            raise BackupError(f"restored {app!r}, but its views could not be rebuilt ({one_line(e)}); "
                              "`soul projections rebuild NAME` rebuilds each") from None
    return {**head, **manifest, "app": app, "backed_up_as": head["app"], "views": views}


@contextmanager
def _opened(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive read as a stream (compressed too, should it have been gzipped since); a file
    that is no tar archive, or one cut short, is a BackupError."""
    try:
        with tarfile.open(path, "r|*") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error) as e:
        if isinstance(e, tarfile.ReadError) and "unexpected end" not in str(e) and "truncated" not in str(e):
            raise BackupError(f"{path} is not a soul backup (not a tar archive)") from None
        raise BackupError(f"{path} is cut short or damaged ({one_line(e)}); nothing was restored") from None


def _head(path: Path, tar: tarfile.TarFile) -> tuple[dict[str, Any], bytes]:
    """The first member, read and checked: its JSON and its bytes."""
    foreign = BackupError(f"{path} is not a soul backup (it does not begin with {HEAD})")
    first = tar.next()
    if first is None or first.name != HEAD or not first.isfile() or first.size > CHUNK:
        raise foreign
    data = _read(tar, first)
    try:
        head = json.loads(data)
    except ValueError:
        raise foreign from None
    if not isinstance(head, dict) or head.get("format") != FORMAT or not _is_part(head.get("app")):
        raise foreign  # (the name becomes a folder of the home: never a path)
    if head.get("version") != VERSION:
        raise BackupError(f"{path} is a soul backup of format version {head.get('version')}; this soul reads "
                          f"version {VERSION} (restore it with the soul that wrote it)")
    return head, data


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    source = tar.extractfile(member)
    assert source is not None
    return source.read()


def _refuse_unless_empty(journal: Journal, store: GenerationStore) -> None:
    if (last := archive.last_sequence(journal)) != 0:
        raise BackupError(f"soul {journal.app!r} already has a journal at {journal.bus.where} (last sequence {last}): "
                          "restore into a new home or server, or as another name (`soul --app NAME restore`)")
    held = [p.name for p in (store.root / "weights", store.root / ACTIVE_FILE)
            if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    if held:
        raise BackupError(f"{store.root} already holds generations ({', '.join(held)}): restore into a new home, "
                          "or as another name (`soul --app NAME restore`)")


def _unpack(path: Path, staging: Path, progress: Progress | None) -> dict[str, Any]:
    """Read the whole archive into `staging`, checking every member against the manifest and
    the journal dump through; the manifest. BackupError on anything amiss."""
    total, manifest = path.stat().st_size, None
    with _opened(path) as tar:
        found = {HEAD: _digest(_head(path, tar)[1])}
        while (member := tar.next()) is not None:  # (iterating the archive would start again at its head)
            if manifest is not None:
                raise BackupError(f"{path} is damaged: {member.name!r} follows its manifest")
            if member.name == MANIFEST and member.isfile() and member.size <= 64 * CHUNK:
                try:
                    manifest = json.loads(_read(tar, member))
                except ValueError:
                    raise BackupError(f"{path} is damaged: its manifest is not JSON") from None
                continue
            if not member.isfile() or member.name in found or not _allowed(member.name):
                raise BackupError(f"{path} is not a soul backup ({member.name!r} has no place in one)")
            found[member.name] = _extract(tar, member, staging / member.name)
            if progress is not None:
                progress("reading", min(tar.offset, total), total)
    if manifest is None:
        raise BackupError(f"{path} is cut short (it ends before its manifest); nothing was restored")
    listed = manifest.get("members") if isinstance(manifest, dict) else None
    if listed != found:
        differ = sorted(n for n in set(found) | set(listed or {}) if (listed or {}).get(n) != found.get(n))
        raise BackupError(f"{path} is damaged: {len(differ)} members differ from its manifest, e.g. {differ[0]}")
    try:
        with open(staging / JOURNAL, "rb") as dump:
            summary = archive.check(dump)
    except (archive.DumpError, FileNotFoundError) as e:
        raise BackupError(f"{path} is damaged: {one_line(e)}") from None
    if summary.as_dict() != manifest.get("journal"):
        raise BackupError(f"{path} is damaged: its journal dump does not hold what its manifest says")
    return manifest


def _allowed(name: str) -> bool:
    """A member a soul backup holds: the journal dump, or a plain relative file path under
    generations/ or adapters/ (never absolute, never `..`)."""
    parts = name.split("/")
    return name == JOURNAL or (parts[0] in (GENERATIONS, ADAPTERS) and len(parts) > 1 and all(map(_is_part, parts)))


def _is_part(value: object) -> bool:
    """A name for one folder or file: not empty, not `.` or `..`, no slash or NUL."""
    return isinstance(value, str) and value not in ("", ".", "..") and not set(value) & {"/", "\0"}


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> dict[str, Any]:
    source = tar.extractfile(member)
    assert source is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    sha256, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            sha256.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return {"size": size, "sha256": sha256.hexdigest()}


def _digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _place(staging: Path, home: Path, store: GenerationStore) -> None:
    """Move the staged generations and adapters into the home; undo every move if one fails.
    An adapter the cache already holds intact stays as it is (the cache is content-addressed)."""
    from evolution.evolve import adapters_root  # loads mlx-lm's tuner: only when a restore runs
    from evolution.train import KEYS

    moves: list[tuple[Path, Path]] = []
    if (staging / GENERATIONS).is_dir():
        moves += [(p, store.root / p.name) for p in sorted((staging / GENERATIONS).iterdir())]
    cache = adapters_root(home)
    if (staging / ADAPTERS).is_dir():
        for p in sorted((staging / ADAPTERS).iterdir()):
            if p.name == KEYS:
                moves += [(key, cache / KEYS / key.name) for key in sorted(p.iterdir())]
            elif not _intact(cache / p.name, p.name):
                shutil.rmtree(cache / p.name, ignore_errors=True)  # a damaged copy, as training would replace it
                moves.append((p, cache / p.name))
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            os.replace(target, source)
        raise


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """A (done, total) callback reporting `stage` to `progress`."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
