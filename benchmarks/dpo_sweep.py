"""DPO from the trained SFT model: which pairs and which settings help on the held-out tasks.

Needs `dvc repro` first: models/trained is the SFT model, data/pairs the reference pairs, data/collected
the SFT model's own samples (k per training task) and data/eval/trained_rollouts.jsonl its held-out result.

For each pair source and each DPO setting, the train stage's own code runs DPO starting from the SFT model
(`train.method: dpo` with `paths.base_model` pointing at it), the result plays the held-out tasks the way
the evaluate stage does (play.py, eval.* settings, greedy), and gymtrl compare's paired statistics compare
it task by task with the SFT model. Pair sources:
  reference  data/pairs: the pair stage's pairs of the reference rollouts (data.rollouts)
  onpolicy   pairs the filter and pair stages build from data/collected alone: the SFT model's own samples
             (on the training tasks until collect.tasks became new tasks on 2026-12-02)
  greedy     the same, plus one greedy (temperature 0) play of each training task by the SFT model: where
             greedy decoding fails a task that a sample solves, the pair's rejected side is the model's
             most likely answer, which is what the greedy held-out evaluation sees
  fresh      the SFT model's own samples (collect's settings: k per task at collect.temperature) on 120 new
             tasks of the same families, in neither the training nor the held-out split: tasks it was not
             fine-tuned on, where its mistakes show (on its training tasks it is 99% right even greedily).
             The collect stage now plays such tasks (data/demo/tasks_collect.jsonl), so `onpolicy` after a
             current `dvc repro` is the same kind of pairs; `fresh` is how the rows of 2026-12-02 were made
Writes benchmarks/dpo_sweep.json (one row per run; reruns of a name replace it).

    python benchmarks/dpo_sweep.py --sources reference onpolicy --grid 5e-6:0.1:2 3e-5:0.1:2:1
    (each grid entry is learning_rate:beta:epochs[:nll_weight]; ~5 min per run on 2 CPU cores)
    python benchmarks/dpo_sweep.py --sources onpolicy --grid 5e-6:0.1:2:1 --micro-batch 1x4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from gymtrl.params import deep_merge, parse_params, read_params_file  # noqa: E402

PARAMS = read_params_file(ROOT / "params.yaml")
PATHS = PARAMS["paths"]
WORK = ROOT / "benchmarks" / ".work" / "dpo_sweep"
OUT = ROOT / "benchmarks" / "dpo_sweep.json"


def sft_rollouts(name: str, tasks: list[dict], sampling) -> Path:
    """The SFT model's rollouts of `tasks` (played once, cached under the sweep's work folder)."""
    from gymtrl.io import write_jsonl
    from gymtrl.play import builtin_rollouts

    params = parse_params(PARAMS)
    out = WORK / f"{name}_rollouts.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out, builtin_rollouts(str(ROOT / PATHS["trained_model"]), tasks, sampling(params), params, name))
    return out


def greedy_rollouts() -> Path:
    """The SFT model plays each training task once, greedily (eval's sampling)."""
    from gymtrl.io import read_jsonl
    from gymtrl.stages import evaluate

    tasks = list(read_jsonl(ROOT / PATHS["demo"] / "tasks_train.jsonl"))[: PARAMS["collect"]["limit"]]
    return sft_rollouts("greedy_train", tasks, evaluate.sampling)


def fresh_rollouts(n: int = 120) -> Path:
    """The SFT model's samples (collect's sampling) on n tasks that are in neither split (the split generator
    with another seed; the collect stage's own tasks come from `make_fresh` instead)."""
    from gymtrl.env.tasks import make_split, question
    from gymtrl.io import read_jsonl
    from gymtrl.stages import collect

    demo = ROOT / PATHS["demo"]
    known = {question(t) for name in ("tasks_train.jsonl", "tasks_eval.jsonl") for t in read_jsonl(demo / name)}
    tasks, _ = make_split(2 * n, 0, PARAMS["demo"]["seed"] + 1000)
    tasks = [t for t in tasks if question(t) not in known][:n]
    for t in tasks:
        t["_ng_task_index"] += 100_000  # task keys apart from the splits' (0 ...)
    return sft_rollouts("fresh", tasks, collect.sampling)


def onpolicy_pairs(strategy: str, source: str) -> tuple[Path, dict]:
    """filter + pair over the SFT model's own samples only (no reference rollouts)."""
    from gymtrl.stages import filter as filter_stage, pair

    work = WORK / f"pairs-{source}-{strategy}"
    collected = ROOT / PATHS["collected"] / "rollouts.jsonl"
    # Lazily: playing a source's tasks takes minutes, and only the asked-for source is played.
    rollouts = {"onpolicy": lambda: [collected], "greedy": lambda: [collected, greedy_rollouts()],
                "fresh": lambda: [fresh_rollouts()]}[source]()
    rollouts = [str(r) for r in rollouts]
    paths = {k: str(work / k) for k in ("filtered", "catalog", "holdout", "pairs", "metrics", "plots")}
    params = parse_params(deep_merge(PARAMS, {
        "data": {"rollouts": rollouts},
        "paths": {**paths, "base_model": str(ROOT / PATHS["base_model"])},
        "iterate": {"round": 1}, "pair": {"strategy": strategy}}))
    filter_stage.run(params)
    return Path(paths["pairs"]), pair.run(params)


def dpo_from_sft(name: str, pairs_dir: Path, lr: float, beta: float, epochs: float, nll: float,
                 micro_batch: dict) -> tuple[Path, dict]:
    from gymtrl.stages import train

    work = WORK / name
    dpo = {"learning_rate": lr, "beta": beta, "num_train_epochs": epochs, **micro_batch}
    if nll:  # TRL's "sft" loss term: NLL of the chosen side (its assistant tokens: our mask), beside DPO's
        dpo.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, nll])
    params = parse_params(deep_merge(PARAMS, {
        "paths": {"base_model": str(ROOT / PATHS["trained_model"]), "pairs": str(pairs_dir),
                  "trained_model": str(work / "model"), "checkpoints": str(work / "ckpt"),
                  "training_logs": str(work / "live"), "metrics": str(work)},
        "train": {"method": "dpo", "dpo": dpo}}))
    return work / "model", train.run(params)


