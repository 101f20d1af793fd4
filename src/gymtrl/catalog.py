"""The catalog of a rollout input: every line's verdict, and for each valid rollout what filter, pair and
inspect need of it (task key, reward, turns, where it is), without the record or its messages.

`scan` computes it, spreading the parsing over worker processes; `CatalogWriter` stores it
(`<paths.catalog>/rollouts.jsonl` + `catalog.json`), filter writes it, and pair groups it instead of
parsing the whole input a second time. `read_catalog` refuses a catalog made from other input.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from .chunks import FileJob, file_jobs, job_lines
from .io import atomic_dir, dumps, read_json, read_jsonl
from .parallel import ordered_map
from .rollouts import Line, Rejected, Rollout, Sources, duplicate, line_digest, parse_line, resolve_sources

COUNT_KEYS = ("lines_read", "rollouts", "invalid", "duplicates")


def is_held_out(task_key: str, fraction: float) -> bool:
    """Whether a task belongs to the held-out share: a hash of its key, so the split is the same on every
    machine and every run, and a task's rollouts are either all trained on or all held out."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(task_key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def task_input(record: dict) -> dict:
    """The Gym input line a rollout was played from: the record without what playing it added."""
    return {k: v for k, v in record.items() if k not in ("response", "reward", "_ng_rollout_index")}


def training_sources(rollouts: list[str], round_files: list[Path], round_: int) -> Sources:
    """What filter and pair read: data.rollouts, then the earlier rounds' frozen collections."""
    for f in round_files:
        if not f.exists():
            raise FileNotFoundError(f"iterate.round={round_} trains on {f}, which does not exist: `gymtrl next-round` "
                                    f"freezes a round's collection there (README, Iterate)")
    sources = resolve_sources([*rollouts, *map(str, round_files)])
    if not sources.files:
        raise FileNotFoundError(f"data.rollouts={rollouts!r}: no rollout file found")
    return sources


class CatalogEntry(NamedTuple):
    """A valid rollout, catalogued. `line.raw` is empty unless the scan's caller asked for it."""

    line: Line
    reward: float
    task_key: str
    turns: int


# ---------------------------------------------------------------- scanning (worker records are typed)

class _Valid(NamedTuple):
    offset: int
    reward: float
    task_key: str
    turns: int
    digest: bytes  # of the whole line, to find exact repeats across jobs
    raw: bytes  # empty unless wanted


class _Invalid(NamedTuple):
    offset: int
    bucket: str
    reason: str
    detail: str


@dataclass(frozen=True)
class _ScanContext:
    merge_system: bool
    # Which valid rollouts the caller needs the raw line of (filter: the kept ones); None = none.
    want_raw: Callable[[CatalogEntry], bool] | None


def _scan_job(ctx: _ScanContext, job: FileJob) -> list[_Valid | _Invalid]:
    out: list[_Valid | _Invalid] = []
    for offset, raw in job_lines(job):
        item = parse_line(Line("", 0, offset, raw), ctx.merge_system)
        if isinstance(item, Rollout):
            keep_raw = ctx.want_raw is not None and ctx.want_raw(
                CatalogEntry(item.line, item.reward, item.task_key, item.turns))
            out.append(_Valid(offset, item.reward, item.task_key, item.turns, line_digest(raw),
                              raw if keep_raw else b""))
        else:
            out.append(_Invalid(offset, item.bucket, item.reason, item.detail))
    return out


def scan(files: Iterable[Path], merge_system: bool, workers: int,
         want_raw: Callable[[CatalogEntry], bool] | None = None) -> Iterator[CatalogEntry | Rejected]:
    """`rollouts.scan`'s verdicts, line for line and in order, with the reading and parsing spread over
    `workers` processes. This process only numbers the lines and finds duplicates."""
    seen: set[bytes] = set()
    source, lineno = None, 0
    for job, results in ordered_map(_scan_job, _ScanContext(merge_system, want_raw), file_jobs(files), workers):
        if job.path != source:
            source, lineno = job.path, 0
        for r in results:
            lineno += 1
            if isinstance(r, _Invalid):
                yield Rejected(Line(source, lineno, r.offset, b""), r.bucket, r.reason, r.detail)
            elif r.digest in seen:
                yield duplicate(Line(source, lineno, r.offset, b""))
            else:
                seen.add(r.digest)
                yield CatalogEntry(Line(source, lineno, r.offset, r.raw), r.reward, r.task_key, r.turns)


# ---------------------------------------------------------------- the stored catalog

def _ends_digest(path: Path, n: int = 1 << 16) -> str:
    with open(path, "rb") as f:
        head = f.read(n)
        f.seek(max(0, path.stat().st_size - n))
        tail = f.read(n)
    return hashlib.blake2b(head + tail, digest_size=16).hexdigest()


def source_stamp(files: list[Path], merge_system: bool) -> dict:
    """What a catalog was made from: if any of this differs, the catalog does not describe the input.
    Content-based (size, first and last 64 KB), not mtimes, so that the catalog is identical across clones."""
    return {"merge_system": merge_system,
            "files": [{"path": str(p), "bytes": p.stat().st_size, "ends_blake2b": _ends_digest(p)} for p in files]}


class CatalogWriter:
    """`<dir>/rollouts.jsonl`: one line per valid, non-duplicate rollout (source, line, byte offset, task
    key, reward, turns), in input order; `<dir>/catalog.json`: the counts and the input's stamp."""

    def __init__(self, path: str | os.PathLike, files: list[Path], merge_system: bool):
        self.path, self.files, self.merge_system = path, files, merge_system
        self.counts: Counter = Counter()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "CatalogWriter":
        self.stamp = source_stamp(self.files, self.merge_system)  # before reading: the input as catalogued
        out = self._stack.enter_context(atomic_dir(self.path))
        self._f = self._stack.enter_context(open(out / "rollouts.jsonl", "wb"))
        self._meta = out / "catalog.json"
        return self

    def add(self, item: CatalogEntry | Rejected) -> None:
        self.counts["lines_read"] += 1
        if isinstance(item, Rejected):
            self.counts["duplicates" if item.reason == "duplicate" else item.bucket] += 1
            return
        self.counts["rollouts"] += 1
        self._f.write(dumps([item.line.source, item.line.lineno, item.line.offset, item.task_key, item.reward,
                             item.turns]) + b"\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._meta.write_bytes(dumps({**{k: self.counts[k] for k in COUNT_KEYS}, **self.stamp}) + b"\n")
        self._stack.__exit__(exc_type, exc, tb)


class CatalogError(RuntimeError):
    """The catalog is missing or describes other input; the message says what to rerun."""


@dataclass(frozen=True)
class Catalog:
    counts: dict[str, int]  # COUNT_KEYS
    entries: Iterator[CatalogEntry]  # streamed from disk, in input order


def read_catalog(path: str | os.PathLike, files: list[Path], merge_system: bool) -> Catalog:
    """The catalog at `path`, which must have been made from exactly these files."""
    meta_path = Path(path) / "catalog.json"
    if not meta_path.exists():
        raise CatalogError(f"{path} has no catalog.json: run the filter stage first (it writes the catalog)")
    meta = read_json(meta_path)
    if {k: meta.get(k) for k in ("merge_system", "files")} != source_stamp(files, merge_system):
        raise CatalogError(f"{path} was made from other rollouts (or they changed since): rerun the filter stage")
    entries = (CatalogEntry(Line(source, lineno, offset, b""), reward, key, turns)
               for source, lineno, offset, key, reward, turns in read_jsonl(Path(path) / "rollouts.jsonl"))
    return Catalog({k: meta[k] for k in COUNT_KEYS}, entries)
