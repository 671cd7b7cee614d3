"""Anchored TIES: `W_N = W0 + λ · TIES(Δ_1, …, Δ_N)` per tensor, always from the base W0 (design §6).

Three parts, each usable alone:

- `ties_merge`: the per-tensor merge, mergekit's TIES semantics, in numpy float32.
- `lora_delta` / `LoraAdapter`: dense task vectors rebuilt from mlx-lm LoRA adapters, computed
  exactly as `mlx_lm.tuner.lora.LoRALinear.fuse` computes them.
- `merge_model`: the whole-model merge, streamed tensor by tensor from safetensors shards to
  new shards (or to tensors kept once by content, evolution/weights/tensors.py), sealed with
  per-tensor sha256, a root hash and per-tensor drift.

Why numpy and not mlx for the merge: numpy's elementwise float32 arithmetic is IEEE-rounded
and identical on every CPU, so a generation's bytes do not depend on the device (mlx's results
differ between GPU and CPU and across chips, mlx issues #878 and #3568); numpy has an O(n)
selection (`np.partition`) on which an explicit tie-break is easy to build; and numpy arrays
map straight onto safetensors bytes. mlx is used only where bit-equality with mlx-lm's own fuse
matters: the product of the LoRA factors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

from evolution.weights.files import StoredTensor, copy_range, from_float32, read_layout, root_hash, to_float32
from evolution.weights.tensors import TensorStore, shard_name

INDEX_SUFFIX = ".safetensors.index.json"  # a sharded model's map of tensors to files

# -- the per-tensor merge ------------------------------------------------------------------


def trim_magnitude(delta: np.ndarray, density: float) -> np.ndarray:
    """`delta` as float32 with all but its k largest-magnitude entries set to zero (a new
    array unless nothing is trimmed; `delta` itself is never modified).

    k = max(1, int(density · numel)) for 0 < density < 1, as mergekit's `sparsify.magnitude`
    (so a positive density never drops a small tensor entirely); density >= 1 keeps every entry
    and density <= 0 none. Ties in |δ| at the cut are broken by position: the lowest flat
    (row-major) indices are kept, which is what a stable descending sort would keep.
    """
    values = np.ascontiguousarray(delta, dtype=np.float32)
    n = values.size
    if density >= 1:
        return values
    if density <= 0 or n == 0:
        return np.zeros_like(values)
    k = min(n, max(1, int(density * n)))
    magnitude = np.abs(values).ravel()
    threshold = np.partition(magnitude, n - k)[n - k]  # the k-th largest |δ|
    keep = magnitude >= threshold
    extra = int(np.count_nonzero(keep)) - k
    if extra:  # ties at the cut (rare): drop the ones at the highest positions
        keep[np.flatnonzero(magnitude == threshold)[-extra:]] = False
    return np.where(keep.reshape(values.shape), values, np.float32(0))


def canonical_order(
    deltas: Sequence[np.ndarray], weights: Sequence[float], densities: Sequence[float]
) -> list[int]:
    """The order in which `ties_merge` sums its task vectors: by (sha256 of the delta's float32
    bytes, weight, density). Float addition is not associative, so summing in an order fixed by
    content makes the merge a function of the set of task vectors, not of how they are listed."""

    def key(i: int) -> tuple[bytes, float, float]:
        data = np.ascontiguousarray(deltas[i], dtype=np.float32)
        return hashlib.sha256(data.reshape(-1).view(np.uint8)).digest(), weights[i], densities[i]

    return sorted(range(len(deltas)), key=key)


def ties_merge(
    base: np.ndarray,
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
    int8_mask: bool = False,
) -> np.ndarray:
    """One tensor of `W0 + λ · TIES(δ_1, …, δ_N)`, in float32, cast to `base.dtype`.

    Per task vector: δ̂_i = `trim_magnitude(δ_i, density_i)`, WD_i = weight_i · δ̂_i. Elected sign
    γ = sign(Σ WD_i) with 0 → +1; mask_i = (sign(WD_i) == γ), so zero entries never count.
    merged = Σ WD_i·mask_i, divided (if `normalize`) by Σ weight_i·mask_i with 0 → 1; the result
    is base + λ·merged. `int8_mask` computes the sign tensors as int8 instead of float32 (less
    memory; the same bytes out). Deterministic bit for bit, and independent of the order the
    task vectors are listed in (see `canonical_order`). With one task vector and `normalize`,
    its weight cancels. Inputs must be finite.
    """
    base = np.asarray(base)
    if not (len(deltas) == len(weights) == len(densities)):
        raise ValueError("deltas, weights and densities must have the same length")
    for delta in deltas:
        if np.shape(delta) != base.shape:
            raise ValueError(f"delta shape {np.shape(delta)} differs from base shape {base.shape}")
    order = canonical_order(deltas, weights, densities)
    ordered_weights = [np.float32(weights[i]) for i in order]
    weighted = [w * trim_magnitude(deltas[i], densities[i]) for w, i in zip(ordered_weights, order)]

    sign_dtype = np.int8 if int8_mask else np.float32
    total = np.zeros(base.shape, np.float32)
    for wd in weighted:
        total += wd
    elected = np.where(total >= 0, sign_dtype(1), sign_dtype(-1))
    del total

    merged = np.zeros(base.shape, np.float32)
    divisor = np.zeros(base.shape, np.float32)
    for weight, wd in zip(ordered_weights, weighted):
        mask = wd * elected > 0  # sign(wd) == elected; zero entries never count
        merged += wd * mask
        divisor += weight * mask
    if normalize:
        divisor[divisor == 0] = 1
        merged /= divisor
    if lam != 1:
        merged *= np.float32(lam)
    return (base.astype(np.float32) + merged).astype(base.dtype)


# -- task vectors from mlx-lm LoRA adapters ------------------------------------------------


def lora_delta(lora_a: mx.array, lora_b: mx.array, scale: float) -> np.ndarray:
    """ΔW = scale · lora_bᵀ · lora_aᵀ (lora_a: in×r, lora_b: r×out, ΔW: out×in) as float32,
    computed with the very expression of mlx-lm's `LoRALinear.fuse`, on mlx's default device."""
    delta = (scale * mx.array(lora_b).T) @ mx.array(lora_a).T
    return np.array(delta.astype(mx.float32))


class TaskVector(Protocol):
    """What `merge_model` needs of a task vector: the base tensors it changes, and its dense
    delta (float32, the base tensor's shape) for each of them."""

    names: frozenset[str]

    def delta(self, name: str) -> np.ndarray: ...


class LoraAdapter:
    """An mlx-lm LoRA adapter directory (`adapters.safetensors` + `adapter_config.json`) as a
    task vector. A factor pair `<module>.lora_a` / `<module>.lora_b` changes the base tensor
    `<module>.weight`: mlx-lm names both after the module path, so the base must be an
    mlx-format model (as saved by mlx_lm). Only LoRA on linear layers; the factors stay in
    memory (a few MB at rank 32) and each dense delta is rebuilt when asked for."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        config = json.loads((path / "adapter_config.json").read_text("utf-8"))
        kind = config.get("fine_tune_type", "lora")
        if kind != "lora":
            raise ValueError(f"{path}: fine_tune_type {kind!r}; only 'lora' adapters can be merged")
        self.path = path
        self.scale = float(config["lora_parameters"]["scale"])
        pairs: dict[str, dict[str, mx.array]] = {}
        for key, value in mx.load(str(path / "adapters.safetensors")).items():
            module, _, leaf = key.rpartition(".")
            if leaf not in ("lora_a", "lora_b"):
                raise ValueError(f"{path}: {key} is not a LoRA factor (lora_a or lora_b)")
            pairs.setdefault(module, {})[leaf] = value
        self._factors: dict[str, tuple[mx.array, mx.array]] = {}
        for module, pair in sorted(pairs.items()):
            if len(pair) != 2:
                raise ValueError(f"{path}: {module} has {sorted(pair)} but needs lora_a and lora_b")
            a, b = pair["lora_a"], pair["lora_b"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
                raise ValueError(
                    f"{path}: {module} has factors {a.shape} and {b.shape}; only linear-layer "
                    "LoRA (lora_a in×r, lora_b r×out) is supported"
                )
            self._factors[f"{module}.weight"] = (a, b)
        self.names = frozenset(self._factors)

    def delta(self, name: str) -> np.ndarray:
        a, b = self._factors[name]
        return lora_delta(a, b, self.scale)


# -- the streaming whole-model merge -------------------------------------------------------


@dataclass(frozen=True)
class MergeSeal:
    tensor_sha256: dict[str, str]  # every tensor: sha256 of its stored bytes
    root_sha256: str  # `root_hash(tensor_sha256)`
    drift: dict[str, float]  # merged tensors: ||W_N - W0|| / ||W0|| (the rest are unchanged)


def merge_model(
    base_dir: str | Path,
    out_dir: str | Path,
    task_vectors: Sequence[TaskVector],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    lam: float = 1.0,
    normalize: bool = True,
    int8_mask: bool = False,
    tensors: TensorStore | None = None,
    base_hashes: Mapping[str, str] | None = None,
) -> MergeSeal:
    """Write generation `W0 + λ · TIES(task vectors)` of the model in `base_dir` to `out_dir`.

    With `tensors`, `out_dir` holds one hard link per tensor into that store instead of shards
    (evolution/weights/tensors.py): only the tensors a task vector changes are written, and an
    unchanged one whose hash `base_hashes` gives is linked without being read. Without it:

    Every `*.safetensors` shard of the base is rewritten under the same name with the same
    header (names, dtypes, shapes and offsets do not change), tensor by tensor in file order:
    tensors some task vector changes go through `ties_merge` (in float32, stored back in their
    dtype), the others are copied in chunks. The base is never loaded whole: each tensor is
    memory-mapped only while it is merged, so peak memory is about one tensor times
    (task vectors + 5), whatever the model's size. Other files of `base_dir` (config, tokenizer,
    shard index) are copied as they are.

    A generation is immutable: `out_dir` must not exist (or be an empty directory), and appears
    only complete (everything is written to a sibling `.<name>.partial` first, then renamed).
    Raises ValueError if a task vector names a tensor the base lacks or a merged tensor is not
    finite.
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {base_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; a generation is written once")
    layouts = {shard: read_layout(shard) for shard in shards}
    base_names = {t.name for _, tensors in layouts.values() for t in tensors}
    for tv in task_vectors:
        if unknown := tv.names - base_names:
            raise ValueError(f"task vector changes tensors the base lacks: {sorted(unknown)[:3]}")

    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for path in sorted(base_dir.iterdir()):
            if path.is_file() and path.suffix != ".safetensors" and not (tensors and path.name.endswith(INDEX_SUFFIX)):
                shutil.copyfile(path, partial / path.name)
        if tensors is not None:
            seal = _merge_into(tensors, base_hashes or {}, layouts, partial, task_vectors, weights, densities,
                               lam, normalize, int8_mask)
            partial.rename(out_dir)
            return seal
        hashes: dict[str, str] = {}
        drift: dict[str, float] = {}
        for shard in shards:
            header, tensors = layouts[shard]
            with open(shard, "rb") as src, open(partial / shard.name, "wb") as dst:
                dst.write(header)
                for t in tensors:
                    if dst.tell() != t.start:
                        raise ValueError(f"{shard}: bytes outside any tensor before {t.name}")
                    users = [i for i, tv in enumerate(task_vectors) if t.name in tv.names]
                    if not users or t.start == t.end:
                        hashes[t.name] = copy_range(src, t.start, t.end, dst)
                        continue
                    stored, drift[t.name] = _merge_tensor(
                        shard, t, [task_vectors[i].delta(t.name) for i in users],
                        [weights[i] for i in users], [densities[i] for i in users],
                        lam, normalize, int8_mask,
                    )
                    data = stored.view(np.uint8)
                    dst.write(data)
                    hashes[t.name] = hashlib.sha256(data).hexdigest()
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return MergeSeal(hashes, root_hash(hashes), drift)


def _merge_into(tensors: TensorStore, base_hashes: Mapping[str, str], layouts, out_dir: Path, task_vectors,
                weights, densities, lam, normalize, int8_mask) -> MergeSeal:
    """`merge_model` into `tensors`, linked from `out_dir` with an index of where each tensor is."""
    hashes: dict[str, str] = {}
    drift: dict[str, float] = {}
    where: dict[str, str] = {}
    total = 0
    for shard, (_, stored_tensors) in layouts.items():
        with open(shard, "rb") as src:
            for t in stored_tensors:
                users = [i for i, tv in enumerate(task_vectors) if t.name in tv.names]
                if not users or t.start == t.end:
                    kept, hashes[t.name] = tensors.put_copy(src, t, base_hashes.get(t.name))
                else:
                    stored, drift[t.name] = _merge_tensor(
                        shard, t, [task_vectors[i].delta(t.name) for i in users],
                        [weights[i] for i in users], [densities[i] for i in users],
                        lam, normalize, int8_mask,
                    )
                    hashes[t.name] = hashlib.sha256(stored.view(np.uint8)).hexdigest()
                    kept = tensors.put(t.name, t.dtype, t.shape, stored, hashes[t.name])
                where[t.name] = shard_name(len(where) + 1)
                os.link(kept, out_dir / where[t.name])
                total += t.end - t.start
    index = {"metadata": {"total_size": total}, "weight_map": where}  # as Hugging Face shards are indexed
    (out_dir / f"model{INDEX_SUFFIX}").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return MergeSeal(hashes, root_hash(hashes), drift)


def _merge_tensor(shard: Path, t: StoredTensor, deltas, weights, densities, lam, normalize, int8_mask):
    """One merged tensor in its stored representation, and its drift from the base."""
    for delta in deltas:
        if delta.shape != t.shape:
            raise ValueError(f"{t.name}: delta shape {delta.shape} differs from base shape {t.shape}")
    raw = np.memmap(shard, dtype=np.uint8, mode="r", offset=t.start, shape=(t.end - t.start,))
    base = to_float32(raw, t.dtype, t.shape)
    merged = ties_merge(base, deltas, weights, densities, lam, normalize, int8_mask)
    stored = from_float32(merged, t.dtype)
    change = to_float32(stored.view(np.uint8), t.dtype, t.shape) - base
    base_norm, change_norm = float(np.linalg.norm(base)), float(np.linalg.norm(change))
    if not math.isfinite(change_norm):
        raise ValueError(f"{t.name}: the merged tensor is not finite (a non-finite delta?)")
    drift = change_norm / base_norm if base_norm else (0.0 if change_norm == 0 else math.inf)
    return stored, drift
