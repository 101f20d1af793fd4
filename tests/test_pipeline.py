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
    "demo": {"train_tasks": 12, "eval_tasks": 8, "collect_tasks": 12, "num_repeats": 4, "seed": 7},
    "train": {"max_examples": 12, "sft": {"num_train_epochs": 1, "per_device_train_batch_size": 4,
                                          "gradient_accumulation_steps": 1, "max_length": 512,
                                          "assistant_only_loss": True, "learning_rate": 0.0001, "save_steps": 2},
              "dpo": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 512, "save_steps": 2}},
    "eval": {"max_new_tokens": 48, "max_turns": 3, "batch_size": 8},
    "collect": {"num_repeats": 2},
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
    shutil.copytree(ROOT / "data" / "rounds", repo / "data" / "rounds")
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
              "metrics/pair.json", "metrics/demo.json", "metrics/baseline.json", "metrics/eval.json", "data/eval",
              "data/collected", "metrics/collect.json"]
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


def test_next_round_trains_on_the_collection_and_compares_round_over_round(repo):
    """After the first test: round 1 is committed; one command freezes its collection and runs round 2."""
    collected = sum(1 for _ in (repo / "data/collected/rollouts.jsonl").open())
    assert collected == 12 * 2
    first = orjson.loads((repo / "metrics/filter.json").read_bytes())
    run(["gymtrl", "next-round"], repo)
    assert (repo / "data/rounds/round-1.jsonl.gz.dvc").exists()
    shown = orjson.loads(run(["dvc", "exp", "show", "--json"], repo))
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or []) for e in e.get("revs", [])]
    assert "round-2" in names
    # The experiment's commit versions the frozen round (its .dvc file), not the data (DVC's cache has it).
    (ref,) = [r for r in run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).split()
              if r.endswith("/round-2")]
    tree = run(["git", "ls-tree", "-r", "--name-only", ref], repo).split()
    assert "data/rounds/round-1.jsonl.gz.dvc" in tree and "data/rounds/round-1.jsonl.gz" not in tree
    # Round 2 (now in the workspace) read the demo's rollouts and round 1's samples.
    second = orjson.loads((repo / "metrics/filter.json").read_bytes())
    assert second["lines_read"] == first["lines_read"] + collected and second["files_read"] == 2
    assert orjson.loads((repo / "metrics/collect.json").read_bytes())["round"] == 2
    report = orjson.loads(run(["gymtrl", "compare", "--json", "round-2", "--baseline", "HEAD"], repo))
    (row,) = report["runs"]
    assert row["run"] == "round-2" and row["n"] == 8 and report["baseline"]["label"] == "HEAD"
    assert row["changed_params"] == {"iterate.round": 2}
    # An incomplete round is not frozen: after a params change, next-round says to run dvc repro first.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["filter"]["min_reward"] = 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run(["gymtrl", "next-round", "--no-run"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 2 and "round 2 is not complete" in done.stderr and "dvc repro" in done.stderr
    assert not (repo / "data/rounds/round-2.jsonl.gz").exists()
