"""A tiny seeded llama for fast tests: 2 layers, hidden size 64, random weights.

`build_tiny_model(folder, seed)` writes an MLX model directory that `evolution.weights.model.load` and
`mlx_lm.load` open: config.json, model.safetensors (float32) and a byte-level BPE tokenizer
with no merges (each byte of UTF-8 is a token) plus SmolLM2's three ChatML special tokens.
The same seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from tokenizers import pre_tokenizers

from evolution.weights.model import byte_level_bpe, write_config, write_tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_config(vocab_size: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "bos_token_id": SPECIAL.index("<|im_start|>"),
        "eos_token_id": SPECIAL.index("<|im_end|>"),
    }


def tiny_weights(config: dict, seed: int) -> dict[str, mx.array]:
    """Normal(0, 0.1) matrices and unit norms, each drawn from its own key of the seed."""
    shapes = sorted(tree_flatten(Model(ModelArgs.from_dict(config)).parameters()))
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    weights = {}
    for key, (name, p) in zip(keys, shapes, strict=True):
        weights[name] = mx.ones(p.shape) if "norm" in name else 0.1 * mx.random.normal(p.shape, key=key)
    return weights


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet())
    config = tiny_config(len(tokens))
    mx.save_safetensors(str(folder / "model.safetensors"), tiny_weights(config, seed), metadata={"format": "mlx"})
    write_config(folder, config)
    write_tokenizer(
        folder, byte_level_bpe(tokens, [], SPECIAL), CHAT_TEMPLATE,
        bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>", unk="<|endoftext|>",
        max_length=config["max_position_embeddings"],
    )
    return folder


# llama.cpp's tensor names for mlx_lm's llama names (convert_hf_to_gguf.py's tensor map).
GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(w: mx.array, n_heads: int) -> mx.array:
    """What llama.cpp's converter (LlamaModel.permute) does to the q and k rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """The tiny model as llama.cpp writes a llama GGUF (float32 tensors, q/k rows permuted)."""
    tokens = SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet())
    config = tiny_config(len(tokens))
    tensors = {}
    for name, w in tiny_weights(config, seed).items():
        base = name.removesuffix(".weight")
        if base.startswith("model.layers."):
            _, _, layer, module = base.split(".", 3)
            kind = GGUF_NAMES[module]
            if kind == "attn_q":
                w = llama_cpp_permute(w, config["num_attention_heads"])
            elif kind == "attn_k":
                w = llama_cpp_permute(w, config["num_key_value_heads"])
            tensors[f"blk.{layer}.{kind}.weight"] = w
        else:
            tensors[f"{GGUF_NAMES[base]}.weight"] = w

    def u32(value: int) -> mx.array:
        return mx.array(value, dtype=mx.uint32)

    metadata = {
        "general.architecture": "llama",
        "llama.embedding_length": u32(config["hidden_size"]),
        "llama.feed_forward_length": u32(config["intermediate_size"]),
        "llama.block_count": u32(config["num_hidden_layers"]),
        "llama.attention.head_count": u32(config["num_attention_heads"]),
        "llama.attention.head_count_kv": u32(config["num_key_value_heads"]),
        "llama.rope.dimension_count": u32(config["hidden_size"] // config["num_attention_heads"]),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"], dtype=mx.float32),
        "llama.rope.freq_base": mx.array(config["rope_theta"], dtype=mx.float32),
        "llama.context_length": u32(config["max_position_embeddings"]),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array([3 if t in SPECIAL else 1 for t in tokens], dtype=mx.int32),
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": u32(config["bos_token_id"]),
        "tokenizer.ggml.eos_token_id": u32(config["eos_token_id"]),
        "tokenizer.ggml.padding_token_id": u32(config["eos_token_id"]),
        "tokenizer.ggml.unknown_token_id": u32(SPECIAL.index("<|endoftext|>")),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    mx.save_gguf(str(path), tensors, metadata)
    return path


def build_scripted_model(folder: Path, script: list[tuple[str, str]], default: str) -> Path:
    """A tiny model with tool calling whose every reply is chosen by the newest message: the
    first `(trigger, reply)` of `script` whose trigger the last message holds, else `default`.

    The chat template ends its generation prompt with a marker token per reply, picked by those
    triggers; each reply is one token of the vocabulary, and the model maps marker -> reply ->
    <|im_end|>: its layers add nothing (zero attention and MLP output projections), so the next
    token depends on the current one alone. The template names <tool_call> and tool_call.name,
    as those of models with json tool calls do, so mlx_lm parses the replies' calls."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    replies = [reply for _, reply in script] + [default]
    markers = [f"<|reply{i}|>" for i in range(len(replies))]
    pieces = [byte_level.pre_tokenize_str(r)[0][0] for r in replies]
    special = SPECIAL + markers
    tokens = special + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<tool_call>", "</tool_call>"]
    tokens += [p for p in dict.fromkeys(pieces) if p not in tokens]
    config = {**tiny_config(len(tokens)), "tie_word_embeddings": False, "max_position_embeddings": 4096}
    weights = tiny_weights(config, seed=7)
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    embed, head = np.array(weights["model.embed_tokens.weight"]), np.array(weights["lm_head.weight"])
    size, end = config["hidden_size"], SPECIAL.index("<|im_end|>")
    links = [(tokens.index(m), tokens.index(p)) for m, p in zip(markers, pieces)]
    links += [(tokens.index(p), end) for p in dict.fromkeys(pieces)]
    assert len(links) <= size, "more replies than the hidden size can tell apart"
    for i, (current, following) in enumerate(links):
        embed[current] = np.eye(size)[i]
        head[following] += 10 * np.eye(size)[i]
    weights["model.embed_tokens.weight"], weights["lm_head.weight"] = mx.array(embed), mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    write_config(folder, config)
    choose = "".join(f"{'{% if' if i == 0 else '{% elif'} {trigger!r} in last %}}{markers[i]}"
                     for i, (trigger, _) in enumerate(script))
    choose = (choose + f"{{% else %}}{markers[-1]}{{% endif %}}") if script else markers[-1]
    template = CHAT_TEMPLATE.replace(
        "{{ '<|im_start|>assistant\n' }}",
        "{{ '<|im_start|>assistant\n' }}{% set last = messages[-1]['content'] %}" + choose,
    ) + "{# <tool_call> tool_call.name #}"
    write_tokenizer(folder, byte_level_bpe(tokens, [], special), template, bos="<|im_start|>", eos="<|im_end|>",
                    pad="<|im_end|>", unk="<|endoftext|>", max_length=config["max_position_embeddings"])
    return folder
