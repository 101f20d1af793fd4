"""convert: filtered rollouts -> TRL conversational SFT dataset (`messages`, `tools`, provenance).

The tool-call argument shape and how reasoning is carried are decided by probing the base model's chat
template (templates.py). Every row is rendered through that template once, so a row the template
cannot render is reported here instead of failing inside training.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..chat import ChatFormat, Conversation, format_messages
from ..io import ParquetWriter, atomic_dir, read_jsonl, write_json
from ..params import Params
from ..rollouts import Line, Rejected, iter_lines, parse_line
from .common import RejectLog, StageError, log


def sft_features():
    from datasets import Features, Json, List, Value

    return Features(
        {
            "messages": List(Json()),
            "tools": Json(),
            "task_key": Value("string"),
            "reward": Value("float64"),
            "turns": Value("int32"),
            "source": Value("string"),
            "line": Value("int64"),
        }
    )


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


def run(params: Params, filtered_dir="data/filtered", model_dir="models/base", out_dir="data/sft",
        metrics_path="metrics/convert.json") -> dict:
    from ..models import load_tokenizer
    from ..templates import probe_format

    tokenizer = load_tokenizer(model_dir, params.model.trust_remote_code)
    fmt = probe_format(tokenizer, params.convert.arguments, params.convert.reasoning)
    log(f"chat format for {model_dir}: arguments as {fmt.arguments}, reasoning as {fmt.reasoning}")
    filtered = Path(filtered_dir)
    roles: Counter = Counter()
    stats: Counter = Counter()
    with (
        atomic_dir(out_dir) as out,
        ParquetWriter(out / "train.parquet", sft_features()) as writer,
        open(out / "rejects.jsonl", "wb") as rejects_f,
    ):
        rejects = RejectLog(rejects_f)
        index = read_jsonl(filtered / "index.jsonl")
        for kept, entry in zip(iter_lines(filtered / "rollouts.jsonl"), index, strict=True):
            # Provenance points at the user's original file, not at the filter's copy.
            origin = Line(entry["source"], entry["line"], kept.offset, kept.raw)
            parsed = parse_line(origin, params.convert.merge_system)
            if isinstance(parsed, Rejected):  # cannot happen for filter output unless it was edited
                rejects.add(parsed)
                stats["invalid"] += 1
                continue
            row = sft_row(parsed.conversation, fmt, parsed.task_key, parsed.reward, origin)
            error = renders(tokenizer, row["messages"], row["tools"])
            if error:
                rejects.add(Rejected(origin, "invalid", "template_error", error))
                stats["template_error"] += 1
                continue
            writer.write(row)
            stats["rows"] += 1
            roles.update(m["role"] for m in row["messages"])
            stats["tool_calls"] += sum(len(m.get("tool_calls", [])) for m in row["messages"])
            stats["with_reasoning"] += any(m.get("reasoning_content") for m in parsed.conversation.messages)
            stats["unanswered_tool_calls"] += parsed.conversation.unanswered_calls
            stats["skipped_tools"] += parsed.conversation.skipped_tools
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
