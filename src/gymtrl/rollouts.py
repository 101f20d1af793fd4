"""Streaming reader for Gym rollout files.

Constant memory: lines are read one at a time (plain or gzip), and each line ends up in exactly one
bucket: a valid `Rollout`, or `Rejected` with a reason. This module only reads and parses: spreading
the work over processes is chunks.py / catalog.py, and which rollouts to keep is the stages' business.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

import orjson

from .chat import Conversation, ConversionError, to_conversation

ROLLOUT_SUFFIXES = (".jsonl", ".jsonl.gz")

# Files Gym writes next to `<out>.jsonl` that are not rollouts.
_SIDE_FILES = {
    "_materialized_inputs": "inputs only (Gym's materialized inputs), no rollouts",
    "_reward_profiling": "per-task reward profile (metrics), no rollouts",
    "_aggregate_metrics": "aggregate metrics, no rollouts",
    "_failures": "Gym's failed requests, no rollouts",
}


def side_file_reason(path: Path) -> str | None:
    """Why a file is not a rollouts file, or None when it is one."""
    name = path.name
    for suffix in ROLLOUT_SUFFIXES + (".json", ".json.gz"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return "not a .jsonl / .jsonl.gz file"
    for marker, why in _SIDE_FILES.items():
        if stem.endswith(marker):
            return why
    if not name.endswith(ROLLOUT_SUFFIXES):
        return "not a .jsonl / .jsonl.gz file"
    return None


@dataclass(frozen=True)
class Sources:
    files: list[Path]
    skipped: dict[str, str]  # path -> why it is not read


def resolve_sources(specs: Iterable[str | os.PathLike]) -> Sources:
    """Files, folders (searched recursively) and globs -> sorted rollout files and the skipped ones."""
    found: set[Path] = set()
    skipped: dict[str, str] = {}
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            candidates = [q for q in p.rglob("*") if q.is_file()]
        elif p.is_file():
            candidates = [p]
        else:
            candidates = [Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file()]
            if not candidates:
                raise FileNotFoundError(f"data.rollouts: {spec!r} matches no file or folder")
        for q in candidates:
            why = side_file_reason(q)
            if why is None:
                found.add(q)
            elif p.is_file() or q.name.endswith((".jsonl", ".jsonl.gz", ".json")):
                skipped[str(q)] = why
    return Sources(files=sorted(found, key=str), skipped=dict(sorted(skipped.items())))


def open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


@dataclass(frozen=True)
class Line:
    source: str
    lineno: int  # 1-based
    offset: int  # byte offset of the line in the (decompressed) file, for reading it back
    raw: bytes  # without the trailing newline


def iter_lines(path: Path) -> Iterator[Line]:
    offset = 0
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            n = len(raw)
            yield Line(str(path), lineno, offset, raw.rstrip(b"\r\n"))
            offset += n


def read_line_at(f: IO[bytes], offset: int) -> bytes:
    f.seek(offset)
    return f.readline().rstrip(b"\r\n")


@dataclass
class Rollout:
    line: Line
    record: dict
    reward: float
    agent: str | None
    task_key: str
    conversation: Conversation

    @property
    def turns(self) -> int:
        return self.conversation.turns


@dataclass(frozen=True)
class Rejected:
    """A line that is not used: `invalid` (cannot be read as a rollout) or `dropped` (a stage's choice)."""

    line: Line
    bucket: str  # "invalid" | "dropped"
    reason: str
    detail: str = ""


def Invalid(line: Line, reason: str, detail: str = "") -> Rejected:
    return Rejected(line, "invalid", reason, detail)


def canonical_json(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def agent_name(record: dict) -> str | None:
    ref = record.get("agent_ref")
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        return ref["name"]
    return None


def task_key(record: dict, agent: str | None, prompt: list[dict]) -> str:
    """`agent#index` when Gym wrote `_ng_task_index`, else a sha256 of the agent and the prompt.

    The prompt (not only `input`) is hashed because some agents (aviary) put the task in the output.
    """
    idx = record.get("_ng_task_index")
    if isinstance(idx, int) and not isinstance(idx, bool):
        return f"{agent or ''}#{idx}"
    digest = hashlib.sha256(canonical_json({"agent": agent, "prompt": prompt})).hexdigest()
    return f"sha256:{digest[:32]}"


def parse_reward(record: dict) -> float | str:
    """The reward as a float, or the invalid-bucket name. A missing reward is never taken as 0."""
    if "reward" not in record or record["reward"] is None:
        return "reward_missing"
    r = record["reward"]
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        return "reward_not_numeric"
    if not math.isfinite(r):
        return "reward_not_finite"
    return float(r)


def parse_line(line: Line, merge_system: bool = True) -> Rollout | Rejected:
    raw = line.raw
    if not raw.strip():
        return Invalid(line, "blank_line")
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        # Python's json module writes NaN / Infinity, which orjson rejects: read those lines with the
        # stdlib so that the reward check can name the real problem.
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            return Invalid(line, "not_json", f"{err}; starts {raw[:40]!r}")
    if not isinstance(record, dict):
        return Invalid(line, "not_object", f"a JSON {type(record).__name__}")
    if not isinstance(record.get("response"), dict):
        return Invalid(line, "no_response", "no `response` object (an inputs-only line?)")
    reward = parse_reward(record)
    if isinstance(reward, str):
        return Invalid(line, reward, repr(record.get("reward"))[:40])
    try:
        conv = to_conversation(record, merge_system=merge_system)
    except ConversionError as err:
        return Invalid(line, err.reason, err.detail)
    except RecursionError:
        return Invalid(line, "too_deep", "nesting too deep")
    except Exception as err:  # a shape nobody anticipated: report the line, never stop the run
        return Invalid(line, "unexpected_shape", f"{type(err).__name__}: {err}"[:200])
    agent = agent_name(record)
    return Rollout(line, record, reward, agent, task_key(record, agent, conv.prompt), conv)


def line_digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def duplicate(line: Line) -> Rejected:
    return Rejected(line, "dropped", "duplicate", "identical to an earlier line")


def scan(files: Iterable[Path], merge_system: bool = True) -> Iterator[Rollout | Rejected]:
    """Every line of every file, parsed; exact repeats of an earlier line are `duplicate`."""
    seen: set[bytes] = set()
    for path in files:
        for line in iter_lines(path):
            result = parse_line(line, merge_system)
            if isinstance(result, Rollout):
                digest = line_digest(line.raw)
                if digest in seen:
                    result = duplicate(line)
                else:
                    seen.add(digest)
            yield result


def total_bytes(files: Iterable[Path]) -> int:
    return sum(Path(p).stat().st_size for p in files)
