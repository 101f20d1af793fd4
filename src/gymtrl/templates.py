"""What a tokenizer's chat template can render, decided by rendering probes (never by model name).

- `probe_format`: the `ChatFormat` (chat.py) under which the template renders a conversation
  faithfully: argument shape, where reasoning goes, call ids it accepts, parallel calls, what `tools`
  to pass for a row without tool definitions. Every later stage renders through `render`.
- `supports_tools`: under that format, does the template show tool calls and tool results at all? If
  not, the pipeline installs `TOOL_CHATML_TEMPLATE` (ChatML with tools and `{% generation %}` markers,
  assistant turns ended by the model's own eos token).
- `stop_tokens`: the tokens that end an assistant turn in this template, for generation configs.
"""

from __future__ import annotations

from dataclasses import replace

from .chat import ChatFormat, format_messages

# ChatML (the format SmolLM2, Qwen and Hermes models share) with Hermes-style tool calls.
# {% generation %} marks what the assistant produced (TRL's own assistant-only loss reads it). An
# assistant turn ends with the model's eos token, so the trained model stops where the base model would.
TOOL_CHATML_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = 'You are a helpful assistant.' -%}{%- set rest = messages -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system }}"
    "{%- if tools -%}"
    "{{ '\\n\\n# Tools\\n\\nYou may call one or more functions. Their signatures are inside <tools></tools>:\\n<tools>' }}"
    "{%- for tool in tools -%}"
    "{{ '\\n' + ((tool['function'] if tool['function'] is defined else tool) | tojson) }}"
    "{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nTo call a function, answer with one JSON object per call inside "
    "<tool_call></tool_call> tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call>' }}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- for message in rest -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}"
    "{%- if message['reasoning_content'] is defined and message['reasoning_content'] -%}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n' }}"
    "{%- endif -%}"
    "{{ message['content'] or '' }}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for tc in message['tool_calls'] -%}"
    "{%- set fn = tc['function'] if tc['function'] is defined else tc -%}"
    "{%- if loop.index0 > 0 or message['content'] -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if fn['arguments'] is string -%}{{ fn['arguments'] }}{%- else -%}{{ fn['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ eos_token if eos_token else '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe_fn",
            "description": "probe_tool_description",
            "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}},
        },
    }
]
_CALL_SHOWN = ("probe_fn", "probe_value", "probe_result", "probe_answer")


def _call(n: int = 0) -> dict:
    return {"id": f"call_probe_{n}", "type": "function",
            "function": {"name": "probe_fn", "arguments": f'{{"probe_arg": "probe_value{n or ""}"}}'}}


def _probe_messages(calls: int = 1) -> list[dict]:
    """A canonical tool-call conversation (arguments as the JSON string, as chat.py builds them)."""
    return [
        {"role": "user", "content": "probe_user"},
        {"role": "assistant", "content": "", "tool_calls": [_call(n) for n in range(calls)]},
        *({"role": "tool", "tool_call_id": f"call_probe_{n}", "name": "probe_fn", "content": f"probe_result{n or ''}"}
          for n in range(calls)),
        {"role": "assistant", "content": "probe_answer"},
    ]


def _render(tokenizer, messages, **kw) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception:  # a template that cannot render this shape is exactly what we probe for
        return None


