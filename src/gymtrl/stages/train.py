"""train: SFT (TRL SFTTrainer) on data/sft, DPO (DPOTrainer) on data/pairs, or SFT then DPO.

Every TRL knob sits under `train.sft` / `train.dpo` in params.yaml and goes straight into
`SFTConfig` / `DPOConfig`; what params.yaml does not set is TRL's default (this module adds only
wiring: output folder, seed, precision, no external loggers).
Checkpoints live in `paths.checkpoints`, outside DVC's outs (DVC deletes a stage's outs before running
it), so a killed run resumes on the next `dvc repro`; they are keyed by a hash of everything that
shapes training, so a changed param or dataset never resumes a stale run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_dir, dumps, exact_json_decoding, read_json, write_json
from ..params import Params, ParamsError
from .common import StageError, log, main

METRICS = "train.json"


# CPU features that run bf16 matmuls natively (x86: AVX512-BF16, AMX; Arm: the BF16 extension).
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def native_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's flags (x86) or Features (Arm) name a native bf16 instruction set."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def precision(device: str) -> dict:
    """bf16 autocast where the hardware runs it natively: CUDA with bf16, or a CPU with bf16 instructions.
    A CPU without them (AVX2 only) emulates bf16, measured at 27x slower than fp32 on a 256x256 matmul,
    which turns an 8-minute training into hours. Decided from the CPU's features, not by timing a matmul:
    a timing flips with the machine's load, and with it the trained weights (two runs of the same
    experiment differed while other jobs shared the cores). `bf16` under train.sft / train.dpo overrides."""
    import torch

    if device.startswith("cuda"):
        return {"bf16": torch.cuda.is_bf16_supported(), "use_cpu": False}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: fp32, the safe choice (set bf16: true to override)
        cpuinfo = ""
    return {"bf16": native_bf16(cpuinfo), "use_cpu": True}


def build_config(kind: str, user: dict, output_dir: str, seed: int, device: str):
    """SFTConfig / DPOConfig from params; an unknown key names itself and the section."""
    from trl import DPOConfig, SFTConfig

    cls = SFTConfig if kind == "sft" else DPOConfig
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(user) - known)
    if unknown:
        raise ParamsError(f"params.yaml: train.{kind}.{unknown[0]} is not a {cls.__name__} field "
                          f"(unknown keys: {unknown}); see the TRL docs for {cls.__name__}")
    ours = {"output_dir": output_dir, "seed": seed, "report_to": "none", "save_strategy": "steps",
            "dataloader_num_workers": 0, "disable_tqdm": True, **precision(device),
            # Under DDP transformers searches the graph for unused parameters whenever activation checkpointing
            # is off: an extra autograd traversal per step and a warning per rank. Every parameter that trains
            # here (the whole model, or the LoRA adapters) is used in the forward pass. train.<kind> overrides.
            "ddp_find_unused_parameters": False}
    if kind == "dpo":
        ours["precompute_ref_log_probs"] = True  # no second full model in memory
    if not {"activation_checkpointing", "gradient_checkpointing"} & set(user):
        # TRL's default sits on the deprecated name (gradient_checkpointing), and transformers warns for every
        # config that does not set the new one: TRL's default under the new name, without the warning.
        fields = {f.name: f for f in dataclasses.fields(cls)}
        ours["activation_checkpointing"] = fields["gradient_checkpointing"].default
    try:
        return cls(**{**ours, **user})
    except (TypeError, ValueError) as err:
        raise ParamsError(f"params.yaml: train.{kind}: {err}") from None


def code_digest() -> bytes:
    """The gymtrl package's source: a checkpoint written by other code must not be resumed."""
    package = Path(__file__).parents[1]
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(str(f.relative_to(package)).encode() + b"\0" + f.read_bytes())
    return h.digest()


