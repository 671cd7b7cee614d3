"""The embedder's batches: texts of any lengths, batched by length, give what each gives alone, in
input order; the CPU forward (numpy, packed) gives what the MLX forward (padded) gives."""

from __future__ import annotations

import random
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from soul.agent import embedder as emb
from soul.agent.embedder import Bert, Embedder, forward_flops, sanitize

WORDS = "the soul keeps every event in its journal and memory is a projection of what it saw".split()


def texts() -> list[str]:
    """Very different lengths, shuffled: empty, a word, sentences, a code chunk, past 256 tokens."""
    rng = random.Random(7)
    out = ["", "hi", "def f(x):\n    return x  # a line of code", "Café naïve — 東京 🙂"]
    out += [" ".join(rng.choices(WORDS, k=rng.choice([3, 12, 40, 90, 180, 400]))) for _ in range(28)]
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    return Embedder(home=tmp_path_factory.mktemp("soul-home"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_texts_span_one_token_batches_to_truncated_ones(embedder):
    lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(texts())]
    assert min(lengths) == 2 and max(lengths) == embedder.max_tokens
    assert sum(lengths) > 2 * emb.CPU_TOKENS  # several batches, on more than one core


def test_batched_by_length_equals_one_at_a_time_in_input_order(embedder):
    batch = texts()
    alone = np.concatenate([embedder.embed([t]) for t in batch])
    for batch_size in (32, 5, 1):
        together = embedder.embed(batch, batch_size=batch_size)
        assert together.shape == (len(batch), embedder.dim) and together.dtype == np.float32
        assert cosines(together, alone).min() > 1 - 1e-5, batch_size
        assert np.abs(together - alone).max() < 1e-5, batch_size
    assert embedder.embed(batch).tobytes() == embedder.embed(batch).tobytes()  # deterministic


def test_cpu_forward_equals_the_mlx_forward(embedder):
    """On a GPU the MLX `Bert` embeds; here it checks the numpy forward (and so stays checked itself)."""
    if embedder.gpu:
        pytest.skip("the MLX forward is the one in use")
    model = Bert(embedder.cfg)
    model.load_weights(list(sanitize(mx.load(str(Path(embedder.path) / "model.safetensors"))).items()))
    batch = texts()
    encodings = embedder.tokenizer.encode_batch(batch)
    padded = emb._padded(model, encodings)  # one batch, padded to 256 tokens
    assert cosines(embedder.embed(batch), padded).min() > 1 - 1e-5
    assert np.abs(embedder.embed(batch) - padded).max() < 1e-5


def test_flops_count_real_tokens_not_padding(embedder):
    batch = texts()
    lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(batch)]
    before = embedder.flops
    embedder.embed(batch)
    assert embedder.flops - before == sum(forward_flops(n, embedder.cfg) for n in lengths)
    assert 5.9e9 < forward_flops(256, embedder.cfg) < 6.1e9  # MiniLM: ~6 GFLOP a 256-token chunk
