"""`gymtrl compare`: which runs really made the model better, by how much, and on what.

Reads experiments through DVC (`dvc exp show --json` for the list and their state, `dvc.api.open` for
each run's held-out rollouts), pairs rewards by task key, and reports paired statistics. It reads the
Gym-format eval rollouts, not model internals, so runs evaluated by NeMo Gym compare the same way.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..params import Params
from ..rollouts import Line, Rejected, parse_line
from ..stages.evaluate import ROLLOUTS
from ..stats import mcnemar_exact, paired_bootstrap, reward_metrics


@dataclass
class Run:
    label: str
    rev: str  # "workspace" or a git / experiment commit
    status: str  # success | queued | running | failed
    error: str | None = None
    params: dict = field(default_factory=dict)
    kind: str = "experiment"  # workspace | commit | experiment


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _params_of(data: dict | None) -> dict:
    files = (data or {}).get("params") or {}
    return _flatten(((files.get("params.yaml") or {}).get("data")) or {})


def parse_exp_show(doc: list) -> list[Run]:
    """DVC's `exp show --json` -> runs. Failed and queued experiments keep their state, never numbers."""
    runs = []
    for entry in doc:
        rev = entry.get("rev", "")
        label = "workspace" if rev == "workspace" else (entry.get("name") or rev[:7])
        kind = "workspace" if rev == "workspace" else "commit"
        if entry.get("error"):
            runs.append(Run(label, rev, "failed", str(entry["error"].get("msg", entry["error"])), kind=kind))
        else:
            runs.append(Run(label, rev, "success", params=_params_of(entry.get("data")), kind=kind))
        for exp_range in entry.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            state = str(executor.get("state") or "success").lower()
            for exp in exp_range.get("revs") or []:
                name = exp.get("name") or exp_range.get("name") or exp.get("rev", "")[:7]
                error = exp.get("error")
                status = "failed" if error or state == "failed" else state
                runs.append(Run(name, exp.get("rev", ""), status,
                                str(error.get("msg", error)) if isinstance(error, dict) else error,
                                params=_params_of(exp.get("data"))))
    return runs


def list_runs(repo: str | Path = ".", all_commits: bool = False) -> list[Run]:
    cmd = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True)
    return parse_exp_show(json.loads(out.stdout))


def read_text(path: str, rev: str, repo: str | Path = ".") -> str:
    if rev == "workspace":
        return (Path(repo) / path).read_text()
    import dvc.api

    with dvc.api.open(path, repo=str(repo), rev=rev) as f:
        return f.read()


def rewards_by_task(text: str, source: str) -> dict[str, dict]:
    """Mean reward per task key (several samples of a task are averaged) and the first conversation."""
    tasks: dict[str, dict] = defaultdict(lambda: {"rewards": [], "messages": None})
    for n, raw in enumerate(text.encode().splitlines(), 1):
        item = parse_line(Line(source, n, 0, raw))
        if isinstance(item, Rejected):
            continue
        t = tasks[item.task_key]
        t["rewards"].append(item.reward)
        if t["messages"] is None:
            t["messages"] = item.conversation.messages
    return {k: {"reward": sum(v["rewards"]) / len(v["rewards"]), "messages": v["messages"]} for k, v in tasks.items()}


def compare_pair(base: dict[str, dict], run: dict[str, dict], threshold: float, seed: int = 0) -> dict:
    """Paired comparison on the tasks both runs played."""
    keys = sorted(set(base) & set(run))
    if not keys:
        return {"n": 0, "verdict": "no common tasks"}
    a = [base[k]["reward"] for k in keys]
    b = [run[k]["reward"] for k in keys]
    reward = paired_bootstrap(a, b, seed=seed)
    sa = [float(x >= threshold) for x in a]
    sb = [float(x >= threshold) for x in b]
    success = paired_bootstrap(sa, sb, seed=seed + 1)
    up = [k for k, x, y in zip(keys, sa, sb) if y > x]
    down = [k for k, x, y in zip(keys, sa, sb) if y < x]
    r6 = lambda x: round(x, 6)  # noqa: E731
    return {
        "n": len(keys),
        **{f"run_{k}": v for k, v in reward_metrics(b, threshold).items() if k != "n"},
        "delta_avg_reward": r6(reward.delta), "delta_avg_reward_ci95": [r6(x) for x in reward.ci95],
        "delta_success_rate": r6(success.delta), "delta_success_rate_ci95": [r6(x) for x in success.ci95],
        "fail_to_success": len(up), "success_to_fail": len(down),
        "mcnemar_p": float(f"{mcnemar_exact(len(up), len(down)):.6g}"),
        "verdict": reward.verdict,  # from the paired interval of the primary metric, avg_reward
        "flips": {"fail_to_success": up, "success_to_fail": down},
    }


def changed_params(params: dict, reference: dict) -> dict:
    return {k: v for k, v in sorted(params.items()) if reference.get(k) != v}


