"""Where a soul's generations of weights live: `$SOUL_HOME/generations/<app>/` (design §6).

    weights/<root hash>/  one complete generation: the MLX model directory `merge_model` wrote,
                          hard links into tensors/, plus seal.json (its per-tensor and root sha256)
    tensors/              every tensor of every generation, once (evolution/weights/tensors.py)
    staging/              generations being made; never read, emptied when the next run starts
    active.json           the generation the soul runs on, {"generation", "root_sha256"}; absent: W0
    lock                  held by the one evolve or replay that writes here

A generation enters weights/ only after its files hash to its seal, and becomes active only by
an `os.replace` of active.json, so a crash at any point leaves the previous generation active
and whole. Folders are named by root hash: a replay that rebuilds the same bytes finds them.
Tensors are shared between generations: one costs disk only for the tensors its merge changed
(folders made before tensors/ existed hold whole shards, and are read as they are).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evolution.ties import MergeSeal
from evolution.weights.files import model_hashes, root_hash
from evolution.weights.tensors import TensorStore

SEAL_FILE = "seal.json"
ACTIVE_FILE = "active.json"


class StoreError(RuntimeError):
    """The store cannot do what was asked; the one-line message says why and what to do."""


class GenerationStore:
    def __init__(self, home: Path, app: str) -> None:
        self.home = Path(home)
        self.root = self.home / "generations" / app
        self.app = app

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive right to write generations; refused at once while another run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another evolve or replay of {self.app!r} is running ({self.root})") from None
            yield

    def staging_dir(self) -> Path:
        """A fresh path under staging/ for `merge_model` to create (call under `lock`)."""
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        return self.root / "staging" / uuid.uuid4().hex

    @property
    def tensors(self) -> TensorStore:
        return TensorStore(self.root / "tensors")

    def clear_staging(self) -> None:
        """Remove what interrupted runs left (call under `lock`: no run is writing there)."""
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        self.tensors.collect()

    def keep(self, made: Path, seal: MergeSeal) -> Path:
        """Move a merged generation from staging into weights/ once its files hash to `seal`."""
        target = self.weights_path(seal.root_sha256)
        if self.weights(seal.root_sha256) is not None:  # the same bytes were kept before
            shutil.rmtree(made)
            return target
        found = model_hashes(made)
        if found != seal.tensor_sha256:
            differ = sorted(n for n in found.keys() | seal.tensor_sha256.keys()
                            if found.get(n) != seal.tensor_sha256.get(n))
            raise StoreError(f"{made} does not hash to its seal ({len(differ)} tensors differ, e.g. {differ[0]})")
        _write_json(made / SEAL_FILE, {"root_sha256": seal.root_sha256, "tensor_sha256": seal.tensor_sha256})
        for path in made.iterdir():  # on disk before the folder is named complete
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # a folder without a seal never was complete
        os.rename(made, target)
        return target

    def weights_path(self, root_sha256: str) -> Path:
        return self.root / "weights" / root_sha256

    def weights(self, root_sha256: str) -> Path | None:
        """The folder of the generation with this root hash, if the store holds it whole."""
        folder = self.weights_path(root_sha256)
        try:
            sealed = json.loads((folder / SEAL_FILE).read_text())
        except (OSError, ValueError):
            return None
        return folder if sealed.get("root_sha256") == root_sha256 else None

    def verify(self, root_sha256: str) -> Path:
        """The generation's folder after hashing every tensor again; StoreError if any differs."""
        folder = self.weights(root_sha256)
        if folder is None:
            raise StoreError(f"the store has no generation with root {root_sha256[:16]}…")
        found = model_hashes(folder)
        if root_hash(found) != root_sha256:
            raise StoreError(f"{folder} no longer hashes to its seal (changed on disk); remove it and replay")
        return folder

    def discard(self, root_sha256: str) -> None:
        """Remove a generation's weights (a rejected one), unless it is the active one."""
        current = self.active()
        if current is None or current[1] != self.weights_path(root_sha256):
            shutil.rmtree(self.weights_path(root_sha256), ignore_errors=True)
            self.tensors.collect()

    def promote(self, generation: str | None, root_sha256: str | None = None) -> None:
        """Make `generation` (with weights `root_sha256`, already kept) the active one, or W0 if None."""
        pointer = self.root / ACTIVE_FILE
        if generation is None:
            pointer.unlink(missing_ok=True)
            return
        if root_sha256 is None or self.weights(root_sha256) is None:
            raise StoreError(f"cannot promote {generation}: its weights are not in the store")
        _write_json(pointer, {"generation": generation, "root_sha256": root_sha256})

    def active(self) -> tuple[str, Path] | None:
        """(generation name, model folder) the soul runs on, or None for the base W0."""
        pointer = self.root / ACTIVE_FILE
        try:
            chosen = json.loads(pointer.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"{pointer} is unreadable ({e}); `soul evolve` writes it again") from None
        folder = self.weights(chosen["root_sha256"])
        if folder is None:
            raise StoreError(f"the active generation {chosen['generation']} has no weights in {self.root}; "
                             f"`soul replay --to {chosen['generation']}` rebuilds them")
        return chosen["generation"], folder


def _write_json(path: Path, value: object) -> None:
    """Write `path` whole or not at all: a temporary sibling, flushed to disk, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        f.write(json.dumps(value, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
