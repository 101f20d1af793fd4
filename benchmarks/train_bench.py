"""Train stage vs a bare TRL `SFTTrainer` script (same model, data, settings), and fp32 vs bf16 autocast.

Needs models/base and data/sft from `dvc repro`. Each variant runs in its own process on the first
`--examples` SFT rows for one epoch (examples / 8 optimizer steps); tokens/s = the tokens of those rows
(chat template applied, truncated to max_length, counted the same way for every variant) divided by
the seconds `trainer.train()` took. Our stage's whole wall time (model load, length check, saving)
is reported beside it. Appends to benchmarks/results.json.

    python benchmarks/train_bench.py --examples 48
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from gymtrl.params import deep_merge, parse_params, read_params_file  # noqa: E402

PARAMS = read_params_file(ROOT / "params.yaml")
MODEL = ROOT / PARAMS["paths"]["base_model"]
DATA = ROOT / PARAMS["paths"]["sft"] / "train.parquet"
# The train stage's own SFT settings (params.yaml, as `ours` below runs it) for the bare script, minus
# checkpointing and logging, which the bare script sets itself.
SETTINGS = {**{k: v for k, v in PARAMS["train"]["sft"].items() if k not in ("logging_steps", "save_steps", "save_total_limit")},
            "num_train_epochs": 1, "seed": 0}


def ours(examples: int, out: Path) -> dict:
    from gymtrl.stages import train

    started = time.perf_counter()
    paths = {"base_model": str(MODEL), "sft": str(DATA.parent), "trained_model": str(out / "trained"),
             "checkpoints": str(out / "ckpt"), "training_logs": str(out / "live"), "metrics": str(out)}
    params = parse_params(deep_merge(PARAMS, {"paths": paths, "train": {
        "method": "sft", "max_examples": examples, "seed": 0, "sft": {"num_train_epochs": 1, "logging_steps": 1}}}))
    m = train.run(params)["sft"]
    return {"train_seconds": m["train_seconds"], "tokens": m["tokens"], "stage_seconds": time.perf_counter() - started}


def bare(examples: int, out: Path, bf16: bool) -> dict:
    """What a user would write with TRL alone."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from gymtrl.models import chat_format
    from gymtrl.stages.train import sft_dataset

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    ds = load_dataset("parquet", data_files=str(DATA), split="train").select(range(examples))
    config = SFTConfig(output_dir=str(out / "bare"), report_to="none", save_strategy="no", logging_steps=1,
                       use_cpu=True, bf16=bf16, disable_tqdm=True, **SETTINGS)
    # The same token count as the train stage reports (its own tokenization; TRL's is the same text).
    tokens = sft_dataset(tokenizer, ds, chat_format(MODEL), True, config.max_length).lengths["tokens"]
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    return {"train_seconds": time.perf_counter() - started, "tokens": tokens}


JOBS = {"train stage (bf16 autocast)": lambda n, out: ours(n, out),
        "bare SFTTrainer, bf16 autocast": lambda n, out: bare(n, out, True),
        "bare SFTTrainer, fp32": lambda n, out: bare(n, out, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--job")
    args = parser.parse_args()
    if args.job:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(JOBS[args.job](args.examples, Path(tmp))))
        return
    import torch

    results = []
    for job in JOBS:
        done = subprocess.run([sys.executable, __file__, "--examples", str(args.examples), "--job", job],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{job} failed: {done.stderr[-3000:]}")
        m = json.loads(done.stdout.strip().splitlines()[-1])
        m.update(job=job, examples=args.examples, tokens_per_s=round(m["tokens"] / m["train_seconds"], 1))
        results.append(m)
        print(f"{job:<32} {m['train_seconds']:7.1f}s in train()  {m['tokens_per_s']:7.1f} tokens/s"
              + (f"  (whole stage {m['stage_seconds']:.1f}s)" if "stage_seconds" in m else ""), flush=True)
    print(f"train stage / bare SFTTrainer: {results[0]['tokens_per_s'] / results[1]['tokens_per_s']:.0%};  "
          f"bf16 / fp32: {results[1]['tokens_per_s'] / results[2]['tokens_per_s']:.2f}x")
    from run import append_results

    append_results(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                   f"python benchmarks/train_bench.py --examples {args.examples}", results)


if __name__ == "__main__":
    main()
