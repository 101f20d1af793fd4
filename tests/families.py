"""Tiny tokenizers for real chat-template families: SmolLM2's vocabulary + a family's control tokens +
its published template. No model hub: templates come from ../shared/chat-templates (when present) and
from the installed TRL package (`trl/chat_templates/*.jinja`, always present)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TEMPLATES = ROOT.parent / "shared" / "chat-templates"

CHATML = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
HERMES_TOOLS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
# Hermes 3 ships two templates; transformers picks `tool_use` when `tools` is passed, else this one.
HERMES_DEFAULT = ("{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                  "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                  "{{ '<|im_start|>assistant\n' }}{% endif %}")


@dataclass(frozen=True)
class Family:
    name: str
    template: str | dict
    special: tuple[str, ...]
    eos: str
    bos: str | None = None
    pad: str | None = None
    added: tuple[str, ...] = field(default=())  # single tokens that are not special (Qwen's <tool_call>)


# Control tokens per file, as ../shared/chat-templates/README.md lists them.
_SHARED = {
    "Qwen2.5-7B-Instruct": dict(special=CHATML, eos="<|im_end|>", pad="<|endoftext|>", added=("<tool_call>", "</tool_call>")),
    "Qwen3-0.6B": dict(special=CHATML, eos="<|im_end|>", pad="<|endoftext|>", added=HERMES_TOOLS),
    "Llama-3.1-8B-Instruct": dict(special=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                           "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
                                  eos="<|eot_id|>", bos="<|begin_of_text|>"),
    "Mistral-Nemo-Instruct-2407": dict(special=("<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
                                                "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
                                       eos="</s>", bos="<s>"),
    "DeepSeek-V3.1": dict(special=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                   "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
                                   "<｜tool▁calls▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"),
                          eos="<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>", added=("<think>", "</think>")),
    "Hermes-3-Llama-3.1-8B-tool_use": dict(special=(*CHATML, "<|begin_of_text|>"), eos="<|im_end|>",
                                           bos="<|begin_of_text|>", added=HERMES_TOOLS),
    "gpt-oss-120b": dict(special=("<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>",
                                  "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"),
                         eos="<|return|>", bos="<|startoftext|>", pad="<|endoftext|>"),
    "SmolLM3-3B": dict(special=CHATML, eos="<|im_end|>", pad="<|endoftext|>", added=HERMES_TOOLS),
    "NVIDIA-Nemotron-3-Nano-30B-A3B": dict(special=CHATML, eos="<|im_end|>", added=HERMES_TOOLS),
}

# TRL ships templates of vision models too; this is about text models.
_VISION = re.compile(r"vl|idefics|llava|smolvlm")
_CONTROL = re.compile(r"<\|[A-Za-z0-9_.:/ -]{1,40}\|>|<｜[^｜<>]{1,40}｜>|\[/?[A-Z_]{3,30}\]|</?(?:start|end)_of_turn>"
                      r"|<(?:think|/think|tool_call|/tool_call|tool_response|/tool_response)>|<[a-z_]{2,30}\|>|<\|[a-z_\"]{1,30}>|<bos>|<eos>")


def shared_families() -> list[Family]:
    if not SHARED_TEMPLATES.is_dir():
        return []
    out = []
    for name, spec in _SHARED.items():
        text = (SHARED_TEMPLATES / f"{name}.jinja").read_bytes().decode("utf-8")
        if name.startswith("Hermes"):
            text = {"default": HERMES_DEFAULT, "tool_use": text}
        out.append(Family(name, text, **spec))
    return out


def trl_families() -> list[Family]:
    import trl

    out = []
    for path in sorted((Path(trl.__file__).parent / "chat_templates").glob("*.jinja")):
        name = path.stem
        if name.endswith("_training") or _VISION.search(name):
            continue
        text = path.read_bytes().decode("utf-8")
        special = tuple(dict.fromkeys(_CONTROL.findall(text)))
        bos = next((t for t in special if re.search(r"begin.of|bos|startoftext", t)), None) if "bos_token" in text else None
        out.append(Family(f"trl:{name}", text, special=special, eos=_end_of_turn(text, special), bos=bos))
    return out


def _end_of_turn(template: str, special: tuple[str, ...]) -> str:
    """The control token right after an assistant answer, for templates whose eos nobody listed."""
    from jinja2 import Environment

    env = Environment()
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    env.globals["strftime_now"] = lambda fmt: "26 Nov 2026"
    try:
        text = env.from_string(template).render(
            messages=[{"role": "user", "content": "u"}, {"role": "assistant", "content": "ANSWER"}],
            bos_token="", eos_token="", add_generation_prompt=False)
    except Exception:
        text = ""
    tail = text[text.find("ANSWER") + 6:] if "ANSWER" in text else ""
    hits = sorted((tail.find(s), s) for s in special if s in tail)
    return hits[0][1] if hits else "<|endoftext|>"


def build_tokenizer(family: Family, base):
    """A copy of `base` (SmolLM2's fast tokenizer) with the family's tokens and template."""
    import copy

    tok = copy.deepcopy(base)
    named = {"eos_token": family.eos, "pad_token": family.pad or family.eos}
    if family.bos:
        named["bos_token"] = family.bos
    others = [t for t in family.special if t not in named.values()]
    tok.add_special_tokens({**named, "additional_special_tokens": others})  # adds the ones not in the vocabulary
    if not family.bos:
        tok.bos_token = None
    tok.add_tokens([t for t in family.added if t not in family.special])
    tok.chat_template = family.template
    return tok
