"""Generation engines (eval.engine): the rule that turns generated tokens into a turn, Hugging Face generate on
a real tokenizer and a tiny model, and the choice of engine. vLLM itself needs CUDA: not run here."""

from __future__ import annotations

import pytest

from conftest import make_params
from gymtrl.engines import EngineError, GenerationSettings, HFEngine, cut_turn, pick_engine, vllm_usable
from gymtrl.models import stop_token_ids


def test_a_turn_ends_at_the_first_end_of_turn_token_whichever_engine_made_it(embedded_tokenizer):
    tok = embedded_tokenizer
    stops = set(stop_token_ids(tok))
    end = next(iter(stops))
    call = tok('<tool_call>{"name": "calculate"}</tool_call>', add_special_tokens=False)["input_ids"]
    # HF generate keeps the stop token and pads after it
    hf = cut_turn(tok, [*call, end, tok.pad_token_id, tok.pad_token_id], stops)
    assert hf == ('<tool_call>{"name": "calculate"}</tool_call>', len(call) + 1, True)
    # vLLM may leave the stop token out and say so in finish_reason
    assert cut_turn(tok, call, stops, stopped=True) == hf
    # cut at max_new_tokens: not finished, every token counted
    assert cut_turn(tok, call, stops) == (hf.text, len(call), False)


def test_hf_engine_generates_one_turn_per_prompt_within_the_token_budget(tiny_model_dir, embedded_tokenizer):
    from gymtrl.models import load_model

    settings = GenerationSettings(max_turns=1, max_new_tokens=7, batch_size=3, temperature=0.0, top_p=1.0, seed=0)
    engine = HFEngine(load_model(str(tiny_model_dir)), embedded_tokenizer, settings, stop_token_ids(embedded_tokenizer))
    prompts = ["<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nwhat is 12 * 12, please?<|im_end|>\n<|im_start|>assistant\n"]
    turns = engine(prompts, seed=0)
    assert len(turns) == 2
    # a turn that did not end on an end-of-turn token used the whole budget
    assert all(1 <= t.new_tokens <= 7 and (t.finished or t.new_tokens == 7) for t in turns)
    assert engine(prompts, seed=0) == turns  # greedy: the same turns again


def test_auto_and_hf_pick_an_engine_this_machine_runs():
    assert pick_engine("hf") == "hf"
    assert pick_engine("auto") == ("vllm" if vllm_usable() else "hf")


@pytest.mark.skipif(vllm_usable(), reason="this machine can run vLLM")
def test_asking_for_vllm_without_cuda_or_vllm_stops_before_any_model_loads(tmp_path):
    from gymtrl.play import PlayError, play
    from gymtrl.stages.evaluate import sampling

    with pytest.raises(EngineError, match=r"eval.engine = 'vllm' needs CUDA and the vllm package"):
        pick_engine("vllm")
    params = make_params(eval={"engine": "vllm"})
    with pytest.raises(PlayError, match=r"eval.engine = 'vllm' needs CUDA.*Use eval.engine = 'auto' or 'hf'"):
        play(str(tmp_path / "no-model-here"), [], sampling(params), params, "baseline")
