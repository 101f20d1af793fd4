"""filter: keep rollouts with reward >= min_reward and turns within [min_turns, max_turns].

Outputs (in `paths.filtered`): `rollouts.jsonl` (each kept line byte for byte as it was), `index.jsonl`
(source, line, task key, reward and turns of each kept line, same order) and `rejects.jsonl` (every
line not kept: file, line number, bucket, reason). Counts go to `<paths.metrics>/filter.json` and add up
to the number of lines read.

Filter reads and validates every line anyway, so it also writes the catalog (`paths.catalog`, see
catalog.py): every valid rollout's task key, reward and byte offset, whatever the filter's verdict. The
pair stage groups that instead of parsing the whole input a second time.

With `eval.holdout_fraction` > 0, that share of the task keys is held out (catalog.is_held_out): their
rollouts are never kept (reason `held_out`; pair skips them too), and each held-out task's input line
goes to `<paths.holdout>/tasks.jsonl`, the tasks evaluate plays.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson

from ..catalog import CatalogEntry, CatalogWriter, is_held_out, scan, task_input, training_sources
from ..io import atomic_dir, dumps, write_json
from ..parallel import resolve_workers
from ..params import FilterParams, Params, holdout_tasks
from ..rollouts import Rejected, total_bytes
from ..stats import RunningStats
from .common import RejectLog, StageError, describe, main

METRICS = "filter.json"
PLOTS = "filter_rewards.json"


def decide(item: CatalogEntry | Rejected, p: FilterParams, holdout: float) -> CatalogEntry | Rejected:
    """The filter's verdict on one scanned line."""
    if isinstance(item, Rejected):
        return item
    if is_held_out(item.task_key, holdout):
        return Rejected(item.line, "dropped", "held_out", f"task {item.task_key} is held out for evaluation")
    if item.reward < p.min_reward:
        return Rejected(item.line, "dropped", "reward_below_min", f"{item.reward} < {p.min_reward}")
    if p.min_turns is not None and item.turns < p.min_turns:
        return Rejected(item.line, "dropped", "too_few_turns", f"{item.turns} < {p.min_turns}")
    if p.max_turns is not None and item.turns > p.max_turns:
        return Rejected(item.line, "dropped", "too_many_turns", f"{item.turns} > {p.max_turns}")
    return item


def needs_raw(p: FilterParams, holdout: float, item: CatalogEntry) -> bool:
    """Kept lines are copied; a held-out rollout's line gives its task's input line."""
    return is_held_out(item.task_key, holdout) or not isinstance(decide(item, p, holdout), Rejected)


@dataclass
class Tally:
    """Running counts; memory does not grow with the number of lines."""

    lines_read: int = 0
    kept: int = 0
    buckets: dict[str, Counter] = field(default_factory=lambda: {"dropped": Counter(), "invalid": Counter()})
    rewards_read: RunningStats = field(default_factory=RunningStats)
    rewards_kept: RunningStats = field(default_factory=RunningStats)
    # Reward distribution before/after filtering, rounded to 2 decimals so memory stays bounded.
    histogram: dict[float, list[int]] = field(default_factory=dict)

    def add(self, item: CatalogEntry | Rejected, reward: float | None) -> None:
        self.lines_read += 1
        if reward is not None:
            self.rewards_read.add(reward)
            self.histogram.setdefault(round(reward, 2), [0, 0])[0] += 1
        if isinstance(item, Rejected):
            self.buckets[item.bucket][item.reason] += 1
        else:
            self.kept += 1
            self.rewards_kept.add(item.reward)
            self.histogram[round(item.reward, 2)][1] += 1

    def histogram_rows(self) -> list[dict]:
        return [{"reward": r, "read": read, "kept": kept} for r, (read, kept) in sorted(self.histogram.items())]

    def metrics(self) -> dict:
        dropped, invalid = self.buckets["dropped"], self.buckets["invalid"]
        return {
            "lines_read": self.lines_read,
            "kept": self.kept,
            "dropped": sum(dropped.values()),
            "invalid": sum(invalid.values()),
            "dropped_by_reason": dict(sorted(dropped.items())),
            "invalid_by_reason": dict(sorted(invalid.items())),
            "reward_read": self.rewards_read.as_dict(),
            "reward_kept": self.rewards_kept.as_dict(),
        }


def nothing_kept_message(m: dict, p: FilterParams, n_files: int) -> str:
    r = m["reward_read"]
    seen = f"rewards seen {r['min']}..{r['max']} (mean {r['mean']})" if r["n"] else "no valid rollout at all"
    causes = {
        "reward_below_min": f"filter.min_reward={p.min_reward}",
        "too_few_turns": f"filter.min_turns={p.min_turns}",
        "too_many_turns": f"filter.max_turns={p.max_turns}",
        "duplicate": "duplicate lines",
        "held_out": "eval.holdout_fraction",
    }
    removed = ", ".join(f"{causes.get(k, k)} removed {v}" for k, v in m["dropped_by_reason"].items()) or "nothing dropped"
    invalid = ", ".join(f"{k}: {v}" for k, v in m["invalid_by_reason"].items()) or "none"
    return (
        f"filter kept 0 rollouts: read {m['lines_read']} lines from {n_files} file(s); {seen}. "
        f"{removed}. Invalid lines: {invalid}. Lower the setting that removed them in params.yaml."
    )


def run(params: Params) -> dict:
    paths, holdout = params.paths, params.eval.holdout_fraction
    sources = training_sources(params.rollout_specs, params.round_files, params.iterate.round)
    describe(sources)
    tally = Tally()
    with (
        atomic_dir(paths.filtered) as out,
        open(out / "rollouts.jsonl", "wb") as kept_f,
        open(out / "index.jsonl", "wb") as index_f,
        open(out / "rejects.jsonl", "wb") as rejects_f,
        CatalogWriter(paths.catalog, sources.files, params.convert.merge_system) as catalog,
        atomic_dir(paths.holdout) as held_dir,
        open(held_dir / holdout_tasks(paths.holdout).name, "wb") as held_f,
    ):
        rejects = RejectLog(rejects_f)
        workers = resolve_workers(params.data.workers, total_bytes(sources.files))
        held_keys: set[str] = set()
        for scanned in scan(sources.files, params.convert.merge_system, workers,
                            want_raw=partial(needs_raw, params.filter, holdout)):
            item = decide(scanned, params.filter, holdout)
            tally.add(item, scanned.reward if isinstance(scanned, CatalogEntry) else None)
            catalog.add(scanned)
            if isinstance(item, Rejected):
                rejects.add(item)
                if item.reason == "held_out" and scanned.task_key not in held_keys:
                    held_keys.add(scanned.task_key)
                    held_f.write(dumps(task_input(orjson.loads(scanned.line.raw))) + b"\n")
                continue
            kept_f.write(item.line.raw + b"\n")
            index_f.write(
                dumps({"source": item.line.source, "line": item.line.lineno, "task_key": item.task_key,
                       "reward": item.reward, "turns": item.turns})
                + b"\n"
            )
        m = tally.metrics()
        m["held_out_tasks"] = len(held_keys)
        m["files_read"] = len(sources.files)
        m["files_skipped"] = len(sources.skipped)
        if tally.kept == 0:
            raise StageError(nothing_kept_message(m, params.filter, len(sources.files)))
    write_json(Path(paths.metrics) / METRICS, m)
    write_json(Path(paths.plots) / PLOTS, tally.histogram_rows())
    return m


if __name__ == "__main__":
    sys.exit(main("filter", run))
