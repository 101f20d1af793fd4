"""A scripted agent of mixed quality that makes the demo's training rollouts.

It skips the tool, miscopies numbers, calls the tool wrongly or forgets the answer line at per-family
rates, so rewards are spread: filtering matters and preference pairs exist.
"""

from __future__ import annotations

import random
import re

import orjson

from .calculator import run_tool
from .records import call_item, gym_record, output_item, text_item
from .tasks import combine

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
        return [text_item(f"Answer: {guess}")]
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
        output.append(call_item(call_id, "calculator", orjson.dumps(args).decode()))
        result = run_tool("calculator", args)
        output.append(output_item(call_id, result))
        if result.startswith("Error"):
            output.append(text_item("The calculator failed, so I cannot solve this."))
            return output
        results.append(result)
    result = combine(task, results)
    if behaviour == "no_answer":
        output.append(text_item(f"The result is {result}."))
    else:
        output.append(text_item(f"Answer: {result}"))
    return output


def reference_rollouts(tasks: list[dict], num_repeats: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for task in tasks:
        for k in range(num_repeats):
            records.append(gym_record(task, reference_episode(task, k, rng), k, "gymtrl-reference-agent"))
    return records
