"""How well a generation fits its curated moments, and what it kept of the language (design §6.4).

`loss` is mlx-lm's training loss (`default_loss`: mean cross-entropy over the assistant's
tokens, `mask_prompt`) on chat rows; `perplexity` is exp of the mean token cross-entropy over
plain texts, such as the fixed anchor set shipped in `evolution/` (`anchor_texts`). Both feed
one sequence at a time, in the order given, so no padding enters and the same model on the
same device gives the same figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.tuner.datasets import ChatDataset
from mlx_lm.tuner.trainer import default_loss

from evolution.config import anchor_file
from evolution.weights.model import load

Loaded = tuple[nn.Module, TokenizerWrapper]


def anchor_texts(name: str = "anchor-v1") -> list[str]:
    """The passages of the anchor set `name` (`evolution/<name>.txt`, blank-line separated)."""
    return [p.strip() for p in anchor_file(name).read_text("utf-8").split("\n\n") if p.strip()]


def perplexity(model: Path | str | Loaded, texts: Sequence[str]) -> float:
    """exp(mean cross-entropy per predicted token) of `texts`, each read from its first token."""
    model, tokenizer = _loaded(model)
    return math.exp(_mean_loss(model, ((tokenizer.encode(t), 0) for t in texts)))


def loss(model: nn.Module, tokenizer: TokenizerWrapper, rows: Sequence[dict[str, Any]]) -> float:
    """Mean cross-entropy per assistant token of mlx-lm chat rows, as mlx-lm's trainer counts it."""
    dataset = ChatDataset(list(rows), tokenizer, mask_prompt=True)
    return _mean_loss(model, (dataset.process(row) for row in rows))


def answered(model: Path | str | Loaded, system: str | None, questions: Sequence[tuple[str, Sequence[str]]],
             max_tokens: int = 24) -> int:
    """How many of `questions` ((question, key words)) the model answers with every key word in
    its reply, asked greedily with nothing but `system` and the question in its window."""
    from mlx_lm.generate import batch_generate  # the generation stack, only when something is asked

    if not questions:
        return 0
    model, tokenizer = _loaded(model)
    head = [{"role": "system", "content": system}] if system else []
    prompts = [tokenizer.apply_chat_template([*head, {"role": "user", "content": q}], add_generation_prompt=True)
               for q, _ in questions]
    replies = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens).texts
    return sum(all(k in reply.lower() for k in keys) for (_, keys), reply in zip(questions, replies, strict=True))


def _loaded(model: Path | str | Loaded) -> Loaded:
    return load(model) if isinstance(model, (str, Path)) else model


def _mean_loss(model: nn.Module, sequences: Iterable[tuple[list[int], int]]) -> float:
    """Token-weighted mean of `default_loss` over (tokens, prompt length) sequences."""
    total, count = 0.0, 0
    for tokens, offset in sequences:
        if len(tokens) < 2:
            continue  # nothing to predict
        batch = mx.array([tokens])
        lengths = mx.array([[offset, len(tokens)]])
        mean, n = default_loss(model, batch, lengths)
        mx.eval(mean, n)
        total += mean.item() * n.item()
        count += n.item()
    if count == 0:
        raise ValueError("no tokens to score")
    return total / count
