"""Calculator tasks in the Gym input shape, the verifier, and the task split.

Five families of rising difficulty, so results do not saturate: `add` and `multiply` need one
calculator call; `shop` needs two chained steps; `trip` three; `compare` two independent products and a
choice between them. A task is a Gym input line:
`responses_create_params` (input + tools) plus the verifier's fields (`expected_answer`, `family`).
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

AGENT_NAME = "gymtrl_calculator_agent"
FAMILIES = ("add", "multiply", "shop", "trip", "compare")

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


def _problem(family: str, rng: random.Random) -> tuple[str, list[str], bool]:
    """Question text, the calculator steps that solve it, and whether each step uses the previous result.

    Word problems come in several phrasings, with the numbers in different orders and sometimes a
    distractor number, so a model has to read the question rather than learn one template.
    """
    distractor = rng.choice(["", "", f" The shop opened {rng.randint(2, 40)} years ago.",
                             f" It is {rng.randint(2, 11)} o'clock."])
    if family == "add":
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        q = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}.", f"A farm has {a} hens and {b} ducks. How many birds is that?"])
        return q, [f"{a} + {b}"], False
    if family == "multiply":
        a, b = rng.randint(12, 99), rng.randint(12, 999)
        q = rng.choice([f"What is {a} * {b}?", f"Multiply {a} by {b}.", f"{a} crates hold {b} apples each. How many apples?"])
        return q, [f"{a} * {b}"], False
    if family == "shop":
        boxes, per, sold = rng.randint(3, 60), rng.randint(6, 48), rng.randint(5, 150)
        total = boxes * per
        sold = min(sold, total - 1)
        q = rng.choice([
            f"A shop has {boxes} boxes with {per} pens in each box. It sells {sold} pens. How many pens are left?",
            f"A shop sells {sold} pens from its stock of {boxes} boxes of {per} pens each. How many pens are left?",
            f"Each box holds {per} pens and a shop has {boxes} boxes.{distractor} After selling {sold} pens, how many pens remain?",
        ])
        return q, [f"{boxes} * {per}", f"{total} - {sold}"], True
    if family == "trip":
        people, nights, rate, fee = rng.randint(2, 9), rng.randint(2, 7), rng.randint(40, 180), rng.randint(10, 90)
        room = nights * rate
        q = rng.choice([
            f"{people} friends rent a cabin for {nights} nights at {rate} dollars per night and pay a {fee} dollar "
            f"cleaning fee. They split the cost equally. How much does each friend pay?",
            f"A cabin costs {rate} dollars per night plus a {fee} dollar cleaning fee. {people} friends stay "
            f"{nights} nights and share the cost equally. How much does each pay?",
        ])
        return q, [f"{nights} * {rate}", f"{room} + {fee}", f"{room + fee} / {people}"], True
    if family == "compare":
        a, b, c, d = rng.randint(11, 60), rng.randint(11, 60), rng.randint(11, 60), rng.randint(11, 60)
        q = rng.choice([
            f"Shop A sells {a} packs of {b} cards. Shop B sells {c} packs of {d} cards. How many cards does the "
            f"shop that sells more cards sell?",
            f"Team Red has {a} rows of {b} seats and Team Blue has {c} rows of {d} seats.{distractor} How many "
            f"seats does the bigger team area have?",
        ])
        return q, [f"{a} * {b}", f"{c} * {d}"], False
    raise ValueError(f"unknown family {family!r}")


def combine(task_or_family, results: list[str]) -> str:
    """The final answer from the steps' results: the larger one for `compare`, else the last one."""
    family = task_or_family if isinstance(task_or_family, str) else task_or_family["family"]
    if family == "compare":
        return max(results, key=lambda r: Fraction(r))
    return results[-1]


def make_task(index: int, family: str, rng: random.Random) -> dict:
    from .calculator import calculate

    question, steps, chained = _problem(family, rng)
    answer = combine(family, [calculate(step) for step in steps])
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
        "chained": chained,
        "agent_ref": {"type": "responses_api_agents", "name": AGENT_NAME},
        "_ng_task_index": index,
    }


def question(task: dict) -> str:
    """The task's question: its last input message, the user turn."""
    return task["responses_create_params"]["input"][-1]["content"]


def _unique_tasks(n: int, rng: random.Random, seen: set[str], first: int) -> list[dict]:
    """n tasks cycling through the families, numbered from `first`, skipping any question in `seen` (which
    grows as tasks are made, so none repeats either)."""
    tasks: list[dict] = []
    while len(tasks) < n:
        family = FAMILIES[len(tasks) % len(FAMILIES)]
        task = make_task(first + len(tasks), family, rng)
        if question(task) in seen:
            continue
        seen.add(question(task))
        tasks.append(task)
    return tasks


def make_split(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out tasks from one seeded stream; no question appears in both."""
    tasks = _unique_tasks(n_train + n_eval, random.Random(seed), set(), 0)
    order = list(range(len(tasks)))
    random.Random(seed + 1).shuffle(order)
    train = sorted((tasks[i] for i in order[:n_train]), key=lambda t: t["_ng_task_index"])
    held_out = sorted((tasks[i] for i in order[n_train:]), key=lambda t: t["_ng_task_index"])
    return train, held_out


def make_fresh(n: int, avoid: list[dict], seed: int) -> list[dict]:
    """n more tasks of the same families whose questions are in none of `avoid` (the training and held-out
    splits), numbered after them so every task key stays unique. The collect stage plays these: a model's
    samples on tasks it was fine-tuned on are mostly its training data again (the SFT model solves 99% of
    its training tasks greedily), while on new tasks its real mistakes show, and so do preference pairs."""
    rng = random.Random(f"fresh-{seed}")  # a stream of its own: the splits' stream would repeat their tasks
    first = max((t["_ng_task_index"] for t in avoid), default=-1) + 1
    return _unique_tasks(n, rng, {question(t) for t in avoid}, first)


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