def run_fingerprint(params: Params, data_files: list[Path], model_dir: Path) -> str:
    """What shapes training: params, data, base model and code. Checkpoints of another fingerprint are
    discarded instead of resumed."""
    h = hashlib.sha256()
    h.update(code_digest())
    # how many processes run is not what is trained: a checkpoint resumes under another count (_check_resume)
    h.update(dumps(params.train.model_dump(exclude={"num_processes", "accelerate_config", "mmap_threshold_kb"})))
    h.update(dumps(params.model.model_dump()))
    for f in [*data_files, *sorted(model_dir.glob("*"))]:
        if f.is_file():
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _empty(kind: str) -> StageError:
    fix = "lower filter.min_reward" if kind == "sft" else "lower pair.min_diff or change pair.strategy"
    return StageError(f"train: the {kind} dataset is empty; nothing to train on ({fix})")


def load_rows(path: Path, kind: str, max_examples: int | None):
    import pyarrow.parquet as pq
    from datasets import load_dataset

    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise _empty(kind)  # datasets cannot even load an empty parquet file
    ds = load_dataset("parquet", data_files=str(path), split="train")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds


def _check_lengths(lengths: list[int], kind: str, max_length: int | None) -> dict:
    """Token lengths before training: fails when nothing fits, reports how many get truncated."""
    if not lengths:
        raise _empty(kind)
    over = sum(1 for n in lengths if max_length and n > max_length)
    if max_length and over == len(lengths):
        raise StageError(f"train: all {over} {kind} examples are longer than train.{kind}.max_length={max_length} "
                         f"(shortest {min(lengths)} tokens); raise max_length")
    if over:
        log(f"train: {over} of {len(lengths)} {kind} examples are longer than max_length={max_length} "
            f"and will be truncated")
    return {"examples": len(lengths), "tokens": sum(min(n, max_length or n) for n in lengths),
            "truncated": over, "max_tokens": max(lengths)}


@dataclass
class SftData:
    dataset: object  # datasets.Dataset of input_ids + assistant_masks
    lengths: dict
    assistant_only: bool


def sft_dataset(tokenizer, rows, fmt, assistant_only: bool, max_length: int | None) -> SftData:
    """Conversational rows -> tokenized training samples with the assistant-only mask (faithful.py).

    We tokenize instead of TRL so that the mask comes from the rendered text itself, for any template:
    TRL's own `assistant_only_loss` needs `{% generation %}` markers, which only templates it recognises
    by their exact text get. TRL builds labels from the `assistant_masks` column of a tokenized dataset.
    """
    from datasets import Dataset

    from ..faithful import TemplateMismatch, tokenize_sample, training_samples

    encoded, skipped = [], 0
    for row in rows:
        try:
            samples = training_samples(tokenizer, row["messages"], row["tools"], fmt)
        except TemplateMismatch as err:  # convert rejects these; a hand-edited dataset may still have them
            skipped += 1
            log(f"train: skipping row {row.get('source')}:{row.get('line')}: {err}")
            continue
        encoded.extend(tokenize_sample(tokenizer, sample, assistant_only) for sample in samples)
    if not encoded:
        raise _empty("sft")
    lengths = [len(e["input_ids"]) for e in encoded]
    report = _check_lengths(lengths, "sft", max_length)
    report.update({"rows": len(rows) - skipped, "rows_skipped": skipped,
                   "assistant_tokens": sum(sum(e["assistant_masks"][:max_length or None]) for e in encoded)})
    return SftData(Dataset.from_list(encoded), report, assistant_only)


def dpo_dataset(tokenizer, rows, fmt, max_length: int | None):
    """Preference rows -> tokenized pairs with assistant-only masks (faithful.preference_sample), and a
    report of what is scored: `assistant_tokens` of `completion_tokens` (the rest is tool and environment
    text inside the continuations, which is context)."""
    from datasets import Dataset

    from ..faithful import TemplateMismatch, preference_sample

    encoded, skipped, moved = [], 0, 0
    for row in rows:
        try:
            pair = preference_sample(tokenizer, row["prompt"], row["chosen"], row["rejected"], row.get("tools"), fmt)
        except TemplateMismatch:
            pair = None
        if pair is None:
            skipped += 1
            log(f"train: skipping pair {row.get('chosen_source')}:{row.get('chosen_line')}: the template renders a "
                f"side's assistant turn otherwise than as generated, or a side has no assistant token")
            continue
        moved += pair.turns_out_of_context
        encoded.append({"prompt_ids": pair.prompt_ids, "chosen_ids": pair.chosen_ids, "rejected_ids": pair.rejected_ids,
                        "chosen_mask": pair.chosen_mask, "rejected_mask": pair.rejected_mask})
    if not encoded:
        raise _empty("dpo")
    report = _check_lengths([len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))
                             for e in encoded], "dpo", max_length)
    report.update({"rows": len(encoded), "rows_skipped": skipped, "turns_out_of_context": moved,
                   "completion_tokens": sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in encoded),
                   "assistant_tokens": sum(sum(e["chosen_mask"]) + sum(e["rejected_mask"]) for e in encoded)})
    return Dataset.from_list(encoded), report


