"""Golden conversions of real Gym rollouts, and rendering through a real tool-capable chat template."""

from __future__ import annotations

import orjson
import pytest

from conftest import fixture
from gymtrl.chat import ChatFormat, alnum9, format_messages, split_think, to_conversation
from gymtrl.rollouts import iter_lines, parse_line
from gymtrl.templates import probe_arguments, probe_format, probe_reasoning, supports_tools


def rollout(name: str, index: int = 0):
    return parse_line(list(iter_lines(fixture(name)))[index])


def test_golden_single_tool_call():
    conv = rollout("example_mcp_weather").conversation
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "tool", "assistant"]
    call = conv.messages[1]["tool_calls"][0]
    raw = orjson.loads(fixture("example_mcp_weather").read_bytes().splitlines()[0])["response"]["output"][0]
    assert call == {"id": raw["call_id"], "type": "function",
                    "function": {"name": raw["name"], "arguments": raw["arguments"]}}
    assert conv.messages[1]["content"] == ""  # a tool-call-only turn
    assert conv.messages[2] == {"role": "tool", "tool_call_id": raw["call_id"], "name": raw["name"],
                                "content": orjson.loads(fixture("example_mcp_weather").read_bytes().splitlines()[0])["response"]["output"][1]["output"]}
    assert conv.prompt_len == 1 and conv.turns == 2


def test_golden_multi_step_tool_trace():
    conv = rollout("example_multi_step").conversation
    roles = [m["role"] for m in conv.messages]
    assert roles == ["system", "user"] + ["assistant", "tool"] * 3 + ["assistant"]
    ids = [m["tool_calls"][0]["id"] for m in conv.messages if m.get("tool_calls")]
    assert ids == [m["tool_call_id"] for m in conv.messages if m["role"] == "tool"]
    assert conv.turns == 4 and len(conv.tools) == 2
    assert all(set(t) == {"type", "function"} and "strict" not in t["function"] for t in conv.tools)


def test_golden_gymnasium_multi_turn_environment_messages():
    conv = rollout("blackjack").conversation
    assert conv.messages == [
        {"role": "system", "content": "You are playing Blackjack. After seeing your hand, respond with "
                                      "<action>hit</action> or <action>stand</action>. Think briefly, then give your action tag."},
        {"role": "user", "content": "Deal me in."},
        {"role": "user", "content": "Your hand: [8, 5] = 13\nDealer shows: A\nRespond with <action>hit</action> or <action>stand</action>."},
        {"role": "assistant", "content": "<action>hit</action>"},
        {"role": "user", "content": "Your hand: [8, 5, 3] = 16\nDealer shows: A\nRespond with <action>hit</action> or <action>stand</action>."},
        {"role": "assistant", "content": "<action>hit</action>"},
    ]
    assert conv.prompt_len == 3 and conv.turns == 2


def test_golden_aviary_nested_output():
    conv = rollout("aviary").conversation
    assert conv.messages == [
        {"role": "user", "content": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0hWFYwBvZghsoIwtRIYxuFKL", "type": "function",
                                                             "function": {"name": "calculator", "arguments": '{"expr":"12 * (50 / 60)"}'}}]},
        {"role": "tool", "tool_call_id": "call_0hWFYwBvZghsoIwtRIYxuFKL", "name": "calculator", "content": "10"},
        {"role": "assistant", "content": "Weng earned $10 for 50 minutes of babysitting at a rate of $12 per hour."},
    ]
    assert conv.prompt_len == 1  # the task sits in the output; it is still the prompt
    assert [t["function"]["name"] for t in conv.tools] == ["calculator", "submit_answer"]  # from response.tools
    # Two parallel calls in one step become one assistant turn with two tool_calls.
    parallel = rollout("aviary", 2).conversation
    assert len(parallel.messages[1]["tool_calls"]) == 2


