"""Kill -9 in the middle of each data stage: no partial output where DVC would cache it, and the next
run finishes correctly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import FIXTURES, write_params


def big_rollouts(path: Path, copies: int) -> int:
    seeds = [orjson.loads(r) for p in sorted(FIXTURES.glob("*example_rollouts.jsonl"))
             for r in p.read_bytes().splitlines() if r.startswith(b"{") and b'"response"' in r]
    n = 0
    with open(path, "wb") as f:
        for c in range(copies):
            for i, rec in enumerate(seeds):
                rec = dict(rec, _ng_task_index=c * 1000 + i // 2, reward=(c + i) % 5 / 4)
                f.write(orjson.dumps(rec) + b"\n")
                n += 1
    return n


def kill_midway(cmd: list[str], out: Path, cwd: Path) -> None:
    """Starts the stage, waits until it is writing its temp output, then SIGKILLs it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{out.name}.") for p in out.parent.glob(".*")):
            time.sleep(0.3)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed; make the input bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The stage's worker processes (data.workers) must not outlive it.
    deadline = time.time() + 10
    while time.time() < deadline and processes_in(cwd):
        time.sleep(0.1)
    assert not processes_in(cwd), "worker processes survived the stage"


def processes_in(cwd: Path) -> list[int]:
    """Pids of live processes whose working directory is `cwd` (the stage and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == cwd.resolve() and "Z" not in (entry / "stat").read_text().split()[2]:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("stage, out", [("filter", "data/filtered"), ("convert", "data/sft"), ("pair", "data/pairs")])
def test_kill_9_leaves_no_partial_output(tmp_path, tiny_model_dir, stage, out):
    lines = big_rollouts(tmp_path / "rollouts.jsonl", copies=300)
    write_params(tmp_path / "params.yaml", data={"rollouts": "rollouts.jsonl"}, filter={"min_reward": 0.5},
                 paths={"base_model": str(tiny_model_dir)})
    if stage != "filter":
        subprocess.run([sys.executable, "-m", "gymtrl.stages.filter"], cwd=tmp_path, check=True, capture_output=True)
    cmd = [sys.executable, "-m", f"gymtrl.stages.{stage}"]
    kill_midway(cmd, tmp_path / out, tmp_path)
    assert not (tmp_path / out).exists()  # nothing DVC could cache as if it were complete
    assert not (tmp_path / "metrics" / f"{stage}.json").exists()
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    m = orjson.loads((tmp_path / "metrics" / f"{stage}.json").read_bytes())
    if stage == "filter":
        assert m["lines_read"] == lines and m["kept"] + m["dropped"] + m["invalid"] == lines
    else:
        assert (m["rows"] if stage == "convert" else m["pairs"]) > 0
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == {
        "filter": ["index.jsonl", "rejects.jsonl", "rollouts.jsonl"], "convert": ["rejects.jsonl", "train.parquet"],
        "pair": ["train.parquet"]}[stage]
