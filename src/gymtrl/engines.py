"""How a model generates its turns when it plays tasks: Hugging Face `generate` or vLLM (`eval.engine`).

The agent loop (env/model_agent.py) renders every unfinished episode with the model's chat template and
hands the prompts to an engine; the engine returns one turn per prompt, cut at the first token that ends a
turn in that template. Both engines cut with `cut_turn`, so the same tokens give the same turn and the
rollouts are scored alike whichever engine made them. The Gym backend serves the model instead
(serving.py) and picks the server with the same `pick_engine`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class EngineError(ValueError):
    """`eval.engine` asks for an engine this machine cannot run; the message names the key."""


@dataclass(frozen=True)
class GenerationSettings:
    max_turns: int
    max_new_tokens: int
    batch_size: int
    temperature: float  # 0 = greedy
    top_p: float
    seed: int


class Generated(NamedTuple):
    text: str  # the turn, special tokens kept, the end-of-turn token cut
    new_tokens: int  # including the end-of-turn token
    finished: bool  # ended with an end-of-turn token (not at max_new_tokens)


def vllm_usable() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def pick_engine(setting: str) -> str:
    """`eval.engine` -> `hf` | `vllm`: auto = vllm when CUDA and vLLM are both there, else hf."""
    if setting == "auto":
        return "vllm" if vllm_usable() else "hf"
    if setting == "vllm" and not vllm_usable():
        raise EngineError("eval.engine = 'vllm' needs CUDA and the vllm package (pip install 'gymtrl[vllm]' in "
                          "a CUDA environment); this machine lacks "
                          f"{'the vllm package' if importlib.util.find_spec('vllm') is None else 'CUDA'}. "
                          "Use eval.engine = 'auto' or 'hf'.")
    return setting


def cut_turn(tokenizer, ids: list[int], stops: set[int], stopped: bool = False) -> Generated:
    """Generated token ids -> the turn, cut at the first end-of-turn token. `stopped`: the engine says it
    stopped on one even if it left that token out of `ids`."""
    at = next((j for j, t in enumerate(ids) if t in stops), None)
    finished = stopped or at is not None
    if at is not None:
        ids = ids[:at]
    # Keep special tokens: some models' <tool_call> is one, and the end-of-turn token was cut above.
    return Generated(tokenizer.decode(ids, skip_special_tokens=False), len(ids) + int(finished), finished)


class Engine(Protocol):
    """Generates one turn for each prompt (a rendered conversation, ending with the generation prompt)."""

    batch_size: int  # prompts per call

    def __call__(self, prompts: list[str], seed: int) -> list[Generated]: ...

    def close(self) -> None:
        """Release what the engine holds outside Python's reach (GPU memory), also after a failure."""


@dataclass
class HFEngine:
    """Hugging Face `generate` in padded batches of `batch_size`: the CPU, or a GPU without vLLM."""

    model: object
    tokenizer: object
    settings: GenerationSettings
    stop_ids: list[int]  # every token that ends a turn in the template

    def __post_init__(self) -> None:
        self.model.eval()
        self.tokenizer.padding_side = "left"  # generation continues each prompt from its last token

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def __call__(self, prompts: list[str], seed: int) -> list[Generated]:
        import torch

        tok, s = self.tokenizer, self.settings
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        sampling = s.temperature > 0
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=s.max_new_tokens, do_sample=sampling,
                temperature=s.temperature if sampling else None,
                top_p=s.top_p if sampling else None, top_k=None,
                pad_token_id=tok.pad_token_id, eos_token_id=self.stop_ids,
            )
        stops = set(self.stop_ids)
        return [cut_turn(tok, ids, stops) for ids in out[:, enc["input_ids"].shape[1]:].tolist()]

    def close(self) -> None:
        pass  # the model is an ordinary tensor graph: freed with the last reference


@dataclass
class VLLMEngine:
    """vLLM's offline `LLM` on CUDA: every unfinished episode in one call, vLLM batches them itself.
    Prompts go in as token ids (tokenised like HFEngine's, no special tokens added: the chat template
    already wrote BOS where the model has one)."""

    llm: object
    tokenizer: object
    settings: GenerationSettings
    stop_ids: list[int]
    batch_size: int = 1 << 30

    @classmethod
    def load(cls, model_dir: str, tokenizer, settings: GenerationSettings, stop_ids: list[int],
             trust_remote_code: bool) -> "VLLMEngine":
        from vllm import LLM

        # evaluate holds the base model's engine and then the trained one's in one process, and vLLM does
        # not reliably hand a finished engine's memory back: each takes under half of the GPU.
        llm = LLM(model=model_dir, tokenizer=model_dir, trust_remote_code=trust_remote_code, seed=settings.seed,
                  gpu_memory_utilization=0.45)
        return cls(llm, tokenizer, settings, stop_ids)

    def __call__(self, prompts: list[str], seed: int) -> list[Generated]:
        from vllm import SamplingParams

        s, greedy = self.settings, self.settings.temperature == 0
        # one seed per request: the same episode samples the same turn whatever else is in the batch
        params = [SamplingParams(temperature=s.temperature, top_p=1.0 if greedy else s.top_p,
                                 max_tokens=s.max_new_tokens, stop_token_ids=self.stop_ids,
                                 seed=None if greedy else seed * 1_000_003 + i, detokenize=False)
                  for i in range(len(prompts))]
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        stops = set(self.stop_ids)
        return [cut_turn(self.tokenizer, list(o.outputs[0].token_ids), stops, o.outputs[0].finish_reason == "stop")
                for o in self.llm.generate(inputs, params, use_tqdm=False)]

    def close(self) -> None:
        import gc

        import torch

        del self.llm
        gc.collect()
        torch.cuda.empty_cache()
