"""pair: DPO preference pairs from ALL rollouts (not only the filtered ones).

Rollouts are grouped by task key and sorted by reward; `pair.strategy` picks pairs whose reward gap is
>= `pair.min_diff`. Memory stays flat on large inputs: the grouping reads filter's catalog (task key,
reward, file, offset per rollout; a declared dependency of this stage), then only the lines a pair
uses are read back. Invalid and duplicate lines are counted from the catalog and listed by filter.
Held-out tasks (eval.holdout_fraction) are never paired.
"""

from __future__ import annotations

import sys
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from ..catalog import CatalogEntry, CatalogError, is_held_out, read_catalog, training_sources
from ..chat import ChatFormat, format_messages
from ..io import Columns, ParquetWriter, atomic_dir, encode_row, write_json
from ..models import chat_format
from ..parallel import batched, ordered_map, resolve_workers
from ..params import Params
from ..rollouts import Line, Rollout, open_binary, parse_line, read_line_at, total_bytes
from .common import StageError, describe, log, main

METRICS = "pair.json"


class Entry(NamedTuple):
    task_key: str
    reward: float
    file: int
    offset: int
    lineno: int
    order: int  # position in the input: ties in reward keep input order, so pairs are deterministic


class Pair(NamedTuple):
    chosen: Entry
    rejected: Entry


@dataclass(frozen=True)
class PairPlan:
    pairs: list[Pair]
    stats: dict


class _EntryTable:
    """Entries stored column-wise (about 50 bytes per rollout instead of ~250 as objects), so that
    grouping a GB-sized input stays within a few MB; each task's rows are listed as they arrive."""

    def __init__(self, entries: Iterable[Entry]):
        self.rows: dict[str, array] = {}  # task key -> row numbers, in input order
        self.reward, self.file, self.offset = array("d"), array("l"), array("q")
        self.lineno, self.order = array("q"), array("q")
        for i, e in enumerate(entries):
            self.rows.setdefault(e.task_key, array("q")).append(i)
            self.reward.append(e.reward)
            self.file.append(e.file)
            self.offset.append(e.offset)
            self.lineno.append(e.lineno)
            self.order.append(e.order)

    def groups(self) -> Iterator[list[Entry]]:
        """Each task's entries, tasks in key order, entries in input order."""
        for key in sorted(self.rows):
            yield [Entry(key, self.reward[i], self.file[i], self.offset[i], self.lineno[i], self.order[i])
                   for i in self.rows[key]]


