"""`dvc repro` and `dvc exp run` on a copy of this repository, with the real embedded default model.

Slow (minutes): it runs every stage for real, on small settings so CI stays well under its limit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import ROOT
from gymtrl.stats import verdict

pytestmark = pytest.mark.slow

SMALL = {
    "demo": {"train_tasks": 12, "eval_tasks": 8, "num_repeats": 4, "seed": 7},
    "train": {"max_examples": 12, "sft": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "max_length": 512,
                                          "assistant_only_loss": True, "learning_rate": 0.0001, "save_steps": 2},
              "dpo": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 512, "save_steps": 2}},
    "eval": {"max_new_tokens": 48, "max_turns": 3, "batch_size": 8},
}


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def digests(repo: Path, paths: list[str]) -> dict[str, str]:
    out = {}
    for rel in paths:
        p = repo / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                out[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


def test_repro_then_force_is_deterministic_then_exp_run(repo):
    run(["dvc", "repro"], repo)
    metrics = orjson.loads(run(["dvc", "metrics", "show", "--json"], repo))
    (workspace,) = (v["data"] for v in metrics.values())  # DVC 3.67 keys the workspace as ""
    ev = workspace["metrics/eval.json"]["data"]
    assert ev["n"] == 8 and "success_rate_ci95_low" in ev and ev["reference"]["n"] == 48
    assert workspace["metrics/baseline.json"]["data"]["n"] == 8
    assert (repo / "models/trained/model.safetensors").exists() and (repo / "models/base/model.safetensors").exists()

    stable = ["data/filtered", "data/sft", "data/pairs", "data/demo", "metrics/filter.json", "metrics/convert.json",
              "metrics/pair.json", "metrics/demo.json", "metrics/baseline.json", "metrics/eval.json", "data/eval"]
    before = digests(repo, stable)
    assert "No changes" in run(["dvc", "status"], repo) or "up to date" in run(["dvc", "status"], repo)
    run(["dvc", "repro", "--force"], repo)
    assert digests(repo, stable) == before

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    run(["dvc", "exp", "run", "--temp", "-S", "train.method=dpo", "-S", "pair.strategy=all_pairs",
         "--name", "dpo-run"], repo)
    shown = orjson.loads(run(["dvc", "exp", "show", "--json"], repo))
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or []) for e in e.get("revs", [])]
    assert "dpo-run" in names
    run(["dvc", "plots", "diff", "dpo-run", "-o", str(repo / "plots_out")], repo)
    assert (repo / "plots_out" / "index.html").exists()

    report = orjson.loads(run(["gymtrl", "compare", "--json", "--examples", "1", "--html", "report.html"], repo))
    rows = {r["run"]: r for r in report["runs"]}
    assert rows["dpo-run"]["changed_params"] == {"pair.strategy": "all_pairs", "train.method": "dpo"}
    dpo = rows["dpo-run"]
    assert dpo["n"] == 8 and dpo["verdict"] == verdict(*dpo["delta_avg_reward_ci95"])
    assert rows["workspace"]["n"] == 8 and report["baseline"]["label"] == "base model"
    page = (repo / "report.html").read_text()
    assert "<svg" in page and "training loss" in page
    from test_compare import EXTERNAL

    assert not any(marker in page for marker in EXTERNAL)
