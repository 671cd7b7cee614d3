"""Make tests/data/ties_mergekit_reference.safetensors: TIES merges computed by mergekit itself.

The soul's anchored TIES (evolution/ties.py) follows mergekit's TIES semantics; its test
(tests/evolution/test_ties.py) merges these inputs with `ties_merge` and compares the bytes with the
outputs mergekit's `merge_tensors(..., "ties")` produced here, on float32 tensors.

Run it in a scratch venv, never in the project's own (torch and mergekit are no dependencies of
the soul), and keep pip from pulling a CUDA torch by pinning the CPU build:

    python3 -m venv /tmp/mkvenv
    /tmp/mkvenv/bin/pip install torch==2.13.0 mergekit==0.1.5
    /tmp/mkvenv/bin/python ops/make_ties_reference.py tests/data/ties_mergekit_reference.safetensors

Each case stores `<case>.base`, `<case>.delta<i>` and `<case>.merged`; the file's metadata
`cases` holds the parameters. mergekit merges models, not deltas: it is given base + δ_i and
takes `model - base` itself, so the deltas stored are those differences (what mergekit saw).
They are stored, and given to mergekit, in the order `evolution.ties.canonical_order` sums them
(sha256 of the float32 bytes, weight, density; repeated below because this venv has no mlx):
float addition is not associative, so with three or more task vectors the order is part of the
result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from importlib.metadata import version

import numpy as np
import torch
from mergekit.merge_methods import merge_tensors
from safetensors.numpy import save_file

# name, shape, densities, weights, lambda, normalize, int8_mask, how the deltas are made
CASES = [
    ("one", (16, 24), [0.3], [0.5], 1.0, True, False, "normal"),
    ("one_dense_weight_cancels", (16, 24), [1.0], [0.3], 1.0, True, False, "normal"),
    ("two", (16, 24), [0.3, 0.5], [0.5, 0.7], 1.0, True, False, "normal"),
    ("three_int8_lambda", (16, 24), [0.3, 0.4, 0.2], [0.5, 0.6, 1.2], 0.7, True, True, "normal"),
    ("three_unnormalized", (8, 40), [0.5, 0.5, 0.5], [0.5, 0.3, 0.9], 1.3, False, False, "normal"),
    ("four", (12, 20), [0.3, 0.3, 0.6, 1.0], [0.5, 0.5, 0.25, 1.0], 1.0, True, False, "normal"),
    ("five", (10, 30), [0.2, 0.4, 0.6, 0.8, 0.3], [0.4, 0.5, 0.6, 0.7, 0.8], 0.9, True, False, "normal"),
    ("negative_weight", (16, 24), [0.5, 0.5], [-0.4, 0.8], 1.0, True, False, "normal"),
    ("ties_at_zero", (16, 24), [0.5, 0.6], [0.5, 0.5], 1.0, True, False, "sparse"),
    ("opposite_signs_sum_to_zero", (16, 24), [0.4, 0.4], [0.5, 0.5], 1.0, True, False, "opposite"),
    ("tiny_keeps_one", (3,), [0.2, 0.2], [0.5, 0.5], 1.0, True, False, "normal"),
    ("vector_1d", (96,), [0.3, 0.3, 0.3], [0.5, 0.5, 0.5], 1.0, True, True, "normal"),
]


def make_deltas(rng: np.random.Generator, shape, count: int, kind: str) -> list[np.ndarray]:
    normal = [rng.standard_normal(shape).astype(np.float32) * 0.01 for _ in range(count)]
    if kind == "sparse":  # 80% exact zeros: the density cut falls among zeros
        return [d * (rng.random(shape) < 0.2) for d in normal]
    if kind == "opposite":  # δ_2 = -δ_1: every kept entry's signed sum is 0, elected sign +1
        return [normal[0], -normal[0]]
    return normal


def canonical_order(deltas, weights, densities) -> list[int]:
    def key(i):
        data = np.ascontiguousarray(deltas[i], dtype=np.float32)
        return hashlib.sha256(data.reshape(-1).view(np.uint8)).digest(), weights[i], densities[i]

    return sorted(range(len(deltas)), key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    args = parser.parse_args()
    rng = np.random.default_rng(20261125)
    tensors: dict[str, np.ndarray] = {}
    cases = []
    for name, shape, densities, weights, lam, normalize, int8_mask, kind in CASES:
        base = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        models = [base + torch.from_numpy(d) for d in make_deltas(rng, shape, len(weights), kind)]
        seen = [(m - base).numpy() for m in models]  # the deltas mergekit computes
        order = canonical_order(seen, weights, densities)
        models, seen = [models[i] for i in order], [seen[i] for i in order]
        weights, densities = [weights[i] for i in order], [densities[i] for i in order]
        ids = ["base"] + [f"m{i}" for i in range(len(models))]
        merged = merge_tensors(
            [base, *models], "ties", ids=ids, base_index=0,
            parameters={
                "density": dict(zip(ids[1:], densities)),
                "weight": dict(zip(ids[1:], weights)),
                "lambda": lam, "normalize": normalize, "int8_mask": int8_mask,
            },
        )
        tensors[f"{name}.base"] = base.numpy()
        tensors.update({f"{name}.delta{i}": d for i, d in enumerate(seen)})
        tensors[f"{name}.merged"] = merged.numpy()
        cases.append(dict(name=name, weights=weights, densities=densities, lam=lam,
                          normalize=normalize, int8_mask=int8_mask))
    metadata = {
        "cases": json.dumps(cases),
        "made_by": f"mergekit {version('mergekit')}, torch {torch.__version__}",
    }
    save_file(tensors, args.out, metadata=metadata)
    print(f"{len(cases)} cases from {metadata['made_by']} -> {args.out}")


if __name__ == "__main__":
    main()
