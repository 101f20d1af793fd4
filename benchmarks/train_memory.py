"""Where the train stage's peak memory goes, and what cuts it: peak RSS and tokens/s per variant.

Needs models/base and data/sft from `dvc repro`. Each variant runs the train stage itself (train.run, SFT,
params.yaml's settings plus the variant's) in its own process on the first `--examples` SFT rows; peak RSS
is that process's VmHWM, tokens/s the stage's own metric. What scales with the micro-batch is activations
(and the logits chunks); the fixed part is computed: fp32 weights + gradients + the two AdamW moments =
16 bytes per parameter. Appends to benchmarks/results.json.

    python benchmarks/train_memory.py --examples 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from gymtrl.params import deep_merge, parse_params, read_params_file  # noqa: E402

PARAMS = read_params_file(ROOT / "params.yaml")
SFT = PARAMS["train"]["sft"]
GLOBAL_BATCH = SFT["per_device_train_batch_size"] * SFT["gradient_accumulation_steps"]
ONE_BY_ALL = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": GLOBAL_BATCH}  # micro-batch 1
# name -> train.sft overrides; every variant keeps the global batch (same optimizer steps, same loss scale)
VARIANTS = {
    f"params.yaml (micro-batch {SFT['per_device_train_batch_size']})": {},
    f"micro-batch {GLOBAL_BATCH} x 1 (the default before)": {"per_device_train_batch_size": GLOBAL_BATCH,
                                                            "gradient_accumulation_steps": 1},
    "micro-batch 4 x 2 accumulation": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": GLOBAL_BATCH // 4},
    "micro-batch 2 x 4 accumulation": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": GLOBAL_BATCH // 2},
    "micro-batch 1 x 8 accumulation": ONE_BY_ALL,
    "activation checkpointing": {"activation_checkpointing": True},
    # glibc serves allocations under its (growing, up to 32 MiB) mmap threshold from heap arenas, which keep
    # freed memory; a fixed threshold returns every large tensor to the OS when freed
    "glibc mmap threshold 128 KiB": {"env": {"MALLOC_MMAP_THRESHOLD_": "131072"}},
    "micro-batch 2 x 4 + mmap threshold": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": GLOBAL_BATCH // 2,
                                           "env": {"MALLOC_MMAP_THRESHOLD_": "131072"}},
    "micro-batch 1 x 8 + activation checkpointing": {**ONE_BY_ALL,
                                                     "activation_checkpointing": True},
    "micro-batch 1 x 8 + mmap threshold": {**ONE_BY_ALL,
                                           "env": {"MALLOC_MMAP_THRESHOLD_": "131072"}},
    "micro-batch 1 x 8 + mmap threshold 1 MiB": {**ONE_BY_ALL,
                                                 "env": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}},
    "micro-batch 1 x 8 + mmap threshold 4 MiB": {**ONE_BY_ALL,
                                                 "env": {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}},
    # torch's fused CPU AdamW: one kernel per parameter group instead of a chain of ops with temporaries
    "micro-batch 1 x 8 + fused AdamW": {**ONE_BY_ALL,
                                        "optim": "adamw_torch_fused"},
    "micro-batch 1 x 8 + fused AdamW + mmap threshold": {**ONE_BY_ALL,
                                                         "optim": "adamw_torch_fused", "env": {"MALLOC_MMAP_THRESHOLD_": "131072"}},
    # one heap arena for all threads (glibc makes up to 8 per core, each keeping its own freed memory)
    "micro-batch 1 x 8 + one malloc arena": {**ONE_BY_ALL,
                                             "env": {"MALLOC_ARENA_MAX": "1"}},
}


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"{field} not in /proc/self/status")


def sft_overrides(variant: str) -> dict:
    return {k: v for k, v in VARIANTS[variant].items() if k != "env"}


def one(variant: str, examples: int, out: Path) -> dict:
    from gymtrl.stages import train

    paths = {"trained_model": str(out / "trained"), "checkpoints": str(out / "ckpt"),
             "training_logs": str(out / "live"), "metrics": str(out)}
    params = parse_params(deep_merge(PARAMS, {"paths": paths, "train": {
        "method": "sft", "max_examples": examples, "sft": {**sft_overrides(variant), "logging_steps": 1, "save_steps": 10_000}}}))
    m = train.run(params)["sft"]
    peak = rss_mb("VmHWM")  # before anything below allocates
    from safetensors.torch import load_file

    n_params = sum(t.numel() for t in load_file(str(out / "trained" / "model.safetensors")).values())
    return {"peak_rss_mb": peak, "tokens_per_second": m["tokens_per_second"], "train_loss": m["train_loss"],
            "steps": m["steps"], "weights_grads_adam_mb": round(n_params * 16 / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--variant", nargs="*", default=list(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(args.one, args.examples, Path(tmp))))
        return
    import torch

    results = []
    for variant in args.variant:
        done = subprocess.run([sys.executable, __file__, "--examples", str(args.examples), "--one", variant],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, **VARIANTS[variant].get("env", {})})
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed: {done.stderr[-3000:]}")
        m = {"job": variant, "examples": args.examples, **json.loads(done.stdout.strip().splitlines()[-1])}
        results.append(m)
        print(f"{variant:<36} peak {m['peak_rss_mb']:8.0f} MB  {m['tokens_per_second']:6.1f} tokens/s  "
              f"loss {m['train_loss']:.4f}  (weights + grads + AdamW: {m['weights_grads_adam_mb']:.0f} MB)", flush=True)
    from run import append_results

    append_results(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                   f"python benchmarks/train_memory.py --examples {args.examples}", results)


if __name__ == "__main__":
    main()
