"""A model plays tasks and its rollouts are scored: the one home of both, for evaluate and collect.

Backends: `builtin` has the model play the embedded calculator tasks in this process
(env/model_agent.py); `gym` serves the model and has real NeMo Gym play the tasks against it
(serving.py, nemo_gym.py), with the embedded calculator resources server or the user's environment.
Either way the rollouts are Gym records, scored by the same reader, so `gymtrl inspect`, filter and
the comparisons read them like any other Gym output.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .io import log, write_jsonl
from .params import Params
from .progress import Progress
from .rollouts import Rejected, iter_lines, parse_line
from .stats import reward_metrics


class PlayError(RuntimeError):
    """The model could not play the tasks (Gym or the model server failed); the message says why."""


@dataclass(frozen=True)
class Sampling:
    """How the model plays: the environment's limits (max_turns) and the sampler's settings."""

    backend: str  # builtin | gym
    num_repeats: int  # samples per task
    temperature: float  # 0 = greedy
    top_p: float
    max_turns: int
    max_new_tokens: int
    batch_size: int
    seed: int


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


def play(model_dir: str, tasks: list[dict], sampling: Sampling, params: Params, name: str) -> list[dict]:
    """`name` labels the model in the rollouts and names its Gym logs (`paths.gym_work`/logs/<name>)."""
    run = builtin_rollouts if sampling.backend == "builtin" else gym_rollouts
    return run(model_dir, tasks, sampling, params, name)


def builtin_rollouts(model_dir: str, tasks: list[dict], s: Sampling, params: Params, name: str) -> list[dict]:
    """The model plays the embedded environment's tasks in this process (env/model_agent.py)."""
    from .engines import EngineError, GenerationSettings, HFEngine, VLLMEngine, pick_engine
    from .env.model_agent import play as play_tasks
    from .models import load_model, load_tokenizer, stop_token_ids
    from .templates import probe_format

    try:
        engine_name = pick_engine(params.eval.engine)
    except EngineError as err:
        raise PlayError(str(err)) from None
    tokenizer = load_tokenizer(model_dir, params.model.trust_remote_code)
    fmt = probe_format(tokenizer, params.convert.arguments, params.convert.reasoning)
    settings = GenerationSettings(max_turns=s.max_turns, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                                  temperature=s.temperature, top_p=s.top_p, seed=s.seed)
    stop_ids = stop_token_ids(tokenizer)  # every token that ends a turn in this template, eos first
    if engine_name == "vllm":
        engine = VLLMEngine.load(model_dir, tokenizer, settings, stop_ids, params.model.trust_remote_code)
    else:
        engine = HFEngine(load_model(model_dir, params.model.trust_remote_code), tokenizer, settings, stop_ids)
    started = time.perf_counter()
    try:
        with Progress(name, len(tasks) * s.num_repeats, "episodes") as progress:
            def on_batch(done: int, new_tokens: int) -> None:
                rate = new_tokens / max(time.perf_counter() - started, 1e-9)
                progress.update(done, **{"tokens/s": f"{rate:.0f}"})

            records = play_tasks(engine, tokenizer, tasks, settings, fmt, num_repeats=s.num_repeats, model_name=name,
                                 on_batch=on_batch)
    finally:  # evaluate loads the trained model next: a failed vLLM engine must not keep the GPU
        engine.close()
    seconds = time.perf_counter() - started
    tokens = sum(r["new_tokens"] for r in records)
    log(f"{name}: {len(records)} episodes ({engine_name}), {tokens} new tokens in {seconds:.1f}s "
        f"({tokens / seconds:.0f} tokens/s)")
    return records


def gym_rollouts(model_dir: str, tasks: list[dict], s: Sampling, params: Params, name: str) -> list[dict]:
    """Real NeMo Gym plays the tasks against a served copy of the model: serve it, `gym env start`,
    collect, stop everything (also if this process dies: processes.py). Rollouts come back sorted by task
    and sample, so the output does not depend on which rollout Gym finished first."""
    import orjson

    from .nemo_gym import (GymError, collect_command, ensure_venv, gym_env, prepare_workspace, start_command,
                           wait_ready)
    from .processes import Supervisor, log_tail
    from .engines import EngineError, pick_engine
    from .serving import free_port, serve_command, served_copy, wait_healthy

    g, paths = params.eval.gym, params.paths
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
        engine = pick_engine(params.eval.engine)
        with Supervisor() as services:
            port = free_port()
            server = services.start(serve_command(engine, model, port, g.tool_call_parser,
                                                  params.model.trust_remote_code), logs / "model_server.log")
            wait_healthy(f"http://127.0.0.1:{port}", server, logs / "model_server.log", g.start_timeout)
            gym = services.start(start_command(ws, venv, str(model), f"http://127.0.0.1:{port}/v1", g.agent,
                                               s.max_turns), logs / "gym_env.log", cwd=ws.root, env=env)
            wait_ready(gym, logs / "gym_env.log", g.start_timeout)
            log(f"{name}: Gym is up ({time.perf_counter() - started:.0f} s); collecting {len(tasks)} task(s) "
                f"x {s.num_repeats}")
            cmd = collect_command(g.collect, venv, g.agent, raw / "tasks.jsonl", raw / "rollouts.jsonl",
                                  s.num_repeats, g.parallel, s.temperature, s.top_p, s.max_new_tokens)
            with open(logs / "collect.log", "wb") as out:
                done = subprocess.run(cmd, cwd=ws.root, env=services.env(env), stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0 or not (raw / "rollouts.jsonl").exists():
                raise GymError(f"`{cmd[0]}` exited with {done.returncode}:\n{log_tail(logs / 'collect.log')}")
    except (GymError, EngineError, RuntimeError) as err:
        raise PlayError(f"{name}: {err}") from None
    records = [orjson.loads(line) for line in (raw / "rollouts.jsonl").read_bytes().splitlines() if line.strip()]
    records.sort(key=lambda r: (r.get("_ng_task_index", 0), r.get("_ng_rollout_index", 0)))
    log(f"{name}: {len(records)} rollouts from Gym in {time.perf_counter() - started:.0f} s (logs: {logs})")
    return records
