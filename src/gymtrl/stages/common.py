"""Pieces the stages share: the stage error type and how unused lines are reported."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Iterator

from ..io import atomic_dir, dumps, read_json, read_jsonl
from ..rollouts import Rejected, Sources, Summary


class StageError(RuntimeError):
    """A stage cannot produce a meaningful artifact; the message says why and what to change."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def describe(sources: Sources) -> None:
    for path, why in sources.skipped.items():
        log(f"skipping {path}: {why}")
    log(f"reading {len(sources.files)} rollout file(s)")


class RejectLog:
    """Writes every unused line to a rejects file and shows the first few of each reason on stderr."""

    def __init__(self, f: IO[bytes], show_per_reason: int = 3):
        self.f = f
        self.show = show_per_reason
        self.seen: Counter = Counter()

    def add(self, item: Rejected) -> None:
        self.f.write(
            dumps({"source": item.line.source, "line": item.line.lineno, "bucket": item.bucket,
                   "reason": item.reason, "detail": item.detail})
            + b"\n"
        )
        self.seen[item.reason] += 1
        if item.bucket == "invalid" and self.seen[item.reason] <= self.show:
            log(f"{item.line.source}:{item.line.lineno}: invalid ({item.reason}) {item.detail}")


# ---------------------------------------------------------------- the catalog (filter writes, pair reads)

def _ends_digest(path: Path, n: int = 1 << 16) -> str:
    import hashlib

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

    def __init__(self, path: str | os.PathLike | None, files: list[Path], merge_system: bool):
        # path None: only count (pair, when it has to read the input itself).
        self.path, self.files, self.merge_system = path, files, merge_system
        self.counts: Counter = Counter()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "CatalogWriter":
        if self.path is not None:
            self.stamp = source_stamp(self.files, self.merge_system)  # before reading: the input as catalogued
            out = self._stack.enter_context(atomic_dir(self.path))
            self._f = self._stack.enter_context(open(out / "rollouts.jsonl", "wb"))
            self._meta = out / "catalog.json"
        return self

    def add(self, item: Summary | Rejected) -> None:
        self.counts["lines_read"] += 1
        if isinstance(item, Rejected):
            self.counts["duplicates" if item.reason == "duplicate" else item.bucket] += 1
            return
        self.counts["rollouts"] += 1
        if self.path is not None:
            self._f.write(dumps([item.line.source, item.line.lineno, item.line.offset, item.task_key, item.reward,
                                 item.turns]) + b"\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.path is not None:
            counts = {k: self.counts[k] for k in ("lines_read", "rollouts", "invalid", "duplicates")}
            self._meta.write_bytes(dumps({**counts, **self.stamp}) + b"\n")
        self._stack.__exit__(exc_type, exc, tb)


def read_catalog(path: str | os.PathLike, files: list[Path], merge_system: bool) -> tuple[dict, Iterator[list]] | None:
    """(counts, rows) of a catalog made from exactly these files, else None."""
    meta_path = Path(path) / "catalog.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if {k: meta.get(k) for k in ("merge_system", "files")} != source_stamp(files, merge_system):
        log(f"{path} was made from other rollouts (or they changed since): not using it")
        return None
    return meta, read_jsonl(Path(path) / "rollouts.jsonl")
