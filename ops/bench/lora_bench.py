#!/usr/bin/env python
"""LoRA training throughput: `evolution.train.train_adapter` against raw `mlx_lm lora`.

    python ops/bench/lora_bench.py [--model DIR] [--iters 10] [--batch-size 4] [--repeats 2] [--json]
    python ops/bench/lora_bench.py --quick --model DIR     # seconds: the tests

Both train the same adapter (rank 32, q/k/v, every layer, Adam, `mask_prompt`, seed 0) on the
same chat rows (`evolution_evidence.CURATED`) over the same model (the embedded SmolLM2 unless
`--model`):

  raw     `mlx_lm.lora.run` with mlx-lm's own defaults and these settings, as `mlx_lm lora
          --train -c config.yaml` runs it: load the model, read train.jsonl, train, save
  soul    `train_adapter(model, rows, config, root, base_root_hash=...)`: load, train, save,
          hash and move into the content-addressed cache, as `soul evolve` calls it

Each run is its own subprocess on the optimized BLAS, the two interleaved `--repeats` times;
a run's seconds are measured inside it, around the one call. Tokens are those of the batches
trained (both draw the same batches: the same seed), so tokens/s ratio = time ratio. Both must
write byte-identical adapters: that shows `train_adapter` runs mlx-lm's recipe, not its own.
Exit status 1 if the ratio soul/raw of the median tokens/s is below 0.9 or the bytes differ.
--quick: one run of each, 2 iterations of batch 2 (give it a small --model); it judges no ratio,
but the bytes must still be the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

TARGET = 0.9
SEED = 0


def settings(args: argparse.Namespace) -> dict:
    return {"iters": args.iters, "batch_size": args.batch_size, "learning_rate": 1e-5, "max_seq_length": 1024,
            "seed": SEED}


def child(variant: str, model: str, data: Path, out: Path, options: dict) -> None:
    """One training run; prints {"seconds", "sha256"} as JSON."""
    from evolution.weights.blas import reexec_with_optimized_blas

    reexec_with_optimized_blas()
    import time
    import types

    from evolution.config import EvolutionConfig
    from evolution.weights.files import sha256_file

    config = EvolutionConfig(**options)
    if variant == "raw":
        from mlx_lm import lora

        args = {**lora.CONFIG_DEFAULTS, **options, "model": model, "train": True, "data": str(data),
                "num_layers": config.num_layers, "mask_prompt": True, "adapter_path": str(out),
                "lora_parameters": {"rank": config.rank, "scale": config.scale, "dropout": 0.0,
                                    "keys": list(config.keys)}}
        started = time.perf_counter()
        lora.run(types.SimpleNamespace(**args))
        seconds = time.perf_counter() - started
        path = out / "adapters.safetensors"
    else:
        from evolution.weights.files import model_hashes, root_hash
        from evolution.train import train_adapter

        rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
        base = root_hash(model_hashes(model))  # as the lineage knows it from W_{N-1}'s seal
        started = time.perf_counter()
        trained = train_adapter(Path(model), rows, config, out, base_root_hash=base)
        seconds = time.perf_counter() - started
        path = trained.path / "adapters.safetensors"
    print(json.dumps({"seconds": seconds, "sha256": sha256_file(path)}))


def trained_tokens(model: str, rows: list[dict], options: dict) -> int:
    """Tokens in the batches mlx-lm's trainer draws for these rows and settings."""
    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import iterate_batches

    from evolution.weights.model import load

    _, tokenizer = load(model)
    dataset = CacheDataset(ChatDataset(rows, tokenizer, mask_prompt=True))
    np.random.seed(options["seed"])
    batches = iterate_batches(dataset, min(options["batch_size"], len(rows)), options["max_seq_length"], loop=True)
    total = 0
    for _, (_, lengths) in zip(range(options["iters"]), batches):
        total += int(np.array(lengths)[:, 1].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an MLX model directory (default: the embedded SmolLM2)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 run of each, 2 iterations of batch 2, no ratio: for tests")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of a table")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.iters, args.batch_size, args.repeats = min(args.iters, 2), min(args.batch_size, 2), 1
    options = settings(args)
    if args.child:
        variant, model, data, out = args.child
        child(variant, model, Path(data), Path(out), options)
        return

    from common import machine  # this folder: python puts a script's own folder on sys.path
    from evolution_evidence import CURATED
    from evolution.weights.model import embedded_model_dir

    model = args.model or str(embedded_model_dir())
    seconds: dict[str, list[float]] = {"raw": [], "soul": []}
    hashes: dict[str, set[str]] = {"raw": set(), "soul": set()}
    with tempfile.TemporaryDirectory(prefix="soul-lora-bench-") as work:
        data = Path(work) / "data"
        data.mkdir()
        (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in CURATED))
        for repeat in range(args.repeats):
            for variant in ("raw", "soul"):
                out = Path(work) / f"{variant}-{repeat}"
                command = [sys.executable, __file__, "--iters", str(args.iters), "--batch-size", str(args.batch_size),
                           "--child", variant, model, str(data), str(out)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"lora_bench: the {variant} run failed:\n{done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                seconds[variant].append(result["seconds"])
                hashes[variant].add(result["sha256"])
                print(f"{variant} run {repeat + 1}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
        tokens = trained_tokens(model, CURATED, options)
    rates = {v: tokens / statistics.median(s) for v, s in seconds.items()}
    ratio = rates["soul"] / rates["raw"]
    same = len(hashes["raw"] | hashes["soul"]) == 1
    report = {"machine": machine(), "model": model, "settings": options, "tokens": tokens, "seconds": seconds,
              "tokens_per_second": rates, "ratio": ratio, "target": TARGET, "identical_adapters": same,
              "pass": same and (None if args.quick else ratio >= TARGET)}  # tiny sizes: timings mean nothing
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{tokens} tokens, {args.iters} iterations of batch {args.batch_size} on {model}")
        print("| path | seconds (median) | tokens/s |")
        print("| --- | ---: | ---: |")
        for variant in ("raw", "soul"):
            print(f"| {variant} | {statistics.median(seconds[variant]):.1f} | {rates[variant]:.1f} |")
        print(f"ratio soul / raw: {ratio:.3f} (target >= {TARGET}{'; not judged' if args.quick else ''}); "
              f"identical adapters: {same}")
    if report["pass"] is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