def _peft_config(params: Params):
    """`train.lora` -> peft.LoraConfig, every field passed through, like train.sft / train.dpo."""
    if params.train.lora is None:
        return None
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(params.train.lora) - known)
    if unknown:
        raise ParamsError(f"params.yaml: train.lora.{unknown[0]} is not a peft.LoraConfig field (unknown keys: {unknown})")
    try:
        return LoraConfig(**{**params.train.lora, "task_type": "CAUSAL_LM"})
    except (TypeError, ValueError) as err:
        raise ParamsError(f"params.yaml: train.lora: {err}") from None


def _live_callback(live_dir: Path, phase: str):
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=Live(dir=str(live_dir / phase), save_dvc_exp=False, dvcyaml=None))


def _progress_callback(kind: str):
    """Step, loss and ETA of training (progress.py): a bar at a terminal, a line every 10 s when piped. It
    replaces the Trainer's own output, which without tqdm is a raw dict per logging step."""
    from transformers import TrainerCallback

    from ..progress import Progress

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.bar, self.loss = None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = Progress(f"train {kind}", state.max_steps, "steps")
            self.bar.update(state.global_step)  # a resumed run starts where it stopped

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step, **({"loss": f"{self.loss:.4f}"} if self.loss is not None else {}))

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return ProgressCallback()


def _train_phase(kind: str, params: Params, model, tokenizer, fmt, data: Path, ckpt_dir: Path, live_dir: Path,
                 device: str) -> tuple[object, dict]:
    from trl import SFTTrainer

    user = params.train.sft if kind == "sft" else params.train.dpo
    config = build_config(kind, user, str(ckpt_dir / kind), params.train.seed, device)
    ds = load_rows(data, kind, params.train.max_examples)
    peft_config = _peft_config(params)
    extra = {}
    with exact_json_decoding():  # rows are read (and tokenized) here
        if kind == "sft":
            sft = sft_dataset(tokenizer, ds, fmt, bool(config.assistant_only_loss), config.max_length)
            # Our mask is in the data (`assistant_masks`); TRL's own flag would demand generation markers.
            config.assistant_only_loss = False
            ds, lengths = sft.dataset, {**sft.lengths, "assistant_only_loss": sft.assistant_only}
            trainer_cls = SFTTrainer
        else:
            from ..dpo import AssistantOnlyDPOTrainer, collator

            ds, lengths = dpo_dataset(tokenizer, ds, fmt, config.max_length)
            trainer_cls, extra = AssistantOnlyDPOTrainer, {"data_collator": collator(tokenizer, config)}
    from transformers.trainer_callback import PrinterCallback

    callbacks = [_progress_callback(kind)]
    if int(os.environ.get("RANK", "0")) == 0:  # one live log, written by the main process
        callbacks.append(_live_callback(live_dir, kind))
    trainer = trainer_cls(model=model, args=config, train_dataset=ds, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks, **extra)
    trainer.remove_callback(PrinterCallback)  # the raw log dicts; the progress callback shows step and loss
    last = _last_checkpoint(ckpt_dir / kind)
    if last:
        log(f"train: resuming {kind} from {last}")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - started
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    epochs = config.num_train_epochs
    m = {
        **lengths,
        "train_loss": round(float(result.training_loss), 6),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
        "steps": int(result.global_step),
        "tokens_per_second": round(lengths["tokens"] * epochs / seconds, 1) if not last else None,
        "resumed_from": str(last) if last else None,
    }
    return model, m


