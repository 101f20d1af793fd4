"""A model directory served as an OpenAI-compatible chat completions server, for NeMo Gym to call.

- `eval.engine` = vllm (auto: CUDA and vLLM installed): `vllm serve` with `--enable-auto-tool-choice
  --tool-call-parser <parser>`.
- Otherwise `transformers serve` on the CPU. It turns generated text into OpenAI `tool_calls` only by a
  `response_template` in the tokenizer config (or for model types it knows, such as Qwen): without one
  every tool call comes back as plain text and the environment never sees it. When the model's chat
  template writes calls as `<tool_call>{json}</tool_call>` (Hermes / ChatML, and the fallback template
  base_model installs), the served copy gets transformers' own template for that format.

The served copy is a folder of links to the model's files plus its own tokenizer_config.json, so
neither the model (a DVC output) nor its cache is touched.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .models import weights_path
from .processes import log_tail

# `<tool_call>` + a JSON object with name and arguments: the format transformers' Qwen template parses.
_HERMES_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def writes_hermes_calls(tokenizer) -> bool:
    """Does this chat template write a tool call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`?"""
    from .templates import probe_format, render

    fmt = probe_format(tokenizer)
    call = {"id": "call_probe", "type": "function",
            "function": {"name": "probe_fn", "arguments": '{"probe_arg": "probe_value"}'}}
    messages = [{"role": "user", "content": "probe_user"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    from .chat import format_messages

    try:
        text = render(tokenizer, format_messages(messages, fmt), [], fmt)
    except Exception:
        return False
    for body in _HERMES_CALL.findall(text):
        try:
            parsed = json.loads(body)
        except ValueError:
            continue
        args = parsed.get("arguments")
        if parsed.get("name") == "probe_fn" and (args == {"probe_arg": "probe_value"} or
                                                 args == '{"probe_arg": "probe_value"}'):
            return True
    return False


def hermes_response_template() -> dict:
    """transformers' own response template for `<tool_call>` JSON calls (its Qwen 2 / 3 entry)."""
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

    return next(t for types, t in _RESPONSE_TEMPLATE_FALLBACKS.items() if "qwen2" in types)


def served_copy(model_dir: str | Path, out: Path, trust_remote_code: bool = False) -> Path:
    """`out`: links to the model's weights and tokenizer files, with a response template where needed."""
    from .models import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    weights = Path(weights_path(model_dir))
    if not weights.is_dir():  # a Hugging Face id: its files are in the local cache
        from huggingface_hub import snapshot_download

        weights = Path(snapshot_download(str(weights)))
    for source in (weights, Path(model_dir)):  # the model directory's tokenizer files win
        for f in source.iterdir():
            if f.is_file() and f.name != "tokenizer_config.json":
                (out / f.name).unlink(missing_ok=True)
                (out / f.name).symlink_to(f.resolve())
    config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    if "response_template" not in config and writes_hermes_calls(tokenizer):
        config["response_template"] = hermes_response_template()
    # json, not orjson: tokenizer configs hold integers past 64 bits (model_max_length = 1e30)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


@dataclass(frozen=True)
class Served:
    url: str  # base URL of the OpenAI API, ending in /v1
    model: str  # the name requests use


def serve_command(engine: str, model: Path, port: int, tool_call_parser: str, trust_remote_code: bool) -> list[str]:
    import sys

    bin_dir = Path(sys.executable).parent
    if engine == "vllm":
        return [str(bin_dir / "vllm"), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                "--served-model-name", str(model), "--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser,
                *(["--trust-remote-code"] if trust_remote_code else [])]
    return [str(bin_dir / "transformers"), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--device", "cpu", "--dtype", "float32",
            "--trust-remote-code" if trust_remote_code else "--no-trust-remote-code"]


def wait_healthy(url: str, proc, log: Path, timeout: float) -> None:
    """Until GET <url>/health answers 200; fails with the server's log when it exits or times out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the model server exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the model server did not answer within {timeout:.0f} s:\n{log_tail(log)}")
