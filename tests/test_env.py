"""The embedded environment: safe calculator, verifier, task split, reference rollouts, tool-call parsing."""

from __future__ import annotations

import pytest

from gymtrl.env.model_agent import parse_turn
from gymtrl.env.reference_agent import reference_rollouts
from gymtrl.env.calculator import CalculatorError, calculate, run_tool
from gymtrl.env.tasks import FAMILIES, make_fresh, make_split, question, verify
from gymtrl.rollouts import Line, Rollout, parse_line


@pytest.mark.parametrize("expr, value", [("12 * (50 / 60)", "10"), ("37*24-158", "730"), ("-3 + 4", "1"),
                                         ("190 / 3", "63.3333"), ("7 // 2 + 7 % 2", "4")])
def test_calculator_does_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os').system('echo hi')", "open('x')", "a + 1", "2 ** 100000",
                                  "1 / 0", "[1, 2]", "(1).__class__", "9" * 300, "", "lambda: 1"])
def test_calculator_refuses_everything_else(expr):
    with pytest.raises(CalculatorError):
        calculate(expr)


def test_tool_errors_are_results_not_crashes():
    assert run_tool("calculator", {"expr": "1+1"}).startswith("Error")
    assert run_tool("shell", {"expression": "ls"}).startswith("Error: unknown tool")
    assert run_tool("calculator", {"expression": "2+2"}) == "4"


def test_verifier_grades():
    task = {"expected_answer": "730"}
    assert verify(task, "so...\nAnswer: 730") == (1.0, "730")
    assert verify(task, "Answer: 1,730") == (0.2, "1730")
    assert verify(task, "730") == (0.0, None)
    assert verify({"expected_answer": "63.3333"}, "Answer: 63.33") == (1.0, "63.33")


def questions(tasks: list[dict]) -> set[str]:
    return {question(t) for t in tasks}


def test_split_is_disjoint_deterministic_and_mixed():
    train, held_out = make_split(60, 40, seed=3)
    assert not questions(train) & questions(held_out) and len(questions(train)) == 60 and len(questions(held_out)) == 40
    assert make_split(60, 40, seed=3) == (train, held_out)
    assert {t["family"] for t in held_out} == set(FAMILIES)


def test_fresh_tasks_are_new_questions_with_new_task_indexes():
    train, held_out = make_split(60, 40, seed=3)
    fresh = make_fresh(50, train + held_out, seed=3)
    assert len(questions(fresh)) == 50 and not questions(fresh) & (questions(train) | questions(held_out))
    assert sorted(t["_ng_task_index"] for t in fresh) == list(range(100, 150))  # after both splits' 0..99
    assert {t["family"] for t in fresh} == set(FAMILIES)
    assert make_fresh(50, train + held_out, seed=3) == fresh
    assert make_fresh(50, train + held_out, seed=4) != fresh


def test_reference_rollouts_are_gym_rollouts_with_spread_rewards():
    train, _ = make_split(40, 1, seed=1)
    records = reference_rollouts(train, num_repeats=4, seed=1)
    assert len(records) == 160
    rewards = {r["reward"] for r in records}
    assert rewards == {0.0, 0.2, 1.0}
    import orjson

    for r in records:
        item = parse_line(Line("x", 1, 0, orjson.dumps(r)))
        assert isinstance(item, Rollout)
        assert item.task_key == f"gymtrl_calculator_agent#{r['_ng_task_index']}"
    good = [r for r in records if r["reward"] == 1.0 and len(r["response"]["output"]) > 1]
    assert good and all(o["type"] in ("function_call", "function_call_output", "message") for o in good[0]["response"]["output"])


def test_parse_turn_reads_hermes_tool_calls():
    t = parse_turn('<think>add</think>\nLet me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n</tool_call>')
    assert (t.reasoning, t.content, t.calls, t.error) == ("add", "Let me compute.", [("calculator", {"expression": "1+2"})], None)
    assert parse_turn('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}</tool_call>').calls == [("calculator", {"expression": "1"})]
    assert parse_turn("<tool_call>{oops</tool_call>").error.startswith("tool call is not JSON")
    assert parse_turn("Answer: 4").calls == []
