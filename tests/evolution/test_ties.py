"""Anchored TIES (evolution/ties.py, evolution/merge_config.py): mergekit's semantics, bit for bit.

tests/data/ties_mergekit_reference.safetensors holds merges computed by mergekit 0.1.5 itself
(ops/make_ties_reference.py says how to remake it).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import save_model
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from evolution.merge_config import (
    MergeConfigError,
    parse_ties_config,
    run_ties_config,
)
from evolution.ties import LoraAdapter, canonical_order, lora_delta, merge_model, ties_merge, trim_magnitude
from evolution.weights.files import from_float32, model_hashes, root_hash
from evolution.weights.tensors import TensorStore, pack
from tests.support import TESTS

REFERENCE = TESTS / "data" / "ties_mergekit_reference.safetensors"


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def random_inputs(seed: int, count: int, shape=(7, 9)):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape).astype(np.float32)
    deltas = [(rng.standard_normal(shape) * 0.01).astype(np.float32) for _ in range(count)]
    weights = [float(w) for w in rng.uniform(-0.5, 1.5, count)]
    densities = [float(d) for d in rng.uniform(0.05, 1.0, count)]
    return base, deltas, weights, densities


def spec_reference(base, deltas, weights, densities, lam, normalize):
    """The design's formula written out with stacked arrays and a stable sort (float32, summed
    in `canonical_order`), independent of ties_merge's streaming of the sums."""
    order = canonical_order(deltas, weights, densities)
    trimmed = []
    for i in order:
        flat = deltas[i].astype(np.float32).ravel()
        k = flat.size if densities[i] >= 1 else max(1, int(densities[i] * flat.size))
        keep = np.argsort(-np.abs(flat), kind="stable")[:k]
        kept = np.zeros_like(flat)
        kept[keep] = flat[keep]
        trimmed.append(kept.reshape(base.shape))
    w = np.array([weights[i] for i in order], np.float32).reshape(-1, *[1] * base.ndim)
    wd = w * np.stack(trimmed)
    total = np.zeros(base.shape, np.float32)
    for x in wd:
        total += x
    mask = np.sign(wd) == np.where(total >= 0, 1, -1)
    merged, divisor = np.zeros(base.shape, np.float32), np.zeros(base.shape, np.float32)
    for i in range(len(order)):
        merged += wd[i] * mask[i]
        divisor += w[i] * mask[i]
    if normalize:
        merged /= np.where(divisor == 0, np.float32(1), divisor)
    return base + np.float32(lam) * merged


# -- mergekit parity -----------------------------------------------------------------------

with safe_open(str(REFERENCE), "np") as _f:
    REFERENCE_CASES = json.loads(_f.metadata()["cases"])


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[c["name"] for c in REFERENCE_CASES])
def test_equals_mergekit_bit_for_bit(case) -> None:
    tensors = load_file(str(REFERENCE))
    name = case["name"]
    deltas = [tensors[f"{name}.delta{i}"] for i in range(len(case["weights"]))]
    # The fixture lists the task vectors in our summation order (mergekit sums in listed order).
    assert canonical_order(deltas, case["weights"], case["densities"]) == list(range(len(deltas)))
    merged = ties_merge(tensors[f"{name}.base"], deltas, case["weights"], case["densities"],
                        case["lam"], case["normalize"], case["int8_mask"])
    assert bits(merged) == bits(tensors[f"{name}.merged"])


# -- the per-tensor merge ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 5), data=st.data())
def test_invariant_to_the_order_task_vectors_are_listed(seed, count, data) -> None:
    base, deltas, weights, densities = random_inputs(seed, count)
    perm = data.draw(st.permutations(range(count)))
    lam, normalize = data.draw(st.sampled_from([0.7, 1.0, 1.3])), data.draw(st.booleans())
    first = ties_merge(base, deltas, weights, densities, lam, normalize)
    again = ties_merge(base, [deltas[i] for i in perm], [weights[i] for i in perm],
                       [densities[i] for i in perm], lam, normalize)
    assert bits(first) == bits(again)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), lam=st.sampled_from([0.5, 1.0, 1.7]),
       normalize=st.booleans())
