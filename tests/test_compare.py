"""Paired statistics on constructed data with known answers, the flip finder, and DVC's JSON."""

from __future__ import annotations

import orjson
import pytest

from gymtrl.tools.compare import build_report, compare_pair, parse_exp_show, render_markdown, rewards_by_task
from gymtrl.stats import mcnemar_exact, paired_bootstrap


def rollouts_text(rewards: list[float]) -> str:
    lines = []
    for i, r in enumerate(rewards):
        lines.append(orjson.dumps({
            "responses_create_params": {"input": f"task {i}"}, "reward": r, "_ng_task_index": i,
            "agent_ref": {"name": "calc"},
            "response": {"output": [{"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": f"Answer: {r}"}]}]},
        }).decode())
    return "\n".join(lines) + "\n"


def tasks(rewards):
    return rewards_by_task(rollouts_text(rewards), "x")


def test_identical_runs_show_no_detectable_difference():
    rewards = [1.0, 0.2, 0.0, 1.0] * 50
    r = compare_pair(tasks(rewards), tasks(rewards), 0.5)
    assert r["verdict"] == "no detectable difference" and r["delta_avg_reward"] == 0
    assert r["delta_avg_reward_ci95"] == [0, 0] and r["mcnemar_p"] == 1.0


def test_thirty_of_two_hundred_flipped_to_success_is_better_with_the_right_interval():
    base = [0.0] * 200
    run = [1.0] * 30 + [0.0] * 170
    r = compare_pair(tasks(base), tasks(run), 0.5)
    assert r["verdict"] == "better" and r["n"] == 200
    assert r["delta_success_rate"] == 0.15 and r["fail_to_success"] == 30 and r["success_to_fail"] == 0
    lo, hi = r["delta_success_rate_ci95"]
    # Binomial standard error sqrt(.15 * .85 / 200) = 0.0252: the interval is about 0.15 +- 0.05.
    assert 0.09 <= lo <= 0.11 and 0.19 <= hi <= 0.21
    assert r["mcnemar_p"] == pytest.approx(2 * 0.5**30)
    assert r["flips"]["fail_to_success"] == sorted(f"calc#{i}" for i in range(30))


def test_flips_both_ways_cancel_and_worse_is_worse():
    base = [1.0] * 30 + [0.0] * 30 + [1.0] * 140
    run = [0.0] * 30 + [1.0] * 30 + [1.0] * 140
    r = compare_pair(tasks(base), tasks(run), 0.5)
    assert (r["fail_to_success"], r["success_to_fail"], r["verdict"]) == (30, 30, "no detectable difference")
    assert r["mcnemar_p"] == 1.0
    worse = compare_pair(tasks([1.0] * 100), tasks([0.0] * 40 + [1.0] * 60), 0.5)
    assert worse["verdict"] == "worse" and worse["delta_avg_reward_ci95"][1] < 0


def test_only_common_tasks_are_paired_and_samples_are_averaged():
    text = rollouts_text([1.0, 0.0]) + rollouts_text([0.0])  # task 0 played twice: 1.0 and 0.0
    t = rewards_by_task(text, "x")
    assert t["calc#0"]["reward"] == 0.5 and len(t) == 2
    r = compare_pair(t, tasks([1.0] * 5), 0.5)
    assert r["n"] == 2


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0


def test_bootstrap_is_deterministic():
    a, b = [0.0, 1.0, 0.2] * 20, [1.0, 1.0, 0.0] * 20
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)


EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {"params": {"params.yaml": {"data": {"train": {"method": "sft"}}}}},
     "error": None, "experiments": None},
    {"rev": "a" * 40, "name": "main", "data": {"params": {"params.yaml": {"data": {"train": {"method": "sft"}}}}},
     "error": None, "experiments": [
         {"revs": [{"rev": "b" * 40, "name": "dpo", "error": None,
                    "data": {"params": {"params.yaml": {"data": {"train": {"method": "dpo"}}}},
                             "metrics": {"metrics/eval.json": {"data": {"success_rate": 0.9}}}}}],
          "executor": None, "name": "dpo"},
         {"revs": [{"rev": "c" * 40, "name": "broken", "error": {"msg": "failed to reproduce 'train'", "type": ""},
                    "data": {"metrics": {"metrics/eval.json": {"data": {"success_rate": 0.87}}}}}],
          "executor": {"state": "failed", "name": None, "local": None}, "name": "broken"},
         {"revs": [{"rev": "d" * 40, "name": "waiting", "error": None, "data": {}}],
          "executor": {"state": "queued", "name": "dvc-task", "local": None}, "name": "waiting"},
     ]},
]


def test_failed_and_queued_experiments_are_shown_as_such_never_with_numbers():
    runs = parse_exp_show(EXP_SHOW)
    assert [(r.label, r.kind, r.status) for r in runs] == [
        ("workspace", "workspace", "success"), ("main", "commit", "success"), ("dpo", "experiment", "success"),
        ("broken", "experiment", "failed"), ("waiting", "experiment", "queued")]
    texts = {("data/eval/baseline_rollouts.jsonl", "workspace"): rollouts_text([0.0] * 20),
             ("data/eval/trained_rollouts.jsonl", "workspace"): rollouts_text([1.0] * 10 + [0.0] * 10),
             ("data/eval/trained_rollouts.jsonl", "b" * 40): rollouts_text([1.0] * 20)}
    report = build_report([r for r in runs if r.kind != "commit"], lambda p, rev: texts[(p, rev)], "data/eval", None,
                          0.5, examples=1)
    rows = {r["run"]: r for r in report["runs"]}
    assert rows["dpo"]["changed_params"] == {"train.method": "dpo"} and rows["dpo"]["verdict"] == "better"
    assert "run_success_rate" not in rows["broken"] and rows["broken"]["error"].startswith("failed to reproduce")
    assert rows["waiting"]["status"] == "queued" and "verdict" not in rows["waiting"]
    assert rows["workspace"]["examples"]["fail_to_success"][0]["run_reward"] == 1.0
    md = render_markdown(report)
    assert "| dpo | train.method=dpo | 20 |" in md and "| broken |" in md and "failed" in md
    assert "**better**" in md and "**workspace**, fail → success: task `calc#0` (baseline reward 0.0, run reward 1.0)" in md
    assert "- run: assistant: Answer: 1.0" in md and "success → fail" not in md  # no task got worse


EXTERNAL = ("src=\"http", "src='http", "href=\"http", "href='http", "url(http", "@import", "<script src", "<link ")


def test_html_report_is_self_contained():
    from gymtrl.tools.report import build_html, render_svg

    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "data": {"values": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]}, "mark": "line",
            "encoding": {"x": {"field": "step", "type": "quantitative"}, "y": {"field": "loss", "type": "quantitative"}}}
    svg = render_svg(spec)
    assert svg.startswith("<svg") and "<path" in svg
    report = {"baseline": {"label": "base model", "n": 2, "avg_reward": 0.0, "success_rate": 0.0},
              "success_threshold": 0.5, "runs": [{"run": "dpo", "status": "success", "changed_params": {"a": 1},
                                                  "verdict": "better", "n": 2}]}
    page = build_html(report, "| md |", {"training loss": [svg]}, [{"name": "x", "rev": "r", "msg": "missing"}])
    assert "<h2>training loss</h2>" in page and "better" in page and "missing" in page
    assert not any(marker in page for marker in EXTERNAL)
