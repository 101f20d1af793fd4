"""params.yaml is validated once; a bad value names the file, the key, the value and the expectation."""

from __future__ import annotations

import pytest

from conftest import ROOT, raw_params
from gymtrl.params import ParamsError, load_params, parse_params


@pytest.mark.parametrize(
    "raw, key, expected",
    [
        ({"filter": {"min_reward": "high"}}, "filter.min_reward = 'high'", "number"),
        ({"filter": {"min_turns": -1}}, "filter.min_turns = -1", "greater than or equal to 0"),
        ({"filter": {"min_turns": 5, "max_turns": 2}}, "filter", "min_turns (5) must be <= max_turns (2)"),
        ({"pair": {"min_diff": -0.1}}, "pair.min_diff = -0.1", "greater than or equal to 0"),
        ({"pair": {"strategy": "best"}}, "pair.strategy = 'best'", "top_vs_second"),
        ({"convert": {"reasoning": "maybe"}}, "convert.reasoning = 'maybe'", "keep"),
        ({"train": {"method": "ppo"}}, "train.method = 'ppo'", "sft"),
        ({"train": {"lora": "big"}}, "train.lora = 'big'", "valid dictionary"),
        ({"paths": {"sft": None}}, "paths.sft = None", "valid string"),
        ({"eval": {"engine": "tgi"}}, "eval.engine = 'tgi'", "'auto', 'hf' or 'vllm'"),
        ({"eval": {"limit": 0}}, "eval.limit = 0", "greater than or equal to 1"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size = 0", "greater than or equal to 1"),
        ({"data": {"workers": 0}}, "data.workers = 0", "a whole number >= 1 or 'auto'"),
        ({"data": {"workers": "many"}}, "data.workers = 'many'", "a whole number >= 1 or 'auto'"),
        ({"filtr": {"min_reward": 0.5}}, "filtr", "unknown key"),
        ({"filter": {"min_rewrd": 0.5}}, "filter.min_rewrd", "unknown key"),
    ],
)
def test_bad_values_name_key_value_and_expectation(raw, key, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(raw_params(**raw), "my/params.yaml")
    msg = str(err.value)
    assert msg.startswith("my/params.yaml") and key in msg and expected in msg


def test_the_repository_params_file_is_the_one_home_of_every_value():
    repo = load_params(ROOT / "params.yaml")
    assert repo.model.name_or_path == "embedded" and repo.train.method == "sft"
    assert (repo.filter.min_reward, repo.pair.min_diff, repo.eval.success_threshold) == (0.8, 0.1, 0.5)
    assert repo.paths.sft == "data/sft" and repo.train.sft["num_train_epochs"] == 1
    # The code holds no value of its own: without params.yaml nothing parses, and the error names the keys.
    with pytest.raises(ParamsError) as err:
        parse_params({}, "my/params.yaml")
    assert "paths: missing" in str(err.value) and "train: missing" in str(err.value)
    raw = raw_params()
    del raw["demo"]["train_tasks"]
    with pytest.raises(ParamsError, match="demo.train_tasks: missing"):
        parse_params(raw)


def test_unknown_trl_and_peft_keys_fail_before_training():
    from gymtrl.params import parse_params
    from gymtrl.stages.train import _peft_config, build_config

    with pytest.raises(ParamsError, match=r"train\.sft\.max_seq_length is not a SFTConfig field"):
        build_config("sft", {"max_seq_length": 128}, "out", 0, "cpu")
    cfg = build_config("dpo", {"beta": 0.3}, "out", 0, "cpu")
    assert cfg.beta == 0.3 and cfg.precompute_ref_log_probs and cfg.report_to == []
    with pytest.raises(ParamsError, match=r"train\.lora\.rank is not a peft.LoraConfig field"):
        _peft_config(parse_params(raw_params(train={"lora": {"rank": 8}})))
    lora = _peft_config(parse_params(raw_params(train={"lora": {"r": 4, "lora_alpha": 8}})))
    assert (lora.r, lora.lora_alpha, lora.task_type) == (4, 8, "CAUSAL_LM")


def test_train_config_is_params_yaml_plus_wiring_only():
    """What runs is what params.yaml says, plus the fixed wiring (output folder, seed, precision)."""
    from gymtrl.stages.train import build_config

    sft = load_params(ROOT / "params.yaml").train.sft
    cfg = build_config("sft", sft, "out", 42, "cpu")
    for key, value in sft.items():
        got = getattr(cfg, key)
        assert (got.value if hasattr(got, "value") else got) == value, key
    assert cfg.output_dir == "out" and cfg.seed == 42


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("filter: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_bf16_is_chosen_from_cpu_features_not_from_a_timing():
    from gymtrl.stages.train import native_bf16

    amd = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert native_bf16(amd) and native_bf16(arm) and not native_bf16(avx2_only) and not native_bf16("")
    assert not native_bf16("model name\t: some bf16 marketing name\n")  # only the feature lists count
