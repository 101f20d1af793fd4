"""evaluate: base model and trained model on the same held-out tasks, scored, side by side.

Each model plays the tasks through play.py (eval.backend: builtin in this process, or real NeMo Gym),
greedy by default; the rollouts are saved in Gym format and scored by the same reader, so `gymtrl
inspect` and `gymtrl compare` read them like any other Gym output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import Params
from ..play import PlayError, Sampling, play, score_file
from .common import StageError, main

BASELINE_METRICS, TRAINED_METRICS = "baseline.json", "eval.json"
BY_FAMILY_PLOT, REWARDS_PLOT = "eval_by_family.json", "eval_rewards.json"
# Held-out rollouts of each model, in `paths.eval` (gymtrl compare reads these from every experiment).
ROLLOUTS = {"baseline": "baseline_rollouts.jsonl", "trained": "trained_rollouts.jsonl"}


def sampling(params: Params) -> Sampling:
    p = params.eval
    return Sampling(backend=p.backend, num_repeats=p.num_repeats, temperature=p.temperature, top_p=p.top_p,
                    max_turns=p.max_turns, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size, seed=p.seed)


def reward_histogram(rewards: dict[str, list[float]]) -> list[dict]:
    """Rows {reward, baseline, trained}: how many held-out episodes of each model got each reward."""
    counts: dict[float, dict] = {}
    for name, values in rewards.items():
        for r in values:
            counts.setdefault(round(r, 2), dict.fromkeys(rewards, 0))[name] += 1
    return [{"reward": r, **c} for r, c in sorted(counts.items())]


def measures_what_was_trained(params: Params) -> None:
    """Own rollouts (data.rollouts elsewhere than the demo's) scored on the demo's calculator tasks would
    be a number about another environment: refuse it, naming the keys."""
    demo = Path(params.paths.demo).absolute()
    own = [r for r in params.rollout_specs if demo not in Path(r).absolute().parents]
    if own and demo in Path(params.eval.tasks).absolute().parents:
        raise StageError(
            f"data.rollouts={params.data.rollouts!r} are your own rollouts, but eval.tasks={params.eval.tasks!r} "
            f"are the embedded calculator demo's: the result would be about another environment than the one "
            f"trained for. Set eval.tasks to held-out tasks of your environment (Gym input lines), and "
            f"eval.backend: gym with eval.gym.config / eval.gym.agent naming that environment.")


def run(params: Params) -> dict:
    p, paths = params.eval, params.paths
    measures_what_was_trained(params)
    tasks_path = Path(p.tasks)
    if not tasks_path.exists():
        raise StageError(f"eval.tasks={p.tasks!r} does not exist")
    tasks = list(read_jsonl(tasks_path))[: p.limit]
    if not tasks:
        raise StageError(f"eval.tasks={p.tasks!r} has no task")
    results, rewards = {}, {}
    with atomic_dir(paths.eval) as out:
        for name, model_dir in (("baseline", paths.base_model), ("trained", paths.trained_model)):
            path = out / ROLLOUTS[name]
            try:
                write_jsonl(path, play(model_dir, tasks, sampling(params), params, name))
            except PlayError as err:
                raise StageError(f"evaluate (eval.backend={p.backend}): {err}") from None
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
