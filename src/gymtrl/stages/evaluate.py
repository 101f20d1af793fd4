"""evaluate: base model and trained model on the same held-out tasks, scored, side by side.

Backends: `builtin` has the model play the embedded calculator tasks (env/model_agent.py);
`gym` runs `eval.gym_command` (a user's NeMo Gym setup against a server of each model) and reads the
rollouts it writes. Either way the rollouts are saved in Gym format and scored by the same reader,
so `gymtrl inspect` and the comparisons read them like any other Gym output.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import EvalParams, Params
from ..rollouts import Rejected, iter_lines, parse_line
from ..stats import reward_metrics
from .common import StageError, log, main

BASELINE_METRICS, TRAINED_METRICS = "baseline.json", "eval.json"
BY_FAMILY_PLOT, REWARDS_PLOT = "eval_by_family.json", "eval_rewards.json"
# Held-out rollouts of each model, in `paths.eval` (gymtrl compare reads these from every experiment).
ROLLOUTS = {"baseline": "baseline_rollouts.jsonl", "trained": "trained_rollouts.jsonl"}

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
    m = reward_metrics(rewards, threshold)
    m["invalid_lines"] = invalid
    m["by_family"] = {f: reward_metrics(v, threshold) for f, v in sorted(by_family.items())}
    return m, by_family


def reward_histogram(rewards: dict[str, list[float]]) -> list[dict]:
    """Rows {reward, baseline, trained}: how many held-out episodes of each model got each reward."""
    counts: dict[float, dict] = {}
    for name, values in rewards.items():
        for r in values:
            counts.setdefault(round(r, 2), dict.fromkeys(rewards, 0))[name] += 1
    return [{"reward": r, **c} for r, c in sorted(counts.items())]


def builtin_rollouts(model_dir: str, tasks: list[dict], p: EvalParams, params: Params, name: str) -> list[dict]:
    from ..env.model_agent import GenerationSettings, play
    from ..models import load_model, load_tokenizer
    from ..templates import probe_format

    tokenizer = load_tokenizer(model_dir, params.model.trust_remote_code)
    model = load_model(model_dir, params.model.trust_remote_code)
    fmt = probe_format(tokenizer, params.convert.arguments, params.convert.reasoning)
    settings = GenerationSettings(max_turns=p.max_turns, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size,
                                  temperature=p.temperature, top_p=p.top_p, seed=p.seed)
    started = time.perf_counter()
    records = play(model, tokenizer, tasks, settings, fmt, num_repeats=p.num_repeats, model_name=name)
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


def run(params: Params) -> dict:
    p, paths = params.eval, params.paths
    tasks_path = Path(p.tasks)
    if not tasks_path.exists():
        raise StageError(f"eval.tasks={p.tasks!r} does not exist")
    tasks = list(read_jsonl(tasks_path))
    if not tasks:
        raise StageError(f"eval.tasks={p.tasks!r} has no task")
    results, rewards = {}, {}
    with atomic_dir(paths.eval) as out:
        for name, model_dir in (("baseline", paths.base_model), ("trained", paths.trained_model)):
            path = out / ROLLOUTS[name]
            if p.backend == "builtin":
                write_jsonl(path, builtin_rollouts(model_dir, tasks, p, params, name))
            else:
                gym_rollouts(p.gym_command, model_dir, str(tasks_path), path)
            results[name], by_family = score_file(path, p.success_threshold)
            rewards[name] = [r for values in by_family.values() for r in values]
    base, trained = results["baseline"], results["trained"]
    if not trained.get("n"):
        raise StageError(f"evaluate: no scorable rollout in {Path(paths.eval) / ROLLOUTS['trained']}")
    trained["delta_avg_reward"] = round(trained["avg_reward"] - base.get("avg_reward", 0.0), 6)
    trained["delta_success_rate"] = round(trained["success_rate"] - base.get("success_rate", 0.0), 6)
    if p.reference_rollouts and Path(p.reference_rollouts).exists():
        ref, _ = score_file(Path(p.reference_rollouts), p.success_threshold)
        trained["reference"] = {k: v for k, v in ref.items() if k not in ("by_family", "invalid_lines")}
    write_json(Path(paths.metrics) / BASELINE_METRICS, base)
    write_json(Path(paths.metrics) / TRAINED_METRICS, trained)
    rows = [{"model": name, "family": fam, "model_family": f"{fam} ({name})", "success_rate": s["success_rate"],
             "avg_reward": s["avg_reward"]}
            for name, m in results.items() for fam, s in m["by_family"].items()]
    write_json(Path(paths.plots) / BY_FAMILY_PLOT, rows)
    write_json(Path(paths.plots) / REWARDS_PLOT, reward_histogram(rewards))
    return {"baseline": {k: base.get(k) for k in ("n", "avg_reward", "success_rate")},
            "trained": {k: trained.get(k) for k in ("n", "avg_reward", "success_rate", "delta_success_rate")}}


if __name__ == "__main__":
    sys.exit(main("evaluate", run))
