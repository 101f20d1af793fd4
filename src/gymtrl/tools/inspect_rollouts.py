"""`gymtrl inspect`: what a user runs first on a new rollouts file.

Counts per bucket, reward stats and histogram, turns, tasks and samples per task, and what filter and
pair would keep with the current params. Reads nothing but the given files; writes nothing.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from statistics import mean, median

from ..catalog import scan
from ..parallel import resolve_workers
from ..params import Params
from ..rollouts import Rejected, resolve_sources, total_bytes
from ..stages.filter import Tally, decide
from ..stages.pair import Entry, plan_pairs


def histogram(values: list[float], bins: int = 10) -> list[dict]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    if lo == hi:
        return [{"from": lo, "to": hi, "count": len(values)}]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [{"from": round(lo + i * width, 6), "to": round(lo + (i + 1) * width, 6), "count": c}
            for i, c in enumerate(counts)]


def inspect_rollouts(specs: list[str], params: Params) -> dict:
    sources = resolve_sources(specs)
    tally = Tally()
    # Per rollout: reward, turns, line (arrays, 8 bytes each) and its task key (interned, one per task),
    # so that inspecting GBs of rollouts needs tens of MB.
    rewards, turns, linenos = array("d"), array("q"), array("q")
    keys: dict[str, str] = {}
    task_of: list[str] = []
    invalid_examples: dict[str, str] = {}
    per_file: dict[str, Counter] = {}
    workers = resolve_workers(params.data.workers, total_bytes(sources.files))
    for parsed in scan(sources.files, params.convert.merge_system, workers):
        verdict = decide(parsed, params.filter, params.eval.holdout_fraction)
        tally.add(verdict, None if isinstance(parsed, Rejected) else parsed.reward)
        fc = per_file.setdefault(parsed.line.source, Counter())
        fc["lines"] += 1
        if isinstance(parsed, Rejected):
            fc[parsed.bucket] += 1
            invalid_examples.setdefault(parsed.reason, f"{parsed.line.source}:{parsed.line.lineno} {parsed.detail}")
            continue
        fc["rollouts"] += 1
        rewards.append(parsed.reward)
        turns.append(parsed.turns)
        linenos.append(parsed.line.lineno)
        task_of.append(keys.setdefault(parsed.task_key, parsed.task_key))
    m = tally.metrics()
    samples = Counter(task_of)
    entries = (Entry(task_of[i], rewards[i], 0, 0, linenos[i], i) for i in range(len(task_of)))
    plan = plan_pairs(entries, params.pair.strategy, params.pair.min_diff)
    threshold = params.eval.success_threshold
    return {
        "files": {k: dict(v) for k, v in sorted(per_file.items())},
        "skipped_files": sources.skipped,
        "lines_read": m["lines_read"],
        "rollouts": len(rewards),
        "invalid": m["invalid"],
        "invalid_by_reason": m["invalid_by_reason"],
        "invalid_examples": dict(sorted(invalid_examples.items())),
        "reward": {
            "min": min(rewards, default=None), "max": max(rewards, default=None),
            "mean": round(mean(rewards), 6) if rewards else None,
            "median": median(rewards) if rewards else None,
            "success_rate": round(sum(r >= threshold for r in rewards) / len(rewards), 6) if rewards else None,
            "histogram": histogram(rewards),
        },
        "turns": {"min": min(turns, default=None), "max": max(turns, default=None),
                  "mean": round(mean(turns), 3) if turns else None, "counts": dict(sorted(Counter(turns).items()))},
        "tasks": len(samples),
        "samples_per_task": dict(sorted(Counter(samples.values()).items())),
        "filter_would_keep": m["kept"],
        "filter_would_drop": m["dropped_by_reason"],
        "pair_would_build": len(plan.pairs),
        "pair_stats": plan.stats,
        "params": {"filter": params.filter.model_dump(), "pair": params.pair.model_dump(),
                   "success_threshold": threshold},
    }


def render_text(s: dict) -> str:
    lines = [f"files: {len(s['files'])} read, {len(s['skipped_files'])} skipped"]
    for path, why in s["skipped_files"].items():
        lines.append(f"  skipped {path}: {why}")
    lines.append(f"lines: {s['lines_read']}  rollouts: {s['rollouts']}  invalid: {s['invalid']}")
    for reason, n in s["invalid_by_reason"].items():
        lines.append(f"  invalid {reason}: {n}  (e.g. {s['invalid_examples'].get(reason, '')[:100]})")
    r = s["reward"]
    if s["rollouts"]:
        lines.append(f"reward: min {r['min']}  mean {r['mean']}  median {r['median']}  max {r['max']}  "
                     f"success_rate (>= {s['params']['success_threshold']}) {r['success_rate']}")
        peak = max(b["count"] for b in r["histogram"])
        for b in r["histogram"]:
            bar = "#" * (math.ceil(30 * b["count"] / peak) if b["count"] else 0)
            lines.append(f"  [{b['from']:>9.3f}, {b['to']:>9.3f}] {b['count']:>7} {bar}")
        t = s["turns"]
        lines.append(f"turns (assistant turns per rollout): min {t['min']}  mean {t['mean']}  max {t['max']}")
    lines.append(f"tasks: {s['tasks']}  samples per task: "
                 + ", ".join(f"{k}x{v}" for k, v in s["samples_per_task"].items()))
    f = s["params"]["filter"]
    lines.append(f"filter (min_reward={f['min_reward']}, min_turns={f['min_turns']}, max_turns={f['max_turns']}) "
                 f"would keep {s['filter_would_keep']}; drop {s['filter_would_drop']}")
    p = s["params"]["pair"]
    lines.append(f"pair ({p['strategy']}, min_diff={p['min_diff']}) would build {s['pair_would_build']} pairs; "
                 f"{s['pair_stats']}")
    return "\n".join(lines)
