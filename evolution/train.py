"""LoRA training of one generation (design §6.2), with mlx-lm's own tuner.

`train_adapter` loads generation N-1, seeds mlx just before `linear_to_lora_layers` creates
the LoRA factors (and numpy, from which mlx-lm's trainer draws its batch order), and runs
`mlx_lm.tuner.trainer.train` on the curated chat rows with the loss on the assistant's tokens
only (mlx-lm's `mask_prompt`). The adapter is written as mlx-lm writes one
(`adapters.safetensors` + `adapter_config.json`, which `mlx_lm.load(..., adapter_path=)` and
`evolution.ties.LoraAdapter` read) into a temporary directory, then moved to
`<adapters_root>/<sha256 of adapters.safetensors>/`: content-addressed, written once.

Same base, rows, training settings, mlx, mlx-lm, device and BLAS give the same bytes, so
`cache_key` over exactly those inputs finds an adapter already trained (`find_cached`) and a
replay reuses it instead of training again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers

from evolution.config import EvolutionConfig, canonical_json
from evolution.weights.blas import blas_in_use, matmul_gflops
from evolution.weights.files import model_hashes, root_hash, sha256_file
from evolution.weights.model import load

log = logging.getLogger("soul.evolution.train")

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"  # mlx-lm's name and format
TRAINING_FILE = "training.json"  # what the adapter was trained from and on
KEYS = "by-key"  # <adapters_root>/by-key/<cache key> holds the sha256 of the adapter it names
# Part of every cache key: bump it when the recipe below changes what training produces, so
# adapters cached by an older recipe stop matching.
RECIPE = 3
# Iterations are capped at this many passes over the curated rows: 30 iterations of batch 4 over
# 8 short moments (15 epochs) raised SmolLM2's anchor perplexity 11 %, past the guard, while 10
# epochs (12 rows) stayed at 4 % (docs/evolution.md).
MAX_EPOCHS = 10
_HEX = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int, int, float], None]  # (iteration, iterations, training loss)


@dataclass(frozen=True)
class TrainedAdapter:
    path: Path
    sha256: str  # of adapters.safetensors: the adapter's identity
    config: dict[str, Any]  # adapter_config.json
    environment: dict[str, Any]  # where it was trained (`environment()`)
    work: TrainingWork | None = field(default=None, compare=False)  # the training loop's, when it ran here


@dataclass(frozen=True)
class TrainingWork:
    """The training loop's useful arithmetic against what this machine's matmuls do. An
    estimate: ≈ 4 × parameters × tokens (forward and backward through the frozen weights; the
    LoRA factors' own work is a rounding error), tokens = iterations × batch × the rows' mean
    length (mlx-lm's padding of each batch to a multiple of 32 is not useful work)."""

    parameters: int
    tokens: int
    seconds: float  # the loop alone, not loading or saving
    matmul_gflop_per_s: float  # a 1024² float32 matmul on the same device, right after

    def as_dict(self) -> dict[str, float]:
        gflop = 4 * self.parameters * self.tokens / 1e9
        rate = gflop / self.seconds if self.seconds else 0.0
        return {"parameters": self.parameters, "tokens": self.tokens, "gflop": round(gflop, 1),
                "seconds": round(self.seconds, 2), "gflop_per_s": round(rate, 1),
                "matmul_gflop_per_s": round(self.matmul_gflop_per_s, 1),
                "of_matmul": round(rate / self.matmul_gflop_per_s, 3) if self.matmul_gflop_per_s else 0.0}


def environment() -> dict[str, Any]:
    """What a trained adapter's bytes depend on besides its inputs: mlx, mlx-lm, device, BLAS."""
    return {
        "mlx": version("mlx"),
        "mlx_lm": version("mlx-lm"),
        "device": str(mx.default_device()),
        "device_info": {k: str(v) for k, v in sorted(mx.device_info().items()) if k in ("architecture", "device_name")},
        "blas": blas_in_use().name,
        "system": platform.system(),
    }


def cache_key(base_root_hash: str, rows: list[dict[str, Any]], config: EvolutionConfig,
              environment: dict[str, Any]) -> str:
    """sha256 over everything a trained adapter is a function of: the base weights' root hash,
    the rows, the training settings, the recipe and the environment."""
    return hashlib.sha256(canonical_json({
        "base": base_root_hash,
        "rows": rows_digest(rows),
        "training": config.training(),
        "recipe": RECIPE,
        "environment": environment,
    })).hexdigest()


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 of the training rows' canonical JSON: what an adapter was trained on."""
    return hashlib.sha256(canonical_json(rows)).hexdigest()


def find_cached(adapters_root: Path, key: str) -> TrainedAdapter | None:
    """The adapter trained under cache key `key`, if it is there and intact."""
    if not _HEX.fullmatch(key):
        raise ValueError(f"{key!r} is not a cache key (64 hex digits)")
    adapters_root = Path(adapters_root)
    try:
        sha256 = (adapters_root / KEYS / key).read_text().strip()
        path = adapters_root / sha256
        if not _HEX.fullmatch(sha256) or sha256_file(path / ADAPTER_FILE) != sha256:
            log.warning("adapter cache: %s does not hold the adapter key %s names; it will be trained again",
                        path, key[:12])
            return None
        config = json.loads((path / CONFIG_FILE).read_text())
        training = json.loads((path / TRAINING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return TrainedAdapter(path, sha256, config, training["environment"])


def iterations(config: EvolutionConfig, rows: int) -> int:
    """`config.iters`, or fewer when that many would pass over the `rows` more than MAX_EPOCHS times."""
    return min(config.iters, max(1, math.ceil(MAX_EPOCHS * rows / min(config.batch_size, rows))))


def adapter_config(config: EvolutionConfig, rows: int) -> dict[str, Any]:
    """adapter_config.json as mlx-lm's lora writes it (the keys its `load_adapters` reads, and
    the training arguments), for `rows` training rows."""
    return {
        "fine_tune_type": "lora",
        "num_layers": config.num_layers,
        "lora_parameters": {"rank": config.rank, "scale": config.scale, "dropout": 0.0, "keys": list(config.keys)},
        "optimizer": "adam",
        "learning_rate": config.learning_rate,
        "iters": iterations(config, rows),
        "batch_size": min(config.batch_size, rows),  # mlx-lm refuses a batch larger than the data
        "max_seq_length": config.max_seq_length,
        "mask_prompt": True,
        "seed": config.seed,
    }


def train_adapter(model_dir: Path, rows: list[dict[str, Any]], config: EvolutionConfig, adapters_root: Path,
                  progress: Progress | None = None, *, base_root_hash: str | None = None) -> TrainedAdapter:
    """Train a LoRA adapter on `rows` (mlx-lm chat rows) over the model in `model_dir`.

    `progress(iteration, iterations, loss)` is called after every iteration; mlx-lm's own
    console output is silenced. `base_root_hash` (the root hash of `model_dir`'s weights, as a
    seal records it) spares hashing the model again for the cache key.
    """
    if not rows:
        raise ValueError("nothing to train on: the curation gave no rows")
    model_dir, adapters_root = Path(model_dir), Path(adapters_root)
    env = environment()
    key = cache_key(base_root_hash or root_hash(model_hashes(model_dir)), rows, config, env)
    model, tokenizer = load(model_dir)
    if config.num_layers > len(model.layers):
        raise ValueError(f"num_layers {config.num_layers}: the model has only {len(model.layers)} layers")
    settings = adapter_config(config, len(rows))
    fitted, shortened, over = fit_rows(rows, tokenizer, config.max_seq_length)
    adapters_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=adapters_root, prefix=".train-"))
    try:
        parameters = sum(v.size for _, v in tree_flatten(model.parameters()))
        model.freeze()
        mx.random.seed(config.seed)  # the LoRA factors' initial values
        linear_to_lora_layers(model, config.num_layers, settings["lora_parameters"])
        np.random.seed(config.seed)  # mlx-lm's trainer shuffles batches with numpy's global generator
        args = TrainingArgs(
            batch_size=settings["batch_size"], iters=settings["iters"], max_seq_length=config.max_seq_length,
            steps_per_report=1, steps_per_save=settings["iters"] + 1, adapter_file=str(work / ADAPTER_FILE),
        )
        reporter = _Reporter(progress, settings["iters"], sys.stdout)
        started = time.perf_counter()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            train(model, optim.Adam(learning_rate=config.learning_rate),
                  CacheDataset(ChatDataset(fitted, tokenizer, mask_prompt=True)), args=args, training_callback=reporter)
        looped = time.perf_counter() - started
        lengths = [min(len(tokenizer.apply_chat_template(r["messages"])), config.max_seq_length) for r in fitted]
        arithmetic = TrainingWork(parameters, round(settings["iters"] * settings["batch_size"] * sum(lengths) / len(lengths)),
                            looped, matmul_gflops())
        (work / CONFIG_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        sha256 = sha256_file(work / ADAPTER_FILE)
        training = {"cache_key": key, "environment": env, "rows": len(rows), "rows_shortened": shortened,
                    "rows_over_length": over, "rows_sha256": rows_digest(rows)}
        (work / TRAINING_FILE).write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
        final = adapters_root / sha256
        if final.is_dir() and sha256_file(final / ADAPTER_FILE) == sha256:
            log.info("adapter %s was trained before; keeping that copy", sha256[:12])
        else:
            shutil.rmtree(final, ignore_errors=True)  # a damaged copy
            os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remember(adapters_root, key, sha256)
    return TrainedAdapter(final, sha256, settings, env, arithmetic)


def fit_rows(rows: list[dict[str, Any]], tokenizer: Any, max_seq_length: int) -> tuple[list[dict[str, Any]], int, int]:
    """`rows` with the oldest context messages of each row longer than `max_seq_length` tokens
    dropped until it fits (the system message and the last two messages always stay); how many
    were shortened; how many are still too long (mlx-lm cuts their end). Without this, mlx-lm
    would cut a long row's end: the very thought it should learn."""
    fitted, shortened, over = [], 0, 0
    for row in rows:
        messages = row["messages"]
        first = 1 if messages and messages[0].get("role") == "system" else 0
        length = len(tokenizer.apply_chat_template(messages))
        if length > max_seq_length and len(messages) - first > 2:
            shortened += 1
            while length > max_seq_length and len(messages) - first > 2:
                messages = messages[:first] + messages[first + 1:]
                length = len(tokenizer.apply_chat_template(messages))
        over += length > max_seq_length
        fitted.append({**row, "messages": messages})
    if shortened or over:
        log.warning("%d training rows lost old context to fit max_seq_length %d tokens; %d are still longer "
                    "and lose their end", shortened, max_seq_length, over)
    return fitted, shortened, over


def _remember(adapters_root: Path, key: str, sha256: str) -> None:
    folder = adapters_root / KEYS
    folder.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".", delete=False) as f:
        f.write(sha256 + "\n")
    os.replace(f.name, folder / key)


class _Reporter(TrainingCallback):
    """Passes mlx-lm's loss reports on to `progress`, with the caller's stdout back in place."""

    def __init__(self, progress: Progress | None, iterations: int, stdout: TextIO) -> None:
        self.progress, self.iterations, self.stdout = progress, iterations, stdout

    def on_train_loss_report(self, train_info: dict) -> None:
        if self.progress is not None:
            with contextlib.redirect_stdout(self.stdout):
                self.progress(train_info["iteration"], self.iterations, float(train_info["train_loss"]))
