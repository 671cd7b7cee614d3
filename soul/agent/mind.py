"""The mind: an mlx-lm model that turns chat messages into a streamed reply (design §5).

`Mind(None)` is the embedded SmolLM2 (evolution/weights/model.py); `Mind(path)` any MLX model directory.
Its id is `name@hash`: the pinned GGUF's hash for the embedded model, else the root hash of
the directory's tensors (evolution/ties.py's, so a generation's id matches its seal), hashed
once per file and remembered under `$SOUL_HOME/models/hashes`.

The KV cache is kept across calls with the tokens it holds. A call tokenizes its whole prompt,
keeps the longest prefix the cache already holds (trimming the rest off the cache), and feeds
only the new suffix: a conversation that grows at its end costs each turn its new tokens. When
the prefix changes early (an eviction rewrote the summary at the top) the suffix is long and
the cost is a full prefill, once.

Sampling is greedy by default; with a temperature the sampler is seeded before every call,
so the same prompt gives the same reply bytes.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import mlx.core as mx

from evolution.weights.files import HASH_CACHE, remembered_hashes, root_hash
from evolution.weights.model import MODEL_ID, load_tokenizer, load_weights, model_config
from evolution.weights.model import model_dir as model_dir_of
from journal.embedded import soul_home

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

# mlx_lm is imported where the mind first tokenizes or thinks, not here: it imports transformers
# (1.4 s), which a soul that only journals a tool call (`soul message`) never needs.

PREFILL_STEP = 2048  # mlx_lm's default: prompt tokens per forward pass while prefilling
DEFAULT_CONTEXT = 4096  # for a model whose config does not say how long a context it takes


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int  # the whole prompt
    generated_tokens: int
    first_token_s: float  # from the call to the first generated token (prefill included)
    tokens_per_s: float  # generated tokens a second after the first
    reused_tokens: int = 0  # prompt tokens whose keys and values came from the cache
    finish_reason: str = "stop"  # stop (end of turn) | length (max_tokens reached)

    @property
    def processed_tokens(self) -> int:
        """Prompt tokens this call had to run through the model."""
        return self.prompt_tokens - self.reused_tokens


def model_id(model_dir: Path) -> str:
    return f"{model_dir.name}@{root_hash(remembered_hashes(model_dir, soul_home() / HASH_CACHE))[:12]}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Mind:
    def __init__(self, model_dir: Path | str | None = None, *, temperature: float = 0.0, seed: int = 0,
                 repetition_penalty: float | None = None, weights: bool = True):
        """With `weights` false the tokenizer and the weights are read when first used, not
        here: a command that only journals (a tool call, `soul message`) reads neither, and
        `soul window` only the tokenizer."""
        self._path, self.folder = model_dir, model_dir_of(model_dir)
        config = model_config(model_dir)  # ModelError names the file that is wrong
        self.max_context = config.get("max_position_embeddings") or DEFAULT_CONTEXT
        self.temperature, self.seed, self.repetition_penalty = temperature, seed, repetition_penalty
        self._model: nn.Module | None = None
        self.cache: list[Any] = []
        self.cached: list[int] = []  # the tokens whose keys and values `cache` holds, in order
        if weights:  # read now: a damaged file is refused before anything is journaled
            self.tokenizer  # noqa: B018
            self.model  # noqa: B018

    @functools.cached_property
    def model_id(self) -> str:
        return MODEL_ID if self._path is None else model_id(self.folder)

    @functools.cached_property
    def tokenizer(self) -> TokenizerWrapper:
        tokenizer = load_tokenizer(self._path)
        # The soul keeps prompts within max_context itself; transformers' own warning would only be noise.
        tokenizer._tokenizer.model_max_length = 2**62
        return tokenizer

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            from mlx_lm.models.cache import make_prompt_cache

            self._model = load_weights(self._path)
            self.cache = make_prompt_cache(self._model)
        return self._model

    @functools.cached_property
    def logits_processors(self) -> list[Any]:
        from mlx_lm.sample_utils import make_logits_processors

        return make_logits_processors(repetition_penalty=self.repetition_penalty)

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's tokens: `messages` (and the `tools` a tool-calling model may call) in the
        model's chat template, ready for the reply."""
        return list(self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True))

    def generate(self, messages: list[dict[str, Any]], *, max_tokens: int,
                 on_token: Callable[[str], None] | None = None, tools: list[dict[str, Any]] | None = None,
                 temperature: float | None = None) -> Generation:
        """The reply to `messages`, streamed to `on_token` a text segment at a time; `temperature`
        overrides the mind's for this call (0: greedy)."""
        start = time.perf_counter()
        model = self.model
        prompt = self.encode(messages, tools)
        reused = self._reuse(prompt)
        temperature = self.temperature if temperature is None else temperature
        if temperature:
            mx.random.seed(self.seed)
        text, generated, first, speed, finish = [], [], 0.0, 0.0, "stop"
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_sampler

        try:
            for response in stream_generate(
                    model, self.tokenizer, mx.array(prompt[reused:]), max_tokens=max_tokens,
                    sampler=make_sampler(temperature), logits_processors=self.logits_processors,
                    prompt_cache=self.cache, prefill_step_size=PREFILL_STEP):
                if not generated:
                    first = time.perf_counter() - start
                generated.append(response.token)
                speed, finish = response.generation_tps, response.finish_reason or finish
                if response.text:
                    text.append(response.text)
                    if on_token is not None:
                        on_token(response.text)
        except BaseException:  # interrupted (Ctrl-C, a reader gone): what the cache holds is unknown
            self.forget()
            raise
        self._held(prompt + generated)
        return Generation("".join(text), len(prompt), len(generated), first, speed, reused, finish)

    def probability(self, messages: list[dict[str, Any]], yes: str = "yes", no: str = "no") -> float:
        """P(the reply to `messages` starts with `yes`) against starting with `no`, either
        capitalised: one forward pass over what the cache does not hold yet, no sampling."""
        model = self.model
        prompt = self.encode(messages)
        reused = self._reuse(prompt)
        rest = mx.array(prompt[reused:])
        try:
            while len(rest) > PREFILL_STEP + 1:
                model(rest[None, :PREFILL_STEP], cache=self.cache)
                mx.eval([c.state for c in self.cache])
                rest = rest[PREFILL_STEP:]
            logits = model(rest[None], cache=self.cache)[0, -1].astype(mx.float32)
        except BaseException:
            self.forget()
            raise
        self._held(prompt)
        logprobs = logits - mx.logsumexp(logits)

        def mass(word: str) -> float:
            firsts = {self.tokenizer.encode(w, add_special_tokens=False)[0] for w in (word, word.capitalize())}
            return float(mx.exp(logprobs[mx.array(sorted(firsts))]).sum())

        p_yes, p_no = mass(yes), mass(no)
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5

    def tool_calls(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, arguments) of each tool call in a reply, by the model's own tool parser (mlx_lm
        infers it from the chat template); none for a model without tool calling. A call that
        does not parse comes back as ("", {"text": ...}), so that it is journaled as an error."""
        start, end = self.tokenizer.tool_call_start, self.tokenizer.tool_call_end
        if not self.tokenizer.has_tool_calling or not start:
            return []
        calls: list[tuple[str, dict[str, Any]]] = []
        for segment in text.split(start)[1:]:
            body = segment.split(end, 1)[0] if end else segment
            try:
                parsed = self.tokenizer.tool_parser(body, None)
                for call in parsed if isinstance(parsed, list) else [parsed]:
                    arguments = call.get("arguments", {})
                    arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
                    calls.append((str(call["name"]), dict(arguments)))
            except (ValueError, KeyError, TypeError, AttributeError):
                calls.append(("", {"text": body.strip()}))
        return calls

    def _reuse(self, prompt: list[int]) -> int:
        """Cut the cache back to the longest prefix of `prompt` it holds (at least one prompt
        token is left to feed: the model's last logits come from it); how many it keeps."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        keep = min(common_prefix(self.cached, prompt), len(prompt) - 1)
        if keep < len(self.cached):
            if keep > 0 and can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, len(self.cached) - keep)
            else:
                self.cache, keep = make_prompt_cache(self.model), 0
        self.cached = prompt[:keep]
        return keep

    def _held(self, fed: list[int]) -> None:
        """Record what the cache holds after feeding `fed` (a prefix of it, if generation
        stopped before the last token went through the model)."""
        offset = getattr(self.cache[0], "offset", None) if self.cache else None
        if offset is None or offset > len(fed):  # unknown contents: start clean next time
            self.forget()
        else:
            self.cached = fed[:offset]

    def forget(self) -> None:
        """Drop the KV cache: the next call prefills its whole prompt."""
        from mlx_lm.models.cache import make_prompt_cache

        self.cache, self.cached = [] if self._model is None else make_prompt_cache(self._model), []