def test_matches_the_spec_written_out(seed, count, lam, normalize) -> None:
    base, deltas, weights, densities = random_inputs(seed, count)
    merged = ties_merge(base, deltas, weights, densities, lam, normalize)
    assert bits(merged) == bits(spec_reference(base, deltas, weights, densities, lam, normalize))


# |δ| drawn from three values only, so ties at the cut are the rule, not the exception.
tied_deltas = st.lists(st.sampled_from([-0.75, -0.5, -0.25, 0.25, 0.5, 0.75]), min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(values=tied_deltas, density=st.floats(0.0, 1.0))
def test_trim_keeps_exactly_k_entries_lowest_index_first_among_ties(values, density) -> None:
    delta = np.array(values, np.float32)
    n = delta.size
    k = 0 if density == 0 else n if density >= 1 else max(1, int(density * n))
    kept = trim_magnitude(delta, density)
    assert np.count_nonzero(kept) == k
    expected = np.zeros_like(delta)
    order = np.argsort(-np.abs(delta), kind="stable")[:k]  # stable: lower index first among ties
    expected[order] = delta[order]
    assert bits(kept) == bits(expected)


def test_trim_keeps_int_of_density_times_numel_and_never_modifies_its_input() -> None:
    delta = np.random.default_rng(0).standard_normal((40, 25)).astype(np.float32)
    before = delta.copy()
    for density, k in [(0.3, 300), (0.001, 1), (0.0004, 1), (0.999, 999), (1.0, 1000), (0.0, 0)]:
        assert np.count_nonzero(trim_magnitude(delta, density)) == k
    assert bits(delta) == bits(before)


def test_a_zero_signed_sum_elects_plus() -> None:
    base = np.zeros(3, np.float32)
    up, down = np.array([1.0, -2.0, 4.0], np.float32), np.array([-1.0, 2.0, -4.0], np.float32)
    merged = ties_merge(base, [up, down], [0.5, 0.5], [1.0, 1.0])
    assert merged.tolist() == [1.0, 2.0, 4.0]  # the positive side of each pair, weight normalized


def test_normalize_on_and_off_by_hand() -> None:
    base = np.array([10.0, 10.0, 10.0], np.float32)
    d1, d2 = np.array([2.0, 0.0, 1.0], np.float32), np.array([4.0, -1.0, -8.0], np.float32)
    # WD1 = [1, 0, 0.5], WD2 = [1, -0.25, -2]; signs elected [+, -, -]; d1's 0 never counts.
    on = ties_merge(base, [d1, d2], [0.5, 0.25], [1.0, 1.0], normalize=True)
    off = ties_merge(base, [d1, d2], [0.5, 0.25], [1.0, 1.0], normalize=False)
    assert on.tolist() == [10 + np.float32(2.0) / np.float32(0.75), 9.0, 2.0]
    assert off.tolist() == [12.0, 9.75, 8.0]
    lam = ties_merge(base, [d1, d2], [0.5, 0.25], [1.0, 1.0], lam=0.5, normalize=False)
    assert lam.tolist() == [11.0, 9.875, 9.0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), normalize=st.booleans())
def test_int8_mask_changes_nothing(seed, count, normalize) -> None:
    base, deltas, weights, densities = random_inputs(seed, count)
    as_float = ties_merge(base, deltas, weights, densities, normalize=normalize, int8_mask=False)
    as_int8 = ties_merge(base, deltas, weights, densities, normalize=normalize, int8_mask=True)
    assert bits(as_float) == bits(as_int8)


def test_one_task_vector_weight_cancels_when_normalized() -> None:
    base, (delta,), _, _ = random_inputs(3, 1)
    results = [ties_merge(base, [delta], [w], [0.3]) for w in (0.5, 1.0, 2.0, 0.3, 0.9)]
    for r in results[1:3]:  # powers of two: exactly
        assert bits(r) == bits(results[0])
    for r in results[3:]:  # (w·δ)/w may be one ulp of δ off δ, and W0 + δ rounds once more
        assert np.all(np.abs(r - results[0]) <= np.spacing(np.abs(delta)) + np.spacing(np.abs(results[0])))


