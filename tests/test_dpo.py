"""Assistant-only DPO: only the assistant's own tokens carry loss; pairs start where two rollouts diverge."""

from __future__ import annotations

import pytest

from conftest import make_params
from test_families import FAMILIES, family_tokenizer
from gymtrl.chat import format_messages
from gymtrl.faithful import preference_sample
from gymtrl.templates import probe_format

TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate an expression.",
                                           "parameters": {"type": "object",
                                                          "properties": {"expression": {"type": "string"}}}}}]


def call(i: int, expression: str) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": "calculator", "arguments": '{"expression": "%s"}' % expression}}]}


def result(i: int, value: str) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{i}", "name": "calculator", "content": value}


def tool_pair(fmt):
    """Same task; both call the tool twice and answer; they differ in the second call (and what follows)."""
    prompt = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "What is 12*3+1?"}]
    chosen = [call(1, "12*3"), result(1, "36.000"), call(2, "36+1"), result(2, "37.000"),
              {"role": "assistant", "content": "Answer: 37"}]
    rejected = [call(1, "12*3"), result(1, "36.000"), call(2, "36+2"), result(2, "38.000"),
                {"role": "assistant", "content": "Answer: 38"}]
    return format_messages(prompt, fmt), format_messages(chosen, fmt), format_messages(rejected, fmt)


def runs(tok, ids: list[int], mask: list[int]) -> list[tuple[int, str]]:
    """Consecutive tokens with the same mask value, decoded: (1 = scored, text)."""
    out: list[list] = []
    for t, m in zip(ids, mask):
        if not out or out[-1][0] != m:
            out.append([m, []])
        out[-1][1].append(t)
    return [(m, tok.decode(t, skip_special_tokens=False)) for m, t in out]


def test_only_assistant_tokens_are_scored_token_by_token(embedded_tokenizer):
    tok = embedded_tokenizer
    fmt = probe_format(tok)
    s = preference_sample(tok, *tool_pair(fmt), TOOLS, fmt)
    assert tok.decode(s.prompt_ids).endswith("What is 12*3+1?<|im_end|>\n<|im_start|>assistant\n")
    call_text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call><|im_end|>'
    assert runs(tok, s.chosen_ids, s.chosen_mask) == [
        (1, call_text % "12*3"),
        (0, "\n<|im_start|>tool\n36.000<|im_end|>\n<|im_start|>assistant\n"),  # the tool's result: context
        (1, call_text % "36+1"),
        (0, "\n<|im_start|>tool\n37.000<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Answer: 37<|im_end|>"),
        (0, "\n"),  # the template's newline after the end-of-turn token
    ]
    rejected = runs(tok, s.rejected_ids, s.rejected_mask)
    assert [text for m, text in rejected if m] == [call_text % "12*3", call_text % "36+2", "Answer: 38<|im_end|>"]
    assert "38.000" in "".join(text for m, text in rejected if not m)
    assert s.turns_out_of_context == 0


def test_the_collator_puts_the_mask_into_trls_completion_mask(embedded_tokenizer):
    import torch

    from gymtrl.dpo import AssistantOnlyPreferenceCollator

    tok = embedded_tokenizer
    fmt = probe_format(tok)
    s = preference_sample(tok, *tool_pair(fmt), TOOLS, fmt)
    example = {"prompt_ids": s.prompt_ids, "chosen_ids": s.chosen_ids, "rejected_ids": s.rejected_ids,
               "chosen_mask": s.chosen_mask, "rejected_mask": s.rejected_mask}
    batch = AssistantOnlyPreferenceCollator(pad_token_id=tok.pad_token_id)([example])
    n = len(s.prompt_ids)
    chosen_row, rejected_row = batch["completion_mask"].tolist()
    assert chosen_row[: n + len(s.chosen_ids)] == [0] * n + s.chosen_mask
    assert rejected_row[: n + len(s.rejected_ids)] == [0] * n + s.rejected_mask
    assert torch.equal(batch["input_ids"][0, : n + len(s.chosen_ids)], torch.tensor(s.prompt_ids + s.chosen_ids))
    # truncated like the ids (keep_start), so the mask stays aligned
    cut = AssistantOnlyPreferenceCollator(pad_token_id=tok.pad_token_id, max_length=n + 5)([example])
    assert cut["completion_mask"].tolist()[0] == [0] * n + s.chosen_mask[:5]


