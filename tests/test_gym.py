"""eval.backend=gym against real NeMo Gym 0.4.0: its own venv (installed on first use), the project's
calculator resources server, a served tiny model, collection, and teardown that leaves no process,
also when the stage is killed with SIGKILL. Slow-ish (Ray and Gym's servers start in ~30 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import ROOT, raw_params
from gymtrl.params import parse_params
from gymtrl.processes import MARKER

pytestmark = pytest.mark.slow

SMALL = {"max_new_tokens": 8, "max_turns": 2, "batch_size": 4}


def gym_raw(tiny_model_dir, work: Path, **eval_over) -> dict:
    """The repository's params; both models are the tiny one; Gym's venv is the project's own (cached
    between tests and runs), its working folder per test."""
    return raw_params(
        demo={"train_tasks": 6, "eval_tasks": 4, "collect_tasks": 6, "num_repeats": 2, "seed": 3},
        eval={**SMALL, **eval_over},
        paths={"base_model": str(tiny_model_dir), "trained_model": str(tiny_model_dir),
               "gym_venv": str(ROOT / ".gymtrl" / "gym-venv"), "gym_work": str(work / "gym")})


def run_processes() -> list[str]:
    """Command lines of live processes that any gymtrl run marked (Gym, Ray, servers)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if any(v.startswith(f"{MARKER}=".encode()) for v in (entry / "environ").read_bytes().split(b"\0")):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue
    return found


def wait_gone(seconds: float = 30) -> list[str]:
    deadline = time.time() + seconds
    while (left := run_processes()) and time.time() < deadline:
        time.sleep(0.5)
    return left


def test_real_gym_plays_the_tasks_as_the_builtin_loop_does(workdir, tiny_model_dir):
    """The same checkpoint, greedy, on the same tasks: the model says the same things and every task
    gets the same reward through real Gym as through the builtin loop."""
    from gymtrl.play import builtin_rollouts, gym_rollouts
    from gymtrl.stages import demo
    from gymtrl.stages.evaluate import sampling

    params = parse_params(gym_raw(tiny_model_dir, workdir))
    demo.run(params)
    tasks = [orjson.loads(x) for x in Path("data/demo/tasks_eval.jsonl").read_bytes().splitlines()]
    via_gym = gym_rollouts(str(tiny_model_dir), tasks, sampling(params), params, "trained")
    assert not wait_gone(), "a Gym, Ray or model server process outlived the collection"
    builtin = builtin_rollouts(str(tiny_model_dir), tasks, sampling(params), params, "trained")
    assert [r["_ng_task_index"] for r in via_gym] == [t["_ng_task_index"] for t in tasks]

    def said(record):
        return [c["text"] for item in record["response"]["output"] if item["type"] == "message"
                for c in item["content"]]

    for g, b in zip(via_gym, builtin):
        assert g["reward"] == b["reward"] and g["family"] == b["family"]
        assert said(g) == said(b), "the served model saw another prompt than the builtin loop renders"
    logs = Path("gym/logs/trained")
    assert "servers ready!" in (logs / "gym_env.log").read_text()


def test_kill_9_mid_collection_leaves_no_process_and_the_next_run_is_clean(workdir, tiny_model_dir):
    from gymtrl.stages import demo

    raw = gym_raw(tiny_model_dir, workdir, backend="gym")
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    demo.run(parse_params(raw))
    stage = subprocess.Popen([sys.executable, "-m", "gymtrl.stages.evaluate"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    collect_log = Path("gym/logs/baseline/collect.log")
    deadline = time.time() + 300
    while time.time() < deadline and not collect_log.exists() and stage.poll() is None:
        time.sleep(0.2)
    assert stage.poll() is None and collect_log.exists(), "the stage never reached the collection"
    assert run_processes(), "Gym and the model server run during the collection"
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    assert not wait_gone(40), "processes outlived the killed stage"
    assert not Path("data/eval").exists()  # no half-written output for DVC to cache
    assert "servers ready!" in Path("gym/logs/baseline/gym_env.log").read_text()  # the next run must not read it
    # The next run starts from scratch and completes (one task keeps it short).
    Path("params.yaml").write_text(yaml.safe_dump({**raw, "eval": {**raw["eval"], "limit": 1}}))
    done = subprocess.run([sys.executable, "-m", "gymtrl.stages.evaluate"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = orjson.loads(Path("metrics/eval.json").read_bytes())
    assert metrics["n"] == 1 and metrics["invalid_lines"] == 0
    assert not wait_gone()


def test_no_python_3_12_is_a_clear_error(monkeypatch):
    from gymtrl import nemo_gym

    monkeypatch.setattr(nemo_gym, "_version_of", lambda python: (3, 11))
    with pytest.raises(nemo_gym.GymError, match=r"no Python >= 3.12 found .* set eval.gym.python"):
        nemo_gym.find_python("auto")
    with pytest.raises(nemo_gym.GymError, match=r"eval.gym.python='/usr/bin/python3' is not a Python >= 3.12"):
        nemo_gym.find_python("/usr/bin/python3")
