"""evaluate: base model and trained model on the same held-out tasks, scored, side by side.

Backends: `builtin` has the model play the embedded calculator tasks in this process
(env/model_agent.py); `gym` serves each model and has real NeMo Gym play the tasks against it
(serving.py, nemo_gym.py), with the embedded calculator resources server or the user's environment.
Either way the rollouts are saved in Gym format and scored by the same reader, so `gymtrl inspect`
and the comparisons read them like any other Gym output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import Params
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


def builtin_rollouts(model_dir: str, tasks: list[dict], params: Params, name: str) -> list[dict]:
    """The model plays the embedded environment's tasks in this process (env/model_agent.py)."""
    from ..env.model_agent import GenerationSettings, play
    from ..models import load_model, load_tokenizer
    from ..templates import probe_format

    p = params.eval
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


def gym_rollouts(model_dir: str, tasks: list[dict], params: Params, name: str) -> list[dict]:
    """Real NeMo Gym plays the tasks against a served copy of the model: serve it, `gym env start`,
    collect, stop everything (also if this stage dies: processes.py). Rollouts come back sorted by task
    and sample, so the output does not depend on which rollout Gym finished first."""
    import orjson

    from ..nemo_gym import (GymError, collect_command, ensure_venv, gym_env, prepare_workspace, start_command,
                            wait_ready)
    from ..processes import Supervisor, log_tail
    from ..serving import free_port, pick_engine, serve_command, served_copy, wait_healthy

    p, g, paths = params.eval, params.eval.gym, params.paths
    started = time.perf_counter()
    try:
        venv = ensure_venv(Path(paths.gym_venv), g.python, g.package)
        ws = prepare_workspace(Path(paths.gym_work), g.config, venv)
        logs, raw = ws.root / "logs" / name, ws.root / "rollouts" / name
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir(parents=True)  # Gym writes its side files beside the output and needs the folder
        write_jsonl(raw / "tasks.jsonl", tasks)
        model = served_copy(model_dir, ws.root / "served" / name, params.model.trust_remote_code)
        env = gym_env(ws, venv)
        with Supervisor() as services:
            port = free_port()
            server = services.start(serve_command(pick_engine(g.engine), model, port, g.tool_call_parser,
                                                  params.model.trust_remote_code), logs / "model_server.log")
            wait_healthy(f"http://127.0.0.1:{port}", server, logs / "model_server.log", g.start_timeout)
            gym = services.start(start_command(ws, venv, str(model), f"http://127.0.0.1:{port}/v1", g.agent,
                                               p.max_turns), logs / "gym_env.log", cwd=ws.root, env=env)
            wait_ready(gym, logs / "gym_env.log", g.start_timeout)
            log(f"evaluate: {name}: Gym is up ({time.perf_counter() - started:.0f} s); collecting {len(tasks)} "
                f"task(s) x {p.num_repeats}")
            cmd = collect_command(g.collect, venv, g.agent, raw / "tasks.jsonl", raw / "rollouts.jsonl",
                                  p.num_repeats, g.parallel, p.temperature, p.top_p, p.max_new_tokens)
            with open(logs / "collect.log", "wb") as out:
                done = subprocess.run(cmd, cwd=ws.root, env=services.env(env), stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0 or not (raw / "rollouts.jsonl").exists():
                raise GymError(f"`{cmd[0]}` exited with {done.returncode}:\n{log_tail(logs / 'collect.log')}")
    except (GymError, RuntimeError) as err:
        raise StageError(f"evaluate ({name}, eval.backend=gym): {err}") from None
    records = [orjson.loads(line) for line in (raw / "rollouts.jsonl").read_bytes().splitlines() if line.strip()]
    records.sort(key=lambda r: (r.get("_ng_task_index", 0), r.get("_ng_rollout_index", 0)))
    log(f"evaluate: {name}: {len(records)} rollouts from Gym in {time.perf_counter() - started:.0f} s "
        f"(logs: {logs})")
    return records


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
            play = builtin_rollouts if p.backend == "builtin" else gym_rollouts
            write_jsonl(path, play(model_dir, tasks, params, name))
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
