"""Proof that a rendered training text holds the whole rollout, and the assistant-only loss mask.

Pure functions over messages and rendered text; the tokenizer is only used through `templates.render`.

- `pieces`: everything a Gym rollout says, as strings that must appear in the training text: system and
  user text, environment turns, assistant text, reasoning, each tool call (name + every argument key and
  value), each tool output, each tool schema (name + description).
- `lost_pieces`: which pieces a rendered text does not hold. Each piece claims its own occurrence
  (longest first), so a tool output that also appears inside a later call's arguments is not counted
  twice. A piece may appear as written or JSON-escaped (templates that `tojson` strings), trimmed.
- `training_samples`: the texts to train on, with the assistant's character spans. Each assistant turn
  is trained in exactly the context the model sees at inference: the text before it is what the
  template renders as the generation prompt for that turn (what an evaluator or a server such as vLLM
  renders). Templates that rewrite history (Qwen3 hides reasoning before the last user message, gpt-oss
  hides a tool call's analysis once a final answer follows) give several samples for one row;
  consistent templates give one. Nothing is dropped and no `{% generation %}` markers are needed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

import orjson

from .chat import ChatFormat, Conversation
from .templates import render

PIECE_KINDS = ("system", "user", "environment", "assistant_text", "reasoning", "tool_call", "tool_output",
               "tool_schema")


@dataclass(frozen=True)
class Piece:
    kind: str
    # Every part must be found for the piece to count as kept; each part is a tuple of acceptable forms.
    parts: tuple[tuple[str, ...], ...]


def _forms(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text:
        return ()
    # As written, JSON-escaped (templates that `tojson` strings) or Python-escaped (pythonic call syntax).
    forms = {text, json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1], repr(text)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


def _value_forms(value) -> list[tuple[str, ...]]:
    """Argument leaves: keys and scalar values, each as the forms a template may print it in."""
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in (_forms(str(k)), *_value_forms(v))]
    if isinstance(value, list):
        return [f for v in value for f in _value_forms(v)]
    if isinstance(value, str):
        return [_forms(value)]
    if isinstance(value, bool) or value is None:
        return [tuple({json.dumps(value), str(value)})]
    return [tuple({json.dumps(value), str(value)})]


def _piece(kind: str, *parts: tuple[str, ...]) -> Piece | None:
    parts = tuple(p for p in parts if p)
    return Piece(kind, parts) if parts else None


def pieces(conv: Conversation, fmt: ChatFormat) -> list[Piece]:
    """What the rollout says (canonical messages, see chat.py), piece by piece."""
    out: list[Piece | None] = []
    # What follows the last assistant turn (an output nobody answered) teaches nothing: not required.
    last = max((n for n, m in enumerate(conv.messages) if m["role"] == "assistant"), default=len(conv.messages))
    for n, m in enumerate(conv.messages[: last + 1]):
        role = m["role"]
        if role in ("system", "developer"):
            out.append(_piece("system", _forms(m["content"])))
        elif role == "user":
            out.append(_piece("user" if n < conv.prompt_len else "environment", _forms(m["content"])))
        elif role == "tool":
            out.append(_piece("tool_output", _forms(m["content"])))
        elif role == "assistant":
            out.append(_piece("assistant_text", _forms(m["content"])))
            if fmt.reasoning != "drop":
                out.append(_piece("reasoning", _forms(m.get("reasoning_content") or "")))
            for tc in m.get("tool_calls", []):
                args = orjson.loads(tc["function"]["arguments"] or "{}")
                out.append(_piece("tool_call", _forms(tc["function"]["name"]), *_value_forms(args)))
    for tool in conv.tools if fmt.tool_schemas else ():  # a template that never shows schemas cannot lose them
        fn = tool["function"]
        out.append(_piece("tool_schema", _forms(fn["name"]), _forms(str(fn.get("description") or ""))))
    return [p for p in out if p is not None]


def lost_pieces(texts: list[str], wanted: list[Piece]) -> Counter:
    """Pieces (by kind) that the texts do not hold, each occurrence claimed by one part only."""
    text = "\0".join(texts)
    claimed = bytearray(len(text))
    parts = sorted(((max(map(len, forms)), forms, k) for k, p in enumerate(wanted) for forms in p.parts),
                   key=lambda x: -x[0])
    missing: set[int] = set()
    for _, forms, k in parts:
        if not _claim(text, claimed, forms):
            missing.add(k)
    return Counter(wanted[k].kind for k in missing)


def _claim(text: str, claimed: bytearray, forms: tuple[str, ...]) -> bool:
    for form in forms:
        pos = text.find(form)
        while pos >= 0:
            end = pos + len(form)
            if claimed.find(1, pos, end) < 0:
                claimed[pos:end] = b"\1" * len(form)
                return True
            pos = text.find(form, pos + 1)
    return False


class TemplateMismatch(ValueError):
    """The template renders an assistant turn's prompt as something that is not a prefix of the turn."""


