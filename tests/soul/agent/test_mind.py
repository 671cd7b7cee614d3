"""The mind on real mlx-lm models (tests/tiny_model.py): streaming, KV-cache reuse, determinism,
the self judge's probability, tool-call parsing, and bad model directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evolution.weights.model import ModelError
from soul.agent.mind import Mind, common_prefix
from tests.tiny_model import CHAT_TEMPLATE, build_tiny_model

FIRST = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something about rivers."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=1)


def test_reply_streams_and_is_the_same_bytes_every_time(tiny: Path) -> None:
    segments: list[str] = []
    first = Mind(tiny).generate(FIRST, max_tokens=24, on_token=segments.append)
    again = Mind(tiny).generate(FIRST, max_tokens=24)
    assert first.text == again.text and "".join(segments) == first.text
    assert first.generated_tokens == 24 and first.finish_reason == "length"
    assert first.prompt_tokens == len(Mind(tiny).encode(FIRST)) and first.reused_tokens == 0
    assert first.first_token_s > 0 and first.tokens_per_s > 0


def test_the_next_turn_feeds_only_its_new_tokens(tiny: Path) -> None:
    mind = Mind(tiny)
    one = mind.generate(FIRST, max_tokens=16)
    second = [*FIRST, {"role": "assistant", "content": one.text}, {"role": "user", "content": "And lakes?"}]
    two = mind.generate(second, max_tokens=16)
    before, after = mind.encode(FIRST), mind.encode(second)
    assert after[: len(before)] == before  # the template only appends
    assert two.reused_tokens >= one.prompt_tokens  # the whole first prompt came from the cache
    assert two.processed_tokens <= len(after) - len(before)
    # Reusing the cache changes nothing in what is generated.
    assert two.text == Mind(tiny).generate(second, max_tokens=16).text
    third = [*second, {"role": "assistant", "content": two.text}, {"role": "user", "content": "And the sea?"}]
    assert mind.generate(third, max_tokens=16).reused_tokens >= two.prompt_tokens


def test_a_changed_beginning_rebuilds_from_the_common_prefix(tiny: Path) -> None:
    mind = Mind(tiny)
    mind.generate(FIRST, max_tokens=8)
    other = [{"role": "system", "content": "You are verbose."}, FIRST[1]]
    changed = mind.generate(other, max_tokens=8)
    assert changed.reused_tokens == common_prefix(mind.encode(FIRST), mind.encode(other)) < len(mind.encode(FIRST))
    assert changed.text == Mind(tiny).generate(other, max_tokens=8).text


def test_a_generation_interrupted_midway_leaves_no_stale_cache(tiny: Path) -> None:
    mind = Mind(tiny)

    def reader_gone(text: str) -> None:
        raise BrokenPipeError("the reader left")

    with pytest.raises(BrokenPipeError):
        mind.generate(FIRST, max_tokens=16, on_token=reader_gone)
    again = mind.generate(FIRST, max_tokens=16)
    assert again.reused_tokens == 0 and again.text == Mind(tiny).generate(FIRST, max_tokens=16).text


def test_seeded_sampling_is_deterministic(tiny: Path) -> None:
    texts = [Mind(tiny, temperature=1.0, seed=seed).generate(FIRST, max_tokens=24).text for seed in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]


def test_probability_of_yes_is_a_probability_the_cache_does_not_change(tiny: Path) -> None:
    asked = [*FIRST, {"role": "assistant", "content": "Rivers run."}, {"role": "user", "content": "Good? yes or no"}]
    warm = Mind(tiny)
    warm.generate(FIRST, max_tokens=8)
    p = warm.probability(asked)
    assert 0.0 < p < 1.0
    assert p == pytest.approx(Mind(tiny).probability(asked), abs=1e-5)


def test_tool_calls_are_parsed_by_the_models_own_parser(tiny: Path, tmp_path: Path) -> None:
    assert Mind(tiny).tool_calls('<tool_call>{"name": "recall", "arguments": {}}</tool_call>') == []
    caller = tmp_path / "caller"
    shutil.copytree(tiny, caller)
    config_path = caller / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # mlx_lm infers the json_tools parser from a template that names <tool_call> and tool_call.name.
    config["chat_template"] = CHAT_TEMPLATE + "{# <tool_call> tool_call.name #}"
    config_path.write_text(json.dumps(config))
    mind = Mind(caller)
    assert mind.tokenizer.has_tool_calling
    reply = ('Let me look. <tool_call>{"name": "recall", "arguments": {"query": "rivers"}}</tool_call> and '
             '<tool_call>{"name": "notebook", "arguments": "{\\"text\\": \\"x\\"}"}</tool_call><tool_call>not json</tool_call>')
    assert mind.tool_calls(reply) == [("recall", {"query": "rivers"}), ("notebook", {"text": "x"}), ("", {"text": "not json"})]
    assert mind.tool_calls("no calls here") == []


def test_a_missing_or_corrupt_model_directory_names_the_file(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model directory at .*nowhere"):
        Mind(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer\.json is missing"):
        Mind(broken)
    shutil.copy(tiny / "tokenizer.json", broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json is unreadable"):
        Mind(broken)
    shutil.copy(tiny / "config.json", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"model\.safetensors does not load"):
        Mind(broken)


def test_the_model_id_is_its_directory_and_tensors(tiny: Path, tmp_path: Path) -> None:
    same = tmp_path / tiny.name
    shutil.copytree(tiny, same)
    other = build_tiny_model(tmp_path / "other", seed=2)
    assert Mind(tiny).model_id == Mind(same).model_id != Mind(other).model_id.replace("other", tiny.name)
    assert Mind(tiny).model_id.startswith(f"{tiny.name}@")


def test_a_model_is_hashed_once_and_again_when_its_weights_change(tiny: Path, tmp_path: Path, soul_home: Path) -> None:
    mine = tmp_path / "mine"
    shutil.copytree(tiny, mine)
    first = Mind(mine, weights=False).model_id
    assert len(list((soul_home / "models" / "hashes").iterdir())) == 1  # remembered
    assert Mind(mine, weights=False).model_id == first
    other = build_tiny_model(tmp_path / "other", seed=2)
    shutil.copy(other / "model.safetensors", mine / "model.safetensors")
    assert Mind(mine, weights=False).model_id == Mind(other).model_id.replace("other", "mine") != first