def _last_checkpoint(d: Path) -> Path | None:
    """The newest COMPLETE checkpoint. The Trainer writes trainer_state.json last, after the model,
    optimizer and RNG state: a run killed while saving leaves a checkpoint folder without it."""
    if not d.is_dir():
        return None
    done = [c for c in d.glob("checkpoint-*") if c.name.split("-")[-1].isdigit() and (c / "trainer_state.json").exists()]
    return max(done, key=lambda c: int(c.name.split("-")[-1]), default=None)


def model_card(params: Params, base_info: dict, fingerprint: str, metrics: dict) -> str:
    import yaml

    return (
        f"# gymtrl trained model\n\n"
        f"- base model: {base_info.get('source', params.model.name_or_path)}\n"
        f"- method: {params.train.method}\n"
        f"- training data + params fingerprint: {fingerprint}\n\n"
        f"## params\n\n```yaml\n{yaml.safe_dump(params.train.model_dump(), sort_keys=True)}```\n\n"
        f"## training metrics\n\n```yaml\n{yaml.safe_dump(metrics, sort_keys=True)}```\n"
    )


def world_size() -> int:
    """Processes of this training: set by `accelerate launch` / torchrun, 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(params: Params, params_file: Path) -> list[str]:
    """`accelerate launch` of this stage with `train.num_processes` processes: plain DDP (gloo on CPU, NCCL on
    GPUs), or what `train.accelerate_config` says (FSDP, DeepSpeed); train.num_processes wins over the file's."""
    t = params.train
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(t.num_processes),
           "--num_machines", "1"]
    if t.accelerate_config:
        cmd += ["--config_file", t.accelerate_config]
    else:  # accelerate's defaults without a config file would ask for one; these are its answers for DDP
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*cmd, "-m", "gymtrl.stages.train", "--params", str(params_file)]


def launch(params: Params) -> dict:
    """Runs this stage again under `accelerate launch`, from inside `dvc repro` / `dvc exp run`, so a
    multi-process run is versioned like any other. The processes read the params validated here (a copy:
    params.yaml may name another file's values under `dvc exp run -S`), and the main one writes the outs."""
    import subprocess
    import tempfile

    import yaml

    if params.train.accelerate_config and not Path(params.train.accelerate_config).is_file():
        raise ParamsError(f"params.yaml: train.accelerate_config: {params.train.accelerate_config} is not a file")
    with tempfile.TemporaryDirectory(prefix="gymtrl-train-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        cmd = launch_command(params, params_file)
        log(f"train: {params.train.num_processes} processes: {' '.join(cmd)}")
        done = subprocess.run(cmd)
    if done.returncode != 0:
        raise StageError(f"train: `accelerate launch` exited with {done.returncode} (its processes' errors are above)")
    return read_json(Path(params.paths.metrics) / METRICS)


def run(params: Params) -> dict:
    """The stage: trains in this process, or launches `train.num_processes` of them (launch)."""
    wants_launcher = params.train.num_processes > 1 or params.train.accelerate_config
    if wants_launcher and "WORLD_SIZE" not in os.environ:
        return launch(params)
    return train(params)


def _check_resume(ckpt_dir: Path, params: Params, processes: int) -> None:
    """A plain DDP checkpoint (full model and optimizer state) resumes under any process count; a sharded one
    (FSDP, DeepSpeed: an accelerate config) only under the count that wrote it."""
    stamp = ckpt_dir / "fingerprint.json"
    written_by = read_json(stamp).get("processes", 1) if stamp.exists() else processes
    if params.train.accelerate_config and written_by != processes and _last_any(ckpt_dir):
        raise StageError(f"train: the checkpoints in {ckpt_dir} were written by {written_by} processes under "
                         f"train.accelerate_config={params.train.accelerate_config}; sharded checkpoints resume "
                         f"only under the same count: set train.num_processes={written_by}, or delete {ckpt_dir} "
                         f"to start over")
    if written_by != processes and _last_any(ckpt_dir):
        log(f"train: resuming checkpoints of {written_by} processes with {processes}: the global batch changes "
            f"with the process count, so the rest of the run sees the data in another order")


def _last_any(ckpt_dir: Path) -> bool:
    return any(_last_checkpoint(d) for d in ckpt_dir.iterdir() if d.is_dir()) if ckpt_dir.is_dir() else False


def release_freed_memory(threshold_kb: int | None) -> bool:
    """glibc's mallopt(M_MMAP_THRESHOLD): blocks from `threshold_kb` KiB up are mmapped and unmapped when freed.
    glibc's default threshold grows to 32 MiB, and its heaps keep blocks freed below it resident, so freed
    activations add to the stage's peak RSS (a few hundred MB in benchmarks/RESULTS.md, "Train memory").
    False where there is no glibc (macOS, musl)."""
    import ctypes
    import ctypes.util

    if threshold_kb is None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, threshold_kb * 1024))


