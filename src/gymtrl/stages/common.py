"""What every stage shares: its entry point, its error type, and how unused lines are reported.

A stage module is self-contained: `python -m gymtrl.stages.<name>` (dvc.yaml's cmd) runs its
`run(params)` through `main`, which loads params.yaml once, turns known errors into one message and
exit code 2, and logs the wall time. `gymtrl <stage>` does the same for a user at the terminal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

import orjson

from ..io import dumps, log  # noqa: F401  (log: what stages print, re-exported)
from ..params import Params, ParamsError, load_params
from ..progress import quiet_library_bars

if TYPE_CHECKING:  # types only: a stage that reports no lines does not import the reader
    from ..rollouts import Rejected, Sources

TIMINGS_LOG = Path(".gymtrl") / "timings.jsonl"


class StageError(RuntimeError):
    """A stage cannot produce a meaningful artifact; the message says why and what to change."""


def main(name: str, run: Callable[[Params], dict], argv: list[str] | None = None) -> int:
    """Runs one stage: `--params FILE` (default params.yaml), then `run(params)`."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"gymtrl {name}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    quiet_library_bars()
    try:
        params = load_params(args.params)
        started = time.perf_counter()
        result = run(params)
        _record_time(name, time.perf_counter() - started)
    except (ParamsError, StageError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"gymtrl {name}: {err}", file=sys.stderr)
        return 2
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(), file=sys.stderr)
    return 0


def _record_time(stage: str, seconds: float) -> None:
    """Wall times go to an untracked log, so tracked metrics stay identical across reruns."""
    TIMINGS_LOG.parent.mkdir(exist_ok=True)
    with open(TIMINGS_LOG, "ab") as f:
        f.write(orjson.dumps({"stage": stage, "seconds": round(seconds, 1),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + b"\n")


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
