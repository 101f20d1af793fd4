"""demo: the embedded environment's tasks (train / held-out / collect) and the reference agent's rollouts.

This is the default `data.rollouts`: real Gym-format rollout lines with spread rewards, so that
filtering matters and DPO pairs exist. Users with their own Gym rollouts point data.rollouts elsewhere.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ..env.reference_agent import reference_rollouts
from ..env.tasks import make_fresh, make_split
from ..io import write_json, write_jsonl
from ..params import Params
from .common import main

METRICS = "demo.json"


def run(params: Params) -> dict:
    p = params.demo
    train, held_out = make_split(p.train_tasks, p.eval_tasks, p.seed)
    records = reference_rollouts(train, p.num_repeats, p.seed)
    out = Path(params.paths.demo)
    write_jsonl(out / "tasks_train.jsonl", train)
    write_jsonl(out / "tasks_eval.jsonl", held_out)
    # New tasks for the collect stage (collect.tasks): in neither split, so the trained model meets them fresh
    write_jsonl(out / "tasks_collect.jsonl", make_fresh(p.collect_tasks, train + held_out, p.seed))
    write_jsonl(out / "rollouts.jsonl", records)
    rewards = Counter(r["reward"] for r in records)
    m = {
        "train_tasks": len(train),
        "eval_tasks": len(held_out),
        "collect_tasks": p.collect_tasks,
        "rollouts": len(records),
        "reward_counts": {str(k): v for k, v in sorted(rewards.items())},
        "avg_reward": round(sum(r["reward"] for r in records) / len(records), 6),
        "success_rate": round(sum(r["reward"] >= params.eval.success_threshold for r in records) / len(records), 6),
    }
    write_json(Path(params.paths.metrics) / METRICS, m)
    return m


if __name__ == "__main__":
    sys.exit(main("demo", run))