def test_keeps_the_base_dtype_and_computes_in_float32() -> None:
    base = np.array([1.0, 2.0, 3.0], np.float16)
    delta = np.array([1e-4, -2e-4, 3e-4], np.float32)
    merged = ties_merge(base, [delta], [1.0], [1.0])
    assert merged.dtype == np.float16
    assert bits(merged) == bits((base.astype(np.float32) + delta).astype(np.float16))


def test_deterministic_same_inputs_same_bytes() -> None:
    base, deltas, weights, densities = random_inputs(11, 3, shape=(64, 48))
    runs = {bits(ties_merge(base, deltas, weights, densities)) for _ in range(3)}
    assert len(runs) == 1


# -- LoRA deltas, against mlx-lm's own fuse ------------------------------------------------


def test_one_adapter_density_one_equals_mlx_lm_fuse() -> None:
    mx.random.seed(7)
    linear = nn.Linear(48, 32)
    lora = LoRALinear.from_base(linear, r=8, scale=20.0)
    lora.lora_b = mx.random.normal(lora.lora_b.shape) * 0.01
    fused = np.array(lora.fuse().weight)
    base = np.array(linear.weight)
    delta = lora_delta(lora.lora_a, lora.lora_b, lora.scale)
    # weight 1 (or any power of two): (w·δ)/w == δ, so W0 + δ exactly as fuse adds it.
    for weight in (1.0, 0.5):
        assert bits(ties_merge(base, [delta], [weight], [1.0])) == bits(fused)
    # Any other weight: equal up to float32 rounding, (w·δ)/w being at most one ulp of δ off δ.
    other = ties_merge(base, [delta], [0.3], [1.0])
    assert np.all(np.abs(other - fused) <= np.spacing(np.abs(delta)) + np.spacing(np.abs(fused)))


def tiny_llama() -> llama.Model:
    args = llama.ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=64)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def save_adapter(model: nn.Module, path: Path, scale: float, keys: list[str] | None = None) -> None:
    """What mlx-lm's trainer writes, with random lora_b (a trained adapter, not a fresh one)."""
    model.freeze()
    config = {"rank": 4, "scale": scale, "dropout": 0.0, **({"keys": keys} if keys else {})}
    linear_to_lora_layers(model, 2, config)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.02
    path.mkdir(parents=True)
    mx.save_safetensors(str(path / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (path / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "lora_parameters": config}))


def test_merging_an_mlx_lm_adapter_into_an_mlx_lm_model_equals_mlx_lm_fuse(tmp_path) -> None:
    mx.random.seed(3)
    model = tiny_llama()
    save_model(tmp_path / "base", model)
    (tmp_path / "base" / "config.json").write_text("{}")
    save_adapter(model, tmp_path / "adapter", scale=10.0)
    fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
    model.update_modules(tree_unflatten(fused))
    expected = {k: np.array(v) for k, v in tree_flatten(model.parameters())}

    adapter = LoraAdapter(tmp_path / "adapter")
    assert "model.layers.1.self_attn.q_proj.weight" in adapter.names
    assert len(adapter.names) == 2 * 7  # every linear layer of both blocks
    seal = merge_model(tmp_path / "base", tmp_path / "gen1", [adapter], [1.0], [1.0])
    merged = load_file(str(tmp_path / "gen1" / "model.safetensors"))
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        assert bits(merged[name]) == bits(value), name
    assert (tmp_path / "gen1" / "config.json").read_text() == "{}"
    assert set(seal.drift) == adapter.names and all(0 < d < 1 for d in seal.drift.values())


