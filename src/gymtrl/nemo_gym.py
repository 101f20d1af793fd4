"""Real NeMo Gym, driven the way its docs say a user does by hand, once per model:
`gym env start` (Ray, the resources server, the agent, a model adapter pointed at our server), then
`ng_collect_rollouts` on the tasks, then SIGINT (processes.py makes sure nothing survives).

Gym is never a dependency of this project's venv: it lives in its own, `.gymtrl/gym-venv`, made on first
use from a Python >= 3.12 found on this machine (`eval.gym.python`). Every Gym server would otherwise
create and fill a venv of its own; they all link to that one instead (`+skip_venv_if_present`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .io import read_json, write_json
from .processes import log_tail

EMBEDDED = "embedded"
EMBEDDED_SERVER = "gymtrl_calculator"  # resources_servers/<name>, as Gym looks it up
MODEL_TYPE = "vllm_model"  # Gym's adapter for any OpenAI-compatible chat completions server
SERVER_FILES = Path(__file__).parent / "env" / "gym_server"


class GymError(RuntimeError):
    """Gym could not be installed, started or run; the message says what to change."""


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def find_python(setting: str) -> str:
    """`eval.gym.python`: a path, or auto = the oldest Python >= 3.12 on PATH, else under pyenv (3.12 is
    what Gym 0.4.0 and its Ray wheels are built and documented for)."""
    if setting != "auto":
        if (_version_of(setting) or (0, 0)) < (3, 12):
            raise GymError(f"eval.gym.python={setting!r} is not a Python >= 3.12 (NeMo Gym needs one)")
        return setting
    names = [f"python3.{minor}" for minor in range(12, 21)]
    candidates = [p for p in (shutil.which(n) for n in names) if p]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python3"))
    candidates += [p for p in (shutil.which("python3"),) if p]
    for python in candidates:
        if (_version_of(python) or (0, 0)) >= (3, 12):
            return python
    raise GymError("eval.gym.python=auto: no Python >= 3.12 found on PATH or under pyenv (NeMo Gym needs one); "
                   "install one, or set eval.gym.python to its path")


def ensure_venv(venv: Path, python_setting: str, package: str) -> Path:
    """Gym's own venv, made on first use; reused while it holds the same `package` (idempotent)."""
    venv = venv.absolute()
    stamp = venv / "gymtrl-installed.json"
    if stamp.exists() and read_json(stamp).get("package") == package and (venv / "bin" / "gym").exists():
        return venv
    python = find_python(python_setting)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [[python, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "uv"],
             [str(venv / "bin" / "uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), package]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise GymError(f"installing {package} into {venv} failed at `{' '.join(cmd)}`:\n{done.stderr[-2000:]}")
    write_json(stamp, {"package": package, "python": python})
    return venv


@dataclass(frozen=True)
class Workspace:
    root: Path  # Gym's working directory: it finds resources_servers/<name> here
    config: Path  # the environment's Gym config (resources server + agent)
    venvs: Path  # +uv_venv_dir: one link per server to the shared Gym venv


def servers_of(config: dict) -> list[tuple[str, str]]:
    """(server type, server name) of every server a Gym config defines."""
    return [(kind, name) for top in config.values() if isinstance(top, dict)
            for kind, servers in top.items() if isinstance(servers, dict) for name in servers]


def prepare_workspace(root: Path, config_setting: str, venv: Path) -> Workspace:
    """The embedded calculator server copied into `root` (or the user's config as it is), and every
    server's venv linked to the shared Gym venv."""
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    if config_setting == EMBEDDED:
        server = root / "resources_servers" / EMBEDDED_SERVER
        shutil.rmtree(server, ignore_errors=True)
        (server / "configs").mkdir(parents=True)
        for name in ("app.py", "requirements.txt"):
            shutil.copy(SERVER_FILES / name, server / name)
        config = server / "configs" / f"{EMBEDDED_SERVER}.yaml"
        shutil.copy(SERVER_FILES / f"{EMBEDDED_SERVER}.yaml", config)
    else:
        config = Path(config_setting).absolute()
        if not config.exists():
            raise GymError(f"eval.gym.config={config_setting!r} does not exist")
    venvs = root / "venvs"
    for kind, name in [*servers_of(yaml.safe_load(config.read_text())), ("responses_api_models", MODEL_TYPE)]:
        link = venvs / kind / name / ".venv"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(venv)
    return Workspace(root, config, venvs)


def gym_env(ws: Workspace, venv: Path) -> dict:
    """Environment for Gym's processes: Ray kept local and quiet, our package importable by the server.
    Ray's temp folder is short and fixed (per user): its socket paths must stay under 107 bytes, which a
    folder inside a project or a pytest tmp dir does not, and reusing one keeps kills from leaking many."""
    ray_tmp = Path(tempfile.gettempdir()) / f"gymtrl-ray-{os.getuid()}"
    ray_tmp.mkdir(exist_ok=True)
    return {"RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled",
            "GYMTRL_SRC": str(Path(__file__).parents[1]), "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv)}


def start_command(ws: Workspace, venv: Path, model: str, url: str, agent: str, max_steps: int) -> list[str]:
    return [str(venv / "bin" / "gym"), "env", "start", "--config", str(ws.config), "--model-type", MODEL_TYPE,
            "--model", model, "--model-url", url, "--model-api-key", "gymtrl",
            f"+uv_venv_dir={ws.venvs}", "+skip_venv_if_present=true",
            f"+{agent}.responses_api_agents.simple_agent.max_steps={max_steps}"]


def wait_ready(proc, log: Path, timeout: float) -> None:
    """Until `gym env start` says every server is up (`servers ready!`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and "servers ready!" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise GymError(f"`gym env start` exited with {proc.returncode}:\n{log_tail(log)}")
        time.sleep(1)
    raise GymError(f"Gym's servers were not ready within {timeout:.0f} s (eval.gym.start_timeout):\n{log_tail(log)}")


def collect_command(collect: str, venv: Path, agent: str, tasks: Path, output: Path, num_repeats: int,
                    parallel: int, temperature: float, top_p: float, max_tokens: int) -> list[str]:
    """`eval.gym.collect` (Gym 0.4.0's `ng_collect_rollouts`, or `gym eval run --no-serve`) with its overrides."""
    words = collect.split()
    return [str(venv / "bin" / words[0]), *words[1:], f"+agent_name={agent}", f"+input_jsonl_fpath={tasks}",
            f"+output_jsonl_fpath={output}", f"+num_repeats={num_repeats}", f"+num_samples_in_parallel={parallel}",
            f"+responses_create_params.temperature={temperature}", f"+responses_create_params.top_p={top_p}",
            f"+responses_create_params.max_output_tokens={max_tokens}", "+upload_rollouts_to_wandb=false"]
