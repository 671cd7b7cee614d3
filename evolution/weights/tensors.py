"""Tensors kept once by content, shared between generations (design §6).

A generation's folder holds hard links, `model-00001.safetensors` ..., one per tensor in the
base's order, to files of `TensorStore`: each a safetensors file of one tensor, named by the
sha256 of its name, dtype, shape and bytes. A tensor no adapter touches is the same file in
every generation, so a generation costs disk only for the tensors its merge changed, and the
merge writes only those. The per-tensor hashes, and so a seal's root hash, do not depend on how
the tensors are split into files. mlx-lm loads every `model*.safetensors` of a folder.

A file no generation folder links to any more (its link count is 1) is removed by `collect`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from evolution.weights.files import StoredTensor, copy_range, read_layout

METADATA = {"format": "mlx"}  # what mlx writes: mlx-lm reads the file as its own
SHARD_BYTES = 5 << 30  # a packed shard's largest size, as mlx-lm and Hugging Face shard


def header(name: str, dtype: str, shape: tuple[int, ...], size: int) -> bytes:
    """A one-tensor safetensors header, length prefix included."""
    return _header({name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, size]}})


def _header(entries: dict[str, dict]) -> bytes:
    """A safetensors header, length prefix included, padded to 8 bytes as the format asks."""
    body = json.dumps({"__metadata__": METADATA, **entries}, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def pack(folder: Path, out: Path, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """The tensors of a model folder's `*.safetensors`, in order, rewritten into as few shards
    of at most `shard_bytes` as hold them: `model.safetensors`, or `model-0000i-of-0000n` with an
    index, as a model is usually laid out (what `soul export` writes). The files written."""
    tensors = [(shard, t) for shard in sorted(Path(folder).glob("*.safetensors")) for t in read_layout(shard)[1]]
    groups: list[list[tuple[Path, StoredTensor]]] = [[]]
    size = 0
    for shard, t in tensors:
        if groups[-1] and size + t.end - t.start > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((shard, t))
        size += t.end - t.start
    names = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)])
    for name, group in zip(names, groups):
        entries, offset = {}, 0
        for _, t in group:
            entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.end - t.start]}
            offset += t.end - t.start
        with open(out / name, "wb") as f:
            f.write(_header(entries))
            for shard, t in group:
                with open(shard, "rb") as src:
                    copy_range(src, t.start, t.end, f)
    if len(groups) > 1:
        where = {t.name: name for name, group in zip(names, groups) for _, t in group}
        index = {"metadata": {"total_size": sum(t.end - t.start for _, t in tensors)}, "weight_map": where}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return names


def shard_name(index: int) -> str:
    """The file of a generation folder that holds its `index`-th tensor (from 1)."""
    return f"model-{index:05d}.safetensors"


class TensorStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str, dtype: str, shape: tuple[int, ...], sha256: str) -> Path:
        key = hashlib.sha256(json.dumps([name, dtype, list(shape), sha256]).encode()).hexdigest()
        return self.root / f"{key}.safetensors"

    def put(self, name: str, dtype: str, shape: tuple[int, ...], data: np.ndarray, sha256: str) -> Path:
        """The file of a tensor whose stored bytes are `data` (with that sha256), written if new."""
        path = self.path(name, dtype, shape, sha256)
        if not path.exists():
            raw = data.view(np.uint8)
            self._write(path, header(name, dtype, shape, raw.nbytes), lambda f: f.write(raw))
        return path

    def put_copy(self, src: BinaryIO, t: StoredTensor, sha256: str | None) -> tuple[Path, str]:
        """The file of tensor `t` of the open shard `src`, copied if new; and its sha256. With
        `sha256` known, a tensor kept before is not read at all."""
        if sha256 is not None and (path := self.path(t.name, t.dtype, t.shape, sha256)).exists():
            return path, sha256
        copied: list[str] = []
        tmp = self._write(None, header(t.name, t.dtype, t.shape, t.end - t.start),
                          lambda f: copied.append(copy_range(src, t.start, t.end, f)))
        if sha256 is not None and copied[0] != sha256:
            tmp.unlink()
            raise ValueError(f"{t.name} hashes to {copied[0][:12]}, not the {sha256[:12]} remembered for it: "
                             "the base model changed on disk")
        path = self.path(t.name, t.dtype, t.shape, copied[0])
        os.replace(tmp, path)
        return path, copied[0]

    def collect(self) -> int:
        """Remove the files no generation links to; how many."""
        removed = 0
        for path in self.root.glob("*.safetensors"):
            if path.stat().st_nlink == 1:
                path.unlink()
                removed += 1
        for path in self.root.glob(".*.tmp"):  # an interrupted write
            path.unlink()
        return removed

    def _write(self, path: Path | None, head: bytes, body) -> Path:
        """Write `head` then `body(file)` to a temporary file, on disk before it is renamed to
        `path` (if given; else the temporary file is returned for the caller to name)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{os.urandom(8).hex()}.tmp"
        with open(tmp, "wb") as f:
            f.write(head)
            body(f)
            f.flush()
            os.fsync(f.fileno())
        if path is None:
            return tmp
        os.replace(tmp, path)
        return path
