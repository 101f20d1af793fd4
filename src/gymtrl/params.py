"""params.yaml, validated once into typed objects.

This module says what each key is (type, bounds, allowed values); params.yaml says what it is set to.
No key has a value here, so a reader never has to ask which of two defaults runs: a key missing from
params.yaml is an error that names it. A bad value fails before any work with the file, the dotted key,
the value and what was expected.
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


class PathsParams(_Section):
    """Where every artifact lives. dvc.yaml interpolates these (`${paths.sft}`) and the stages read them,
    so a path is written once. Files inside these folders (`train.parquet`, `filter.json`) are fixed."""

    demo: str  # the embedded environment's tasks and reference rollouts
    base_model: str
    filtered: str
    catalog: str
    sft: str
    pairs: str
    trained_model: str
    eval: str  # held-out rollouts of both models
    checkpoints: str  # outside DVC's outs: a killed training resumes from here
    training_logs: str  # dvclive's loss curves
    metrics: str  # one <stage>.json per stage
    plots: str
    gym_venv: str  # NeMo Gym's own venv, made on first use (never this project's venv)
    gym_work: str  # Gym's working folder: servers, logs, raw rollouts, Ray's temp files
    collected: str  # the trained model's rollouts on the training tasks (collect)
    rounds: str  # earlier rounds' collections, frozen by `gymtrl next-round`: round-<r>.jsonl.gz
    holdout: str  # filter writes the held-out tasks of data.rollouts here (eval.holdout_fraction)


class DataParams(_Section):
    # A file, a folder (every *.jsonl / *.jsonl.gz below it) or a glob; several may be listed.
    rollouts: list[str] | str
    # Processes that parse and convert lines in filter / convert / pair: a number, or "auto".
    workers: Literal["auto"] | int

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("expected a whole number >= 1 or 'auto'")


class ModelParams(_Section):
    name_or_path: str  # "embedded" or a Hugging Face id / local path
    trust_remote_code: bool


class FilterParams(_Section):
    min_reward: float
    min_turns: Optional[int] = Field(ge=0)
    max_turns: Optional[int] = Field(ge=0)

    @model_validator(mode="after")
    def _turn_bounds(self) -> "FilterParams":
        if self.min_turns is not None and self.max_turns is not None and self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) must be <= max_turns ({self.max_turns})")
        return self


class ConvertParams(_Section):
    reasoning: Literal["keep", "drop"]
    merge_system: bool
    arguments: Literal["auto", "dict", "string"]
    on_loss: Literal["reject", "keep"]


class PairParams(_Section):
    min_diff: float = Field(ge=0.0)
    strategy: Literal["top_vs_second", "top_vs_bottom", "all_pairs"]
    cut: Literal["divergence", "prompt"]  # where chosen/rejected start: after the turns both share, or after the prompt


class DemoParams(_Section):
    train_tasks: int = Field(ge=1)
    eval_tasks: int = Field(ge=1)
    collect_tasks: int = Field(ge=1)
    num_repeats: int = Field(ge=1)
    seed: int


class TrainParams(_Section):
    method: Literal["sft", "dpo", "sft+dpo"]
    seed: int
    max_examples: Optional[int] = Field(ge=1)
    # null, or any peft.LoraConfig field (passed through; the train stage names an unknown key).
    lora: Optional[dict[str, Any]]
    # Passed straight to trl.SFTConfig / trl.DPOConfig; a key they do not know is an error.
    sft: dict[str, Any]
    dpo: dict[str, Any]
    # > 1: the stage relaunches itself under `accelerate launch` (DDP; or what accelerate_config says)
    num_processes: int = Field(ge=1)
    accelerate_config: Optional[str]  # an accelerate config file (FSDP, DeepSpeed), or null
    # glibc: blocks of at least this many KiB are mmapped, so freed activations go back to the OS (null: glibc's
    # default, whose heaps keep freed blocks of up to 32 MiB). Changes memory, not results.
    mmap_threshold_kb: Optional[int] = Field(ge=1)


class GymParams(_Section):
    """eval.backend=gym: real NeMo Gym plays the tasks against a served copy of each model."""

    python: str  # auto (the first Python >= 3.12 on PATH or under pyenv) or a path
    package: str  # what goes into the Gym venv, e.g. nemo-gym==0.4.0
    config: str  # embedded (the calculator resources server) or a Gym config file (resources server + agent)
    agent: str  # the agent of that config that plays the tasks
    collect: str  # the collection command: ng_collect_rollouts (Gym 0.4.0) or "gym eval run --no-serve"
    tool_call_parser: str  # vllm serve's --tool-call-parser
    parallel: int = Field(ge=1)  # rollouts in flight at once
    start_timeout: float = Field(gt=0)  # seconds for the model server and Gym's servers to come up


class EvalParams(_Section):
    success_threshold: float
    backend: Literal["builtin", "gym"]
    # Who generates, in evaluate and collect: hf (transformers generate; `transformers serve` for the gym backend)
    # or vllm (offline vllm.LLM; `vllm serve` for the gym backend); auto = vllm with CUDA and vLLM, else hf.
    engine: Literal["auto", "hf", "vllm"]
    tasks: str
    # Also scored as "reference" in metrics/eval.json (how good the training rollouts themselves were).
    reference_rollouts: Optional[str]
    max_turns: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    num_repeats: int = Field(ge=1)
    seed: int
    limit: Optional[int] = Field(ge=1)  # play only the first N tasks (null: all)
    # Share of data.rollouts' task keys held out from training and evaluated (0: eval.tasks is a file of its own).
    holdout_fraction: float = Field(ge=0.0, lt=1.0)
    gym: GymParams


class CollectParams(_Section):
    """collect: the trained model plays the training tasks, k samples each, for the next round."""

    backend: Literal["builtin", "gym"]  # gym: eval.gym's settings
    tasks: str  # Gym input lines (the training tasks)
    num_repeats: int = Field(ge=1)  # k samples per task
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    seed: int
    limit: Optional[int] = Field(ge=1)  # play only the first N tasks (null: all)


class IterateParams(_Section):
    # Round r trains on data.rollouts plus the collections of rounds before it (paths.rounds).
    round: int = Field(ge=1)
    pool: Literal["all", "last"]  # every earlier round's collection, or only round r-1's


class Params(_Section):
    paths: PathsParams
    data: DataParams
    model: ModelParams
    filter: FilterParams
    convert: ConvertParams
    pair: PairParams
    demo: DemoParams
    train: TrainParams
    eval: EvalParams
    collect: CollectParams
    iterate: IterateParams

    @model_validator(mode="after")
    def _holdout(self) -> "Params":
        held = str(holdout_tasks(self.paths.holdout))
        if self.eval.holdout_fraction > 0 and Path(self.eval.tasks) != Path(held):
            raise ValueError(f"eval.holdout_fraction={self.eval.holdout_fraction} holds tasks of data.rollouts out "
                             f"into {held}, but eval.tasks={self.eval.tasks!r} evaluates others: set eval.tasks: {held}")
        if self.eval.holdout_fraction == 0 and Path(self.eval.tasks) == Path(held):
            raise ValueError(f"eval.tasks={self.eval.tasks!r} is the held-out share of data.rollouts, but "
                             f"eval.holdout_fraction is 0 (nothing held out): set it, e.g. 0.1")
        return self

    @property
    def rollout_specs(self) -> list[str]:
        """data.rollouts as a list: the user's (or the demo's) rollouts."""
        r = self.data.rollouts
        return [r] if isinstance(r, str) else list(r)

    @property
    def round_files(self) -> list[Path]:
        """The earlier rounds' frozen collections this round trains on (iterate.round, iterate.pool)."""
        r = self.iterate.round
        rounds = range(1, r) if self.iterate.pool == "all" else range(max(1, r - 1), r)
        return [round_file(self.paths.rounds, k) for k in rounds]


def holdout_tasks(holdout_dir: str) -> Path:
    """The held-out tasks filter writes (one home for the name)."""
    return Path(holdout_dir) / "tasks.jsonl"


def round_file(rounds_dir: str, round_: int) -> Path:
    """Where round `round_`'s collection is frozen (one home for the name)."""
    return Path(rounds_dir) / f"round-{round_}.jsonl.gz"


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "missing":
            lines.append(f"  {key}: missing (every key is set in params.yaml; this module has no defaults)")
            continue
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key} = {e.get('input')!r}: {msg}")
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


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, dicts key by key (as `dvc exp run -S a.b=v` changes one key)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_params_file(path: Path | str = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root, or pass --params)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    return parse_params(read_params_file(path), path)
