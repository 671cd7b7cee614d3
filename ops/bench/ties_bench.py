#!/usr/bin/env python
"""Anchored TIES throughput and peak memory: the streaming merge against a whole-model merge.

    python ops/bench/ties_bench.py [--layers 24] [--dim 1024] [--ffn 2048] [--adapters 3]
                                   [--rank 32] [--repeats 3] [--json]
    python ops/bench/ties_bench.py --quick     # a 2-layer model of 0.3 MB, 1 repeat: seconds, the tests

Generates into a temporary directory a synthetic float32 model in mlx-lm's layout (per layer
q/k/v/o dim×dim and MLP gate/up/down ffn×dim, two shards plus an index; 1.0 GB by default)
and `--adapters` LoRA adapters of rank `--rank` on q/k/v as mlx-lm's trainer writes them, then
merges them with the design's seed parameters (density 0.3, weight 0.5, normalize, λ 1):

  imports    python with numpy, mlx, safetensors and evolution.ties imported: the floor
  streaming  evolution.ties.merge_model, tensor by tensor
  in-memory  every shard loaded whole (safetensors.numpy.load_file), the same ties_merge per
             changed tensor, every shard saved whole (save_file), hashes and drift as the seal
  shared     a second generation into a tensor store (evolution/weights/tensors.py) that holds
             W0's tensors and a first generation's: it writes only the tensors the adapters
             change and links the rest; its rate of bytes written against copying a base shard
             with fsync in the same process (target >= 0.5)

Each run is its own subprocess, so each peak RSS (ru_maxrss) is that variant's alone. Both
merges must seal the same root hash. Seconds are the median of `--repeats` interleaved runs
(the page cache is warm: the files were just written); GB/s is base-model bytes per second.
The exit status is 1 if the streaming merge's peak RSS exceeds a third of the in-memory one's,
the shared merge writes at less than half the copy rate, or the root hashes differ: benchmarks assert performance, unit tests do not. --quick judges no
memory target (the interpreter's own pages outweigh so small a model), only the root hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

# The parent imports only the standard library and does no work of its own: a child's peak
# RSS must not include pages it inherited from a large parent at fork time.

DENSITY, WEIGHT, LAMBDA = 0.3, 0.5, 1.0  # design §6 seed defaults
TARGET_RSS_RATIO = 1 / 3
TARGET_COPY_RATIO = 0.5  # a generation's merge against copying the bytes it writes (issue 13)
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- the synthetic model and adapters ------------------------------------------------------


def make_model(path: Path, layers: int, dim: int, ffn: int, seed: int) -> int:
    """Two safetensors shards (first and second half of the layers) and an index; total bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    shapes = {"self_attn.q_proj": (dim, dim), "self_attn.k_proj": (dim, dim), "self_attn.v_proj": (dim, dim),
              "self_attn.o_proj": (dim, dim), "mlp.gate_proj": (ffn, dim), "mlp.up_proj": (ffn, dim),
              "mlp.down_proj": (dim, ffn)}
    weight_map, total = {}, 0
    halves = [range(0, layers // 2), range(layers // 2, layers)]
    for i, half in enumerate(halves):
        name = f"model-{i + 1:05d}-of-{len(halves):05d}.safetensors"
        shard = {}
        for layer in half:
            shard[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(dim, np.float32)
            for module, shape in shapes.items():
                shard[f"model.layers.{layer}.{module}.weight"] = (rng.standard_normal(shape, np.float32) * 0.02)
        save_file(shard, str(path / name), metadata={"format": "mlx"})
        total += sum(a.nbytes for a in shard.values())
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps({"model_type": "synthetic", "num_hidden_layers": layers}))
    return total


def make_adapter(path: Path, layers: int, dim: int, rank: int, seed: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    factors = {}
    for layer in range(layers):
        for module in ("q_proj", "k_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{module}"
            factors[f"{key}.lora_a"] = rng.uniform(-dim**-0.5, dim**-0.5, (dim, rank)).astype(np.float32)
            factors[f"{key}.lora_b"] = (rng.standard_normal((rank, dim), np.float32) * 0.01)
    save_file(factors, str(path / "adapters.safetensors"))
    config = {"fine_tune_type": "lora", "num_layers": layers,
              "lora_parameters": {"rank": rank, "scale": 20.0, "dropout": 0.0,
                                  "keys": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]}}
    (path / "adapter_config.json").write_text(json.dumps(config))


# -- the variants, each run in a child process ---------------------------------------------


def generate(work: Path, layers: int, dim: int, ffn: int, adapters: int, rank: int) -> int:
    model_bytes = make_model(work / "base", layers, dim, ffn, seed=0)
    for i in range(adapters):
        make_adapter(work / f"adapter-{i}", layers, dim, rank, seed=1 + i)
    return model_bytes


def run_streaming(model: Path, adapters: list[Path], out: Path) -> str:
    from evolution.ties import LoraAdapter, merge_model

    vectors = [LoraAdapter(a) for a in adapters]
    seal = merge_model(model, out, vectors, [WEIGHT] * len(vectors), [DENSITY] * len(vectors), lam=LAMBDA)
    return seal.root_sha256


def run_in_memory(model: Path, adapters: list[Path], out: Path) -> str:
    """The straightforward whole-model merge with the same per-tensor function."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from evolution.ties import LoraAdapter, ties_merge
    from evolution.weights.files import root_hash

    vectors = [LoraAdapter(a) for a in adapters]
    shards = {p.name: load_file(str(p)) for p in sorted(model.glob("*.safetensors"))}
    out.mkdir(parents=True)
    hashes, drift = {}, {}
    for name, tensors in shards.items():
        for key, w0 in tensors.items():
            users = [v for v in vectors if key in v.names]
            if users:
                merged = ties_merge(w0, [v.delta(key) for v in users], [WEIGHT] * len(users),
                                    [DENSITY] * len(users), LAMBDA)
                drift[key] = float(np.linalg.norm(merged - w0) / np.linalg.norm(w0))
                tensors[key] = merged
            hashes[key] = hashlib.sha256(np.ascontiguousarray(tensors[key]).reshape(-1).view(np.uint8)).hexdigest()
        save_file(tensors, str(out / name), metadata={"format": "mlx"})
    for path in model.iterdir():
        if path.suffix != ".safetensors":
            shutil.copyfile(path, out / path.name)
    return root_hash(hashes)


def run_shared(model: Path, adapters: list[Path], out: Path) -> dict:
    """A new generation into a tensor store that already holds W0's tensors and a first
    generation's (made here, untimed, from all adapters but the last): the timed merge writes
    only the tensors the adapters change. Against copying a base shard (with fsync, as the
    store writes) in the same process."""
    from evolution.ties import LoraAdapter, merge_model
    from evolution.weights.files import model_hashes
    from evolution.weights.tensors import TensorStore

    store, vectors = TensorStore(out / "tensors"), [LoraAdapter(a) for a in adapters]
    base_hashes = model_hashes(model)  # a soul remembers them (evolution/weights/files.py)
    merge_model(model, out / "gen-1", vectors[:-1], [WEIGHT] * (len(vectors) - 1), [DENSITY] * (len(vectors) - 1),
                lam=LAMBDA, tensors=store, base_hashes=base_hashes)
    held = sum(p.stat().st_size for p in store.root.iterdir())
    start = time.perf_counter()
    seal = merge_model(model, out / "gen-2", vectors, [WEIGHT] * len(vectors), [DENSITY] * len(vectors), lam=LAMBDA,
                       tensors=store, base_hashes=base_hashes)
    seconds = time.perf_counter() - start
    written = sum(p.stat().st_size for p in store.root.iterdir()) - held
    shard = max(model.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    start = time.perf_counter()
    with open(shard, "rb") as src, open(out / "copy", "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    copy = shard.stat().st_size / (time.perf_counter() - start)
    return {"root": seal.root_sha256, "seconds": seconds, "written_bytes": written, "copy_bytes_per_s": copy}


def run_imports(model: Path, adapters: list[Path], out: Path) -> str:
    """Nothing: the interpreter with the children's imports (numpy, mlx, safetensors, the merge)."""
    return ""


VARIANTS = {"imports": run_imports, "streaming": run_streaming, "in-memory": run_in_memory, "shared": run_shared}


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, which exec resets (ru_maxrss keeps the pre-exec
    forked copy of the parent); elsewhere ru_maxrss (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(variant: str, model: Path, adapters: list[Path], out: Path) -> None:
    import evolution.ties  # noqa: F401  the imports are the floor, not part of the time
    import safetensors.numpy  # noqa: F401

    start = time.perf_counter()
    result = VARIANTS[variant](model, adapters, out)
    measured = result if isinstance(result, dict) else {"root": result}  # a variant may time its own part
    print(json.dumps({"seconds": time.perf_counter() - start, **measured, "peak_rss": peak_rss_bytes()}))


def measure(variant: str, model: Path, adapters: list[Path], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", variant, "--model", str(model), "--out", str(out),
               *[a for p in adapters for a in ("--adapter", str(p))]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.splitlines()[-1])


# -- report ---------------------------------------------------------------------------------


def machine() -> dict:
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "nproc": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": version("numpy"), "mlx": version("mlx")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, help="default 24; --quick: 2")
    parser.add_argument("--dim", type=int, help="default 1024; --quick: 64")
    parser.add_argument("--ffn", type=int, help="default 2048; --quick: 128")
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--rank", type=int, help="default 32; --quick: 4")
    parser.add_argument("--repeats", type=int, help="runs per variant, median time reported (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, no memory target judged: that it runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", choices=[*VARIANTS, "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = {"layers": (24, 2), "dim": (1024, 64), "ffn": (2048, 128), "rank": (32, 4), "repeats": (3, 1)}
    for name, (full, quick) in sizes.items():  # (default, --quick)
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.child == "generate":
        print(generate(args.out, args.layers, args.dim, args.ffn, args.adapters, args.rank))
        return 0
    if args.child:
        from evolution.weights.blas import reexec_with_optimized_blas

        reexec_with_optimized_blas()  # as `soul evolve` will run: mlx rebuilds the deltas with matmuls
        child(args.child, args.model, args.adapter, args.out)
        return 0

    work = Path(tempfile.mkdtemp(prefix="soul-ties-bench-"))
    try:
        say(f"generating a {args.layers}-layer model and {args.adapters} adapters in {work}")
        generator = [sys.executable, __file__, "--child", "generate", "--out", str(work), "--layers", str(args.layers),
                     "--dim", str(args.dim), "--ffn", str(args.ffn), "--adapters", str(args.adapters),
                     "--rank", str(args.rank)]
        model_bytes = int(subprocess.run(generator, check=True, capture_output=True, text=True).stdout)
        adapters = [work / f"adapter-{i}" for i in range(args.adapters)]
        say(f"model: {model_bytes / 1e9:.2f} GB")
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        runs["imports"].append(measure("imports", work / "base", adapters, work / "out"))
        for r in range(args.repeats):
            for variant in ("streaming", "in-memory", "shared"):
                runs[variant].append(measure(variant, work / "base", adapters, work / "out"))
                say(f"{variant} run {r + 1}: {runs[variant][-1]['seconds']:.2f} s, "
                    f"peak RSS {runs[variant][-1]['peak_rss'] / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for variant, measured in runs.items():
        seconds = statistics.median(m["seconds"] for m in measured)
        rows[variant] = {"seconds": seconds, "gb_per_s": model_bytes / 1e9 / seconds if variant != "imports" else None,
                         "peak_rss_mib": max(m["peak_rss"] for m in measured) / 2**20}
    roots = {m["root"] for v in ("streaming", "in-memory", "shared") for m in runs[v]}
    shared = {"seconds": rows["shared"]["seconds"],
              "written_bytes": statistics.median(m["written_bytes"] for m in runs["shared"]),
              "copy_gb_per_s": statistics.median(m["copy_bytes_per_s"] for m in runs["shared"]) / 1e9}
    shared["written_share"] = shared["written_bytes"] / model_bytes
    shared["written_gb_per_s"] = shared["written_bytes"] / 1e9 / shared["seconds"]
    shared["of_copy_rate"] = shared["written_gb_per_s"] / shared["copy_gb_per_s"]
    ratio = rows["streaming"]["peak_rss_mib"] / rows["in-memory"]["peak_rss_mib"]
    passed = None if args.quick else (ratio <= TARGET_RSS_RATIO and len(roots) == 1  # a tiny model judges nothing
                                      and shared["of_copy_rate"] >= TARGET_COPY_RATIO)
    report = {"machine": machine(),
              "config": {"layers": args.layers, "dim": args.dim, "ffn": args.ffn, "adapters": args.adapters,
                         "rank": args.rank, "model_bytes": model_bytes, "repeats": args.repeats, "quick": args.quick,
                         "density": DENSITY, "weight": WEIGHT, "lambda": LAMBDA},
              "results": rows, "shared": shared, "target_copy_ratio": TARGET_COPY_RATIO,
              "rss_ratio": ratio, "target_rss_ratio": TARGET_RSS_RATIO,
              "same_root": len(roots) == 1, "root": sorted(roots)[0], "pass": passed}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m, c = report["machine"], report["config"]
        print(f"machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB; {m['platform']}")
        print(f"python {m['python']}, numpy {m['numpy']}, mlx {m['mlx']}")
        print(f"model {c['model_bytes'] / 1e9:.2f} GB float32 ({c['layers']} layers, dim {c['dim']}, ffn {c['ffn']}); "
              f"{c['adapters']} rank-{c['rank']} LoRA adapters on q/k/v; median of {c['repeats']}")
        print()
        print(f"{'variant':<10}  {'seconds':>7}  {'GB/s':>5}  {'peak RSS MiB':>12}")
        print(f"{'-' * 10}  {'-' * 7}  {'-' * 5}  {'-' * 12}")
        for variant, row in rows.items():
            gbs = "-" if row["gb_per_s"] is None else f"{row['gb_per_s']:.2f}"
            secs = "-" if variant == "imports" else f"{row['seconds']:.2f}"
            print(f"{variant:<10}  {secs:>7}  {gbs:>5}  {row['peak_rss_mib']:>12,.0f}")
        print()
        print(f"shared: a new generation wrote {shared['written_bytes'] / 1e6:,.0f} MB "
              f"({shared['written_share']:.0%} of the model) at {shared['written_gb_per_s']:.3f} GB/s; "
              f"copying here {shared['copy_gb_per_s']:.2f} GB/s: {shared['of_copy_rate']:.2f} of it "
              f"(target >= {TARGET_COPY_RATIO:g})")
        print(f"peak RSS streaming / in-memory: {ratio:.3f} (target <= {TARGET_RSS_RATIO:.3f}); "
              f"root hashes {'equal' if report['same_root'] else 'DIFFER'}: {report['root'][:16]}…")
        print({True: "PASS", False: "FAIL: a merge misses its memory or copy-rate target, or the merges differ",
               None: "memory not judged (--quick)"}[passed])
    return 0 if len(roots) == 1 and passed is not False else 1


if __name__ == "__main__":
    sys.exit(main())
