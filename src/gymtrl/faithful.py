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
- `preference_sample`: a DPO pair tokenized the same way: prompt ids shared by both sides, and for each
  side the completion ids with a mask that is 1 only on the assistant's own tokens. Tool results and
  environment turns inside a multi-turn continuation are context the model conditions on, not a choice
  it made, so they carry no loss.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

import orjson

from .chat import ChatFormat, Conversation
from .templates import render

PIECE_KINDS = ("system", "user", "environment", "assistant_text", "reasoning", "tool_call", "tool_output",
               "tool_schema")


class Piece(NamedTuple):  # a NamedTuple, not a dataclass: convert builds ~10 per row, on its hot path
    kind: str
    # Every part must be found for the piece to count as kept. A part is a trimmed string, found as
    # written or escaped (see `_escaped`), or a tuple of the spellings a scalar argument may have.
    parts: tuple[str | tuple[str, ...], ...]


def _escaped(text: str) -> list[str]:
    """Other ways a template may print a string: JSON-escaped (templates that `tojson` strings) or
    Python-escaped (pythonic call syntax). Computed only for a part not found as written."""
    forms = {json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1], repr(text)[1:-1]}
    forms.discard(text)
    return sorted(forms, key=len, reverse=True)


def _value_parts(value) -> list[str | tuple[str, ...]]:
    """Argument leaves: keys and scalar values."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in (str(k).strip(), *_value_parts(v))]
    if isinstance(value, list):
        return [p for v in value for p in _value_parts(v)]
    if isinstance(value, str):
        return [value.strip()]
    return [tuple(dict.fromkeys((json.dumps(value), str(value))))]  # true / True, null / None, 0.5


def pieces(conv: Conversation, fmt: ChatFormat) -> list[Piece]:
    """What the rollout says (canonical messages, see chat.py), piece by piece, in the order templates
    usually render them: system text, tool schemas, then each message (reasoning before its text)."""
    head: list[Piece] = []
    body: list[Piece] = []
    # What follows the last assistant turn (an output nobody answered) teaches nothing: not required.
    last = max((n for n, m in enumerate(conv.messages) if m["role"] == "assistant"), default=len(conv.messages))
    for n, m in enumerate(conv.messages[: last + 1]):
        role, text = m["role"], m["content"].strip()
        if role in ("system", "developer"):
            if text:
                (head if n < conv.prompt_len else body).append(Piece("system", (text,)))
        elif role == "user":
            if text:
                body.append(Piece("user" if n < conv.prompt_len else "environment", (text,)))
        elif role == "tool":
            if text:
                body.append(Piece("tool_output", (text,)))
        elif role == "assistant":
            reasoning = (m.get("reasoning_content") or "").strip()
            if reasoning and fmt.reasoning != "drop":
                body.append(Piece("reasoning", (reasoning,)))
            if text:
                body.append(Piece("assistant_text", (text,)))
            for tc in m.get("tool_calls", ()):
                args = orjson.loads(tc["function"]["arguments"] or "{}")
                body.append(Piece("tool_call", tuple(p for p in (tc["function"]["name"].strip(), *_value_parts(args)) if p)))
    for tool in conv.tools if fmt.tool_schemas else ():  # a template that never shows schemas cannot lose them
        fn = tool["function"]
        head.append(Piece("tool_schema", tuple(p for p in (fn["name"].strip(), str(fn.get("description") or "").strip()) if p)))
    return head + body


def _in_order(text: str, wanted: list[Piece]) -> bool:
    """Every part found after the one before it: distinct occurrences for all, so nothing is lost.
    The common case, and one `find` a part; anything else goes through the claims in `lost_pieces`."""
    find, pos = text.find, 0
    for piece in wanted:
        for part in piece.parts:
            if part.__class__ is str:
                at = find(part, pos)
                if at >= 0:
                    pos = at + len(part)
                    continue
                part = _escaped(part)
            for form in part:
                at = find(form, pos)
                if at >= 0:
                    pos = at + len(form)
                    break
            else:
                return False
    return True


def lost_pieces(texts: list[str], wanted: list[Piece]) -> Counter:
    """Pieces (by kind) that the texts do not hold, each occurrence claimed by one part only.

    Longest parts claim first, so a short part (a tool output "900") cannot take the occurrence inside
    a longer one (the next call's "900 + 4"). Each form remembers where its last claim ended."""
    text = "\0".join(texts)
    if _in_order(text, wanted):
        return Counter()
    taken = bytearray(len(text))
    after: dict[str, int] = {}
    find, is_taken = text.find, taken.find

    def take(form: str) -> bool:
        pos = find(form, after.get(form, 0))
        while pos >= 0:
            end = pos + len(form)
            if is_taken(1, pos, end) < 0:
                taken[pos:end] = b"\1" * (end - pos)
                after[form] = end
                return True
            pos = find(form, pos + 1)
        after[form] = len(text)
        return False

    parts = [(len(part) if part.__class__ is str else len(part[0]), k, part)
             for k, piece in enumerate(wanted) for part in piece.parts]
    parts.sort(key=itemgetter(0), reverse=True)
    missing: set[int] = set()
    for _, k, part in parts:
        if k in missing:
            continue
        if part.__class__ is str:
            found = take(part) or any(take(f) for f in _escaped(part))
        else:
            found = any(take(f) for f in part)
        if not found:
            missing.add(k)
    return Counter(wanted[k].kind for k in missing)


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


@dataclass(frozen=True)
class PreferenceSample:
    """A DPO pair as the trainer sees it: `prompt_ids + chosen_ids` is the chosen text's tokens."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_mask: list[int]  # 1 = an assistant token of the chosen continuation (scored), 0 = context
    rejected_mask: list[int]
    turns_out_of_context: int  # turns scored in a context the template rewrote (see _side)


def _side(tokenizer, prompt: list[dict], side: list[dict], tools, fmt: ChatFormat) -> tuple[dict, int]:
    """One side's tokens and assistant mask, over the turns after the prompt. A turn is scored where it
    renders as it would be generated (the same check as SFT's training_samples). A template that
    rewrites earlier turns (Qwen3 drops their empty think block) still shows the turn's own text, tool
    call included, in the one sequence DPO scores: it is scored there, and counted, since the text
    before it differs a little from what the model saw at inference. SFT trains such turns in their own
    context instead (several samples per row); a DPO side is one sequence."""
    messages = prompt + side
    text = render(tokenizer, messages, tools, fmt)
    turns = [t for t in assistant_turns(tokenizer, messages, tools, fmt) if t.index >= len(prompt)]
    spans, moved, cursor = [], 0, 0
    for t in turns:
        if _fits(text, t):
            start = len(t.prompt)
        else:
            start, end = _locate(text, t.completion, cursor)
            if start < 0:
                raise TemplateMismatch(f"assistant message {t.index}: its text is not in the rendered conversation")
            moved += 1
        end = start + len(t.completion) if _fits(text, t) else end
        spans.append((start, end))
        cursor = end
    return tokenize_sample(tokenizer, Sample(text, tuple(spans))), moved


def _locate(text: str, completion: str, cursor: int) -> tuple[int, int]:
    """Where a turn's own text is in `text` (from `cursor`): the whole completion, or its longest tail
    that is at least half of it (history drops a leading empty think block: Qwen3, DeepSeek-R1)."""
    for k in range(len(completion) // 2 + 1):
        start = text.find(completion[k:], cursor)
        if start >= 0:
            return start, start + len(completion) - k
    return -1, -1


def preference_sample(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict], tools,
                      fmt: ChatFormat) -> PreferenceSample | None:
    """The pair's tokens and assistant-only masks, or None when a side has no scorable assistant token."""
    c, c_moved = _side(tokenizer, prompt, chosen, tools, fmt)
    r, r_moved = _side(tokenizer, prompt, rejected, tools, fmt)
    ci, ri, cm, rm = c["input_ids"], r["input_ids"], c["assistant_masks"], r["assistant_masks"]
    if 1 not in cm or 1 not in rm:
        return None
    # The prompt is what both texts share, and never reaches into a scored token of either side.
    n = len(os.path.commonprefix([ci, ri]))
    n = min(n, cm.index(1), rm.index(1))
    return PreferenceSample(ci[:n], ci[n:], ri[n:], cm[n:], rm[n:], c_moved + r_moved)
