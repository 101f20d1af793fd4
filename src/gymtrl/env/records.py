"""Gym rollout records: the Responses API items an agent writes, and the scored line around them.

Both agents (the scripted reference agent and a model playing the environment) write through these,
so their rollouts are in the exact schema Gym writes and every reader treats them alike.
"""

from __future__ import annotations

from .tasks import verify


def text_item(text: str, role: str = "assistant") -> dict:
    return {"type": "message", "role": role, "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def call_item(call_id: str, name: str, arguments: str) -> dict:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}


def output_item(call_id: str, output: str) -> dict:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def reasoning_item(text: str) -> dict:
    return {"type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def final_text(output: list[dict]) -> str:
    """What the verifier reads: the text of the last message in a response's output items."""
    return next((c.get("text", "") for item in reversed(output) if item.get("type") == "message"
                 for c in item.get("content") or []), "")


def gym_record(task: dict, output: list[dict], rollout_index: int, model: str, extra: dict | None = None) -> dict:
    """One rollout line, scored by the environment's verifier on the last assistant message."""
    reward, extracted = verify(task, final_text(output))
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