def plan_pairs(entries: Iterable[Entry], strategy: str, min_diff: float) -> PairPlan:
    """Pure pairing logic: groups, sorts, and picks (chosen, rejected) per strategy."""
    table = _EntryTable(entries)
    pairs: list[Pair] = []
    stats = Counter(groups=len(table.rows))
    # A tiny tolerance so that 0.9 - 0.8 counts as a 0.1 gap despite binary floating point.
    eps = 1e-9
    for members in table.groups():
        group = sorted(members, key=lambda e: (-e.reward, e.order))
        if len(group) == 1:
            stats["groups_single_rollout"] += 1
            continue
        if group[0].reward == group[-1].reward:
            stats["groups_all_tied"] += 1
            continue
        if strategy == "top_vs_second":
            candidates = [Pair(group[0], group[1])]
        elif strategy == "top_vs_bottom":
            candidates = [Pair(group[0], group[-1])]
        else:  # all_pairs
            candidates = [Pair(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]
        kept = [p for p in candidates
                if p.chosen.reward - p.rejected.reward >= min_diff - eps and p.chosen.reward > p.rejected.reward]
        stats["below_min_diff"] += sum(1 for p in candidates if p.chosen.reward - p.rejected.reward < min_diff - eps)
        stats["groups_paired"] += bool(kept)
        pairs.extend(kept)
    return PairPlan(pairs, dict(stats))


def entries_from(catalog: Iterable[CatalogEntry], files: list[Path], holdout: float) -> Iterator[Entry]:
    """The catalogued rollouts pair may use: not those of held-out tasks (eval.holdout_fraction)."""
    file_no = {str(p): i for i, p in enumerate(files)}
    for order, c in enumerate(catalog):
        if is_held_out(c.task_key, holdout):
            continue
        yield Entry(c.task_key, c.reward, file_no[c.line.source], c.line.offset, c.line.lineno, order)


PAIR_COLUMNS: Columns = {
    "prompt": "json_list", "chosen": "json_list", "rejected": "json_list", "tools": "json", "task_key": "string",
    "chosen_reward": "float64", "rejected_reward": "float64", "chosen_source": "string", "chosen_line": "int64",
    "rejected_source": "string", "rejected_line": "int64", "cut_at": "int64", "shared_messages": "int64",
}


def _content(m: dict) -> dict:
    """A message without its tool-call ids: ids are bookkeeping that differs between two rollouts even
    when the model said the same thing."""
    out = {k: v for k, v in m.items() if k != "tool_call_id"}
    if "tool_calls" in m:
        out["tool_calls"] = [{k: v for k, v in c.items() if k != "id"} for c in m["tool_calls"]]
    return out


def shared_turns(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages of two continuations are the same, backed off to the start of an
    assistant turn, so that both sides begin where the model acts and both keep at least one message."""
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and _content(chosen[k]) == _content(rejected[k]):
        k += 1
    while k > 0 and chosen[k]["role"] != "assistant":
        k -= 1
    return k


def pair_row(chosen: Rollout, rejected: Rollout, fmt: ChatFormat, cut: str = "divergence") -> dict | str:
    """A TRL conversational preference row, or the reason the two cannot form one. `cut`: `divergence`
    moves the turns both rollouts share into the prompt (they are context, not a choice); `prompt` keeps
    the task's prompt as the prompt."""
    if chosen.conversation.prompt != rejected.conversation.prompt:
        return "prompt_mismatch"
    ours, theirs = chosen.conversation.continuation, rejected.conversation.continuation
    if not ours or not theirs:
        return "empty_continuation"
    k = shared_turns(ours, theirs) if cut == "divergence" else 0
    return {
        "prompt": format_messages(chosen.conversation.prompt + ours[:k], fmt),
        "chosen": format_messages(ours[k:], fmt),
        "rejected": format_messages(theirs[k:], fmt),
        "tools": chosen.conversation.tools,
        "task_key": chosen.task_key,
        "chosen_reward": chosen.reward,
        "rejected_reward": rejected.reward,
        "chosen_source": chosen.line.source,
        "chosen_line": chosen.line.lineno,
        "rejected_source": rejected.line.source,
        "rejected_line": rejected.line.lineno,
        "cut_at": chosen.conversation.prompt_len + k,  # the first message of chosen / rejected in the rollouts
        "shared_messages": k,  # continuation messages both rollouts share, now part of the prompt
    }


def run(params: Params) -> dict:
    p, paths = params.pair, params.paths
    sources = training_sources(params.rollout_specs, params.round_files, params.iterate.round)
    describe(sources)
    fmt = chat_format(paths.base_model, params.convert.arguments, params.convert.reasoning,
                      params.model.trust_remote_code)
    try:
        catalog = read_catalog(paths.catalog, sources.files, params.convert.merge_system)
    except CatalogError as err:
        raise StageError(f"pair: {err}") from None
    counts = Counter(catalog.counts)
    plan = plan_pairs(entries_from(catalog.entries, sources.files, params.eval.holdout_fraction), p.strategy,
                      p.min_diff)
    workers = resolve_workers(params.data.workers, total_bytes(sources.files))
    with (
        # Same file system as the output: the spool can be as large as the lines the pairs use.
        tempfile.TemporaryDirectory(prefix=".gymtrl-pair-spool-", dir=_parent(paths.pairs)) as spool,
        atomic_dir(paths.pairs) as out,
        ParquetWriter(out / "train.parquet", PAIR_COLUMNS) as writer,
    ):
        read_from, pairs = spool_compressed(sources.files, plan.pairs, Path(spool))
        context = ReadBack(tuple(str(f) for f in sources.files), read_from, params.convert.merge_system, fmt, p.cut)
        for _, rows in ordered_map(_pair_batch, context, batched(pairs, lambda _: 1, max_items=64), workers):
            for row in rows:
                if isinstance(row, str):
                    counts[row] += 1
                    continue
                writer.write_encoded(row)
                counts["pairs"] += 1
                counts["pairs_cut_after_shared_turns"] += row["shared_messages"] > 0
    m = {
        "lines_read": counts["lines_read"],
        "rollouts": counts["rollouts"],
        "invalid": counts["invalid"],
        "dropped_duplicates": counts["duplicates"],
        "groups": plan.stats.get("groups", 0),
        "groups_single_rollout": plan.stats.get("groups_single_rollout", 0),
        "groups_all_tied": plan.stats.get("groups_all_tied", 0),
        "groups_paired": plan.stats.get("groups_paired", 0),
        "below_min_diff": plan.stats.get("below_min_diff", 0),
        "prompt_mismatch": counts["prompt_mismatch"],
        "empty_continuation": counts["empty_continuation"],
        "pairs": counts["pairs"],
        "pairs_cut_after_shared_turns": counts["pairs_cut_after_shared_turns"],
        "strategy": p.strategy,
        "cut": p.cut,
        "min_diff": p.min_diff,
    }
    if m["pairs"] == 0:
        log(f"pair: no pair built ({m['groups']} task groups, {m['groups_single_rollout']} with one rollout, "
            f"{m['groups_all_tied']} all tied, {m['below_min_diff']} gaps below pair.min_diff={p.min_diff})")
    write_json(Path(paths.metrics) / METRICS, m)
    return m


def _parent(path: str | Path) -> Path:
    parent = Path(path).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def spool_compressed(files: list[Path], pairs: list[Pair], spool: Path) -> tuple[tuple[str, ...], list[Pair]]:
    """gzip cannot seek: reading pairs back at random offsets would decompress a file from its start
    again and again. So, in one pass per .gz file, the lines the pairs use are copied to a plain file
    in `spool`; returns the paths to read from and the pairs with offsets into those copies."""
    paths = [str(f) for f in files]
    moved: dict[int, dict[int, int]] = {}
    for i, f in enumerate(files):
        if not f.name.endswith(".gz"):
            continue
        wanted = iter(sorted({e.offset for pair in pairs for e in pair if e.file == i}))
        nxt, offset, new = next(wanted, None), 0, {}
        with open_binary(f) as src, open(spool / f"{i}.jsonl", "wb") as dst:
            for raw in src:
                if nxt is None:
                    break
                if offset == nxt:
                    new[offset] = dst.tell()
                    dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    nxt = next(wanted, None)
                offset += len(raw)
        paths[i], moved[i] = str(spool / f"{i}.jsonl"), new

    def remap(e: Entry) -> Entry:
        return e._replace(offset=moved[e.file][e.offset]) if e.file in moved else e

    return tuple(paths), [Pair(remap(a), remap(b)) for a, b in pairs] if moved else pairs


@dataclass(frozen=True)
class ReadBack:
    """What a worker needs to turn planned pairs into encoded rows."""

    files: tuple[str, ...]  # the user's files, for provenance
    read_from: tuple[str, ...]  # where to read each file's lines (a plain copy for .gz files)
    merge_system: bool
    fmt: ChatFormat
    cut: str  # pair.cut


def _pair_batch(ctx: ReadBack, pairs: list[Pair]) -> list[dict | str]:
    """Worker side: reads back both lines of each pair (only those) and builds the encoded rows."""
    handles: dict[int, object] = {}
    try:
        out = []
        for pair in pairs:
            chosen, rejected = (_read_back(e, ctx, handles) for e in pair)
            row = pair_row(chosen, rejected, ctx.fmt, ctx.cut)
            out.append(row if isinstance(row, str) else encode_row(row, PAIR_COLUMNS))
        return out
    finally:
        for h in handles.values():
            h.close()


def _read_back(e: Entry, ctx: ReadBack, handles: dict) -> Rollout:
    if e.file not in handles:
        handles[e.file] = open(ctx.read_from[e.file], "rb")
    raw = read_line_at(handles[e.file], e.offset)
    item = parse_line(Line(ctx.files[e.file], e.lineno, e.offset, raw), ctx.merge_system)
    if not isinstance(item, Rollout):
        raise StageError(f"{ctx.files[e.file]}:{e.lineno} is no longer the rollout filter catalogued; rerun filter")
    return item


if __name__ == "__main__":
    sys.exit(main("pair", run))
