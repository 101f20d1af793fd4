"""pair: DPO preference pairs from ALL rollouts (not only the filtered ones).

Rollouts are grouped by task key and sorted by reward; `strategy` picks pairs whose reward gap is
>= min_diff. Memory stays flat on large inputs: only (task key, reward, file, offset) is kept per
rollout, from filter's catalog (or, without one, from a pass over the input); then just the lines a
pair uses are read back. Invalid and duplicate lines are counted here and listed by filter.
"""

from __future__ import annotations

import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from ..chat import format_messages
from ..io import Columns, ParquetWriter, atomic_dir, encode_row, write_json
from ..parallel import batched, ordered_map, resolve_workers
from ..params import Params
from ..rollouts import (Line, Rollout, Summary, open_binary, parse_line, read_line_at, resolve_sources, summaries,
                        total_bytes)
from .common import CatalogWriter, StageError, describe, log, read_catalog


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


class _EntryTable:
    """Entries stored column-wise (48 bytes per rollout instead of ~250 as objects), so that grouping a
    GB-sized input stays within a few MB."""

    def __init__(self, entries: Iterable[Entry]):
        self.keys: dict[str, int] = {}
        self.group = array("l")
        self.reward, self.file, self.offset = array("d"), array("l"), array("q")
        self.lineno, self.order = array("q"), array("q")
        for e in entries:
            self.group.append(self.keys.setdefault(e.task_key, len(self.keys)))
            self.reward.append(e.reward)
            self.file.append(e.file)
            self.offset.append(e.offset)
            self.lineno.append(e.lineno)
            self.order.append(e.order)

    def groups(self) -> Iterator[list[Entry]]:
        """Each task's entries, tasks in key order, entries in input order."""
        names = list(self.keys)
        rank = array("l", [0] * len(names))
        for r, g in enumerate(sorted(range(len(names)), key=names.__getitem__)):
            rank[g] = r
        # One int per key (not a tuple): the sort's keys are the largest transient allocation here.
        members = sorted(range(len(self.group)), key=lambda i: rank[self.group[i]] << 48 | self.order[i])
        start = 0
        while start < len(members):
            g = self.group[members[start]]
            end = start
            while end < len(members) and self.group[members[end]] == g:
                end += 1
            yield [Entry(names[g], self.reward[i], self.file[i], self.offset[i], self.lineno[i], self.order[i])
                   for i in members[start:end]]
            start = end


def plan_pairs(entries: Iterable[Entry], strategy: str, min_diff: float) -> PairPlan:
    """Pure pairing logic: groups, sorts, and picks (chosen, rejected) per strategy."""
    table = _EntryTable(entries)
    pairs: list[tuple[Entry, Entry]] = []
    stats = Counter(groups=len(table.keys))
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


PAIR_COLUMNS: Columns = {
    "prompt": "json_list", "chosen": "json_list", "rejected": "json_list", "tools": "json", "task_key": "string",
    "chosen_reward": "float64", "rejected_reward": "float64", "chosen_source": "string", "chosen_line": "int64",
    "rejected_source": "string", "rejected_line": "int64",
}


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


def scan_rollouts(files: list[Path], merge_system: bool, workers: int, counts: CatalogWriter) -> Iterator[tuple]:
    """Catalog rows of every valid rollout, by reading the input (when there is no catalog from filter)."""
    for item in summaries(files, merge_system, workers):
        counts.add(item)
        if isinstance(item, Summary):
            yield item.line.source, item.line.lineno, item.line.offset, item.task_key, item.reward


def entries_from(rows: Iterable, files: list[Path]) -> Iterator[Entry]:
    file_no = {str(p): i for i, p in enumerate(files)}
    for order, row in enumerate(rows):
        yield Entry(row[3], row[4], file_no[row[0]], row[2], row[1], order)


def run(params: Params, model_dir="models/base", out_dir="data/pairs", metrics_path="metrics/pair.json",
        catalog_dir: str | Path | None = "data/catalog") -> dict:
    from ..models import chat_format

    p = params.pair
    sources = resolve_sources(params.rollout_specs)
    describe(sources)
    if not sources.files:
        raise StageError(f"data.rollouts={params.data.rollouts!r}: no rollout file found")
    fmt = chat_format(model_dir, params.convert.arguments, params.convert.reasoning, params.model.trust_remote_code)
    workers = resolve_workers(params.data.workers, total_bytes(sources.files))
    catalog = read_catalog(catalog_dir, sources.files, params.convert.merge_system) if catalog_dir else None
    if catalog is not None:
        log(f"grouping the catalog {catalog_dir} (from filter) instead of reading the rollouts again")
        meta, rows = catalog
        counts = Counter({k: meta[k] for k in ("lines_read", "rollouts", "invalid", "duplicates")})
    else:
        tally = CatalogWriter(None, sources.files, params.convert.merge_system)
        rows = scan_rollouts(sources.files, params.convert.merge_system, workers, tally)
        counts = tally.counts  # filled while plan_pairs reads the rows
    plan = plan_pairs(entries_from(rows, sources.files), p.strategy, p.min_diff)
    with (
        # Same file system as the output: the spool can be as large as the lines the pairs use.
        tempfile.TemporaryDirectory(prefix=".gymtrl-pair-spool-", dir=_parent(out_dir)) as spool,
        atomic_dir(out_dir) as out,
        ParquetWriter(out / "train.parquet", PAIR_COLUMNS) as writer,
    ):
        read_from, pairs = spool_compressed(sources.files, plan.pairs, Path(spool))
        context = ReadBack(tuple(str(f) for f in sources.files), read_from, params.convert.merge_system, fmt)
        for _, rows in ordered_map(_pair_batch, context, batched(pairs, lambda _: 1, max_items=64), workers):
            for row in rows:
                if isinstance(row, str):
                    counts[row] += 1
                    continue
                writer.write_encoded(row)
                counts["pairs"] += 1
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
        "strategy": p.strategy,
        "min_diff": p.min_diff,
    }
    if m["pairs"] == 0:
        log(f"pair: no pair built ({m['groups']} task groups, {m['groups_single_rollout']} with one rollout, "
            f"{m['groups_all_tied']} all tied, {m['below_min_diff']} gaps below pair.min_diff={p.min_diff})")
    write_json(metrics_path, m)
    return m


def _parent(path: str | Path) -> Path:
    parent = Path(path).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def spool_compressed(files: list[Path], pairs: list[tuple[Entry, Entry]],
                     spool: Path) -> tuple[tuple[str, ...], list[tuple[Entry, Entry]]]:
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

    return tuple(paths), [(remap(a), remap(b)) for a, b in pairs] if moved else pairs


@dataclass(frozen=True)
class ReadBack:
    """What a worker needs to turn planned pairs into encoded rows."""

    files: tuple[str, ...]  # the user's files, for provenance
    read_from: tuple[str, ...]  # where to read each file's lines (a plain copy for .gz files)
    merge_system: bool
    fmt: object  # ChatFormat


def _pair_batch(ctx: ReadBack, pairs: list[tuple[Entry, Entry]]) -> list[dict | str]:
    """Worker side: reads back both lines of each pair (only those) and builds the encoded rows."""
    handles: dict[int, object] = {}
    try:
        out = []
        for chosen_e, rejected_e in pairs:
            chosen, rejected = (_read_back(e, ctx, handles) for e in (chosen_e, rejected_e))
            row = pair_row(chosen, rejected, ctx.fmt)
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
