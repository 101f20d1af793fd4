"""collect: the trained model plays the training tasks, k samples each, at a temperature.

Its rollouts are the next round's training data (expert iteration / rejection-sampling fine-tuning):
`gymtrl next-round` freezes them under `paths.rounds`, where the next round's filter keeps the good ones
and pair finds on-policy preferences among the k samples of a task. The samples are Gym records, scored
by the same reader as evaluate, played by the same code (play.py: builtin or real NeMo Gym).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import Params
from ..play import PlayError, Sampling, play, score_file
from ..stats import task_outcomes
from .common import StageError, main

METRICS = "collect.json"
ROLLOUTS = "rollouts.jsonl"


def sampling(params: Params) -> Sampling:
    c, e = params.collect, params.eval
    return Sampling(backend=c.backend, num_repeats=c.num_repeats, temperature=c.temperature, top_p=c.top_p,
                    max_turns=e.max_turns, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=c.seed)


def run(params: Params) -> dict:
    c, paths = params.collect, params.paths
    if not Path(c.tasks).exists():
        raise StageError(f"collect.tasks={c.tasks!r} does not exist")
    tasks = list(read_jsonl(c.tasks))[: c.limit]
    if not tasks:
        raise StageError(f"collect.tasks={c.tasks!r} has no task")
    with atomic_dir(paths.collected) as out:
        try:
            records = play(paths.trained_model, tasks, sampling(params), params, f"round-{params.iterate.round}")
        except PlayError as err:
            raise StageError(f"collect (collect.backend={c.backend}): {err}") from None
        write_jsonl(out / ROLLOUTS, records)
        m, _ = score_file(out / ROLLOUTS, params.eval.success_threshold)
        by_task = defaultdict(list)
        for r in records:
            by_task[r.get("_ng_task_index", -1)].append(float(r.get("reward", 0.0)))
        m.update(task_outcomes(list(by_task.values()), params.eval.success_threshold))
    m["round"] = params.iterate.round
    write_json(Path(paths.metrics) / METRICS, m)
    return {k: m[k] for k in ("round", "n", "success_rate", "pass_at_k", "tasks_mixed")}


if __name__ == "__main__":
    sys.exit(main("collect", run))