def test_yaml_config_runs_end_to_end(tmp_path) -> None:
    mx.random.seed(4)
    model = tiny_llama()
    save_model(tmp_path / "base", model)
    save_adapter(model, tmp_path / "gen-1", 20.0, keys=["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])
    config = parse_ties_config(f"""
        merge_method: ties
        base_model: {tmp_path / 'base'}
        models:
          - model: {tmp_path / 'base'}
          - model: {tmp_path / 'gen-1'}
            parameters: {{density: 0.3, weight: 0.5}}
        parameters: {{normalize: true, int8_mask: true, lambda: 1.0}}
    """)
    seal = run_ties_config(config, tmp_path / "gen1")
    assert len(seal.drift) == 2 * 3
    assert model_hashes(tmp_path / "gen1") == seal.tensor_sha256


def test_lora_adapter_refuses_what_it_cannot_merge(tmp_path) -> None:
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "dora"}))
    with pytest.raises(ValueError, match="only 'lora'"):
        LoraAdapter(tmp_path / "dora")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "adapter_config.json").write_text(json.dumps({"lora_parameters": {"scale": 1.0}}))
    mx.save_safetensors(str(tmp_path / "lonely" / "adapters.safetensors"), {"m.lora_a": mx.zeros((4, 2))})
    with pytest.raises(ValueError, match="needs lora_a and lora_b"):
        LoraAdapter(tmp_path / "lonely")


# -- the streaming whole-model merge -------------------------------------------------------


class DenseTaskVector:
    def __init__(self, deltas: dict[str, np.ndarray]) -> None:
        self.deltas, self.names = deltas, frozenset(deltas)

    def delta(self, name: str) -> np.ndarray:
        return self.deltas[name]


def portable(shape, salt: int) -> np.ndarray:
    """Values in [-0.5, 0.5) from integer arithmetic only: the same bits on every machine."""
    i = np.arange(math.prod(shape), dtype=np.uint64) + np.uint64(salt * 7919)
    return (((i * np.uint64(2654435761)) % np.uint64(2**16)).astype(np.float32) / 2**16 - 0.5).reshape(shape)


SHAPES = {"layers.0.q.weight": (24, 16), "layers.0.norm.weight": (16,), "layers.1.q.weight": (24, 16),
          "layers.1.up.weight": (40, 16), "embed.weight": (50, 16)}


def small_model(tmp_path: Path) -> tuple[Path, list[DenseTaskVector]]:
    """Two shards and an index, F32, BF16 and F16 tensors, and three task vectors that change
    overlapping subsets of them."""
    base = tmp_path / "base"
    base.mkdir()
    w = {name: portable(shape, i) for i, (name, shape) in enumerate(SHAPES.items())}
    bf16 = mx.array(w["layers.1.up.weight"]).astype(mx.bfloat16)
    save_file({k: w[k] for k in ("layers.0.q.weight", "layers.0.norm.weight")},
              str(base / "model-00001-of-00002.safetensors"), metadata={"format": "mlx"})
    mx.save_safetensors(str(base / "model-00002-of-00002.safetensors"),
                        {"layers.1.q.weight": mx.array(w["layers.1.q.weight"]).astype(mx.float16),
                         "layers.1.up.weight": bf16, "embed.weight": mx.array(w["embed.weight"])})
    (base / "model.safetensors.index.json").write_text("{}")
    changed = [("layers.0.q.weight", "layers.0.norm.weight", "layers.1.up.weight"),
               ("layers.0.q.weight", "layers.1.q.weight", "layers.1.up.weight"),
               ("layers.0.q.weight", "layers.1.up.weight")]
    vectors = [DenseTaskVector({n: portable(SHAPES[n], 10 + 3 * j + len(n)) * 0.02 for n in names})
               for j, names in enumerate(changed)]
    return base, vectors