def render(tokenizer, messages: list[dict], tools: list[dict] | None, fmt: ChatFormat,
           add_generation_prompt: bool = False) -> str:
    """Formatted messages -> text: the one place that calls apply_chat_template for convert, train and evaluate."""
    return tokenizer.apply_chat_template(messages, tools=fmt.tools_arg(tools), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _probe(tokenizer, fmt: ChatFormat, calls: int = 1, tools=_PROBE_TOOLS) -> str | None:
    return _render(tokenizer, format_messages(_probe_messages(calls), fmt), tools=fmt.tools_arg(tools))


def _shows_call(text: str | None) -> bool:
    return bool(text) and all(s in text for s in _CALL_SHOWN)


def _call_format(tokenizer, arguments: str) -> ChatFormat:
    """The first (call ids, argument shape) under which a one-call conversation renders completely."""
    shapes = ("dict", "string") if arguments == "auto" else (arguments,)
    for call_ids in ("keep", "alnum9"):
        for args in shapes:
            fmt = ChatFormat(arguments=args, call_ids=call_ids)
            if _shows_call(_probe(tokenizer, fmt)):
                return fmt
    return ChatFormat(arguments=shapes[0])


def probe_arguments(tokenizer, call_ids: str = "keep") -> str:
    """'dict' or 'string': which shape of tool-call arguments the template renders as plain JSON."""
    as_dict = _probe(tokenizer, ChatFormat(arguments="dict", call_ids=call_ids))
    as_str = _probe(tokenizer, ChatFormat(arguments="string", call_ids=call_ids))
    if as_dict is None and as_str is not None:
        return "string"
    if as_dict is not None and ("{'probe_arg'" in as_dict or "probe_value" not in as_dict):
        return "string"  # the template printed a Python dict, or dropped it: it wants the JSON text
    if as_str is not None and '\\"probe_arg\\"' in as_str:
        return "dict"  # the template tojson'ed our string (double-encoded): it wants the object
    return "dict"  # transformers' convention for tool calls


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def probe_reasoning(tokenizer) -> str:
    """The message field the template renders reasoning from, or 'think' (inline <think> text)."""
    for name in REASONING_FIELDS:
        messages = [{"role": "user", "content": "probe_user"},
                    {"role": "assistant", "content": "probe_answer", name: "probe_reasoning"}]
        text = _render(tokenizer, messages)
        if text and "probe_reasoning" in text and "probe_answer" in text:
            return name
    return "think"


def probe_format(tokenizer, arguments: str = "auto", reasoning: str = "keep") -> ChatFormat:
    fmt = _call_format(tokenizer, arguments)
    if arguments == "auto":
        fmt = replace(fmt, arguments=probe_arguments(tokenizer, fmt.call_ids))
    if not _shows_call(_probe(tokenizer, fmt, tools=None)) and _shows_call(_probe(tokenizer, replace(fmt, empty_tools="list"), tools=None)):
        fmt = replace(fmt, empty_tools="list")
    two = _probe(tokenizer, fmt, calls=2)
    if not (two and all(s in two for s in ("probe_value1", "probe_result1"))) and _shows_call(_probe(tokenizer, replace(fmt, parallel_calls="split"), calls=2)):
        fmt = replace(fmt, parallel_calls="split")
    shown = _probe(tokenizer, fmt)
    if shown and "probe_tool_description" not in shown:
        fmt = replace(fmt, tool_schemas=False)
    where = "drop" if reasoning == "drop" else probe_reasoning(tokenizer)
    if where in REASONING_FIELDS:
        fmt = replace(fmt, reasoning="field", reasoning_field=where)
        both = _probe_messages()[:3]  # no final answer after the call: gpt-oss hides a call's analysis then
        both[1] = {**both[1], "content": "probe_text", "reasoning_content": "probe_reasoning"}
        if _render(tokenizer, format_messages(both, fmt), tools=_PROBE_TOOLS) is None:
            merged = replace(fmt, call_text="reasoning")
            text = _render(tokenizer, format_messages(both, merged), tools=_PROBE_TOOLS)
            if text and "probe_text" in text and "probe_reasoning" in text:
                fmt = merged
    else:
        fmt = replace(fmt, reasoning=where)
    return replace(fmt, consistent=_consistent(tokenizer, fmt))


def _consistent(tokenizer, fmt: ChatFormat) -> bool:
    """Does one render of a whole agent conversation hold every turn exactly as it is generated?"""
    from .faithful import training_samples

    messages = _probe_messages(2)
    messages[1] = {**messages[1], "reasoning_content": "probe_reasoning"}
    again = {"id": "call_probe_9", "type": "function", "function": {"name": "probe_fn", "arguments": "{}"}}
    messages[-1:-1] = [{"role": "assistant", "content": "", "tool_calls": [again]},
                       {"role": "tool", "tool_call_id": "call_probe_9", "name": "probe_fn", "content": "probe_result9"}]
    messages += [{"role": "user", "content": "probe_user_2"}, {"role": "assistant", "content": "probe_answer_2"}]
    try:
        return len(training_samples(tokenizer, format_messages(messages, fmt), _PROBE_TOOLS, fmt)) == 1
    except Exception:  # a template that cannot even cut this conversation is not consistent
        return False


def supports_tools(tokenizer) -> bool:
    """Does the template render tool calls and tool results (under the best format it has)?"""
    if not getattr(tokenizer, "chat_template", None):
        return False
    return _shows_call(_probe(tokenizer, _call_format(tokenizer, "auto")))


def stop_tokens(tokenizer, fmt: ChatFormat | None = None) -> list[str]:
    """Special tokens that end an assistant turn (an answer, a tool call) in this template, eos first.

    Found by rendering: the special token that closes the assistant's part of a one-turn conversation.
    Llama 3 ends turns with `<|eot_id|>` (its eos is `<|end_of_text|>`), gpt-oss answers with `<|return|>`
    and calls with `<|call|>`.
    """
    special = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    fmt = fmt or probe_format(tokenizer)  # callers that probed already pass theirs
    call = format_messages(_probe_messages(1), fmt)
    for turn in ([call[0], call[-1]], call[:2]):
        prompt = _render(tokenizer, turn[:1], tools=fmt.tools_arg(_PROBE_TOOLS), add_generation_prompt=True)
        full = _render(tokenizer, turn, tools=fmt.tools_arg(_PROBE_TOOLS))
        if prompt is None or full is None or not full.startswith(prompt):
            continue
        end = full[len(prompt):].rstrip()
        last = next((t for t in special if end.endswith(t)), None)
        if last and last not in found:
            found.append(last)
    return found
