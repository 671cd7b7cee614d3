"""Weights on disk: safetensors layout read one tensor at a time, exact dtype conversion, and
the content hashes a generation is sealed with (per tensor, a root over them, whole files).

Read without loading a model: a merge or a verification streams each tensor's bytes from its
file offsets, so memory stays at one tensor whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MERGEABLE_DTYPES = ("F32", "F16", "BF16")
COPY_CHUNK = 16 << 20  # bytes per read when copying a tensor that does not change
HASH_CACHE = Path("models", "hashes")  # under SOUL_HOME: `remembered_hashes` of models named before


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets of the tensor's bytes
    end: int


def read_layout(path: Path) -> tuple[bytes, list[StoredTensor]]:
    """A safetensors file's header bytes (length prefix included) and its tensors in file order."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        (length,) = struct.unpack("<Q", prefix)
        header = f.read(length)
    entries = json.loads(header)
    entries.pop("__metadata__", None)
    data_start = 8 + length
    tensors = [
        StoredTensor(name, e["dtype"], tuple(e["shape"]), data_start + e["data_offsets"][0],
                     data_start + e["data_offsets"][1])
        for name, e in entries.items()
    ]
    return prefix + header, sorted(tensors, key=lambda t: t.start)


def to_float32(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Stored little-endian bytes as float32 values (exact for every mergeable dtype)."""
    if dtype == "F32":
        return raw.view(np.float32).reshape(shape)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if dtype == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    raise ValueError(f"cannot merge a {dtype} tensor; mergeable dtypes are {MERGEABLE_DTYPES}")


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values in the stored representation, rounded to nearest even (as mlx and torch
    round), as a flat array whose bytes are what the file holds."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if dtype == "F32":
        return values
    if dtype == "F16":
        return values.astype(np.float16)
    if dtype == "BF16":
        bits = values.view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)
    raise ValueError(f"cannot merge a {dtype} tensor; mergeable dtypes are {MERGEABLE_DTYPES}")


def root_hash(tensor_sha256: Mapping[str, str]) -> str:
    """sha256 of the UTF-8 JSON array of [name, sha256] pairs sorted by name, no spaces."""
    pairs = sorted(tensor_sha256.items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def model_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of each tensor's stored bytes in a model directory's safetensors shards: what a
    seal records, recomputed from the files (to verify a generation or a replay)."""
    hashes = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        hashes.update(model_hashes_of(shard))
    return hashes


def model_hashes_of(shard: Path) -> dict[str, str]:
    """sha256 of each tensor's stored bytes in one safetensors file."""
    _, tensors = read_layout(shard)
    with open(shard, "rb") as f:
        return {t.name: copy_range(f, t.start, t.end, None) for t in tensors}


def remembered_hashes(model_dir: str | Path, cache: Path) -> dict[str, str]:
    """`model_hashes`, each shard's kept in `cache` under its path, size, inode and mtime (not
    ctime: a generation's hard link to a tensor changes it),
    so a model of hundreds of GB is hashed once, not at every start (0.9 GB/s here). To name a
    model only: whatever must prove its bytes (a seal's check, a replay) hashes again."""
    hashes: dict[str, str] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        stat = shard.stat()
        key = [str(shard.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns]
        kept = cache / f"{hashlib.sha256(key[0].encode()).hexdigest()[:32]}.json"
        try:
            entry = json.loads(kept.read_text())
            if entry["key"] == key:
                hashes.update(entry["hashes"])
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        found = model_hashes_of(shard)
        hashes.update(found)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "hashes": found}))
        os.replace(tmp, kept)  # whole or not at all; concurrent writers write the same
    return hashes


def copy_range(src, start: int, end: int, dst) -> str:
    """Copy bytes [start, end) of `src` to `dst` (if any) in chunks; their sha256."""
    digest = hashlib.sha256()
    buffer = bytearray(min(COPY_CHUNK, end - start))
    src.seek(start)
    while start < end:
        view = memoryview(buffer)[: min(len(buffer), end - start)]
        src.readinto(view)
        digest.update(view)
        if dst is not None:
            dst.write(view)
        start += len(view)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
