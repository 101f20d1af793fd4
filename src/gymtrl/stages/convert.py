"""convert: filtered rollouts -> TRL conversational SFT dataset (`messages`, `tools`, provenance).

The tool-call argument shape and how reasoning is carried are decided by probing the base model's chat
template (templates.py). Every row is rendered through that template once, so a row the template
cannot render is reported here instead of failing inside training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..chat import ChatFormat, Conversation, format_messages
from ..io import Columns, ParquetWriter, atomic_dir, encode_row, read_jsonl, write_json
from ..parallel import ordered_map, resolve_workers
from ..params import Params
from ..rollouts import Line, Rejected, job_lines, parse_line, scan_jobs
from .common import RejectLog, StageError, log


SFT_COLUMNS: Columns = {"messages": "json_list", "tools": "json", "task_key": "string", "reward": "float64",
                        "turns": "int32", "source": "string", "line": "int64"}


def sft_row(conv: Conversation, fmt: ChatFormat, task_key: str, reward: float, line: Line) -> dict:
    return {
        "messages": format_messages(conv.messages, fmt),
        "tools": conv.tools,
        "task_key": task_key,
        "reward": reward,
        "turns": conv.turns,
        "source": line.source,
        "line": line.lineno,
    }


def renders(tokenizer, messages: list[dict], tools: list[dict]) -> str | None:
    """None when the template renders the row, else the error text."""
    try:
        tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False)
        return None
    except Exception as err:  # any template error is reported per row, with its line
        return f"{type(err).__name__}: {err}"[:200]


def render_errors(tokenizer, rows: list[dict], batch: int = 64) -> list[str | None]:
    """`renders` for many rows. Consecutive rows with the same tools are rendered in one
    `apply_chat_template` call (a fifth cheaper per row than one call each: the call's own set-up and
    the tools' preparation are shared); a batch that fails is rendered row by row to find the culprit."""
    errors: list[str | None] = [None] * len(rows)
    start = 0
    while start < len(rows):
        tools = rows[start]["tools"]
        end = start + 1
        while end < len(rows) and end - start < batch and rows[end]["tools"] == tools:
            end += 1
        try:
            tokenizer.apply_chat_template([r["messages"] for r in rows[start:end]], tools=tools or None, tokenize=False)
        except Exception:  # some row in this batch does not render: find which
            for i in range(start, end):
                errors[i] = renders(tokenizer, rows[i]["messages"], rows[i]["tools"])
        start = end
    return errors


@dataclass(frozen=True)
class RowContext:
    """What a worker needs to turn kept lines into encoded rows."""

    tokenizer: object
    fmt: ChatFormat
    merge_system: bool


def _row_stats(row: dict, conv: Conversation) -> tuple:
    return (
        [m["role"] for m in row["messages"]],
        sum(len(m.get("tool_calls", [])) for m in row["messages"]),
        any(m.get("reasoning_content") for m in conv.messages),
        conv.unanswered_calls,
        conv.skipped_tools,
    )


def convert_lines(ctx: RowContext, lines: list[Line]) -> list[tuple]:
    """Kept lines -> per line ("row", encoded row, stats) or ("rejected", bucket, reason, detail)."""
    out: list[tuple] = []
    built: list[tuple[int, dict, Conversation]] = []  # (position in out, row, conversation)
    for origin in lines:
        parsed = parse_line(origin, ctx.merge_system)
        if isinstance(parsed, Rejected):  # cannot happen for filter output unless it was edited
            out.append(("rejected", parsed.bucket, parsed.reason, parsed.detail))
            continue
        built.append((len(out), sft_row(parsed.conversation, ctx.fmt, parsed.task_key, parsed.reward, origin),
                      parsed.conversation))
        out.append(())
    errors = render_errors(ctx.tokenizer, [row for _, row, _ in built])
    for (i, row, conv), error in zip(built, errors):
        out[i] = (("rejected", "invalid", "template_error", error) if error
                  else ("row", encode_row(row, SFT_COLUMNS), _row_stats(row, conv)))
    return out


def _convert_job(ctx: RowContext, job: tuple, chunk: int = 64) -> list[tuple]:
    lines = [Line("", 0, offset, raw) for offset, raw in job_lines(job)]
    # A few rows at a time: holding a whole job's parsed rows alive makes Python's GC slower than
    # the batched render saves.
    return [r for i in range(0, len(lines), chunk) for r in convert_lines(ctx, lines[i:i + chunk])]


def run(params: Params, filtered_dir="data/filtered", model_dir="models/base", out_dir="data/sft",
        metrics_path="metrics/convert.json") -> dict:
    from ..models import load_chat_tokenizer
    from ..templates import probe_format

    tokenizer = load_chat_tokenizer(model_dir, params.model.trust_remote_code)
    fmt = probe_format(tokenizer, params.convert.arguments, params.convert.reasoning)
    log(f"chat format for {model_dir}: arguments as {fmt.arguments}, reasoning as {fmt.reasoning}")
    filtered = Path(filtered_dir)
    roles: Counter = Counter()
    stats: Counter = Counter()
    ctx = RowContext(tokenizer, fmt, params.convert.merge_system)
    workers = resolve_workers(params.data.workers, (filtered / "rollouts.jsonl").stat().st_size)
    with (
        atomic_dir(out_dir) as out,
        ParquetWriter(out / "train.parquet", SFT_COLUMNS) as writer,
        open(out / "rejects.jsonl", "wb") as rejects_f,
    ):
        rejects = RejectLog(rejects_f)
        # Workers read the kept lines themselves; provenance (the user's original file and line, not the
        # filter's copy) comes from the index, which lists the kept lines in the same order.
        index = read_jsonl(filtered / "index.jsonl")
        mismatch = StageError(f"convert: {filtered}/index.jsonl does not match rollouts.jsonl line for line; "
                              "rerun filter")
        for _, results in ordered_map(_convert_job, ctx, scan_jobs([filtered / "rollouts.jsonl"]), workers):
            for result in results:
                entry = next(index, None)
                if entry is None:
                    raise mismatch
                origin = Line(entry["source"], entry["line"], 0, b"")
                if result[0] == "rejected":
                    rejects.add(Rejected(origin, *result[1:]))
                    stats["invalid" if result[2] != "template_error" else "template_error"] += 1
                    continue
                _, row, (row_roles, tool_calls, with_reasoning, unanswered, skipped) = result
                row["source"], row["line"] = origin.source, origin.lineno
                writer.write_encoded(row)
                stats["rows"] += 1
                roles.update(row_roles)
                stats["tool_calls"] += tool_calls
                stats["with_reasoning"] += with_reasoning
                stats["unanswered_tool_calls"] += unanswered
                stats["skipped_tools"] += skipped
        if next(index, None) is not None:
            raise mismatch
        if stats["rows"] == 0:
            raise StageError(f"convert: no row written from {filtered}/rollouts.jsonl; see {out_dir}/rejects.jsonl")
    m = {
        "rows": stats["rows"],
        "arguments_format": fmt.arguments,
        "reasoning_format": fmt.reasoning,
        "messages_by_role": dict(sorted(roles.items())),
        **{k: stats[k] for k in ("tool_calls", "with_reasoning", "unanswered_tool_calls", "skipped_tools",
                                 "template_error", "invalid")},
    }
    write_json(metrics_path, m)
    return m
