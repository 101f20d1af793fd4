"""Pieces the stages share: the stage error type and how unused lines are reported."""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO

from ..io import dumps
from ..rollouts import Rejected, Sources


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