def test_golden_reasoning_trace():
    conv = rollout("xlam_fc").conversation
    first = conv.messages[2]
    assert first["role"] == "assistant"
    assert first["reasoning_content"].startswith("\nOkay, the user is asking about the details of the Ethereum")
    assert first["tool_calls"][0]["function"]["name"] == "web_chain_details"
    assert conv.messages[4]["reasoning_content"]  # the second turn's reasoning stays with the second turn
    # An empty reasoning summary adds nothing.
    assert "reasoning_content" not in rollout("math_with_judge").conversation.messages[-1]


def test_golden_string_input():
    conv = rollout("competitive_coding_challenges").conversation
    assert conv.messages[0]["role"] == "user"
    assert conv.messages[0]["content"].startswith("You are an expert competitive programmer.")
    assert conv.prompt_len == 1 and conv.messages[1]["role"] == "assistant"


def test_instructions_and_leading_system_developer_messages_merge_like_gym():
    rec = {"responses_create_params": {"instructions": "A", "input": [
        {"role": "developer", "content": "B"}, {"role": "system", "content": [{"type": "input_text", "text": "C"}]},
        {"role": "user", "content": "hi"}]}, "response": {"output": []}, "reward": 1}
    assert to_conversation(rec).messages == [{"role": "system", "content": "A\n\nB\n\nC"}, {"role": "user", "content": "hi"}]
    assert [m["role"] for m in to_conversation(rec, merge_system=False).messages] == ["system", "developer", "system", "user"]


def test_format_messages_shapes_arguments_and_reasoning():
    msgs = rollout("xlam_fc").conversation.messages
    as_dict = format_messages(msgs, ChatFormat(arguments="dict", reasoning="field"))
    assert as_dict[2]["tool_calls"][0]["function"]["arguments"] == {"chain_slug": "ethereum"}
    as_str = format_messages(msgs, ChatFormat(arguments="string", reasoning="think"))
    assert as_str[2]["tool_calls"][0]["function"]["arguments"] == '{"chain_slug": "ethereum"}'
    assert as_str[2]["content"].startswith("<think>\n\nOkay") and "reasoning_content" not in as_str[2]
    dropped = format_messages(msgs, ChatFormat(reasoning="drop"))
    assert all("reasoning_content" not in m and "<think>" not in m["content"] for m in dropped)
    assert msgs[2]["tool_calls"][0]["function"]["arguments"] == '{"chain_slug": "ethereum"}'  # input untouched


@pytest.mark.parametrize("name", ["example_multi_step", "xlam_fc", "aviary", "blackjack", "workplace_assistant"])
def test_rendered_through_a_real_tool_template(embedded_tokenizer, name):
    item = rollout(name)
    fmt = probe_format(embedded_tokenizer)
    messages = format_messages(item.conversation.messages, fmt)
    text = embedded_tokenizer.apply_chat_template(messages, tools=item.conversation.tools or None, tokenize=False)
    pos = 0
    for m in messages:  # every message appears, in order
        for piece in filter(None, [m.get("reasoning_content"), m["content"].strip()[:60]]):
            found = text.find(piece, pos)
            assert found >= 0, (m["role"], piece)
            pos = found
        for tc in m.get("tool_calls", []):
            found = text.find(f'"name": "{tc["function"]["name"]}", "arguments": {orjson.dumps(tc["function"]["arguments"]).decode()[:1]}', pos)
            assert found >= 0
            pos = found
    for tool in item.conversation.tools:
        assert tool["function"]["name"] in text.split("\n</tools>")[0]
    out = embedded_tokenizer.apply_chat_template(messages, tools=item.conversation.tools or None, tokenize=True,
                                                 return_dict=True, return_assistant_tokens_mask=True)
    trained = embedded_tokenizer.decode([t for t, keep in zip(out["input_ids"], out["assistant_masks"]) if keep])
    assert trained.count("<|im_end|>") == item.conversation.turns  # every assistant turn learns to stop
    said = " ".join(m["content"] for m in messages if m["role"] == "assistant")
    for m in messages:
        piece = m["content"][:40]
        if m["role"] in ("tool", "user", "system") and len(piece) >= 8 and piece not in said:
            assert piece not in trained  # tool results and user turns are not trained on