def read_model(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as float32 (mx.load reads bf16, which numpy cannot)."""
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update({k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(shard)).items()})
    return out


# The root hash of the small model's merge. It changes only if the merge's semantics, its
# float32 arithmetic or the hashing change: such a change makes every sealed generation
# unverifiable, so it must be deliberate. Every operation behind it is elementwise IEEE
# float32 or exact, so it is the same on every machine.
SMALL_MODEL_ROOT = "82d847f802952af8ab5bf2dbb24c936385ff7b9a00b96034e3a2c2a796f95abc"


def test_streaming_merge_equals_in_memory_merge_and_its_root_is_stable(tmp_path) -> None:
    base, vectors = small_model(tmp_path)
    weights, densities = [0.5, 0.7, 1.2], [0.3, 0.5, 0.9]
    seal = merge_model(base, tmp_path / "gen", vectors, weights, densities, lam=0.8)

    before, after = read_model(base), read_model(tmp_path / "gen")
    dtypes = {"layers.1.q.weight": mx.float16, "layers.1.up.weight": mx.bfloat16}
    for name, w0 in before.items():
        users = [i for i, v in enumerate(vectors) if name in v.names]
        if not users:
            assert bits(after[name]) == bits(w0), name
            continue
        expected = ties_merge(w0, [vectors[i].delta(name) for i in users], [weights[i] for i in users],
                              [densities[i] for i in users], lam=0.8)
        expected = np.array(mx.array(expected).astype(dtypes.get(name, mx.float32)).astype(mx.float32))
        assert bits(after[name]) == bits(expected), name
        drift = np.linalg.norm(after[name] - w0) / np.linalg.norm(w0)
        assert seal.drift[name] == pytest.approx(drift, rel=1e-5)
    assert set(seal.drift) == set().union(*(v.names for v in vectors))
    assert model_hashes(tmp_path / "gen") == seal.tensor_sha256
    assert seal.root_sha256 == root_hash(seal.tensor_sha256)
    assert (tmp_path / "gen" / "model.safetensors.index.json").exists()

    perm = [2, 0, 1]
    again = merge_model(base, tmp_path / "again", [vectors[i] for i in perm], [weights[i] for i in perm],
                        [densities[i] for i in perm], lam=0.8)
    assert again == seal
    for shard in sorted((tmp_path / "gen").glob("*.safetensors")):
        assert shard.read_bytes() == (tmp_path / "again" / shard.name).read_bytes()
    assert seal.root_sha256 == SMALL_MODEL_ROOT


def test_a_merge_into_a_tensor_store_is_the_same_model_sharing_what_it_did_not_change(tmp_path) -> None:
    base, vectors = small_model(tmp_path)
    store, weights, densities = TensorStore(tmp_path / "tensors"), [0.5, 0.7, 1.2], [0.3, 0.5, 0.9]
    sharded = merge_model(base, tmp_path / "sharded", vectors, weights, densities, lam=0.8)
    linked = merge_model(base, tmp_path / "linked", vectors, weights, densities, lam=0.8, tensors=store)
    assert linked == sharded and model_hashes(tmp_path / "linked") == linked.tensor_sha256  # the same root
    same, before = read_model(tmp_path / "sharded"), read_model(tmp_path / "linked")
    assert {name: bits(v) for name, v in before.items()} == {name: bits(v) for name, v in same.items()}
    where = json.loads((tmp_path / "linked" / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(where) == set(SHAPES) and all((tmp_path / "linked" / f).is_file() for f in where.values())

    def inode(folder: str, name: str) -> int:
        return (tmp_path / folder / where[name]).stat().st_ino

    # Another generation, from one task vector: what neither changes is the very same file.
    other = merge_model(base, tmp_path / "other", vectors[:1], weights[:1], densities[:1], lam=0.8, tensors=store,
                        base_hashes=model_hashes(base))
    assert inode("linked", "embed.weight") == inode("other", "embed.weight")
    assert inode("linked", "layers.1.q.weight") != inode("other", "layers.1.q.weight")  # vector 2 changed it there
    assert inode("linked", "layers.0.q.weight") != inode("other", "layers.0.q.weight")
    assert inode("linked", "layers.0.norm.weight") == inode("other", "layers.0.norm.weight")  # vector 1 alone, both
    files = len(list(store.root.glob("*.safetensors")))
    assert files == 8  # linked's 5; other's merged q and up of layer 0 and 1, and W0's layer-1 q

    for limit, files_out in ((1 << 30, ["model.safetensors"]), (2000, None)):  # `soul export`'s layout
        out = tmp_path / f"packed-{limit}"
        out.mkdir()
        written = pack(tmp_path / "linked", out, shard_bytes=limit)
        assert files_out is None or written == files_out
        assert model_hashes(out) == linked.tensor_sha256 and len(list(out.glob("*.safetensors"))) == len(written)
    assert len(written) > 1 and (out / "model.safetensors.index.json").is_file()

    shutil.rmtree(tmp_path / "linked")  # a discarded generation: what only it held goes
    assert store.collect() == files - len(SHAPES) and len(list(store.root.glob("*.safetensors"))) == len(SHAPES)
    assert model_hashes(tmp_path / "other") == other.tensor_sha256

    with pytest.raises(ValueError, match="the base model changed on disk"):
        merge_model(base, tmp_path / "wrong", vectors[:1], [1.0], [1.0], tensors=TensorStore(tmp_path / "fresh"),
                    base_hashes={"embed.weight": "0" * 64})


def test_streaming_merge_refuses_unknown_tensors_non_finite_results_and_overwrites(tmp_path) -> None:
    base, vectors = small_model(tmp_path)
    stray = DenseTaskVector({"nowhere.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="base lacks"):
        merge_model(base, tmp_path / "a", [stray], [1.0], [1.0])
    bad = DenseTaskVector({"layers.0.q.weight": np.full(SHAPES["layers.0.q.weight"], np.inf, np.float32)})
    with pytest.raises(ValueError, match="not finite"):
        merge_model(base, tmp_path / "b", [bad], [1.0], [1.0])
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.partial").exists()  # all or nothing
    with pytest.raises(FileExistsError, match="written once"):
        merge_model(base, base, vectors, [1.0] * 3, [1.0] * 3)


def test_bf16_rounding_is_mlx_rounding() -> None:
    x = np.random.default_rng(2).standard_normal(4096).astype(np.float32)
    u = x.view(np.uint32)
    u[:512] = (u[:512] & 0xFFFF0000) | 0x8000  # exactly halfway: round to even
    x[512:516] = [np.inf, -np.inf, np.nan, 3.4e38]
    ours = from_float32(x, "BF16")
    theirs = np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16))
    finite = np.isfinite(x)
    assert bits(ours[finite]) == bits(theirs[finite])
    assert ours[514] & 0x7FFF > 0x7F80  # NaN stays NaN
    assert ours[512] == 0x7F80 and ours[513] == 0xFF80


# -- the YAML config -----------------------------------------------------------------------


def test_config_reads_mergekit_vocabulary_with_design_defaults() -> None:
    config = parse_ties_config("""
        merge_method: ties
        base_model: /w0
        models:
          - model: /w0
          - model: /a1
            parameters: {density: 0.5, weight: 0.8}
          - model: /a2
        parameters: {weight: 0.25, int8_mask: true}
    """)
    assert str(config.base_model) == "/w0"
    assert [(str(a.path), a.weight, a.density) for a in config.adapters] == [("/a1", 0.8, 0.5), ("/a2", 0.25, 0.3)]
    assert (config.normalize, config.int8_mask, config.lam) == (True, True, 1.0)
    bare = parse_ties_config("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\n")
    assert (bare.adapters[0].weight, bare.adapters[0].density, bare.normalize, bare.lam) == (0.5, 0.3, True, 1.0)


def test_the_documented_example_parses() -> None:
    import evolution.merge_config as module

    example = module.__doc__.split("\n\n")[1]
    config = parse_ties_config(example)
    assert [a.path.name for a in config.adapters] == ["gen-1", "gen-2"]
    assert [(a.weight, a.density) for a in config.adapters] == [(0.5, 0.3), (0.5, 0.3)]


@pytest.mark.parametrize("text, complaint", [
    ("merge_method: dare_ties\nbase_model: /w0\nmodels: [{model: /a}]", "must be 'ties'"),
    ("merge_method: ties\nmodels: [{model: /a}]", "base_model"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /w0}]", "no adapter"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a, parameters: {density: [0.1, 0.9]}}]", "gradients"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a, parameters: {density: 1.5}}]", "density"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\nparameters: {rescale: true}", "rescale"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\nparameters: {normalize: 'yes'}", "normalize"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\nparameters: {lambda: .nan}", "lambda"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\nout_dtype: bfloat16", "unsupported"),
    ("merge_method: ties\nbase_model: /w0\nmodels: [{model: /a}]\ndtype: bfloat16", "float32"),
])
def test_config_refuses_what_does_not_run(text, complaint) -> None:
    with pytest.raises(MergeConfigError, match=complaint):
        parse_ties_config(text)
