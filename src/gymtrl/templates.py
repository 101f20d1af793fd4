"""What a tokenizer's chat template can render, decided by rendering probes (never by model name).

- `supports_tools`: does the template show tools, tool calls and tool results at all? If not, the
  pipeline installs `TOOL_CHATML_TEMPLATE` (ChatML with tools and `{% generation %}` markers).
- `probe_format`: tool-call `arguments` as a dict (templates that `tojson` or iterate them) or as the
  JSON string (templates that print them as they are); reasoning as a field or as `<think>` text.
"""

from __future__ import annotations

from .chat import ChatFormat

# ChatML (the format SmolLM2, Qwen and Hermes models share) with Hermes-style tool calls.
# {% generation %} marks what the assistant produced so that TRL's assistant_only_loss is real.
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
    "{{ '<|im_end|>' }}"
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


def _probe_messages(arguments) -> list[dict]:
    return [
        {"role": "user", "content": "probe_user"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_probe", "type": "function", "function": {"name": "probe_fn", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "call_probe", "name": "probe_fn", "content": "probe_result"},
        {"role": "assistant", "content": "probe_answer"},
    ]


def _render(tokenizer, messages, **kw) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception:  # a template that cannot render this shape is exactly what we probe for
        return None


def supports_tools(tokenizer) -> bool:
    if not getattr(tokenizer, "chat_template", None):
        return False
    for args in ({"probe_arg": "probe_value"}, '{"probe_arg": "probe_value"}'):
        text = _render(tokenizer, _probe_messages(args), tools=_PROBE_TOOLS)
        if text and all(s in text for s in ("probe_tool_description", "probe_fn", "probe_value", "probe_result", "probe_answer")):
            return True
    return False


def has_generation_markers(tokenizer) -> bool:
    return "{% generation" in (tokenizer.chat_template or "") or "{%- generation" in (tokenizer.chat_template or "")


def probe_arguments(tokenizer) -> str:
    """'dict' or 'string': which shape of tool-call arguments the template renders as plain JSON."""
    as_dict = _render(tokenizer, _probe_messages({"probe_arg": "probe_value"}), tools=_PROBE_TOOLS)
    as_str = _render(tokenizer, _probe_messages('{"probe_arg": "probe_value"}'), tools=_PROBE_TOOLS)
    if as_dict is None and as_str is not None:
        return "string"
    if as_dict is not None and ("{'probe_arg'" in as_dict or "probe_value" not in as_dict):
        return "string"  # the template printed a Python dict, or dropped it: it wants the JSON text
    if as_str is not None and '\\"probe_arg\\"' in as_str:
        return "dict"  # the template tojson'ed our string (double-encoded): it wants the object
    return "dict"  # transformers' convention for tool calls


def probe_reasoning(tokenizer) -> str:
    """'field' when the template renders `reasoning_content`, else 'think' (inline <think> text)."""
    messages = [{"role": "user", "content": "probe_user"}, {"role": "assistant", "content": "probe_answer", "reasoning_content": "probe_reasoning"}]
    text = _render(tokenizer, messages)
    return "field" if text and "probe_reasoning" in text else "think"


def probe_format(tokenizer, arguments: str = "auto", reasoning: str = "keep") -> ChatFormat:
    args = probe_arguments(tokenizer) if arguments == "auto" else arguments
    reason = "drop" if reasoning == "drop" else probe_reasoning(tokenizer)
    return ChatFormat(arguments=args, reasoning=reason)
