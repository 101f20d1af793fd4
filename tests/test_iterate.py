"""Held-out tasks split from the user's own rollouts, the collect stage, and rounds' training inputs."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from conftest import make_params, raw_params
from gymtrl.catalog import is_held_out
from gymtrl.io import read_json, read_jsonl
from gymtrl.params import ParamsError, parse_params, round_file
from gymtrl.stages import collect, demo, filter as filter_stage, pair
from gymtrl.tools.next_round import freeze

HOLDOUT = {"eval": {"holdout_fraction": 0.25, "tasks": "data/holdout/tasks.jsonl"}}


def test_held_out_tasks_are_never_trained_on_and_become_the_eval_tasks(workdir, tiny_model_dir):
    p = make_params(**HOLDOUT, pair={"strategy": "all_pairs"}, paths={"base_model": str(tiny_model_dir)})
    demo.run(p)
    records = list(read_jsonl("data/demo/rollouts.jsonl"))
    keys = {f"gymtrl_calculator_agent#{r['_ng_task_index']}" for r in records}
    held = {k for k in keys if is_held_out(k, 0.25)}
    assert 0.15 < len(held) / len(keys) < 0.35  # a hash split: about the fraction, never all or none

    m = filter_stage.run(p)
    held_rollouts = sum(f"gymtrl_calculator_agent#{r['_ng_task_index']}" in held for r in records)
    assert m["dropped_by_reason"]["held_out"] == held_rollouts and m["held_out_tasks"] == len(held)
    trained_on = {e["task_key"] for e in read_jsonl("data/filtered/index.jsonl")}
    assert trained_on and not trained_on & held
    tasks = list(read_jsonl("data/holdout/tasks.jsonl"))
    assert sorted(f"gymtrl_calculator_agent#{t['_ng_task_index']}" for t in tasks) == sorted(held)
    by_index = {r["_ng_task_index"]: r for r in records}
    for t in tasks:  # a Gym input line: what was played, without what playing it added
        assert "response" not in t and "reward" not in t and "_ng_rollout_index" not in t
        src = by_index[t["_ng_task_index"]]
        assert t["responses_create_params"] == src["responses_create_params"]
        assert t["expected_answer"] == src["expected_answer"]

    pm = pair.run(p)
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files="data/pairs/train.parquet", split="train")
    assert pm["pairs"] == len(rows) > 0 and not set(rows["task_key"]) & held

    # The same split on every run: the held-out file is byte-identical.
    first = Path("data/holdout/tasks.jsonl").read_bytes()
    filter_stage.run(p)
    assert Path("data/holdout/tasks.jsonl").read_bytes() == first


def test_holdout_settings_that_disagree_are_errors_naming_the_keys():
    with pytest.raises(ParamsError, match="eval.tasks: data/holdout/tasks.jsonl"):
        parse_params(raw_params(eval={"holdout_fraction": 0.1}))
    with pytest.raises(ParamsError, match="eval.holdout_fraction is 0"):
        parse_params(raw_params(eval={"tasks": "data/holdout/tasks.jsonl"}))
    with pytest.raises(ParamsError, match="holdout_fraction"):
        parse_params(raw_params(eval={"holdout_fraction": 1.0, "tasks": "data/holdout/tasks.jsonl"}))


def test_collect_samples_k_per_task_and_counts_pass_at_k(workdir, tiny_model_dir):
    p = make_params(collect={"num_repeats": 3, "limit": 4, "temperature": 1.0},
                    eval={"max_new_tokens": 16, "max_turns": 2},
                    paths={"trained_model": str(tiny_model_dir)}, iterate={"round": 1})
    demo.run(p)
    m = collect.run(p)
    records = list(read_jsonl("data/collected/rollouts.jsonl"))
    assert len(records) == 12 and m["n"] == 12
    first4 = [t["_ng_task_index"] for t in read_jsonl("data/demo/tasks_collect.jsonl")][:4]
    assert Counter(r["_ng_task_index"] for r in records) == {i: 3 for i in first4}
    assert {r["_ng_rollout_index"] for r in records} == {0, 1, 2}
    assert {r["response"]["model"] for r in records} == {"round-1"}
    # sampled, not greedy: a random 2-layer model at temperature 1 does not say the same thing 3 times
    texts = Counter(orjson.dumps(r["response"]["output"]) for r in records if r["_ng_task_index"] == first4[0])
    assert len(texts) > 1
    saved = read_json("metrics/collect.json")
    assert saved["tasks"] == 4 and saved["round"] == 1 and saved["pass_at_k"] == saved["tasks_solved"] / 4
    first = Path("data/collected/rollouts.jsonl").read_bytes()
    collect.run(p)  # seeded: the same samples again
    assert Path("data/collected/rollouts.jsonl").read_bytes() == first


def test_a_round_trains_on_the_earlier_rounds_collections(workdir, tiny_model_dir):
    p1 = make_params(paths={"base_model": str(tiny_model_dir)})
    demo.run(p1)
    # Round 1's "collection": the demo's rollouts under other task indexes (a different model's samples).
    Path("c").mkdir()
    with open("c/rollouts.jsonl", "wb") as f:
        for r in read_jsonl("data/demo/rollouts.jsonl"):
            f.write(orjson.dumps({**r, "_ng_task_index": r["_ng_task_index"] + 1000}) + b"\n")
    freeze(Path("c/rollouts.jsonl"), round_file("data/rounds", 1))
    once = round_file("data/rounds", 1).read_bytes()
    freeze(Path("c/rollouts.jsonl"), round_file("data/rounds", 1))
    assert round_file("data/rounds", 1).read_bytes() == once  # same collection, same bytes (DVC hash)
    assert gzip.decompress(once) == Path("c/rollouts.jsonl").read_bytes()

    m1 = filter_stage.run(p1)
    m2 = filter_stage.run(make_params(paths={"base_model": str(tiny_model_dir)}, iterate={"round": 2}))
    assert m2["lines_read"] == 2 * m1["lines_read"] and m2["kept"] == 2 * m1["kept"]
    assert m2["files_read"] == 2
    last = make_params(iterate={"round": 3, "pool": "last"})
    assert [str(f) for f in last.round_files] == ["data/rounds/round-2.jsonl.gz"]
    with pytest.raises(FileNotFoundError, match=r"iterate.round=3 trains on data/rounds/round-2.jsonl.gz"):
        filter_stage.run(last)
    shutil.rmtree("data/rounds")
