"""Data-stage benchmarks: our filter / convert / pair vs the seed tutorial's approach vs parse-only limits.

Inputs are generated here (never committed): the real Gym fixture rollouts replicated with varied task
indices and rewards (4 rollouts per task, so pairing has work to do). Each measurement runs in its own
process so its peak RSS is its own. Results are appended to benchmarks/results.json and printed as a
Markdown table.

    python benchmarks/run.py --sizes 10 100 1000      # MB (the default; `make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "gym-0.4.0"
WORK = ROOT / "benchmarks" / ".work"


def make_input(path: Path, megabytes: int) -> int:
    """Replicates valid fixture rollouts until the file has `megabytes` MB; returns the line count."""
    import orjson

    from gymtrl.rollouts import Rollout, resolve_sources, scan

    seeds = [item.record for item in scan(resolve_sources([str(FIXTURES)]).files) if isinstance(item, Rollout)]
    rng = random.Random(0)
    target = megabytes * 1_000_000
    written = lines = 0
    with open(path, "wb") as f:
        task = 0
        while written < target:
            base = seeds[task % len(seeds)]
            for k in range(4):
                rec = dict(base)
                rec["_ng_task_index"] = task
                rec["_ng_rollout_index"] = k
                rec["agent_ref"] = {"name": f"bench_agent_{task % len(seeds)}"}
                rec["reward"] = rng.choice([0.0, 0.2, 0.5, 0.9, 1.0])
                raw = orjson.dumps(rec) + b"\n"
                f.write(raw)
                written += len(raw)
                lines += 1
            task += 1
    return lines


# ------------------------------------------------------------------ the seed tutorial's approach

def seed_filter(src: str, out: str) -> None:
    rollouts = [json.loads(line) for line in open(src)]
    kept = [r for r in rollouts if r["reward"] >= 0.8]
    with open(out, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")


def seed_convert(src: str, out: str) -> None:
    rollouts = [json.loads(line) for line in open(src)]
    kept = [r for r in rollouts if r["reward"] >= 0.8]
    rows = []
    for r in kept:
        inp = r["responses_create_params"]["input"]
        inp = [{"role": "user", "content": inp}] if isinstance(inp, str) else inp
        rows.append({"messages": inp + r["response"]["output"]})  # corrected: response.output
    with open(out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def seed_pair(src: str, out: str) -> None:
    rollouts = [json.loads(line) for line in open(src)]
    groups: dict = {}
    for r in rollouts:
        groups.setdefault(json.dumps(r["responses_create_params"]["input"]), []).append(r)
    pairs = []
    for group in groups.values():
        group.sort(key=lambda r: -r["reward"])
        if len(group) > 1 and group[0]["reward"] - group[1]["reward"] >= 0.1:
            pairs.append({"prompt": group[0]["responses_create_params"]["input"],
                          "chosen": group[0]["response"]["output"], "rejected": group[1]["response"]["output"]})
    with open(out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")


# ------------------------------------------------------------------ limits and ours

def raw_read(src: str, out: str) -> None:
    with open(src, "rb") as f:
        while f.read(1 << 24):
            pass


def orjson_parse(src: str, out: str) -> None:
    import orjson

    with open(src, "rb") as f:
        for line in f:
            orjson.loads(line)


def _params(src: str, out: str):
    """The repository's params.yaml, reading `src` and writing every output beside `out`."""
    from gymtrl.params import deep_merge, parse_params, read_params_file

    paths = {"filtered": out + ".filtered", "catalog": out + ".catalog", "sft": out + ".sft", "pairs": out + ".pairs",
             "metrics": out + ".metrics", "plots": out + ".plots", "base_model": str(WORK / "tokenizer")}
    return parse_params(deep_merge(read_params_file(ROOT / "params.yaml"), {"data": {"rollouts": src}, "paths": paths}))


def ours_filter(src: str, out: str) -> None:
    from gymtrl.stages import filter as stage

    stage.run(_params(src, out))


def ours_convert(src: str, out: str) -> None:
    from gymtrl.stages import convert as stage

    stage.run(_params(src, out))


def ours_pair(src: str, out: str) -> None:
    from gymtrl.stages import pair as stage

    stage.run(_params(src, out))


