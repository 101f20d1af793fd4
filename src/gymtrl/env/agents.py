"""Agents that play calculator tasks and write rollouts in the exact Gym schema.

- `reference_rollouts`: a scripted agent of mixed quality (skips the tool, miscopies numbers, calls
  the tool wrongly, forgets the answer line) that makes the demo's training rollouts.
- `model_rollouts`: any HF causal LM in the environment: render with its chat template, generate for
  all unfinished tasks in batches, parse tool calls, run them, feed results back, up to `max_turns`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import orjson

from .calculator import calculate, run_tool
from .tasks import combine, verify

# ---------------------------------------------------------------- Gym records


def _text_item(text: str, role: str = "assistant") -> dict:
    return {"type": "message", "role": role, "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(call_id: str, name: str, arguments: str) -> dict:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}


def _output_item(call_id: str, output: str) -> dict:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def gym_record(task: dict, output: list[dict], rollout_index: int, model: str, extra: dict | None = None) -> dict:
    final_text = next((c["text"] for item in reversed(output) if item["type"] == "message"
                       for c in item["content"]), "")
    reward, extracted = verify(task, final_text)
    record = {
        "responses_create_params": task["responses_create_params"],
        "response": {"id": f"resp_{task['_ng_task_index']}_{rollout_index}", "object": "response",
                     "model": model, "output": output},
        "reward": reward,
        "expected_answer": task["expected_answer"],
        "extracted_answer": extracted,
        "family": task["family"],
        "agent_ref": task["agent_ref"],
        "_ng_task_index": task["_ng_task_index"],
        "_ng_rollout_index": rollout_index,
    }
    if extra:
        record.update(extra)
    return record


# ---------------------------------------------------------------- the scripted reference agent

# How often the reference agent does each thing, per family: (good, no_tool, miscopy, bad_call, no_answer)
_BEHAVIOUR = {
    "add": (0.55, 0.15, 0.1, 0.1, 0.1),
    "multiply": (0.5, 0.2, 0.1, 0.1, 0.1),
    "shop": (0.45, 0.2, 0.15, 0.1, 0.1),
    "trip": (0.4, 0.2, 0.2, 0.1, 0.1),
    "compare": (0.4, 0.2, 0.2, 0.1, 0.1),
}


def _miscopy(expr: str, rng: random.Random) -> str:
    numbers = re.findall(r"\d+", expr)
    victim = rng.choice(numbers)
    wrong = str(int(victim) + rng.choice([-10, -1, 1, 9, 10]))
    return expr.replace(victim, wrong, 1)


def reference_episode(task: dict, rollout_index: int, rng: random.Random) -> list[dict]:
    behaviour = rng.choices(["good", "no_tool", "miscopy", "bad_call", "no_answer"], _BEHAVIOUR[task["family"]])[0]
    steps = list(task["steps"])
    prefix = f"call_{task['_ng_task_index']}_{rollout_index}"
    output: list[dict] = []
    if behaviour == "no_tool":
        guess = int(float(task["expected_answer"])) + rng.choice([-12, -3, 0, 2, 7, 100])
        return [_text_item(f"Answer: {guess}")]
    if behaviour == "miscopy":
        k = rng.randrange(len(steps))
        steps[k] = _miscopy(steps[k], rng)
    result = ""
    results = []
    for j, expr in enumerate(steps):
        if j > 0 and task["chained"] and behaviour == "miscopy":  # later steps use the (wrong) result
            expr = re.sub(r"^\S+", result, expr)
        args = {"expression": expr}
        if behaviour == "bad_call" and j == 0:
            args = {"expr": expr}
        call_id = f"{prefix}_{j}"
        output.append(_call_item(call_id, "calculator", orjson.dumps(args).decode()))
        result = run_tool("calculator", args)
        output.append(_output_item(call_id, result))
        if result.startswith("Error"):
            output.append(_text_item("The calculator failed, so I cannot solve this."))
            return output
        results.append(result)
    result = combine(task, results)
    if behaviour == "no_answer":
        output.append(_text_item(f"The result is {result}."))
    else:
        output.append(_text_item(f"Answer: {result}"))
    return output


def reference_rollouts(tasks: list[dict], num_repeats: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for task in tasks:
        for k in range(num_repeats):
            records.append(gym_record(task, reference_episode(task, k, rng), k, "gymtrl-reference-agent"))
    return records


# ---------------------------------------------------------------- a HF model as the agent

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
    messages: list[dict]
    output: list[dict] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""
    turns: int = 0
    new_tokens: int = 0


@dataclass(frozen=True)
class GenerationSettings:
    max_turns: int = 4
    max_new_tokens: int = 96
    batch_size: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


def _step(ep: Episode, text: str, n_tokens: int, finished: bool, settings: GenerationSettings, fmt) -> None:
    from ..chat import format_messages

    ep.turns += 1
    ep.new_tokens += n_tokens
    turn = parse_turn(text)
    call_prefix = f"call_{ep.task['_ng_task_index']}_{ep.rollout_index}_{ep.turns}"
    if turn.reasoning:
        ep.output.append({"type": "reasoning", "summary": [{"type": "summary_text", "text": turn.reasoning}]})
    if turn.content or not turn.calls:
        ep.output.append(_text_item(turn.content))
    if turn.error:
        ep.done, ep.stop_reason = True, f"unparsable_tool_call: {turn.error}"
        return
    if not turn.calls:
        ep.done, ep.stop_reason = True, "answered" if finished else "max_new_tokens"
        return
    assistant = {"role": "assistant", "content": turn.content, "tool_calls": []}
    if turn.reasoning:
        assistant["reasoning_content"] = turn.reasoning
    results = []
    for j, (name, args) in enumerate(turn.calls):
        call_id = f"{call_prefix}_{j}"
        arguments = orjson.dumps(args).decode()
        ep.output.append(_call_item(call_id, name, arguments))
        assistant["tool_calls"].append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        result = run_tool(name, args)
        ep.output.append(_output_item(call_id, result))
        results.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": result})
    ep.messages.extend(format_messages([assistant, *results], fmt))
    if ep.turns >= settings.max_turns:
        ep.done, ep.stop_reason = True, "max_turns"


def model_rollouts(model, tokenizer, tasks: list[dict], settings: GenerationSettings, fmt,
                   num_repeats: int = 1, model_name: str = "model", progress=None) -> list[dict]:
    """Plays every task with the model; all unfinished episodes advance together, in batches."""
    import torch

    from ..chat import convert_tools, format_messages, prompt_messages
    from ..models import stop_token_ids
    from ..templates import render

    episodes = []
    for task in tasks:
        messages = format_messages(prompt_messages(task["responses_create_params"]), fmt)
        for k in range(num_repeats):
            episodes.append(Episode(task, k, [dict(m) for m in messages]))
    tools, _ = convert_tools(tasks[0]["responses_create_params"].get("tools")) if tasks else ([], 0)

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stop_ids = stop_token_ids(tokenizer)  # every token that ends a turn in this template, eos first
    eos_ids = set(stop_ids)
    generator_seed = settings.seed
    model.eval()
    while True:
        active = [ep for ep in episodes if not ep.done]
        if not active:
            break
        # The same render as training (templates.render): the prompt is the training text's prefix.
        prompts = [render(tokenizer, ep.messages, tools, fmt, add_generation_prompt=True) for ep in active]
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(active)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            sampling = settings.temperature > 0
            torch.manual_seed(generator_seed)
            generator_seed += 1
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=settings.max_new_tokens, do_sample=sampling,
                    temperature=settings.temperature if sampling else None,
                    top_p=settings.top_p if sampling else None, top_k=None,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids,
                )
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(chunk, new):
                finished = any(t in eos_ids for t in ids)
                if finished:
                    ids = ids[: next(j for j, t in enumerate(ids) if t in eos_ids)]
                n_tokens = len(ids) + int(finished)
                # Keep special tokens: some models' <tool_call> is one, and eos was cut above.
                text = tokenizer.decode(ids, skip_special_tokens=False)
                _step(active[i], text, n_tokens, finished, settings, fmt)
            if progress:
                progress(len(chunk))
    return [
        gym_record(ep.task, ep.output, ep.rollout_index, model_name,
                   {"stop_reason": ep.stop_reason, "turns_used": ep.turns, "new_tokens": ep.new_tokens})
        for ep in episodes
    ]