def test_tool_and_environment_tokens_get_no_gradient(embedded_tokenizer, tiny_model_dir, tmp_path):
    """The real TRL loss on a tiny model: the hidden state that predicts a tool-result token gets exactly
    zero gradient, every one that predicts an assistant token gets some."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from gymtrl.dpo import AssistantOnlyDPOTrainer, collator

    tok = embedded_tokenizer
    fmt = probe_format(tok)
    s = preference_sample(tok, *tool_pair(fmt), TOOLS, fmt)
    ds = Dataset.from_list([{"prompt_ids": s.prompt_ids, "chosen_ids": s.chosen_ids, "rejected_ids": s.rejected_ids,
                             "chosen_mask": s.chosen_mask, "rejected_mask": s.rejected_mask}])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = DPOConfig(output_dir=str(tmp_path), report_to="none", precompute_ref_log_probs=True,
                       per_device_train_batch_size=1, use_cpu=True, max_length=512,
                       activation_checkpointing=False)  # the current name: no FutureWarning
    trainer = AssistantOnlyDPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok,
                                      data_collator=collator(tok, config))
    batch = next(iter(trainer.get_train_dataloader()))
    assert "ref_chosen_logps" in batch  # the reference log-probs were precomputed with the same mask
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["h"] = output

    handle = trainer.model.model.norm.register_forward_hook(keep)
    # Make the policy differ from the reference, else the sigmoid loss sits at its symmetric point.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    handle.remove()
    grad = captured["h"].grad.abs().sum(-1)  # [2 (chosen, rejected), seq]
    mask = batch["completion_mask"]
    for row in range(2):
        scored = mask[row, 1:].bool()  # position t predicts token t+1
        predicts = grad[row, :-1]
        assert (predicts[~scored] == 0).all(), "a context token (prompt, tool result) carried loss"
        assert (predicts[scored] > 0).all()
    assert int(mask.sum()) == sum(s.chosen_mask) + sum(s.rejected_mask)


def test_pairs_start_where_the_rollouts_diverge(workdir, tiny_model_dir):
    from datasets import load_dataset

    from gymtrl.io import exact_json_decoding
    from gymtrl.stages import demo, filter as filter_stage, pair
    from gymtrl.stages.pair import shared_turns

    base = dict(pair={"strategy": "all_pairs"}, paths={"base_model": str(tiny_model_dir)})
    p = make_params(**base)
    demo.run(p)
    filter_stage.run(p)
    m = pair.run(p)
    old = pair.run(make_params(pair={"strategy": "all_pairs", "cut": "prompt"},
                               paths={"base_model": str(tiny_model_dir), "pairs": "old"}))
    assert m["pairs"] == old["pairs"] > 0 and 0 < m["pairs_cut_after_shared_turns"] < m["pairs"]
    with exact_json_decoding():
        rows = list(load_dataset("parquet", data_files="data/pairs/train.parquet", split="train"))
        before = list(load_dataset("parquet", data_files="old/train.parquet", split="train"))
    for row, whole in zip(rows, before):
        k = row["shared_messages"]
        assert row["cut_at"] == 2 + k and len(whole["prompt"]) == 2 and whole["cut_at"] == 2
        # the shared turns moved from both continuations into the prompt, nothing else changed
        assert row["prompt"] == whole["prompt"] + whole["chosen"][:k]
        assert row["chosen"] == whole["chosen"][k:] and row["rejected"] == whole["rejected"][k:]
        assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
        if k:  # the turns up to the cut are the same (call ids aside); the turn at the cut is not
            assert shared_turns(whole["chosen"], whole["rejected"]) == k


def test_shared_turns_backs_off_to_an_assistant_turn_and_keeps_both_sides():
    a = [call(1, "1+1"), result(1, "2"), {"role": "assistant", "content": "Answer: 2"}]
    same_call_other_result = [call(7, "1+1"), result(7, "3"), {"role": "assistant", "content": "Answer: 3"}]
    from gymtrl.stages.pair import shared_turns

    assert shared_turns(a, same_call_other_result) == 0  # the results differ: the call is not the choice point
    other_answer = [call(9, "1+1"), result(9, "2"), {"role": "assistant", "content": "Answer: 5"}]
    assert shared_turns(a, other_answer) == 2  # ids differ, content the same: cut at the answer
    assert shared_turns(a, a) == 2  # identical: both sides keep their last turn
    assert shared_turns(a, [call(1, "1+1")]) == 0


@pytest.mark.parametrize("name", ["trl:qwen3", "trl:llama3_1", "trl:gptoss", "Mistral-Nemo-Instruct-2407"])
def test_no_tool_result_is_scored_in_other_families(name, base_tokenizer):

    family = next((f for f in FAMILIES if f.name == name), None)
    if family is None:
        pytest.skip(f"{name}: ../shared/chat-templates is not beside this checkout")
    tok = family_tokenizer(family, base_tokenizer)
    fmt = probe_format(tok)
    s = preference_sample(tok, *tool_pair(fmt), TOOLS, fmt)
    assert s is not None and 1 in s.chosen_mask and 1 in s.rejected_mask
    for ids, mask, own in ((s.chosen_ids, s.chosen_mask, "Answer: 37"), (s.rejected_ids, s.rejected_mask, "Answer: 38")):
        scored = "".join(text for m, text in runs(tok, ids, mask) if m)
        context = "".join(text for m, text in runs(tok, ids, mask) if not m)
        assert own in scored and "36+" in scored  # the second call and the answer are the model's choice
        assert ".000" not in scored and "36.000" in context  # tool results are context only
    # Qwen3 drops the empty think block of earlier turns, Mistral moves the system prompt: those turns are
    # scored as the history shows them, and counted.
    assert s.turns_out_of_context == {"trl:qwen3": 4, "Mistral-Nemo-Instruct-2407": 2}.get(name, 0)
