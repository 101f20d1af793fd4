"""Responses API items (what Gym writes) -> chat messages (what chat templates and TRL read).

Pure functions. The rules follow Gym's own converter (`nemo_gym/responses_converter.py`, newer Gym):
consecutive assistant items (reasoning, text, function calls) form ONE assistant turn; a user, system,
developer or tool item ends it; `function_call_output` becomes a `tool` message.

Messages are first built in a canonical form (tool-call `arguments` as the JSON string Gym wrote,
reasoning in `reasoning_content`); `format_messages` then shapes them for one chat template.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson


class ConversionError(ValueError):
    """A rollout that cannot be turned into chat messages faithfully; `reason` is a stable bucket name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}


def content_text(content: Any) -> str:
    """A message's content as one string: a string, or a list of text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConversionError("bad_content", f"content is {type(content).__name__}")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise ConversionError("bad_content", f"content part is {type(part).__name__}")
        kind = part.get("type")
        if isinstance(kind, str) and kind in TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise ConversionError("bad_content", f"{kind} part has no text")
            texts.append(text)
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise ConversionError("unsupported_content", f"content part type {kind!r}")
    return "".join(texts)


def tool_to_chat(tool: Any) -> dict | None:
    """A Responses API tool -> chat-template tool; None for non-function tools (web search, MCP, ...)."""
    if not isinstance(tool, dict):
        raise ConversionError("bad_tools", f"tool is {type(tool).__name__}")
    if tool.get("type", "function") != "function":
        return None
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ConversionError("bad_tools", "function tool without a name")
    out: dict[str, Any] = {"name": name}
    if fn.get("description") is not None:
        out["description"] = fn["description"]
    if fn.get("parameters") is not None:
        out["parameters"] = fn["parameters"]
    return {"type": "function", "function": out}


def flatten_output(output: Any) -> list:
    """`response.output` as one item list.

    aviary writes a list per environment step, each step the whole transcript so far: when every step
    is a prefix of the next, the last one is the conversation; otherwise the steps are concatenated.
    """
    if not isinstance(output, list):
        raise ConversionError("output_not_list", f"response.output is {type(output).__name__}")
    if not output or not any(isinstance(step, list) for step in output):
        return output
    if not all(isinstance(step, list) for step in output):
        raise ConversionError("output_mixed_nesting", "response.output mixes lists and items")
    cumulative = all(output[i] == output[i + 1][: len(output[i])] for i in range(len(output) - 1))
    if cumulative:
        return output[-1]
    return [item for step in output for item in step]


_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_think(text: str) -> tuple[list[str], str]:
    """Assistant text -> (its `<think>` blocks' contents, the text without them).

    Also takes a leading `...</think>` with no opening tag: templates such as DeepSeek-R1's put `<think>`
    into the generation prompt, so the model's output starts inside the block.
    """
    if "</think>" not in text:
        return [], text
    thoughts: list[str] = []
    head, sep, tail = text.partition("</think>")
    if "<think>" not in head:
        thoughts.append(head.strip())
        text = tail
    for m in _THINK_BLOCK.finditer(text):
        thoughts.append(m.group(1).strip())
    text = _THINK_BLOCK.sub("", text)
    return [t for t in thoughts if t], text.strip() if thoughts else text


@dataclass
class Conversation:
    messages: list[dict]
    prompt_len: int  # messages[:prompt_len] is the task's prompt, the rest is the policy's continuation
    tools: list[dict]
    skipped_tools: int = 0
    unanswered_calls: int = 0

    @property
    def prompt(self) -> list[dict]:
        return self.messages[: self.prompt_len]

    @property
    def continuation(self) -> list[dict]:
        return self.messages[self.prompt_len :]

    @property
    def turns(self) -> int:
        """Turns = assistant messages in the continuation (one per policy step, tool calls included)."""
        return sum(1 for m in self.continuation if m["role"] == "assistant")


@dataclass
class _Builder:
    messages: list[dict] = field(default_factory=list)
    pending: dict | None = None
    calls: dict[str, str] = field(default_factory=dict)  # call_id -> function name
    answered: set[str] = field(default_factory=set)

    def assistant(self) -> dict:
        if self.pending is None:
            self.pending = {"role": "assistant", "content": ""}
        return self.pending

    def flush(self) -> None:
        if self.pending is not None:
            self.messages.append(self.pending)
            self.pending = None

    def add(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise ConversionError("bad_item", f"item is {type(item).__name__}")
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # Gym writes input messages without `type`
        if kind == "message":
            self._message(item)
        elif kind == "reasoning":
            summary = item.get("summary") or []
            if not isinstance(summary, list):
                raise ConversionError("bad_item", f"reasoning summary is {type(summary).__name__}")
            text = "\n".join(content_text([p]) for p in summary)
            if not text and item.get("content"):
                text = content_text(item["content"])
            if text:
                self._reasoning(text)
        elif kind == "function_call":
            self._call(item)
        elif kind == "function_call_output":
            self._call_output(item)
        else:
            raise ConversionError("unsupported_item", f"item type {kind!r}")

    def _reasoning(self, text: str) -> None:
        msg = self.assistant()
        prev = msg.get("reasoning_content")
        msg["reasoning_content"] = f"{prev}\n{text}" if prev else text

    def _message(self, item: dict) -> None:
        role = item.get("role")
        text = content_text(item.get("content"))
        if role == "assistant":
            # Raw `<think>` blocks (a server without a reasoning parser) are reasoning, not answer text:
            # left in the content, templates that split on `</think>` keep only the last one.
            thoughts, text = split_think(text)
            for thought in thoughts:
                self._reasoning(thought)
            msg = self.assistant()
            msg["content"] += text
        elif role in ("user", "system", "developer"):
            self.flush()
            self.messages.append({"role": role, "content": text})
        else:
            raise ConversionError("unknown_role", f"message role {role!r}")

    def _call(self, item: dict) -> None:
        call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
        if not isinstance(call_id, str) or not call_id:
            raise ConversionError("call_id_missing", f"function_call {name!r} has no call_id")
        if not isinstance(name, str) or not name:
            raise ConversionError("bad_function_call", "function_call without a name")
        if isinstance(args, dict):
            args = orjson.dumps(args).decode()
        if not isinstance(args, str):
            raise ConversionError("arguments_not_json", f"arguments of {name!r} is {type(args).__name__}")
        try:
            parsed = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise ConversionError("arguments_not_json", f"arguments of {name!r}: {args[:80]!r}") from None
        if not isinstance(parsed, dict):
            raise ConversionError("arguments_not_json", f"arguments of {name!r} are not a JSON object")
        msg = self.assistant()
        msg.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
        )
        self.calls[call_id] = name

    def _call_output(self, item: dict) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or call_id not in self.calls:
            raise ConversionError("orphan_tool_output", f"function_call_output for unknown call {call_id!r}")
        output = item.get("output")
        if isinstance(output, (list, type(None))) or isinstance(output, str):
            text = content_text(output)
        else:
            text = orjson.dumps(output, option=orjson.OPT_SORT_KEYS).decode()
        self.flush()
        self.messages.append(
            {"role": "tool", "tool_call_id": call_id, "name": self.calls[call_id], "content": text}
        )
        self.answered.add(call_id)


def _merge_leading_system(messages: list[dict]) -> list[dict]:
    n = 0
    while n < len(messages) and messages[n]["role"] in ("system", "developer"):
        n += 1
    if n == 0:
        return messages
    merged = {"role": "system", "content": "\n\n".join(m["content"] for m in messages[:n])}
    return [merged, *messages[n:]]


def input_items(params: Any) -> list:
    """`responses_create_params` -> its input items; a bare string is one user message."""
    if not isinstance(params, dict):
        raise ConversionError("input_missing", "responses_create_params is missing or not an object")
    inp = params.get("input")
    items: list = []
    instructions = params.get("instructions")
    if isinstance(instructions, str) and instructions:
        items.append({"type": "message", "role": "system", "content": instructions})
    if inp is None:
        return items
    if isinstance(inp, str):
        return [*items, {"type": "message", "role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise ConversionError("bad_input", f"input is {type(inp).__name__}")
    return [*items, *inp]


def convert_tools(*candidates: Any) -> tuple[list[dict], int]:
    """The first non-empty tool list among candidates, in chat-template shape, and how many were skipped."""
    for tools in candidates:
        if tools is None:
            continue
        if not isinstance(tools, list):
            raise ConversionError("bad_tools", f"tools is {type(tools).__name__}")
        if tools:
            converted = [tool_to_chat(t) for t in tools]
            kept = [t for t in converted if t is not None]
            return kept, len(converted) - len(kept)
    return [], 0


def _builder_from_inputs(inputs: list) -> _Builder:
    b = _Builder()
    for item in inputs:
        b.add(item)
    b.flush()
    return b


def prompt_messages(params: dict, merge_system: bool = True) -> list[dict]:
    """A task's `responses_create_params` -> the chat messages an agent starts from."""
    messages = _builder_from_inputs(input_items(params)).messages
    return _merge_leading_system(messages) if merge_system else messages


def to_conversation(record: dict, merge_system: bool = True) -> Conversation:
    """One Gym rollout record -> Conversation. Raises ConversionError with a bucket name."""
    params = record.get("responses_create_params")
    inputs = input_items(params)
    response = record.get("response")
    if not isinstance(response, dict):
        raise ConversionError("no_response", "no `response` object (an inputs-only line?)")
    if "output" not in response:
        raise ConversionError("output_missing", "response has no `output`")
    outputs = flatten_output(response["output"])

    # One builder for input and output, so that output items can answer calls made in the input.
    b = _builder_from_inputs(inputs)
    # Environment messages that open the output (aviary puts the task there) belong to the prompt.
    i = 0
    while i < len(outputs) and isinstance(outputs[i], dict) and outputs[i].get("role") in ("user", "system", "developer"):
        b.add(outputs[i])
        i += 1
    prompt_len = len(b.messages)
    for item in outputs[i:]:
        b.add(item)
    b.flush()

    messages = b.messages
    if merge_system:
        before = len(messages[:prompt_len])
        prompt = _merge_leading_system(messages[:prompt_len])
        messages = prompt + messages[prompt_len:]
        prompt_len -= before - len(prompt)
    tools, skipped = convert_tools(params.get("tools"), response.get("tools"))
    return Conversation(
        messages=messages,
        prompt_len=prompt_len,
        tools=tools,
        skipped_tools=skipped,
        unanswered_calls=len(set(b.calls) - b.answered),
    )


@dataclass(frozen=True)
class ChatFormat:
    """How one chat template wants a conversation, decided by probing it (templates.py), never by name.

    - arguments: tool-call arguments as a dict (templates that `tojson` or iterate them) or the JSON string.
    - reasoning: in a message field (`reasoning_field`: `reasoning_content`, `thinking`, ...), inline as
      `<think>` text before the content, or dropped (convert.reasoning=drop).
    - call_ids: kept, or remapped to 9 alphanumerics (Mistral's templates raise on any other id).
    - parallel_calls: native, or split into one call per assistant message, each followed by its own
      output (templates that render only the first call of a message, or raise on more than one).
    - empty_tools: what a row without tool definitions passes as `tools`: None, or [] for templates that
      choose their tool-use variant by `tools is not None` (Hermes: its default variant ignores calls).
    - tool_schemas: whether the template shows tool definitions at all; where it does not, the model
      never sees them at inference either, so they are not expected in the training text.
    - call_text: text beside tool calls kept as text, or appended to the reasoning field for templates
      that render both as one channel and refuse both at once (gpt-oss: content of a call is analysis).
    - consistent: whether the template renders each turn's history the same as it renders the prompt
      at that turn (ChatML, Llama); where not (Qwen3 renders an empty think block only on the last
      turn, gpt-oss hides earlier analysis), convert cuts every row into its training samples.
    """

    arguments: Literal["dict", "string"] = "dict"
    reasoning: Literal["field", "think", "drop"] = "field"
    reasoning_field: str = "reasoning_content"
    call_ids: Literal["keep", "alnum9"] = "keep"
    parallel_calls: Literal["native", "split"] = "native"
    empty_tools: Literal["none", "list"] = "none"
    tool_schemas: bool = True  # False: the template never shows tool definitions (DeepSeek V3.x)
    call_text: Literal["native", "reasoning"] = "native"
    consistent: bool = True  # every turn trains inside the one full render (else rows are cut per turn)

    def tools_arg(self, tools: list[dict] | None) -> list[dict] | None:
        """The `tools` argument for apply_chat_template: one rule for convert, train and evaluate."""
        if tools:
            return tools
        return [] if self.empty_tools == "list" else None


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def alnum9(call_id: str) -> str:
    """A call id as 9 alphanumerics, deterministic (the same id maps the same way in call and output)."""
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    return "".join(_ALNUM[(n >> (6 * k)) % 62] for k in range(9))


def _split_parallel(messages: list[dict]) -> list[dict]:
    """An assistant message with several calls -> one message per call, each followed by its output."""
    out: list[dict] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        calls = m.get("tool_calls") or []
        if m["role"] != "assistant" or len(calls) < 2:
            out.append(m)
            i += 1
            continue
        j = i + 1
        outputs: dict[str, list[dict]] = {}
        while j < len(messages) and messages[j]["role"] == "tool":
            outputs.setdefault(messages[j].get("tool_call_id"), []).append(messages[j])
            j += 1
        for k, call in enumerate(calls):
            part = {key: v for key, v in m.items() if key != "tool_calls"} if k == 0 else {"role": "assistant", "content": ""}
            part["tool_calls"] = [call]
            out.append(part)
            out.extend(outputs.pop(call.get("id"), []))
        out.extend(t for ts in outputs.values() for t in ts)  # outputs of no call here: kept, in order
        i = j
    return out


def format_messages(messages: list[dict], fmt: ChatFormat) -> list[dict]:
    """Canonical messages (see the module doc) -> the shape `fmt`'s template renders faithfully."""
    out = []
    for m in messages:
        m = dict(m)
        reasoning = m.pop("reasoning_content", None)
        if reasoning and fmt.reasoning == "field":
            if fmt.call_text == "reasoning" and m.get("tool_calls") and m["content"]:
                reasoning, m["content"] = f"{reasoning}\n\n{m['content']}", ""
            m[fmt.reasoning_field] = reasoning
        elif reasoning and fmt.reasoning == "think":
            m["content"] = f"<think>\n{reasoning}\n</think>\n{m['content']}"
        if "tool_calls" in m:
            calls = []
            for tc in m["tool_calls"]:
                fn = tc["function"]
                if fmt.arguments == "dict":
                    fn = {**fn, "arguments": orjson.loads(fn["arguments"] or "{}")}
                calls.append({**tc, "id": alnum9(tc["id"]) if fmt.call_ids == "alnum9" else tc["id"], "function": fn})
            m["tool_calls"] = calls
        if m["role"] == "tool" and fmt.call_ids == "alnum9" and m.get("tool_call_id"):
            m["tool_call_id"] = alnum9(m["tool_call_id"])
        out.append(m)
    return _split_parallel(out) if fmt.parallel_calls == "split" else out