def build_report(runs: list[Run], reader, eval_dir: str, baseline_rev: str | None, threshold: float,
                 examples: int = 0, known: list[Run] | None = None) -> dict:
    """`reader(path, rev)` returns a file's text at a revision; pure apart from that. `eval_dir` is
    where the evaluate stage writes the held-out rollouts (`paths.eval`).

    `known` are all runs DVC listed (the baseline's params are looked up there)."""
    known = known or runs
    trained, baseline = (f"{eval_dir}/{ROLLOUTS[k]}" for k in ("trained", "baseline"))
    if baseline_rev:
        base = next((r for r in known if baseline_rev in (r.rev, r.label)), None)
        base_label, base_text = baseline_rev, reader(trained, base.rev if base else baseline_rev)
        reference = base.params if base else {}
    else:
        base_label, base_text = "base model", reader(baseline, "workspace")
        reference = next((r.params for r in known if r.rev == "workspace"), {})
    base = rewards_by_task(base_text, base_label)
    base_metrics = reward_metrics([v["reward"] for v in base.values()], threshold)
    rows = []
    for run in runs:
        row = {"run": run.label, "rev": run.rev, "status": run.status,
               "changed_params": changed_params(run.params, reference)}
        if run.status != "success":
            row["error"] = run.error
            rows.append(row)
            continue
        try:
            played = rewards_by_task(reader(trained, run.rev), run.label)
        except Exception as err:  # a run without eval output (e.g. not reproduced yet) is shown as such
            row.update(status="no eval output", error=f"{type(err).__name__}: {err}"[:200])
            rows.append(row)
            continue
        row.update(compare_pair(base, played, threshold))
        if examples:
            row["examples"] = {
                direction: [{"task_key": k, "baseline_reward": base[k]["reward"], "run_reward": played[k]["reward"],
                             "baseline_messages": base[k]["messages"], "run_messages": played[k]["messages"]}
                            for k in row["flips"][direction][:examples]]
                for direction in ("fail_to_success", "success_to_fail")}
        rows.append(row)
    return {"baseline": {"label": base_label, **base_metrics}, "success_threshold": threshold, "runs": rows}


def _ci(v) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else ""


def _ci_of(d: dict, key: str) -> str:
    low, high = d.get(f"{key}_ci95_low"), d.get(f"{key}_ci95_high")
    return _ci([low, high]) if low is not None else ""


def render_markdown(report: dict) -> str:
    b = report["baseline"]
    lines = [f"Baseline: **{b['label']}**: n={b.get('n')}, avg_reward {b.get('avg_reward', 0):.3f} "
             f"{_ci_of(b, 'avg_reward')}, success_rate {b.get('success_rate', 0):.3f} {_ci_of(b, 'success_rate')}",
             "",
             "| run | changed params | n | avg_reward (95% CI) | success_rate (95% CI) | Δ reward, paired (95% CI) "
             "| Δ success, paired (95% CI) | flips +/− | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        params = ", ".join(f"{k}={v}" for k, v in r["changed_params"].items()) or "–"
        if "verdict" not in r or r.get("n", 0) == 0:
            lines.append(f"| {r['run']} | {params} | | | | | | | | {r['status']}{': ' + r['error'][:60] if r.get('error') else ''} |")
            continue
        lines.append(
            f"| {r['run']} | {params} | {r['n']} | {r['run_avg_reward']:.3f} {_ci_of(r, 'run_avg_reward')} "
            f"| {r['run_success_rate']:.3f} {_ci_of(r, 'run_success_rate')} "
            f"| {r['delta_avg_reward']:+.3f} {_ci(r['delta_avg_reward_ci95'])} "
            f"| {r['delta_success_rate']:+.3f} {_ci(r['delta_success_rate_ci95'])} "
            f"| +{r['fail_to_success']} / −{r['success_to_fail']} | {r['mcnemar_p']:.3g} | **{r['verdict']}** |")
    for r in report["runs"]:
        for direction, items in (r.get("examples") or {}).items():
            for ex in items:
                arrow = "fail → success" if direction == "fail_to_success" else "success → fail"
                lines += ["", f"**{r['run']}**, {arrow}: task `{ex['task_key']}` "
                              f"(baseline reward {ex['baseline_reward']}, run reward {ex['run_reward']})"]
                for side in ("baseline_messages", "run_messages"):
                    said = [m for m in ex[side] if m["role"] in ("assistant", "tool")]
                    text = " ⏎ ".join(f"{m['role']}: {' '.join((m.get('content') or '').split())[:120]}"
                                      + "".join(f" [{tc['function']['name']}({tc['function']['arguments']})]"
                                                for tc in m.get("tool_calls", [])) for m in said)
                    lines.append(f"- {side.split('_')[0]}: {text}")
    return "\n".join(lines)


def run(names: list[str], baseline: str | None, params: Params, examples: int, repo: str | Path = ".") -> dict:
    # Named runs may be experiments of an earlier commit: then look through every commit's experiments.
    known = runs = list_runs(repo, all_commits=bool(names))
    if names:
        wanted = set(names)
        runs = [r for r in runs if r.label in wanted or r.rev in wanted or r.rev[:7] in wanted]
        runs = list({r.label: r for r in reversed(runs)}.values())[::-1]  # a name once (newest commit first)
        missing = wanted - {r.label for r in runs} - {r.rev for r in runs} - {r.rev[:7] for r in runs}
        runs += [Run(n, n, "success") for n in sorted(missing)]  # plain git revisions
    else:
        runs = [r for r in runs if r.kind in ("workspace", "experiment")]
    if baseline and not any(baseline in (r.rev, r.label) for r in known):
        # A git name (HEAD, a branch, a tag): DVC lists its commit by hash, so find that run by the hash,
        # under the name given, and changed params are counted against the baseline's own params.
        sha = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}"], cwd=repo,
                             capture_output=True, text=True).stdout.strip()
        known = [replace(r, label=baseline) if sha and r.rev == sha else r for r in known]
    return build_report(runs, lambda path, rev: read_text(path, rev, repo), params.paths.eval, baseline,
                        params.eval.success_threshold, examples, known)
