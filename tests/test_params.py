"""params.yaml is validated once; a bad value names the file, the key, the value and the expectation."""

from __future__ import annotations

import pytest

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
        ({"train": {"lora": {"r": 0}}}, "train.lora.r = 0", "greater than or equal to 1"),
        ({"eval": {"backend": "gym"}}, "eval", "needs eval.gym_command"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size = 0", "greater than or equal to 1"),
        ({"data": {"workers": 0}}, "data.workers = 0", "a whole number >= 1 or 'auto'"),
        ({"data": {"workers": "many"}}, "data.workers = 'many'", "a whole number >= 1 or 'auto'"),
        ({"filtr": {"min_reward": 0.5}}, "filtr", "unknown key"),
        ({"filter": {"min_rewrd": 0.5}}, "filter.min_rewrd", "unknown key"),
    ],
)
def test_bad_values_name_key_value_and_expectation(raw, key, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "my/params.yaml")
    msg = str(err.value)
    assert msg.startswith("my/params.yaml") and key in msg and expected in msg


def test_defaults_and_the_repository_params_file_are_valid():
    p = parse_params({})
    assert (p.filter.min_reward, p.pair.min_diff, p.pair.strategy, p.eval.success_threshold) == (0.8, 0.1, "top_vs_second", 0.5)
    repo = load_params("params.yaml")
    assert repo.model.name_or_path == "embedded" and repo.train.method == "sft"


def test_unknown_trl_keys_fail_before_training():
    from gymtrl.stages.train import build_config

    with pytest.raises(ParamsError, match=r"train\.sft\.max_seq_length is not a SFTConfig field"):
        build_config("sft", {"max_seq_length": 128}, "out", 0, "cpu")
    cfg = build_config("dpo", {"beta": 0.3}, "out", 0, "cpu")
    assert cfg.beta == 0.3 and cfg.precompute_ref_log_probs and cfg.report_to == []


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("filter: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
