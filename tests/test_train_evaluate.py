"""train and evaluate end to end on a tiny model built from scratch (seconds); real Gym is in test_gym.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import raw_params
from gymtrl.io import read_json, read_jsonl
from gymtrl.params import deep_merge, parse_params
from gymtrl.stages import convert, demo, evaluate, filter as filter_stage, pair, train
from gymtrl.stages.common import StageError

TINY_TRAIN = {"max_length": 512, "num_train_epochs": 1, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 2}


def tiny_raw(tiny_model_dir, **over) -> dict:
    """The repository's params on a small demo, with the tiny model as the base model."""
    return deep_merge(raw_params(
        demo={"train_tasks": 8, "eval_tasks": 6, "collect_tasks": 8, "num_repeats": 4, "seed": 3},
        train={"max_examples": 8, "sft": TINY_TRAIN, "dpo": TINY_TRAIN},
        eval={"max_new_tokens": 12, "max_turns": 2, "batch_size": 4},
        paths={"base_model": str(tiny_model_dir)}), over)


def tiny_params(tiny_model_dir, **over):
    return parse_params(tiny_raw(tiny_model_dir, **over))


@pytest.fixture
def data_ready(workdir, tiny_model_dir):
    p = tiny_params(tiny_model_dir, pair={"strategy": "all_pairs"})
    for stage in (demo, filter_stage, convert, pair):
        stage.run(p)
    return workdir


@pytest.mark.filterwarnings("error::FutureWarning")  # deprecation noise is silenced at its source
@pytest.mark.parametrize("method", ["sft", "dpo", "sft+dpo"])
def test_train_then_evaluate(data_ready, tiny_model_dir, method, capsys):
    p = tiny_params(tiny_model_dir, train={"method": method})
    m = train.run(p)
    err = capsys.readouterr().err
    for kind in method.split("+"):  # progress, as a piped log shows it, instead of the Trainer's raw dicts
        assert f"train {kind}: 2/2 steps (100%)" in err and "loss " in err
    assert "{'loss'" not in err
    assert m["processes"] == 1 and m["peak_rss_mb"] > 100
    for kind in method.split("+"):
        assert m[kind]["examples"] == 8 and m[kind]["steps"] == 2 and m[kind]["train_loss"] > 0
        assert Path(f"dvclive/train/{kind}/plots/metrics/loss.tsv").exists()
    out = Path("models/trained")
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    card = (out / "README.md").read_text()
    assert f"method: {method}" in card and m["fingerprint"] in card
    result = evaluate.run(p)
    assert "trained: 6/6 episodes (100%)" in capsys.readouterr().err  # tasks done / total, tokens/s
    base, trained = read_json("metrics/baseline.json"), read_json("metrics/eval.json")
    assert base["n"] == trained["n"] == 6 == result["trained"]["n"]
    lo, hi = trained["success_rate_ci95_low"], trained["success_rate_ci95_high"]
    assert 0 <= lo <= trained["success_rate"] <= hi <= 1
    assert trained["delta_avg_reward"] == round(trained["avg_reward"] - base["avg_reward"], 6)
    assert trained["reference"]["n"] == 32  # the training rollouts' own metrics, for comparison
    rollouts = list(read_jsonl("data/eval/trained_rollouts.jsonl"))
    assert len(rollouts) == 6 and all(r["stop_reason"] for r in rollouts)
    # Random weights babble: every episode is bounded by max_new_tokens / max_turns and scored.
    assert all(r["new_tokens"] <= 12 * 2 for r in rollouts)
    assert {row["model"] for row in read_json("plots/eval_by_family.json")} == {"baseline", "trained"}


def test_a_finished_run_leaves_no_checkpoint_and_a_rerun_trains_again(data_ready, tiny_model_dir):
    """Checkpoints are for resuming a killed run (test_kill_9_... below). A finished run's last one, if it
    were kept, would make the next run "resume" at the end and train nothing."""
    p = tiny_params(tiny_model_dir, train={"sft": {"save_steps": 1}})
    first = train.run(p)
    assert first["sft"]["resumed_from"] is None and not Path("checkpoints/train").exists()
    second = train.run(p)
    assert second["sft"]["resumed_from"] is None and second["sft"]["train_loss"] == first["sft"]["train_loss"] > 0


def test_fingerprint_changes_with_params_data_and_code(data_ready, tiny_model_dir, monkeypatch):
    from gymtrl.stages import train as stage

    p = tiny_params(tiny_model_dir)
    data = [Path("data/sft/train.parquet")]
    base = stage.run_fingerprint(p, data, tiny_model_dir)
    assert stage.run_fingerprint(tiny_params(tiny_model_dir, train={"seed": 7}), data, tiny_model_dir) != base
    assert stage.run_fingerprint(p, [Path("data/pairs/train.parquet")], tiny_model_dir) != base
    monkeypatch.setattr(stage, "code_digest", lambda: b"other code")
    assert stage.run_fingerprint(p, data, tiny_model_dir) != base


def test_train_refuses_empty_or_too_long_data(data_ready, tiny_model_dir):
    p = tiny_params(tiny_model_dir, train={"sft": {"max_length": 16}})
    with pytest.raises(StageError, match=r"all 8 sft examples are longer than train.sft.max_length=16"):
        train.run(p)
    pair.run(tiny_params(tiny_model_dir, pair={"min_diff": 5.0}, paths={"pairs": "empty_pairs"}))
    with pytest.raises(StageError, match="dpo dataset is empty"):
        train.run(tiny_params(tiny_model_dir, train={"method": "dpo"}, paths={"pairs": "empty_pairs"}))


