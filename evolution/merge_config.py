"""The anchored TIES merge configured in mergekit's YAML vocabulary (design §6).

    merge_method: ties
    base_model: /path/to/W0            # the golden anchor: an mlx-format safetensors model dir
    models:
      - model: /path/to/adapters/gen-1 # an mlx-lm LoRA adapter dir (adapters.safetensors + config)
        parameters: {density: 0.3, weight: 0.5}
      - model: /path/to/adapters/gen-2
    parameters:                        # shared; density and weight here are every model's default
      normalize: true
      int8_mask: false
      lambda: 1.0

The keys and their meaning are mergekit's (`ties`, `density`, `weight`, `normalize`,
`int8_mask`, `lambda`), with two differences: each `model` is a LoRA adapter (a task vector on
the base), not a full model; and absent values take the design's seed defaults (density 0.3,
weight 0.5, normalize on, lambda 1.0) where mergekit has density 1.0 and requires a weight.
With one adapter and normalize on, its weight cancels: W0 + λ·δ̂ whatever the weight.
A model entry equal to `base_model` (mergekit lists the base among the models) is skipped.
Anything else mergekit accepts (gradients, per-tensor filters, slices, `rescale: true`,
`out_dtype`, tokenizer options) is refused, not ignored, so a config never means more than
what runs. Paths are used as written (`~` expanded): relative ones are relative to the
working directory, as in mergekit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from evolution.ties import LoraAdapter, MergeSeal, merge_model

DEFAULT_DENSITY = 0.3
DEFAULT_WEIGHT = 0.5
DEFAULT_NORMALIZE = True
DEFAULT_INT8_MASK = False
DEFAULT_LAMBDA = 1.0

TOP_LEVEL_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype"}
MODEL_PARAMETERS = {"density", "weight"}
SHARED_PARAMETERS = MODEL_PARAMETERS | {"normalize", "int8_mask", "lambda", "rescale"}


class MergeConfigError(ValueError):
    """A merge config that cannot be run as written."""


@dataclass(frozen=True)
class AdapterEntry:
    path: Path
    weight: float
    density: float


@dataclass(frozen=True)
class TiesConfig:
    base_model: Path
    adapters: tuple[AdapterEntry, ...]
    normalize: bool = DEFAULT_NORMALIZE
    int8_mask: bool = DEFAULT_INT8_MASK
    lam: float = DEFAULT_LAMBDA


def parse_ties_config(text: str) -> TiesConfig:
    """A `TiesConfig` from mergekit-style YAML text; MergeConfigError says what is wrong."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise MergeConfigError("a merge config is a YAML mapping")
    if unknown := set(doc) - TOP_LEVEL_KEYS:
        raise MergeConfigError(f"unsupported keys {sorted(unknown)}; supported: {sorted(TOP_LEVEL_KEYS)}")
    if doc.get("merge_method") != "ties":
        raise MergeConfigError(f"merge_method must be 'ties', not {doc.get('merge_method')!r}")
    if doc.get("dtype", "float32") != "float32":
        raise MergeConfigError("dtype: the merge always computes in float32 (the result keeps the base's dtype)")
    if not isinstance(doc.get("base_model"), str):
        raise MergeConfigError("base_model: the path of the base model (W0) is required")
    shared = _parameters(doc.get("parameters"), SHARED_PARAMETERS, "parameters")
    if shared.get("rescale", False) is not False:
        raise MergeConfigError("parameters.rescale: only false (TIES without rescaling) is supported")

    base = Path(doc["base_model"]).expanduser()
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise MergeConfigError("models: a list of adapters, each {model: path, parameters: {...}}")
    adapters = []
    for i, entry in enumerate(models):
        well_formed = isinstance(entry, dict) and isinstance(entry.get("model"), str)
        if not well_formed or set(entry) - {"model", "parameters"}:
            raise MergeConfigError(f"models[{i}]: expected {{model: path, parameters: {{density, weight}}}}")
        path = Path(entry["model"]).expanduser()
        own = _parameters(entry.get("parameters"), MODEL_PARAMETERS, f"models[{i}].parameters")
        if path == base:
            continue
        values = {**shared, **own}
        adapters.append(AdapterEntry(
            path,
            weight=check_number(values.get("weight", DEFAULT_WEIGHT), f"models[{i}] weight"),
            density=check_number(values.get("density", DEFAULT_DENSITY), f"models[{i}] density", 0.0, 1.0),
        ))
    if not adapters:
        raise MergeConfigError("models: no adapter besides the base model")
    return TiesConfig(
        base,
        tuple(adapters),
        normalize=check_flag(shared.get("normalize", DEFAULT_NORMALIZE), "normalize"),
        int8_mask=check_flag(shared.get("int8_mask", DEFAULT_INT8_MASK), "int8_mask"),
        lam=check_number(shared.get("lambda", DEFAULT_LAMBDA), "lambda"),
    )


def load_ties_config(path: str | Path) -> TiesConfig:
    return parse_ties_config(Path(path).read_text("utf-8"))


def run_ties_config(config: TiesConfig, out_dir: str | Path) -> MergeSeal:
    """Merge the configured adapters into the base model, writing the generation to `out_dir`."""
    return merge_model(
        config.base_model,
        out_dir,
        [LoraAdapter(a.path) for a in config.adapters],
        [a.weight for a in config.adapters],
        [a.density for a in config.adapters],
        lam=config.lam,
        normalize=config.normalize,
        int8_mask=config.int8_mask,
    )


def _parameters(value, allowed: set[str], where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MergeConfigError(f"{where}: a mapping of parameter names to values")
    if unknown := set(value) - allowed:
        raise MergeConfigError(f"{where}: unsupported {sorted(unknown)}; supported: {sorted(allowed)}")
    for name, v in value.items():
        if isinstance(v, (list, dict)):
            raise MergeConfigError(f"{where}.{name}: gradients and per-tensor filters are not supported")
    return value


def check_number(value, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        bounds = f" in [{low}, {high}]" if math.isfinite(low) else ""
        raise MergeConfigError(f"{what}: a finite number{bounds}, not {value!r}")
    return float(value)


def check_flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise MergeConfigError(f"{what}: true or false, not {value!r}")
    return value
