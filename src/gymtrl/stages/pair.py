"""pair: DPO preference pairs from ALL rollouts (not only the filtered ones).

Rollouts are grouped by task key and sorted by reward; `strategy` picks pairs whose reward gap is
>= min_diff. Memory stays flat on large inputs: the first pass keeps only (task key, reward, file,
offset) per rollout; the second pass reads back just the lines a pair uses.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from ..chat import format_messages
from ..io import ParquetWriter, atomic_dir, write_json
from ..params import Params
from ..rollouts import Line, Rejected, Rollout, open_binary, parse_line, read_line_at, resolve_sources, scan
from .common import RejectLog, StageError, describe, log


class Entry(NamedTuple):
    task_key: str
    reward: float
    file: int
    offset: int
    lineno: int
    order: int  # position in the input: ties in reward keep input order, so pairs are deterministic


@dataclass(frozen=True)
class PairPlan:
    pairs: list[tuple[Entry, Entry]]  # (chosen, rejected)
    stats: dict


def plan_pairs(entries: Iterable[Entry], strategy: str, min_diff: float) -> PairPlan:
    """Pure pairing logic: groups, sorts, and picks (chosen, rejected) per strategy."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[e.task_key].append(e)
    pairs: list[tuple[Entry, Entry]] = []
    stats = Counter(groups=len(groups))
    # A tiny tolerance so that 0.9 - 0.8 counts as a 0.1 gap despite binary floating point.
    eps = 1e-9
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda e: (-e.reward, e.order))
        if len(group) == 1:
            stats["groups_single_rollout"] += 1
            continue
        if group[0].reward == group[-1].reward:
            stats["groups_all_tied"] += 1
            continue
        if strategy == "top_vs_second":
            candidates = [(group[0], group[1])]
        elif strategy == "top_vs_bottom":
            candidates = [(group[0], group[-1])]
        else:  # all_pairs
            candidates = [(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]
        kept = [(a, b) for a, b in candidates if a.reward - b.reward >= min_diff - eps and a.reward > b.reward]
        stats["below_min_diff"] += sum(1 for a, b in candidates if a.reward - b.reward < min_diff - eps)
        stats["groups_paired"] += bool(kept)
        pairs.extend(kept)
    return PairPlan(pairs, dict(stats))


def pair_features():
    from datasets import Features, Json, List, Value

    return Features(
        {
            "prompt": List(Json()),
            "chosen": List(Json()),
            "rejected": List(Json()),
            "tools": Json(),
            "task_key": Value("string"),
            "chosen_reward": Value("float64"),
            "rejected_reward": Value("float64"),
            "chosen_source": Value("string"),
            "chosen_line": Value("int64"),
            "rejected_source": Value("string"),
            "rejected_line": Value("int64"),
        }
    )


def pair_row(chosen: Rollout, rejected: Rollout, fmt) -> dict | str:
    """A TRL conversational preference row, or the reason the two cannot form one."""
    if chosen.conversation.prompt != rejected.conversation.prompt:
        return "prompt_mismatch"
    if not chosen.conversation.continuation or not rejected.conversation.continuation:
        return "empty_continuation"
    return {
        "prompt": format_messages(chosen.conversation.prompt, fmt),
        "chosen": format_messages(chosen.conversation.continuation, fmt),
        "rejected": format_messages(rejected.conversation.continuation, fmt),
        "tools": chosen.conversation.tools,
        "task_key": chosen.task_key,
        "chosen_reward": chosen.reward,
        "rejected_reward": rejected.reward,
        "chosen_source": chosen.line.source,
        "chosen_line": chosen.line.lineno,
        "rejected_source": rejected.line.source,
        "rejected_line": rejected.line.lineno,
    }


def index_rollouts(files: list[Path], merge_system: bool, rejects: RejectLog) -> tuple[list[Entry], Counter]:
    entries: list[Entry] = []
    counts: Counter = Counter()
    file_no = {str(p): i for i, p in enumerate(files)}
    for item in scan(files, merge_system):
        counts["lines_read"] += 1
        if isinstance(item, Rejected):
            counts[item.bucket] += 1
            rejects.add(item)
            continue
        counts["rollouts"] += 1
        entries.append(Entry(item.task_key, item.reward, file_no[item.line.source], item.line.offset,
                             item.line.lineno, len(entries)))
    return entries, counts


def run(params: Params, model_dir="models/base", out_dir="data/pairs", metrics_path="metrics/pair.json") -> dict:
    from ..models import load_tokenizer
    from ..templates import probe_format

    p = params.pair
    sources = resolve_sources(params.rollout_specs)
    describe(sources)
    if not sources.files:
        raise StageError(f"data.rollouts={params.data.rollouts!r}: no rollout file found")
    fmt = probe_format(load_tokenizer(model_dir, params.model.trust_remote_code),
                       params.convert.arguments, params.convert.reasoning)
    with (
        atomic_dir(out_dir) as out,
        ParquetWriter(out / "train.parquet", pair_features()) as writer,
        open(out / "rejects.jsonl", "wb") as rejects_f,
    ):
        rejects = RejectLog(rejects_f)
        entries, counts = index_rollouts(sources.files, params.convert.merge_system, rejects)
        plan = plan_pairs(entries, p.strategy, p.min_diff)
        del entries
        handles = {}
        try:
            for chosen_e, rejected_e in plan.pairs:
                chosen, rejected = (_read_back(e, sources.files, handles, params.convert.merge_system)
                                    for e in (chosen_e, rejected_e))
                row = pair_row(chosen, rejected, fmt)
                if isinstance(row, str):
                    counts[row] += 1
                    continue
                writer.write(row)
                counts["pairs"] += 1
        finally:
            for h in handles.values():
                h.close()
    m = {
        "lines_read": counts["lines_read"],
        "rollouts": counts["rollouts"],
        "invalid": counts["invalid"],
        "dropped_duplicates": counts["dropped"],
        "groups": plan.stats.get("groups", 0),
        "groups_single_rollout": plan.stats.get("groups_single_rollout", 0),
        "groups_all_tied": plan.stats.get("groups_all_tied", 0),
        "groups_paired": plan.stats.get("groups_paired", 0),
        "below_min_diff": plan.stats.get("below_min_diff", 0),
        "prompt_mismatch": counts["prompt_mismatch"],
        "empty_continuation": counts["empty_continuation"],
        "pairs": counts["pairs"],
        "strategy": p.strategy,
        "min_diff": p.min_diff,
    }
    if m["pairs"] == 0:
        log(f"pair: no pair built ({m['groups']} task groups, {m['groups_single_rollout']} with one rollout, "
            f"{m['groups_all_tied']} all tied, {m['below_min_diff']} gaps below pair.min_diff={p.min_diff})")
    write_json(metrics_path, m)
    return m


def _read_back(e: Entry, files: list[Path], handles: dict, merge_system: bool) -> Rollout:
    if e.file not in handles:
        handles[e.file] = open_binary(files[e.file])
    raw = read_line_at(handles[e.file], e.offset)
    item = parse_line(Line(str(files[e.file]), e.lineno, e.offset, raw), merge_system)
    assert isinstance(item, Rollout), f"{files[e.file]}:{e.lineno} changed while pairing"
    return item
