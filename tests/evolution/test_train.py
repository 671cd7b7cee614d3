"""LoRA training and evaluation on the tiny seeded model: byte-identical adapters, the cache,
mlx-lm's adapter format, and losses that move the right way."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.tuner.datasets import ChatDataset

from evolution.config import LORA_KEYS, EvolutionConfig
from evolution.evaluate import anchor_texts, loss, perplexity
from evolution.ties import LoraAdapter, merge_model
from evolution.train import (KEYS, MAX_EPOCHS, TRAINING_FILE, adapter_config, cache_key, environment, find_cached, fit_rows,
                             iterations, train_adapter)
from evolution.weights.files import model_hashes, root_hash
from tests.tiny_model import build_tiny_model

CONFIG = EvolutionConfig(rank=4, iters=8, learning_rate=1e-3, batch_size=2, max_seq_length=128)
ROWS = [
    {"messages": [{"role": "system", "content": "You are a fox."},
                  {"role": "user", "content": f"How many times, {name}?"},
                  {"role": "assistant", "content": f"Yip yip, {name}: {n} times."}]}
    for n, name in enumerate(["Ann", "Bo", "Cy", "Di", "Ed"])
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=1)


def test_same_seed_same_bytes_and_mlx_lm_format(tiny: Path, tmp_path: Path) -> None:
    reports = []
    first = train_adapter(tiny, ROWS, CONFIG, tmp_path / "a", lambda *r: reports.append(r))
    again = train_adapter(tiny, ROWS, CONFIG, tmp_path / "b")
    other = train_adapter(tiny, ROWS, EvolutionConfig(**{**CONFIG.as_dict(), "seed": 1}), tmp_path / "a")
    assert first.sha256 == again.sha256 != other.sha256
    assert first.path == tmp_path / "a" / first.sha256  # content-addressed
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([KEYS, first.sha256, other.sha256])
    assert [(i, n) for i, n, _ in reports] == [(i, CONFIG.iters) for i in range(1, CONFIG.iters + 1)]
    assert reports[-1][2] < reports[0][2]
    assert json.loads((first.path / "adapter_config.json").read_text()) == first.config == adapter_config(CONFIG, 5)
    assert first.environment == environment()
    names = LoraAdapter(first.path).names  # every LoRA module of both layers, readable as a task vector
    assert names == {f"model.layers.{i}.{key}.weight" for i in range(2) for key in LORA_KEYS}
    model, tokenizer = mlx_load(str(tiny), adapter_path=str(first.path))  # and by mlx-lm itself
    base, _ = mlx_load(str(tiny))
    assert loss(model, tokenizer, ROWS) < loss(base, tokenizer, ROWS)


def test_training_passes_over_the_rows_at_most_max_epochs_times(tiny: Path, tmp_path: Path) -> None:
    assert MAX_EPOCHS == 10
    defaults = EvolutionConfig()  # 30 iterations of batch 4
    assert [iterations(defaults, rows) for rows in (1, 2, 4, 8, 12, 13, 100)] == [10, 10, 10, 20, 30, 30, 30]
    few = EvolutionConfig(**{**CONFIG.as_dict(), "iters": 40})  # batch 2: ten passes over 5 rows are 25 batches
    reports: list[tuple[int, int, float]] = []
    adapter = train_adapter(tiny, ROWS, few, tmp_path, lambda *r: reports.append(r))
    assert adapter.config["iters"] == iterations(few, len(ROWS)) == 25 and len(reports) == 25


def test_cached_adapter_found_by_its_key(tiny: Path, tmp_path: Path) -> None:
    base_hash = root_hash(model_hashes(tiny))
    key = cache_key(base_hash, ROWS, CONFIG, environment())
    assert find_cached(tmp_path, key) is None
    trained = train_adapter(tiny, ROWS, CONFIG, tmp_path, base_root_hash=base_hash)
    assert find_cached(tmp_path, key) == trained
    # The key moves with every input of training, and with nothing else.
    assert cache_key(base_hash, ROWS[:4], CONFIG, environment()) != key
    assert cache_key(base_hash, ROWS, EvolutionConfig(**{**CONFIG.as_dict(), "iters": 9}), environment()) != key
    assert cache_key(base_hash, ROWS, CONFIG, {**environment(), "blas": "other"}) != key
    assert cache_key("0" * 64, ROWS, CONFIG, environment()) != key
    assert cache_key(base_hash, ROWS, EvolutionConfig(**{**CONFIG.as_dict(), "density": 0.9, "threshold": 0.5}),
                     environment()) == key
    # Without base_root_hash the model is hashed: the same key.
    assert train_adapter(tiny, ROWS, CONFIG, tmp_path / "again").sha256 == trained.sha256
    assert find_cached(tmp_path / "again", key) is not None
    # A damaged adapter is not served from the cache.
    (trained.path / "adapters.safetensors").write_bytes(b"damaged")
    assert find_cached(tmp_path, key) is None
    with pytest.raises(ValueError, match="cache key"):
        find_cached(tmp_path, "../../etc")


def test_small_data_and_bad_settings(tiny: Path, tmp_path: Path) -> None:
    one = train_adapter(tiny, ROWS[:1], CONFIG, tmp_path)
    assert one.config["batch_size"] == 1
    with pytest.raises(ValueError, match="nothing to train"):
        train_adapter(tiny, [], CONFIG, tmp_path)
    with pytest.raises(ValueError, match="only 2 layers"):
        train_adapter(tiny, ROWS, EvolutionConfig(num_layers=3), tmp_path)


def test_long_rows_lose_old_context_not_their_thought(tiny: Path, tmp_path: Path) -> None:
    _, tokenizer = mlx_load(str(tiny))
    history = [{"role": ("user", "assistant")[i % 2], "content": f"old turn {i} " * 4} for i in range(6)]
    long = {"messages": [{"role": "system", "content": "You are a fox."}, *history,
                         {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Yip."}]}
    hopeless = {"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "Yip."}]}
    fitted, shortened, over = fit_rows([ROWS[0], long, hopeless], tokenizer, 128)
    assert (shortened, over) == (1, 1)
    assert fitted[0] == ROWS[0] and fitted[2] == hopeless
    kept = fitted[1]["messages"]
    assert kept[0] == long["messages"][0] and kept[-2:] == long["messages"][-2:]  # system, question, thought
    assert kept[1:-2] == history[len(history) - len(kept) + 3:]  # the newest context that fits
    one_more = [kept[0], history[-len(kept) + 2], *kept[1:]]
    assert len(tokenizer.apply_chat_template(kept)) <= 128 < len(tokenizer.apply_chat_template(one_more))
    trained = train_adapter(tiny, [*ROWS, long], CONFIG, tmp_path)
    record = json.loads((trained.path / TRAINING_FILE).read_text())
    assert (record["rows"], record["rows_shortened"], record["rows_over_length"]) == (6, 1, 0)


def test_num_layers_limits_lora_to_the_last_layers(tiny: Path, tmp_path: Path) -> None:
    config = EvolutionConfig(**{**CONFIG.as_dict(), "num_layers": 1, "keys": ["self_attn.v_proj"]})
    trained = train_adapter(tiny, ROWS, config, tmp_path)
    assert LoraAdapter(trained.path).names == {"model.layers.1.self_attn.v_proj.weight"}


def test_merged_generation_learns_its_rows(tiny: Path, tmp_path: Path) -> None:
    """Train, merge with anchored TIES at density 1 and λ 1 (= fusing the adapter): the
    generation's loss on its rows is below the base's, and perplexity is a number that
    mlx-lm's own evaluation agrees with."""
    trained = train_adapter(tiny, ROWS, CONFIG, tmp_path / "adapters")
    merge_model(tiny, tmp_path / "gen1", [LoraAdapter(trained.path)], [1.0], [1.0])
    base, tokenizer = mlx_load(str(tiny))
    merged, _ = mlx_load(str(tmp_path / "gen1"))
    assert loss(merged, tokenizer, ROWS) < loss(base, tokenizer, ROWS)
    fused, _ = mlx_load(str(tiny), adapter_path=str(trained.path))
    assert loss(merged, tokenizer, ROWS) == pytest.approx(loss(fused, tokenizer, ROWS), rel=1e-4)
    texts = anchor_texts()[:2]
    assert perplexity(tiny, texts) == perplexity((base, tokenizer), texts)  # deterministic, path or model


def test_loss_counts_only_assistant_tokens(tiny: Path) -> None:
    model, tokenizer = mlx_load(str(tiny))
    row = ROWS[0]
    tokens, offset = ChatDataset([row], tokenizer, mask_prompt=True).process(row)
    logits = model(mx.array([tokens[:-1]]))
    log_probs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(log_probs[0], mx.array(tokens[1:])[:, None], axis=-1)[:, 0]
    expected = -picked[offset - 1:].mean().item()  # targets from the first assistant token on
    assert loss(model, tokenizer, [row]) == pytest.approx(expected, rel=1e-5)
    everything = -picked.mean().item()
    assert perplexity((model, tokenizer), [tokenizer.decode(tokens)]) == pytest.approx(
        2.718281828459045 ** everything, rel=1e-4)


def test_anchor_set() -> None:
    texts = anchor_texts()
    assert len(texts) >= 12 and all(len(t) > 200 for t in texts)
    assert sum(len(t.split()) for t in texts) > 1500  # a few thousand tokens
    with pytest.raises(ValueError, match="no anchor set"):
        anchor_texts("anchor-v0")