JOBS = {f.__name__: f for f in (raw_read, orjson_parse, seed_filter, seed_convert, seed_pair,
                                ours_filter, ours_convert, ours_pair)}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM: reset at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_job(job: str, src: str, out: str) -> None:
    """Child side: imports gymtrl first, then times the job (including the stage's own lazy imports of
    transformers and datasets, which every real run pays)."""
    import resource

    if job.startswith("ours_"):
        import gymtrl.stages.convert  # noqa: F401
        import gymtrl.stages.filter  # noqa: F401
        import gymtrl.stages.pair  # noqa: F401
    started = time.perf_counter()
    JOBS[job](src, out)
    seconds = round(time.perf_counter() - started, 3)
    # The stages' worker processes (data.workers=auto): the largest one's peak RSS. Forked workers share
    # the parent's pages copy-on-write, so adding the numbers up overstates the total.
    worker_mb = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "worker_peak_rss_mb": worker_mb}))


def measure(job: str, src: Path, out: Path) -> dict:
    """Runs one job in its own process (so its peak RSS is its own) and reads its report."""
    done = subprocess.run([sys.executable, __file__, "--job", job, str(src), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_tokenizer() -> None:
    """The embedded model's tokenizer as the base_model stage writes it (files + stored template probe)."""
    from gymtrl.models import CHAT_FORMAT_FILE, EMBEDDED_GGUF, embedded_dir, ensure_tool_template, write_chat_format

    d = WORK / "tokenizer"
    if (d / CHAT_FORMAT_FILE).exists():
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF)
    ensure_tool_template(tok)
    tok.save_pretrained(d)
    write_chat_format(tok, d)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--job", nargs=3)
    args = parser.parse_args()
    if args.job:
        run_job(*args.job)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'benchmarks')!r}]; "
                    "import run; run.ensure_tokenizer()"], check=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results = []
    for mb in args.sizes:
        src = WORK / f"rollouts_{mb}mb.jsonl"
        lines = make_input(src, mb) if not src.exists() else sum(1 for _ in open(src, "rb"))
        size_mb = src.stat().st_size / 1e6
        for job in JOBS:
            # our stages chain (convert reads filter's output), so they share one output prefix
            out = WORK / (f"out_{mb}" if job.startswith("ours_") else f"out_{mb}_{job}")
            m = measure(job, src, out)
            m.update(job=job, input_mb=round(size_mb, 1), lines=lines,
                     mb_per_s=round(size_mb / m["seconds"], 1), rollouts_per_s=round(lines / m["seconds"]))
            results.append(m)
            print(f"{mb:>5} MB  {job:<14} {m['seconds']:>8.2f}s  {m['mb_per_s']:>7.1f} MB/s  "
                  f"{m['rollouts_per_s']:>8} rollouts/s  peak RSS {m['peak_rss_mb']:>7.1f} MB "
                  f"(workers {m['worker_peak_rss_mb']:.0f} MB)", flush=True)
        results.extend(chain_rows(results, mb, size_mb, lines))
    append_results(machine, "python benchmarks/run.py --sizes " + " ".join(map(str, args.sizes)), results)


def chain_rows(results: list[dict], mb: int, size_mb: float, lines: int) -> list[dict]:
    """filter + convert + pair as one chain (the sum of their times), for ours and the seed's."""
    rows = []
    for who in ("seed", "ours"):
        parts = [r for r in results if r["input_mb"] == round(size_mb, 1) and r["job"] in
                 (f"{who}_filter", f"{who}_convert", f"{who}_pair")]
        seconds = round(sum(r["seconds"] for r in parts), 3)
        rows.append({"job": f"{who}_chain", "input_mb": round(size_mb, 1), "lines": lines, "seconds": seconds,
                     "mb_per_s": round(size_mb / seconds, 1), "rollouts_per_s": round(lines / seconds),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in parts),
                     "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in parts)})
        print(f"{mb:>5} MB  {who + '_chain':<14} {seconds:>8.2f}s  {rows[-1]['mb_per_s']:>7.1f} MB/s", flush=True)
    return rows


def append_results(machine: str, command: str, results: list[dict]) -> None:
    """Adds one benchmark run (machine, command, date, numbers) to benchmarks/results.json."""
    path = ROOT / "benchmarks" / "results.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append({"machine": machine, "command": command, "date": time.strftime("%Y-%m-%d"), "results": results})
    path.write_text(json.dumps(history, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
