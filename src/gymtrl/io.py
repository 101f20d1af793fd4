"""File edges: atomic writes, JSON/JSONL, `datasets`-loadable parquet written in streaming batches, the log.

Every artifact is written to a temp file beside its target and renamed into place only when complete,
so a killed stage never leaves a half-written file where DVC would cache it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import orjson


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make artifacts unreadable to other users of the repo
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temp folder beside `path`; it replaces `path` only if the block succeeds.

    A stage that is killed leaves no half-filled output folder for DVC to cache: the next run finds
    either the previous complete folder or none (DVC removes outputs before running a stage anyway).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def log(msg: str) -> None:
    """Progress and diagnostics go to stderr (stdout stays machine-readable), unbuffered."""
    print(msg, file=sys.stderr, flush=True)


def dumps(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys) for metrics and side records."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        f.write(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        f.write(b"\n")


def read_json(path: str | os.PathLike) -> Any:
    return orjson.loads(Path(path).read_bytes())


def write_jsonl(path: str | os.PathLike, rows) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(dumps(row))
            f.write(b"\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[Any]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


@contextlib.contextmanager
def exact_json_decoding() -> Iterator[None]:
    """Makes `datasets`' Json feature decode floats exactly while the block runs.

    datasets 5.2 decodes Json columns with pandas' ujson in fast-float mode, which turns 0.7 into
    0.7000000000000001 (found by our round-trip test on xlam_fc's tool schema). The text on disk is
    exact (we write it with orjson); this swaps in the stdlib decoder for reading it back. Decoding is
    lazy (on row access, e.g. inside a trainer's `map`), so wrap the code that reads rows.
    """
    import json

    import datasets.features.features as features

    saved = features.ujson_loads
    features.ujson_loads = json.loads
    try:
        yield
    finally:
        features.ujson_loads = saved


# Column kinds of our datasets: "json" (any JSON value), "json_list" (a list of them, e.g. messages),
# or a `datasets.Value` dtype. Written as the same Arrow schema and metadata that `datasets.Features`
# with `Json()` / `List(Json())` produce (a test checks this), without importing `datasets` (0.4 s and
# 55 MB per stage) or going through its encoder.
Columns = dict[str, str]

_ARROW_TYPES = {"string": "string", "float64": "float64", "int32": "int32", "int64": "int64", "bool": "bool_"}


def _hf_feature(kind: str) -> dict:
    if kind == "json":
        return {"_type": "Json"}
    if kind == "json_list":
        return {"feature": {"_type": "Json"}, "_type": "List"}
    return {"dtype": kind, "_type": "Value"}


def arrow_schema(columns: Columns):
    import json

    import pyarrow as pa

    def arrow_type(kind: str):
        if kind == "json":
            return pa.json_()
        if kind == "json_list":
            return pa.list_(pa.json_())
        return getattr(pa, _ARROW_TYPES[kind])()

    meta = {"info": {"features": {name: _hf_feature(kind) for name, kind in columns.items()}}}
    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in columns.items()],
                     metadata={"huggingface": json.dumps(meta)})


def encode_row(row: dict, columns: Columns) -> dict:
    """A row with its JSON columns as JSON text, encoded with orjson (exact floats), not by datasets'
    ujson encoder; pure, so worker processes can do it."""
    out = {}
    for name, kind in columns.items():
        value = row[name]
        if kind == "json":
            value = None if value is None else orjson.dumps(value).decode()
        elif kind == "json_list":
            value = [orjson.dumps(v).decode() for v in value]
        out[name] = value
    return out


class ParquetWriter:
    """Streams rows into a parquet file that `datasets.load_dataset("parquet", ...)` reads back exactly.

    JSON columns (messages, tools) are stored as JSON text with the `datasets` features in the file's
    metadata, so nested values of mixed types survive the round trip instead of becoming nulls in an
    inferred Arrow struct.
    """

    def __init__(self, path: str | os.PathLike, columns: Columns, batch_size: int = 512,
                 batch_bytes: int = 8_000_000):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.columns = columns
        self.schema = arrow_schema(columns)
        # A row group is flushed at batch_size rows or batch_bytes of JSON text, whichever comes first:
        # Gym rollouts range from a few KB to MBs, and Arrow copies the buffer while converting it.
        self.batch_size, self.batch_bytes = batch_size, batch_bytes
        self._buffer: list[dict] = []
        self._buffered_bytes = 0
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self.rows = 0

    def write_encoded(self, row: dict) -> None:
        """Adds a row already passed through `encode_row` (e.g. by a worker process)."""
        self._buffer.append(row)
        self._buffered_bytes += sum(len(v) for v in row.values() if isinstance(v, str)) + sum(
            len(x) for v in row.values() if isinstance(v, list) for x in v)
        if len(self._buffer) >= self.batch_size or self._buffered_bytes >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        columns = {name: [r[name] for r in self._buffer] for name in self.columns}
        table = self._pa.Table.from_pydict(
            {k: self._pa.array(v, type=_storage_type(self.schema.field(k).type, self._pa)) for k, v in columns.items()}
        ).cast(self.schema)
        self._writer.write_table(table)
        self.rows += len(self._buffer)
        self._buffer.clear()
        self._buffered_bytes = 0

    def __enter__(self) -> "ParquetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
        self._writer.close()
        self._atomic.__exit__(exc_type, exc, tb)


def _storage_type(t, pa):
    """Arrow extension types (json) cannot be built from Python values directly: build their storage."""
    if isinstance(t, pa.BaseExtensionType):
        return t.storage_type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_storage_type(t.value_type, pa))
    return t
