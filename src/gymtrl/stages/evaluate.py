"""evaluate: base model and trained model on the same held-out tasks, scored, side by side.

Backends: `builtin` runs the embedded agent loop (env/agents.py) on the embedded calculator tasks;
`gym` runs `eval.gym_command` (a user's NeMo Gym setup against a server of each model) and reads the
rollouts it writes. Either way the rollouts are saved in Gym format and scored by the same reader,
so `gymtrl inspect` and the comparisons read them like any other Gym output.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import EvalParams, Params
from ..rollouts import Rejected, Rollout, parse_line, iter_lines
from .common import StageError, log

Z95 = 1.959963984540054


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def wilson_ci(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval: sensible at 0% and 100%, where the normal one collapses."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(rewards: list[float], threshold: float) -> dict:
    if not rewards:
        return {"n": 0}
    mean, lo, hi = mean_ci(rewards)
    wins = sum(r >= threshold for r in rewards)
    slo, shi = wilson_ci(wins, len(rewards))
    r6 = lambda x: round(x, 6)  # noqa: E731
    # Interval ends are separate scalars: DVC drops list values from `dvc metrics/exp show`.
    return {"n": len(rewards), "avg_reward": r6(mean), "avg_reward_ci95_low": r6(lo), "avg_reward_ci95_high": r6(hi),
            "success_rate": r6(wins / len(rewards)), "success_rate_ci95_low": r6(slo),
            "success_rate_ci95_high": r6(shi)}


def score_file(path: Path, threshold: float) -> tuple[dict, dict[str, list[float]]]:
    """Metrics of a Gym rollouts file, overall and per task family; unreadable lines are counted."""
    by_family: dict[str, list[float]] = defaultdict(list)
    rewards: list[float] = []
    invalid = 0
    for line in iter_lines(path):
        item = parse_line(line)
        if isinstance(item, Rejected):
            invalid += 1
            continue
        rewards.append(item.reward)
        by_family[str(item.record.get("family", "all"))].append(item.reward)
    m = summarize(rewards, threshold)
    m["invalid_lines"] = invalid
    m["by_family"] = {f: summarize(v, threshold) for f, v in sorted(by_family.items())}
    return m, by_family


def reward_histogram(rewards: dict[str, list[float]]) -> list[dict]:
    """Rows {reward, baseline, trained}: how many held-out episodes of each model got each reward."""
    counts: dict[float, dict] = {}
    for name, values in rewards.items():
        for r in values:
            counts.setdefault(round(r, 2), dict.fromkeys(rewards, 0))[name] += 1
    return [{"reward": r, **c} for r, c in sorted(counts.items())]


def builtin_rollouts(model_dir: str, tasks: list[dict], p: EvalParams, params: Params, name: str) -> list[dict]:
    from ..env.agents import GenerationSettings, model_rollouts
    from ..models import load_model, load_tokenizer
    from ..templates import probe_format

    tokenizer = load_tokenizer(model_dir, params.model.trust_remote_code)
    model = load_model(model_dir, params.model.trust_remote_code)
    fmt = probe_format(tokenizer, params.convert.arguments, params.convert.reasoning)
    settings = GenerationSettings(max_turns=p.max_turns, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size,
                                  temperature=p.temperature, top_p=p.top_p, seed=p.seed)
    started = time.perf_counter()
    records = model_rollouts(model, tokenizer, tasks, settings, fmt, num_repeats=p.num_repeats, model_name=name)
    seconds = time.perf_counter() - started
    tokens = sum(r["new_tokens"] for r in records)
    log(f"evaluate: {name}: {len(records)} episodes, {tokens} new tokens in {seconds:.1f}s "
        f"({tokens / seconds:.0f} tokens/s)")
    return records


def gym_rollouts(command: str, model_dir: str, tasks_path: str, output: Path) -> None:
    cmd = command.format(model=shlex.quote(str(model_dir)), tasks=shlex.quote(str(tasks_path)),
                         output=shlex.quote(str(output)))
    log(f"evaluate: running {cmd}")
    done = subprocess.run(cmd, shell=True)
    if done.returncode != 0:
        raise StageError(f"eval.gym_command exited with {done.returncode}: {cmd}")
    if not output.exists():
        raise StageError(f"eval.gym_command did not write {output}: {cmd}")


def run(params: Params, base_dir="models/base", trained_dir="models/trained", out_dir="data/eval",
        metrics_dir="metrics", plots_dir="plots") -> dict:
    p = params.eval
    tasks_path = Path(p.tasks)
    if not tasks_path.exists():
        raise StageError(f"eval.tasks={p.tasks!r} does not exist")
    tasks = list(read_jsonl(tasks_path))
    if not tasks:
        raise StageError(f"eval.tasks={p.tasks!r} has no task")
    results, rewards = {}, {}
    with atomic_dir(out_dir) as out:
        for name, model_dir in (("baseline", base_dir), ("trained", trained_dir)):
            path = out / f"{name}_rollouts.jsonl"
            if p.backend == "builtin":
                write_jsonl(path, builtin_rollouts(model_dir, tasks, p, params, name))
            else:
                gym_rollouts(p.gym_command, model_dir, str(tasks_path), path)
            results[name], by_family = score_file(path, p.success_threshold)
            rewards[name] = [r for values in by_family.values() for r in values]
    base, trained = results["baseline"], results["trained"]
    if not trained.get("n"):
        raise StageError(f"evaluate: no scorable rollout in {Path(out_dir) / 'trained_rollouts.jsonl'}")
    trained["delta_avg_reward"] = round(trained["avg_reward"] - base.get("avg_reward", 0.0), 6)
    trained["delta_success_rate"] = round(trained["success_rate"] - base.get("success_rate", 0.0), 6)
    if p.reference_rollouts and Path(p.reference_rollouts).exists():
        ref, _ = score_file(Path(p.reference_rollouts), p.success_threshold)
        trained["reference"] = {k: v for k, v in ref.items() if k not in ("by_family", "invalid_lines")}
    write_json(Path(metrics_dir) / "baseline.json", base)
    write_json(Path(metrics_dir) / "eval.json", trained)
    rows = [{"model": name, "family": fam, "model_family": f"{fam} ({name})", "success_rate": s["success_rate"],
             "avg_reward": s["avg_reward"]}
            for name, m in results.items() for fam, s in m["by_family"].items()]
    write_json(Path(plots_dir) / "eval_by_family.json", rows)
    write_json(Path(plots_dir) / "eval_rewards.json", reward_histogram(rewards))
    return {"baseline": {k: base.get(k) for k in ("n", "avg_reward", "success_rate")},
            "trained": {k: trained.get(k) for k in ("n", "avg_reward", "success_rate", "delta_success_rate")}}