def train(params: Params) -> dict:
    import resource

    import torch

    from ..models import chat_format, load_model, load_tokenizer, pick_device, stop_token_ids

    method = params.train.method
    phases = {"sft": ["sft"], "dpo": ["dpo"], "sft+dpo": ["sft", "dpo"]}[method]
    paths = params.paths
    model_dir = paths.base_model
    data = {"sft": Path(paths.sft) / "train.parquet", "dpo": Path(paths.pairs) / "train.parquet"}
    device = pick_device()
    for kind in phases:  # validate every config before any work
        build_config(kind, params.train.sft if kind == "sft" else params.train.dpo, "unused", 0, device)

    ckpt_dir, live_dir = Path(paths.checkpoints), Path(paths.training_logs)
    # Under `accelerate launch` every process runs this function; only the main one writes files.
    main_process = int(os.environ.get("RANK", "0")) == 0
    fingerprint = run_fingerprint(params, [data[k] for k in phases], Path(model_dir))
    stamp = ckpt_dir / "fingerprint.json"
    stale = ckpt_dir.exists() and (not stamp.exists() or read_json(stamp).get("fingerprint") != fingerprint)
    if main_process and stale:
        shutil.rmtree(ckpt_dir)  # checkpoints of another configuration must not be resumed
    _check_resume(ckpt_dir, params, world_size())
    if main_process:
        write_json(stamp, {"fingerprint": fingerprint, "processes": world_size()})

    if not release_freed_memory(params.train.mmap_threshold_kb) and params.train.mmap_threshold_kb:
        log("train: train.mmap_threshold_kb has no effect here (no glibc mallopt)")
    torch.manual_seed(params.train.seed)
    tokenizer = load_tokenizer(model_dir, params.model.trust_remote_code)
    fmt = chat_format(model_dir, params.convert.arguments, params.convert.reasoning, params.model.trust_remote_code)
    model = load_model(model_dir, params.model.trust_remote_code, device="cpu")
    metrics: dict = {"method": method, "device": device, "processes": world_size(), "fingerprint": fingerprint,
                     **precision(device)}
    for kind in phases:
        log(f"train: {kind} on {data[kind]} ({device}, bf16={metrics['bf16']}, {world_size()} process(es))")
        model, m = _train_phase(kind, params, model, tokenizer, fmt, data[kind], ckpt_dir, live_dir, device)
        metrics[kind] = m
    # The main process's peak resident memory (Linux reports KiB): what a machine must have for this run.
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if not main_process:
        return metrics
    base_info = read_json(Path(model_dir) / "base_info.json") if (Path(model_dir) / "base_info.json").exists() else {}
    # Generation stops on every token that ends an assistant turn in this template (Llama 3: <|eot_id|>
    # beside its eos; gpt-oss: <|call|> beside <|return|>), so the trained model stops where it should.
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    with atomic_dir(paths.trained_model) as out:
        model.to("cpu").to(torch.float32).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "README.md").write_text(model_card(params, base_info, fingerprint, metrics))
    write_json(Path(paths.metrics) / METRICS, metrics)
    # Checkpoints exist to resume a killed run. Kept after a finished one, a rerun (DVC reruns train when
    # anything it depends on changed) would "resume" at the last step and train nothing.
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics


if __name__ == "__main__":
    sys.exit(main("train", run))
