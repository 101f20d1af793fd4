"""What convert keeps and rejects, per chat-template family, on the 26 real Gym fixture files.

Each family is a tiny tokenizer (SmolLM2's vocabulary + the family's control tokens + its published
template; tests/families.py) prepared as the base_model stage prepares a model: its own template, or
the fallback when it shows no tool calls. Every valid fixture rollout goes through convert's per-row
check (render, then pieces; rows that lose something are cut into inference-consistent samples).
Writes benchmarks/families.json and prints the README's Markdown table.

    python benchmarks/families.py
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def main() -> None:
    from transformers import AutoTokenizer

    from families import build_tokenizer, shared_families, trl_families
    from gymtrl.models import EMBEDDED_GGUF, embedded_dir, ensure_tool_template
    from gymtrl.rollouts import Rejected, iter_lines, parse_line
    from gymtrl.stages.convert import RowContext, convert_rollout
    from gymtrl.templates import probe_format

    base = AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF)
    rollouts = [item for f in sorted((ROOT / "tests/fixtures/gym-0.4.0").glob("*_rollouts.jsonl"))
                for item in map(parse_line, iter_lines(f)) if not isinstance(item, Rejected)]
    results = []
    for family in shared_families() + trl_families():
        tok = build_tokenizer(family, base)
        fallback = ensure_tool_template(tok)
        fmt = probe_format(tok)
        ctx = RowContext(tok, fmt, True, "reject")
        reasons, lost, split = Counter(), Counter(), 0
        for item in rollouts:
            _, verdict = convert_rollout(ctx, item)
            if verdict.rejected:
                reasons[verdict.rejected[1]] += 1
                lost.update(verdict.lost or {})
            else:
                split += verdict.stats.samples > 1
        adapted = [k for k, v in (("call ids", fmt.call_ids == "alnum9"), ("parallel calls split", fmt.parallel_calls == "split"),
                                  ("tools=[]", fmt.empty_tools == "list"), ("text beside calls -> reasoning", fmt.call_text == "reasoning"),
                                  ("no tool schemas", not fmt.tool_schemas)) if v]
        results.append({"family": family.name, "template": "fallback (ChatML, model's eos)" if fallback else "native",
                        "reasoning": f"`{fmt.reasoning_field}`" if fmt.reasoning == "field" else "inline `<think>`",
                        "adapted": adapted, "rows": len(rollouts), "kept": len(rollouts) - sum(reasons.values()),
                        "rows_split": split, "rejected": dict(reasons), "lost_in_rejected": dict(lost)})
        r = results[-1]
        print(f"{r['family']:<36} {r['template']:<8} kept {r['kept']:>3}/{r['rows']} split {split:>3} "
              f"rejected {dict(reasons)} lost {dict(lost)} {adapted}", file=sys.stderr, flush=True)
    (ROOT / "benchmarks" / "families.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print("| family (template file) | template used | reasoning as | adapted | kept / 105 | cut per turn | rejected (why) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        why = ", ".join(f"{n} {k}" + (f" ({', '.join(f'{v} {x}' for x, v in r['lost_in_rejected'].items())})"
                                      if k == "content_lost" else "") for k, n in r["rejected"].items()) or "–"
        print(f"| {r['family']} | {r['template']} | {r['reasoning']} | {', '.join(r['adapted']) or '–'} | "
              f"{r['kept']} ({100 * r['kept'] / r['rows']:.0f}%) | {r['rows_split']} | {why} |")


if __name__ == "__main__":
    main()