def test_probes_decide_per_template(embedded_tokenizer):
    from transformers import AutoTokenizer

    from gymtrl.models import EMBEDDED_GGUF, embedded_dir

    assert supports_tools(embedded_tokenizer)
    assert probe_arguments(embedded_tokenizer) == "dict" and probe_reasoning(embedded_tokenizer) == "reasoning_content"
    assert not supports_tools(AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF))  # SmolLM2's own
    plain = "{% for m in messages %}{{ m.role }}:{{ m.content }}{% for tc in m.tool_calls or [] %}<{{ tc.function.name }} {{ tc.function.arguments }}>{% endfor %}\n{% endfor %}"
    embedded_tokenizer_copy = _with_template(embedded_tokenizer, plain)
    assert probe_arguments(embedded_tokenizer_copy) == "string"  # prints arguments as they are
    assert probe_reasoning(embedded_tokenizer_copy) == "think"
    tojson = plain.replace("{{ tc.function.arguments }}", "{{ tc.function.arguments | tojson }}")
    assert probe_arguments(_with_template(embedded_tokenizer, tojson)) == "dict"
    iterate = plain.replace("{{ tc.function.arguments }}", "{% for k, v in tc.function.arguments | items %}{{ k }}={{ v }}{% endfor %}")
    assert probe_arguments(_with_template(embedded_tokenizer, iterate)) == "dict"


def _with_template(tokenizer, template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_inline_think_blocks_become_reasoning():
    assert split_think("<think>a</think>x <think>b</think>y") == (["a", "b"], "x y")
    assert split_think("plan</think>answer") == (["plan"], "answer")  # the prompt opened the block
    assert split_think("no thoughts") == ([], "no thoughts")
    record = {"responses_create_params": {"input": "q"}, "reward": 1.0,
              "response": {"output": [
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "<think>one</think>Let me add."}]},
                  {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}"},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "<think>two</think>"}]},
                  {"type": "function_call_output", "call_id": "c1", "output": "3"},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "<think>three</think>Answer: 3"}]}]}}
    conv = to_conversation(record)
    # Every block is kept, in the reasoning field the template renders, none left for a template to cut.
    assert conv.messages[1]["reasoning_content"] == "one\ntwo" and conv.messages[1]["content"] == "Let me add."
    assert conv.messages[3] == {"role": "assistant", "content": "Answer: 3", "reasoning_content": "three"}


def test_call_ids_parallel_calls_and_text_beside_calls_adapt_to_the_template():
    conv = rollout("aviary", 2).conversation  # two calls in one turn
    parallel = next(i for i, m in enumerate(conv.messages) if len(m.get("tool_calls", [])) > 1)
    calls = conv.messages[parallel]["tool_calls"]
    split = format_messages(conv.messages, ChatFormat(parallel_calls="split", call_ids="alnum9"))
    # One call per assistant message, each followed by its own output, ids remapped the same way in both.
    window = split[parallel:parallel + 2 * len(calls)]
    assert [m["role"] for m in window] == ["assistant", "tool"] * len(calls)
    for k, call in enumerate(calls):
        new_id = window[2 * k]["tool_calls"][0]["id"]
        assert new_id == alnum9(call["id"]) == window[2 * k + 1]["tool_call_id"]
        assert len(new_id) == 9 and new_id.isalnum()
    assert len(split) == len(conv.messages) + len(calls) - 1
    assert alnum9("call_a") != alnum9("call_b") and alnum9("call_a") == alnum9("call_a")
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "text", "reasoning_content": "why",
             "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    merged = format_messages(msgs, ChatFormat(reasoning="field", reasoning_field="thinking", call_text="reasoning"))
    assert merged[1]["thinking"] == "why\n\ntext" and merged[1]["content"] == ""
    assert ChatFormat(empty_tools="list").tools_arg([]) == [] and ChatFormat().tools_arg([]) is None