@dataclass(frozen=True)
class Turn:
    index: int  # position of the assistant message
    prompt: str  # the generation prompt at this turn (what the model sees at inference), less any prefill
    completion: str  # what the assistant produces, up to and including its end-of-turn token
    upto: str  # prompt + the turn as the template renders it when the turn is the last message


@dataclass(frozen=True)
class Sample:
    text: str
    spans: tuple[tuple[int, int], ...]  # character ranges the assistant produced: the trained part


def _cut(prompt: str, history: str, text: str) -> int | None:
    """Where the model's own part of `text` (a rendered turn) starts, given the turn's generation prompt
    and the history before it; None when `text` rewrote the history.

    Usually the whole generation prompt precedes the turn. Templates that prefill part of the answer
    (Nemotron 3's `<think>\n`) render a turn without reasoning as `<think></think>` instead: the model's
    part then starts where the two part ways, inside the generation prompt."""
    if text.startswith(prompt):
        return len(prompt)
    if not text.startswith(history):
        return None
    return len(os.path.commonprefix([prompt, text]))


def assistant_turns(tokenizer, messages: list[dict], tools: list[dict] | None, fmt: ChatFormat) -> list[Turn]:
    turns = []
    stub = [{"role": "user", "content": "."}]
    stub_prompt = stub_history = None
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i == 0:
            continue
        prompt = render(tokenizer, messages[:i], tools, fmt, add_generation_prompt=True)
        history = render(tokenizer, messages[:i], tools, fmt)
        upto = render(tokenizer, messages[: i + 1], tools, fmt)
        cut = _cut(prompt, history, upto)
        if cut is not None:
            # Whitespace after the end-of-turn token (ChatML's "\n") is the template's, not the model's.
            turns.append(Turn(i, upto[:cut], upto[cut:].rstrip(), upto))
            continue
        # The template rewrote the history while rendering this turn (Mistral shows the system prompt only
        # inside the last user turn, gpt-oss drops analysis once a final answer follows): the turn's own
        # text comes from a one-line conversation, after the real prompt the model sees at inference.
        if stub_prompt is None:
            stub_prompt = render(tokenizer, stub, tools, fmt, add_generation_prompt=True)
            stub_history = render(tokenizer, stub, tools, fmt)
        alone = render(tokenizer, [*stub, m], tools, fmt)
        stub_cut = _cut(stub_prompt, stub_history, alone)
        completion = alone[stub_cut:].rstrip() if stub_cut is not None else ""
        if not completion or not prompt.startswith(history) or not upto.rstrip().endswith(completion):
            raise TemplateMismatch(f"assistant message {i}: the template renders this turn differently after its "
                                   "own generation prompt and at the end of the conversation")
        kept = prompt[: len(history) + stub_cut - len(stub_history)]
        turns.append(Turn(i, kept, completion, kept + completion))
    return turns


def _fits(text: str, turn: Turn) -> bool:
    return text.startswith(turn.prompt) and text.startswith(turn.completion, len(turn.prompt))


def training_samples(tokenizer, messages: list[dict], tools: list[dict] | None, fmt: ChatFormat,
                     full: str | None = None) -> list[Sample]:
    """The row's training texts with the assistant spans (see the module doc). `full`: the row's render,
    when the caller has it already."""
    pending = assistant_turns(tokenizer, messages, tools, fmt)
    text = full if full is not None else render(tokenizer, messages, tools, fmt)
    samples: list[Sample] = []
    while pending:
        fits = [t for t in pending if _fits(text, t)]
        if not fits:  # the full text rewrote these turns: train the latest one in its own context
            text = pending[-1].upto
            continue
        samples.append(Sample(text, tuple((len(t.prompt), len(t.prompt) + len(t.completion)) for t in fits)))
        pending = [t for t in pending if t not in fits]
        if pending:
            text = pending[-1].upto
    return samples


def tokenize_sample(tokenizer, sample: Sample, assistant_only: bool = True) -> dict:
    """input_ids + assistant_masks (1 = the token is trained). A token that overlaps an assistant span is
    trained; special tokens in the text are recognised as such (the template wrote them)."""
    enc = tokenizer(sample.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if not assistant_only:
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    mask = [0] * len(ids)
    spans = sorted(sample.spans)
    k = 0
    for n, (start, end) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k < len(spans) and start < spans[k][1] and end > spans[k][0]:
            mask[n] = 1
    return {"input_ids": ids, "assistant_masks": mask}
