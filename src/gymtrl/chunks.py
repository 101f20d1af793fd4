"""Rollout files cut into jobs for worker processes (parallel.py runs them in order).

A plain file is cut into byte ranges that start at a line start, and a worker reads its range itself;
a gzip file cannot be split or seeked, so its lines are read here and sent in batches. Either way a
worker gets the same (byte offset, line) pairs `rollouts.iter_lines` would give, so results do not
depend on how the input was cut.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from .parallel import batched
from .rollouts import iter_lines

CHUNK_BYTES = 4_000_000


class RangeJob(NamedTuple):
    path: str
    start: int  # a line start
    end: int  # exclusive; a line start or the end of the file


class LinesJob(NamedTuple):
    path: str
    lines: list[tuple[int, bytes]]  # (byte offset in the decompressed file, line without its newline)


FileJob = RangeJob | LinesJob


def line_ranges(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """[start, end) byte ranges of a plain file, each starting at a line start."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while start < size:
            end = start + chunk_bytes
            if end < size:
                f.seek(end)
                f.readline()
                end = f.tell()
            yield start, min(end, size)
            start = end


def read_range(path: str, start: int, end: int) -> list[tuple[int, bytes]]:
    """The (offset, line) pairs of one range, split exactly as `iter_lines` splits the file."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out, offset = [], start
    for raw in parts:
        out.append((offset, raw.rstrip(b"\r")))
        offset += len(raw) + 1
    return out


def file_jobs(files: Iterable[Path], chunk_bytes: int = CHUNK_BYTES) -> Iterator[FileJob]:
    """Every line of every file, in order, as jobs of about `chunk_bytes`."""
    for path in files:
        if path.name.endswith(".gz"):
            lines = ((line.offset, line.raw) for line in iter_lines(path))
            for batch in batched(lines, lambda x: len(x[1]), max_bytes=chunk_bytes):
                yield LinesJob(str(path), batch)
        else:
            for start, end in line_ranges(path, chunk_bytes):
                yield RangeJob(str(path), start, end)


def job_lines(job: FileJob) -> list[tuple[int, bytes]]:
    """Worker side: the job's (offset, line) pairs."""
    return read_range(job.path, job.start, job.end) if isinstance(job, RangeJob) else job.lines
