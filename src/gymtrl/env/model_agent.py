"""A causal LM playing the calculator environment, writing Gym rollouts.

One round of `play` = `render` a prompt for every unfinished episode with the model's chat template
(the same render as training, so the prompt is the training text's prefix), have an engine
(engines.py: Hugging Face `generate` or vLLM) generate a turn for each, and `step` each episode with its
turn: parse tool calls, run them, feed the results back, or finish. Rounds repeat until every episode
answered or ran out of turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import orjson

from ..chat import ChatFormat, convert_tools, format_messages, prompt_messages
from ..engines import Engine, Generated, GenerationSettings
from ..templates import render
from .calculator import run_tool
from .records import call_item, gym_record, output_item, reasoning_item, text_item

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


@dataclass
class ParsedTurn:
    content: str
    reasoning: str
    calls: list[tuple[str, dict]]  # (name, arguments)
    error: str | None = None  # a tool call the model tried to write but could not be parsed


def parse_turn(text: str) -> ParsedTurn:
    """A generated assistant turn in the Hermes/ChatML tool format -> content, reasoning, tool calls."""
    reasoning = ""
    m = _THINK.match(text)
    if m:
        reasoning, text = m.group(1).strip(), text[m.end():]
    start = text.find("<tool_call>")
    content = (text if start < 0 else text[:start]).strip()
    calls: list[tuple[str, dict]] = []
    for body in _TOOL_CALL.findall(text):
        try:
            call = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ParsedTurn(content, reasoning, calls, f"tool call is not JSON: {body[:80]!r}")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return ParsedTurn(content, reasoning, calls, f"tool call without a name: {body[:80]!r}")
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = orjson.loads(args)
            except orjson.JSONDecodeError:
                return ParsedTurn(content, reasoning, calls, f"arguments are not JSON: {args[:80]!r}")
        if not isinstance(args, dict):
            return ParsedTurn(content, reasoning, calls, "arguments are not an object")
        calls.append((call["name"], args))
    return ParsedTurn(content, reasoning, calls)


@dataclass
class Episode:
    task: dict
    rollout_index: int
    messages: list[dict]  # the conversation so far, shaped for the model's chat template
    output: list[dict] = field(default_factory=list)  # the same, as Gym output items
    done: bool = False
    stop_reason: str = ""
    turns: int = 0
    new_tokens: int = 0


def render_prompts(tokenizer, episodes: list[Episode], tools: list[dict], fmt: ChatFormat) -> list[str]:
    return [render(tokenizer, ep.messages, tools, fmt, add_generation_prompt=True) for ep in episodes]


def step(ep: Episode, turn: Generated, settings: GenerationSettings, fmt: ChatFormat) -> None:
    """Advances one episode by the model's turn: records it, runs its tool calls, or ends the episode."""
    ep.turns += 1
    ep.new_tokens += turn.new_tokens
    parsed = parse_turn(turn.text)
    call_prefix = f"call_{ep.task['_ng_task_index']}_{ep.rollout_index}_{ep.turns}"
    if parsed.reasoning:
        ep.output.append(reasoning_item(parsed.reasoning))
    if parsed.content or not parsed.calls:
        ep.output.append(text_item(parsed.content))
    if parsed.error:
        ep.done, ep.stop_reason = True, f"unparsable_tool_call: {parsed.error}"
        return
    if not parsed.calls:
        ep.done, ep.stop_reason = True, "answered" if turn.finished else "max_new_tokens"
        return
    assistant = {"role": "assistant", "content": parsed.content, "tool_calls": []}
    if parsed.reasoning:
        assistant["reasoning_content"] = parsed.reasoning
    results = []
    for j, (name, args) in enumerate(parsed.calls):
        call_id = f"{call_prefix}_{j}"
        arguments = orjson.dumps(args).decode()
        ep.output.append(call_item(call_id, name, arguments))
        assistant["tool_calls"].append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        result = run_tool(name, args)
        ep.output.append(output_item(call_id, result))
        results.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": result})
    ep.messages.extend(format_messages([assistant, *results], fmt))
    if ep.turns >= settings.max_turns:
        ep.done, ep.stop_reason = True, "max_turns"


def play(engine: Engine, tokenizer, tasks: list[dict], settings: GenerationSettings, fmt: ChatFormat,
         num_repeats: int = 1, model_name: str = "model",
         on_batch: Callable[[int, int], None] | None = None) -> list[dict]:
    """Plays every task `num_repeats` times; all unfinished episodes advance together, `engine.batch_size`
    prompts per call. `on_batch(episodes_done, new_tokens)` is called after each call (progress)."""
    episodes = []
    for task in tasks:
        messages = format_messages(prompt_messages(task["responses_create_params"]), fmt)
        for k in range(num_repeats):
            episodes.append(Episode(task, k, [dict(m) for m in messages]))
    tools, _ = convert_tools(tasks[0]["responses_create_params"].get("tools")) if tasks else ([], 0)
    seed = settings.seed
    while active := [ep for ep in episodes if not ep.done]:
        prompts = render_prompts(tokenizer, active, tools, fmt)
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(active)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), engine.batch_size):
            chunk = order[start:start + engine.batch_size]
            turns = engine([prompts[i] for i in chunk], seed)
            seed += 1
            for i, turn in zip(chunk, turns):
                step(active[i], turn, settings, fmt)
            if on_batch is not None:
                on_batch(sum(ep.done for ep in episodes), sum(ep.new_tokens for ep in episodes))
    return [
        gym_record(ep.task, ep.output, ep.rollout_index, model_name,
                   {"stop_reason": ep.stop_reason, "turns_used": ep.turns, "new_tokens": ep.new_tokens})
        for ep in episodes
    ]
