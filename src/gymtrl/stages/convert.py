"""convert: filtered rollouts -> TRL conversational SFT dataset (`messages`, `tools`, provenance).

How a row is shaped for the base model's chat template (argument shape, reasoning, call ids, parallel
calls) is decided by probing that template (templates.py). Every row is then rendered once and checked
piece by piece (faithful.py): a row whose training text misses any part of the rollout is rejected with
the pieces it loses (`convert.on_loss: reject`, the default) or kept and counted (`keep`); a row the
template cannot render at all is reported here instead of failing inside training.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..chat import ChatFormat, Conversation, format_messages
from ..chunks import FileJob, file_jobs, job_lines
from ..faithful import PIECE_KINDS, TemplateMismatch, lost_pieces, pieces, training_samples
from ..io import Columns, ParquetWriter, atomic_dir, encode_row, read_jsonl, write_json
from ..models import chat_format, load_chat_tokenizer
from ..parallel import ordered_map, resolve_workers
from ..params import Params
from ..rollouts import Line, Rejected, Rollout, parse_line
from ..templates import render
from .common import RejectLog, StageError, log, main

METRICS = "convert.json"


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


def render_rows(tokenizer, rows: list[dict], fmt: ChatFormat, batch: int = 64) -> list[str | Exception]:
    """Each row's training text, or the template's error. Consecutive rows with the same tools are
    rendered in one `apply_chat_template` call (a fifth cheaper per row than one call each: the call's
    own set-up and the tools' preparation are shared); a batch that fails is rendered row by row."""
    out: list[str | Exception] = []
    start = 0
    while start < len(rows):
        tools = rows[start]["tools"]
        end = start + 1
        while end < len(rows) and end - start < batch and rows[end]["tools"] == tools:
            end += 1
        try:
            out.extend(tokenizer.apply_chat_template([r["messages"] for r in rows[start:end]],
                                                     tools=fmt.tools_arg(tools), tokenize=False))
        except Exception:  # some row in this batch does not render: find which
            for row in rows[start:end]:
                try:
                    out.append(render(tokenizer, row["messages"], row["tools"], fmt))
                except Exception as err:  # any template error is reported per row, with its line
                    out.append(err)
        start = end
    return out


@dataclass(frozen=True)
class RowContext:
    """What a worker needs to turn kept lines into encoded rows."""

    tokenizer: object
    fmt: ChatFormat
    merge_system: bool
    on_loss: str  # reject | keep


# NamedTuples, not dataclasses: one of each per row crosses the worker pipe; they pickle as tuples.
class RowStats(NamedTuple):
    roles: list[str]
    tool_calls: int
    with_reasoning: bool
    unanswered_calls: int
    skipped_tools: int
    lost: dict[str, int]  # pieces of the rollout the training text does not hold, by kind
    samples: int  # training texts the row gives (more than one where the template rewrites history)


class NotConverted(NamedTuple):
    bucket: str  # invalid | dropped
    reason: str  # content_lost | template_error | template_mismatch | a reader's invalid reason
    detail: str


class Converted(NamedTuple):
    """A worker's verdict on one kept line: an encoded row, or why it was not converted."""

    row: dict | None = None
    stats: RowStats | None = None
    rejected: NotConverted | None = None
    lost: dict[str, int] | None = None  # on a row rejected for lost content


def check_row(tokenizer, row: dict, conv: Conversation, fmt: ChatFormat, text: str) -> tuple[dict[str, int], int]:
    """Pieces of the rollout missing from its training text(s), by kind, and how many texts it trains as.
    Under a consistent template the row's full render is checked, and only a row that misses something
    there is cut into the samples training will use (faithful.training_samples), which can hold what the
    full text rewrote; other templates' rows are always cut (3 renders a turn), so that every row convert
    keeps can be trained."""
    wanted = pieces(conv, fmt)
    lost = lost_pieces([text], wanted) if fmt.consistent else True
    if not lost:
        return {}, 1
    samples = training_samples(tokenizer, row["messages"], row["tools"], fmt, text)
    return dict(sorted(lost_pieces([x.text for x in samples], wanted).items())), len(samples)


def row_verdict(ctx: RowContext, row: dict, conv: Conversation, text) -> Converted:
    if isinstance(text, Exception):
        return Converted(rejected=NotConverted("invalid", "template_error", f"{type(text).__name__}: {text}"[:200]))
    try:
        lost, samples = check_row(ctx.tokenizer, row, conv, ctx.fmt, text)
    except TemplateMismatch as err:
        return Converted(rejected=NotConverted("invalid", "template_mismatch", str(err)[:200]))
    except Exception as err:  # rendering a prefix of the row failed
        return Converted(rejected=NotConverted("invalid", "template_error", f"{type(err).__name__}: {err}"[:200]))
    if lost and ctx.on_loss == "reject":
        detail = ", ".join(f"{n} {kind}" for kind, n in lost.items()) + " not in the rendered text"
        return Converted(rejected=NotConverted("dropped", "content_lost", detail), lost=lost)
    stats = RowStats([m["role"] for m in row["messages"]], sum(len(m.get("tool_calls", [])) for m in row["messages"]),
                     any(m.get("reasoning_content") for m in conv.messages), conv.unanswered_calls,
                     conv.skipped_tools, lost, samples)
    return Converted(row=encode_row(row, SFT_COLUMNS), stats=stats)


def convert_rollout(ctx: RowContext, item: Rollout) -> tuple[dict, Converted]:
    """One parsed rollout -> its row and verdict, rendered alone (convert_lines renders
    rows in batches; the verdicts are the same)."""
    row = sft_row(item.conversation, ctx.fmt, item.task_key, item.reward, item.line)
    try:
        text = render(ctx.tokenizer, row["messages"], row["tools"], ctx.fmt)
    except Exception as err:  # reported by the verdict, as in convert_lines
        text = err
    return row, row_verdict(ctx, row, item.conversation, text)


def convert_lines(ctx: RowContext, lines: list[Line]) -> list[Converted]:
    """Kept lines -> one verdict per line, in order."""
    out: list[Converted | None] = []
    built: list[tuple[int, dict, Conversation]] = []  # (position in out, row, conversation)
    for origin in lines:
        parsed = parse_line(origin, ctx.merge_system)
        if isinstance(parsed, Rejected):  # cannot happen for filter output unless it was edited
            out.append(Converted(rejected=NotConverted(parsed.bucket, parsed.reason, parsed.detail)))
            continue
        built.append((len(out), sft_row(parsed.conversation, ctx.fmt, parsed.task_key, parsed.reward, origin),
                      parsed.conversation))
        out.append(None)
    texts = render_rows(ctx.tokenizer, [row for _, row, _ in built], ctx.fmt)
    for (i, row, conv), text in zip(built, texts):
        out[i] = row_verdict(ctx, row, conv, text)
    return out


def _convert_job(ctx: RowContext, job: FileJob, chunk: int = 64) -> list[Converted]:
    lines = [Line("", 0, offset, raw) for offset, raw in job_lines(job)]
    # A few rows at a time: holding a whole job's parsed rows alive makes Python's GC slower than
    # the batched render saves.
    return [r for i in range(0, len(lines), chunk) for r in convert_lines(ctx, lines[i:i + chunk])]


def run(params: Params) -> dict:
    paths = params.paths
    model_dir, out_dir = paths.base_model, paths.sft
    tokenizer = load_chat_tokenizer(model_dir, params.model.trust_remote_code)
    fmt = chat_format(model_dir, params.convert.arguments, params.convert.reasoning, params.model.trust_remote_code)
    log(f"chat format for {model_dir}: {fmt}")
    if not fmt.tool_schemas:
        log("convert: this chat template never shows tool definitions; the model sees none at inference either")
    filtered = Path(paths.filtered)
    roles: Counter = Counter()
    stats: Counter = Counter()
    lost: Counter = Counter()
    ctx = RowContext(tokenizer, fmt, params.convert.merge_system, params.convert.on_loss)
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
        for _, results in ordered_map(_convert_job, ctx, file_jobs([filtered / "rollouts.jsonl"]), workers):
            for result in results:
                entry = next(index, None)
                if entry is None:
                    raise mismatch
                origin = Line(entry["source"], entry["line"], 0, b"")
                if result.rejected:
                    rejects.add(Rejected(origin, *result.rejected))
                    reason = result.rejected.reason
                    stats[reason if reason in ("template_error", "template_mismatch", "content_lost") else "invalid"] += 1
                    lost.update(result.lost or {})
                    stats["rows_with_loss"] += bool(result.lost)
                    continue
                row, st = result.row, result.stats
                row["source"], row["line"] = origin.source, origin.lineno
                writer.write_encoded(row)
                stats["rows"] += 1
                roles.update(st.roles)
                stats["tool_calls"] += st.tool_calls
                stats["with_reasoning"] += st.with_reasoning
                stats["unanswered_tool_calls"] += st.unanswered_calls
                stats["skipped_tools"] += st.skipped_tools
                stats["rows_with_loss"] += bool(st.lost)
                stats["rows_split"] += st.samples > 1
                lost.update(st.lost)
        if next(index, None) is not None:
            raise mismatch
        if stats["rows"] == 0:
            raise StageError(f"convert: no row written from {filtered}/rollouts.jsonl; see {out_dir}/rejects.jsonl")
    if lost:
        verb = "rejected" if params.convert.on_loss == "reject" else "kept anyway (convert.on_loss=keep)"
        log(f"convert: {stats['rows_with_loss']} row(s) lose content in {model_dir}'s chat template, {verb}: "
            f"{dict(sorted(lost.items()))}; see {out_dir}/rejects.jsonl")
    m = {
        "rows": stats["rows"],
        "arguments_format": fmt.arguments,
        "reasoning_format": fmt.reasoning_field if fmt.reasoning == "field" else fmt.reasoning,
        "chat_format": dataclasses.asdict(fmt),
        "on_loss": params.convert.on_loss,
        "lost_pieces": {k: lost[k] for k in PIECE_KINDS},
        "messages_by_role": dict(sorted(roles.items())),
        **{k: stats[k] for k in ("tool_calls", "with_reasoning", "unanswered_tool_calls", "skipped_tools",
                                 "rows_with_loss", "rows_split", "content_lost", "template_error",
                                 "template_mismatch", "invalid")},
    }
    write_json(Path(paths.metrics) / METRICS, m)
    return m


if __name__ == "__main__":
    sys.exit(main("convert", run))