def test_own_rollouts_are_not_evaluated_on_the_demo_tasks(tiny_model_dir):
    p = tiny_params(tiny_model_dir, data={"rollouts": "my_gym_output/"})
    with pytest.raises(StageError, match=r"data.rollouts='my_gym_output/' are your own rollouts, but "
                                         r"eval.tasks='data/demo/tasks_eval.jsonl' are the embedded calculator"):
        evaluate.run(p)


def test_train_starts_under_accelerate_launch(data_ready, tiny_model_dir):
    import shutil
    import subprocess

    import yaml

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    raw = tiny_raw(tiny_model_dir, train={"max_examples": 4, "sft": {"save_steps": 10}},
                   paths={"trained_model": "models/accel", "checkpoints": "ckpt_accel", "training_logs": "live_accel",
                          "metrics": "metrics_accel"})
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "gymtrl.stages.train"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json("metrics_accel/train.json")["sft"]["examples"] == 4
    assert (Path("models/accel") / "model.safetensors").exists()


def test_two_processes_train_like_one_with_the_same_global_batch(data_ready, tiny_model_dir, capfd):
    """train.num_processes=2: the stage relaunches itself under `accelerate launch` (DDP over gloo on CPU).
    Two processes of batch 2 see what one process of batch 4 sees, so with the same seed the loss curves
    match (token-weighted loss averaged across processes), and the main process writes the model."""
    common = {"max_examples": 16, "sft": {"learning_rate": 3e-3, "logging_steps": 1, "save_steps": 2}}
    one = tiny_params(tiny_model_dir, train=deep_merge(common, {"sft": {"per_device_train_batch_size": 4}}),
                      paths={"training_logs": "live_one", "metrics": "metrics_one", "trained_model": "models/one"})
    two = tiny_params(tiny_model_dir, train=deep_merge(common, {"num_processes": 2,
                                                                "sft": {"per_device_train_batch_size": 2}}),
                      paths={"training_logs": "live_two", "metrics": "metrics_two", "trained_model": "models/two"})
    m1, m2 = train.run(one), train.run(two)
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert m1["sft"]["steps"] == m2["sft"]["steps"] == 4 and m2["sft"]["examples"] == 16
    assert (Path("models/two") / "model.safetensors").exists() and read_json("metrics_two/train.json") == m2

    def curve(live: str) -> list[float]:
        rows = Path(f"{live}/sft/plots/metrics/loss.tsv").read_text().splitlines()[1:]
        return [float(r.split("\t")[-1]) for r in rows]

    assert len(curve("live_one")) == 4
    assert curve("live_two") == pytest.approx(curve("live_one"), rel=1e-3)
    # DDP does not search for unused parameters (an extra graph traversal per step, and a warning per rank)
    assert "find_unused_parameters=True" not in capfd.readouterr().err


def test_sharded_checkpoints_resume_only_under_the_process_count_that_wrote_them(tmp_path, tiny_model_dir):
    from gymtrl.io import write_json

    ckpt = tmp_path / "ckpt"
    (ckpt / "sft" / "checkpoint-2").mkdir(parents=True)
    (ckpt / "sft" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    write_json(ckpt / "fingerprint.json", {"fingerprint": "x", "processes": 4})
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    sharded = tiny_params(tiny_model_dir, train={"num_processes": 2, "accelerate_config": str(config)})
    with pytest.raises(StageError, match=r"written by 4 processes .* set train.num_processes=4, or delete"):
        train._check_resume(ckpt, sharded, 2)
    train._check_resume(ckpt, sharded, 4)  # the same count resumes
    train._check_resume(ckpt, tiny_params(tiny_model_dir, train={"num_processes": 2}), 2)  # DDP: any count


def test_kill_9_during_training_resumes_from_the_last_checkpoint(data_ready, tiny_model_dir):
    import os
    import signal
    import subprocess
    import time

    import yaml

    raw = tiny_raw(tiny_model_dir, train={"sft": {"num_train_epochs": 10, "save_steps": 1, "save_total_limit": 2}})
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "gymtrl.stages.train"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(Path("checkpoints/train/sft").glob("checkpoint-3")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(Path("checkpoints/train/sft").glob("checkpoint-*")), "no checkpoint before the kill"
    assert not Path("models/trained").exists()  # no half-written model
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    m = read_json("metrics/train.json")["sft"]
    # Killed once checkpoint-3 was being written: it may be incomplete, checkpoint-2 is not.
    assert m["resumed_from"] and int(m["resumed_from"].rsplit("-", 1)[1]) >= 2
    assert m["steps"] == 20  # the whole schedule, finished after the resume
    assert (Path("models/trained") / "model.safetensors").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("threshold_kb, most_mb", [(None, None), (1024, 40)])
def test_train_mmap_threshold_gives_freed_blocks_back_to_the_os(threshold_kb, most_mb):
    """2 MiB blocks, like a step's activations, freed between small live objects: glibc's heaps keep them
    (its threshold has grown past 2 MiB); with train.mmap_threshold_kb they go back to the OS."""
    import subprocess

    probe = f"""
from gymtrl.stages.train import release_freed_memory
def rss_mb():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(release_freed_memory({threshold_kb}))
warm = bytearray(4 << 20); del warm
before, blocks, pins = rss_mb(), [], []
for i in range(150):
    block = bytearray(2 << 20)
    block[::4096] = b"x" * 512  # touch every page; no 2 MiB temporary beside the block
    blocks.append(block); pins.append(bytearray(64 << 10))
del blocks
print(round(rss_mb() - before))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    applied, kept_mb = done.stdout.split()
    assert applied == str(threshold_kb is not None)
    if most_mb is None:
        assert int(kept_mb) > 200  # the waste the setting removes: 300 MB freed and still resident
    else:
        assert int(kept_mb) < most_mb
