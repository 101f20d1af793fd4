"""Calculator tasks in the Gym input shape, the verifier, and the task split.

Four families of rising difficulty, so results do not saturate: `add` and `multiply` need one
calculator call; `shop` needs two steps; `trip` needs three. A task is a Gym input line:
`responses_create_params` (input + tools) plus the verifier's fields (`expected_answer`, `family`).
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

AGENT_NAME = "gymtrl_calculator_agent"
FAMILIES = ("add", "multiply", "shop", "trip")

SYSTEM_PROMPT = (
    "Solve the problem. Use the calculator tool for every arithmetic step. "
    "End with a line 'Answer: <number>'."
)

CALCULATOR_TOOL = {
    "type": "function",
    "name": "calculator",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. 37 * 24 - 158"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    "strict": True,
}

REWARD_CORRECT = 1.0
REWARD_WRONG = 0.2  # a well-formed but wrong answer
REWARD_MALFORMED = 0.0  # no "Answer: <number>" line


def _problem(family: str, rng: random.Random) -> tuple[str, list[str]]:
    """Question text and the calculator steps that solve it (each step an expression)."""
    if family == "add":
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        return f"What is {a} + {b}?", [f"{a} + {b}"]
    if family == "multiply":
        a, b = rng.randint(12, 99), rng.randint(12, 999)
        return f"What is {a} * {b}?", [f"{a} * {b}"]
    if family == "shop":
        boxes, per, sold = rng.randint(3, 60), rng.randint(6, 48), rng.randint(5, 150)
        total = boxes * per
        sold = min(sold, total - 1)
        return (f"A shop has {boxes} boxes with {per} pens in each box. It sells {sold} pens. "
                f"How many pens are left?", [f"{boxes} * {per}", f"{total} - {sold}"])
    if family == "trip":
        people, nights, rate, fee = rng.randint(2, 9), rng.randint(2, 7), rng.randint(40, 180), rng.randint(10, 90)
        room = nights * rate
        return (f"{people} friends rent a cabin for {nights} nights at {rate} dollars per night and pay a "
                f"{fee} dollar cleaning fee. They split the cost equally. How much does each friend pay?",
                [f"{nights} * {rate}", f"{room} + {fee}", f"{room + fee} / {people}"])
    raise ValueError(f"unknown family {family!r}")


def make_task(index: int, family: str, rng: random.Random) -> dict:
    from .calculator import calculate

    question, steps = _problem(family, rng)
    answer = calculate(steps[-1])
    return {
        "responses_create_params": {
            "input": [
                {"role": "system", "content": SYSTEM_PROMPT, "type": "message"},
                {"role": "user", "content": question, "type": "message"},
            ],
            "tools": [CALCULATOR_TOOL],
        },
        "expected_answer": answer,
        "family": family,
        "steps": steps,
        "agent_ref": {"type": "responses_api_agents", "name": AGENT_NAME},
        "_ng_task_index": index,
    }


def make_split(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out tasks from one seeded stream; no question appears in both."""
    rng = random.Random(seed)
    seen: set[str] = set()
    tasks: list[dict] = []
    while len(tasks) < n_train + n_eval:
        family = FAMILIES[len(tasks) % len(FAMILIES)]
        task = make_task(len(tasks), family, rng)
        question = task["responses_create_params"]["input"][-1]["content"]
        if question in seen:
            continue
        seen.add(question)
        tasks.append(task)
    order = list(range(len(tasks)))
    random.Random(seed + 1).shuffle(order)
    train = sorted((tasks[i] for i in order[:n_train]), key=lambda t: t["_ng_task_index"])
    held_out = sorted((tasks[i] for i in order[n_train:]), key=lambda t: t["_ng_task_index"])
    return train, held_out


_ANSWER = re.compile(r"Answer:\s*\$?\s*(-?[\d,]*\.?\d+)")


def extract_answer(text: str) -> str | None:
    matches = _ANSWER.findall(text or "")
    return matches[-1].replace(",", "") if matches else None


def verify(task: dict, final_text: str) -> tuple[float, str | None]:
    """(reward, extracted answer): 1.0 right, 0.2 well-formed but wrong, 0.0 malformed or missing."""
    got = extract_answer(final_text)
    if got is None:
        return REWARD_MALFORMED, None
    try:
        correct = abs(Fraction(got) - Fraction(task["expected_answer"])) < Fraction(1, 100)
    except (ValueError, ZeroDivisionError):
        return REWARD_MALFORMED, got
    return (REWARD_CORRECT if correct else REWARD_WRONG), got