def held_out(model_dir: Path, name: str) -> Path:
    from gymtrl.io import read_jsonl, write_jsonl
    from gymtrl.play import builtin_rollouts
    from gymtrl.stages.evaluate import sampling

    params = parse_params(PARAMS)
    tasks = list(read_jsonl(ROOT / params.eval.tasks))[: params.eval.limit]
    out = model_dir.parent / "heldout_rollouts.jsonl"
    write_jsonl(out, builtin_rollouts(str(model_dir), tasks, sampling(params), params, name))
    return out


def versus_sft(path: Path) -> dict:
    from gymtrl.tools.compare import compare_pair, rewards_by_task

    sft = ROOT / PATHS["eval"] / "trained_rollouts.jsonl"
    result = compare_pair(rewards_by_task(sft.read_text(), str(sft)), rewards_by_task(path.read_text(), str(path)),
                          PARAMS["eval"]["success_threshold"])
    result.pop("flips")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", default=["reference", "onpolicy"], choices=["reference", "onpolicy", "greedy", "fresh"])
    parser.add_argument("--grid", nargs="+", default=["5e-6:0.1:2"],
                        help="learning_rate:beta:epochs[:nll_weight] (nll_weight > 0 adds TRL's sft loss term)")
    parser.add_argument("--onpolicy-strategy", default=PARAMS["pair"]["strategy"])
    parser.add_argument("--micro-batch", metavar="BxA",
                        help="train.dpo per_device_train_batch_size x gradient_accumulation_steps (default: params.yaml's)")
    args = parser.parse_args()
    dpo_defaults = PARAMS["train"]["dpo"]
    batch, accumulation = ((int(x) for x in args.micro_batch.split("x")) if args.micro_batch else
                           (dpo_defaults["per_device_train_batch_size"], dpo_defaults["gradient_accumulation_steps"]))
    micro_batch = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
    used = f"{batch}x{accumulation}"
    # Names carry the micro-batch used, so a run under another params.yaml default is a new row, not a
    # replacement (rows before 2026-12-03 without the suffix ran at the then-default 4 x 1)
    suffix = f"-mb{used}"
    rows = {r["name"]: r for r in json.loads(OUT.read_text())} if OUT.exists() else {}
    for source in args.sources:
        if source == "reference":
            pairs_dir, pair_metrics = ROOT / PATHS["pairs"], json.loads((ROOT / PATHS["metrics"] / "pair.json").read_text())
        else:
            pairs_dir, pair_metrics = onpolicy_pairs(args.onpolicy_strategy, source)
        for entry in args.grid:
            lr, beta, epochs, nll = (float(x) for x in [*entry.split(":"), "0"][:4])
            strategy = pair_metrics["strategy"]
            name = f"{source}-{strategy}-lr{lr:g}-beta{beta:g}-ep{epochs:g}" + (f"-nll{nll:g}" if nll else "") + suffix
            started = time.perf_counter()
            model_dir, metrics = dpo_from_sft(name, pairs_dir, lr, beta, epochs, nll, micro_batch)
            m = metrics["dpo"]
            path = held_out(model_dir, name)
            rows[name] = {"name": name, "source": source, "strategy": strategy, "pairs": pair_metrics["pairs"],
                          "learning_rate": lr, "beta": beta, "epochs": epochs, "nll_weight": nll, "dpo_steps": m["steps"],
                          "micro_batch": used,
                          "dpo_train_loss": m["train_loss"], "dpo_seconds": m["train_seconds"],
                          # the stage's ru_maxrss: this process's peak up to the end of DPO (held-out play after)
                          "dpo_peak_rss_mb": metrics["peak_rss_mb"], "bf16": metrics["bf16"],
                          "seconds": round(time.perf_counter() - started, 1), "vs_sft": versus_sft(path),
                          "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
            OUT.write_text(json.dumps(list(rows.values()), indent=1) + "\n")
            v = rows[name]["vs_sft"]
            print(f"{name}: success {v['run_success_rate']:.2f} (delta {v['delta_success_rate']:+.2f} "
                  f"{v['delta_success_rate_ci95']}), flips +{v['fail_to_success']}/-{v['success_to_fail']}, "
                  f"p={v['mcnemar_p']}, {v['verdict']}", flush=True)


if __name__ == "__main__":
    main()
