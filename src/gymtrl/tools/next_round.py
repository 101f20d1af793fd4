"""`gymtrl next-round`: freeze this round's collection and run the next round as a DVC experiment.

A round is one pass of the pipeline; its `collect` stage has the trained model play the training tasks.
The next round must train on those samples, but they are an output of this round's train stage: a loop
DVC cannot express as one graph. So the loop is closed here, outside the graph, with DVC's own means:
round r's collection is copied to `paths.rounds`/round-<r>.jsonl.gz and `dvc add`-ed (versioned, the
.dvc file staged in git), then `dvc exp run -S iterate.round=<r+1>` runs round r+1, whose filter and
pair read data.rollouts plus the frozen rounds (`iterate.pool`). Every round is an experiment with its
own rollouts, model and metrics, and `gymtrl compare` pairs them on the same held-out tasks.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_open, log
from ..params import Params, round_file
from ..stages.collect import ROLLOUTS


class RoundError(RuntimeError):
    """This round cannot be frozen yet; the message says what to run."""


@dataclass(frozen=True)
class NextRound:
    frozen: Path  # this round's collection, now versioned by DVC
    command: list[str]  # the experiment that runs the next round


def freeze(collected: Path, target: Path) -> None:
    """A gzip copy with a fixed header (no time, no file name: the temp file's would vary), so the same
    collection always has the same bytes and DVC hash; written atomically like every artifact."""
    with open(collected, "rb") as src, atomic_open(target) as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        shutil.copyfileobj(src, gz)


def prepare(params: Params, overrides: list[str], repo: Path = Path(".")) -> NextRound:
    """Checks that this round is complete, freezes its collection, returns the next round's command."""
    r = params.iterate.round
    stale = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    if json.loads(stale.stdout or "{}"):
        raise RoundError(f"round {r} is not complete (`dvc status` lists changes): run `dvc repro` first, so that "
                         f"the collection frozen as round {r} is the current model's")
    collected = repo / params.paths.collected / ROLLOUTS
    if not collected.exists():
        raise RoundError(f"{collected} does not exist: run `dvc repro` (the collect stage) first")
    target = repo / round_file(params.paths.rounds, r)
    if target.exists():
        raise RoundError(f"{target} already exists: round {r} was frozen before. Set iterate.round in "
                         f"params.yaml to the round the workspace holds, or remove {target}.dvc and the file")
    freeze(collected, target)
    rel = target.relative_to(repo) if target.is_absolute() else target
    subprocess.run(["dvc", "add", "-q", str(rel)], cwd=repo, check=True)
    subprocess.run(["git", "add", f"{rel}.dvc", str(rel.parent / ".gitignore")], cwd=repo, check=True)
    log(f"next-round: round {r}'s collection frozen as {rel} (dvc add; {rel}.dvc staged in git)")
    sets = [a for kv in [f"iterate.round={r + 1}", *overrides] for a in ("-S", kv)]
    return NextRound(target, ["dvc", "exp", "run", *sets, "--name", f"round-{r + 1}"])


def run(params: Params, overrides: list[str], execute: bool = True) -> int:
    step = prepare(params, overrides)
    log("next-round: " + " ".join(step.command))
    if not execute:
        return 0
    return subprocess.run(step.command).returncode
