"""A self-contained HTML report: the comparison table plus DVC's plots, rendered to inline SVG.

`dvc plots diff` writes HTML that loads vega from a CDN; this renders the same vega-lite specs (with
their data, from `dvc plots diff --json`) to SVG locally with vl-convert, so the page opens offline.
"""

from __future__ import annotations

import html
import json
import subprocess
from pathlib import Path

from ..io import atomic_open


def plot_specs(revs: list[str], repo: str | Path = ".") -> tuple[dict[str, list[dict]], list[dict]]:
    """{plot title: [vega-lite spec, ...]} for these revisions, and the errors DVC reported."""
    cmd = ["dvc", "plots", "diff", *[r for r in revs if r != "workspace"], "--json"]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    specs = {name: [p["content"] for p in plots if p.get("type") == "vega" and p.get("content")]
             for name, plots in (doc.get("data") or {}).items()}
    return {k: v for k, v in specs.items() if v}, doc.get("errors") or []


def render_svg(spec: dict) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(spec)


def build_html(report: dict, markdown: str, svgs: dict[str, list[str]], errors: list[dict]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>gymtrl compare</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
             "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}</style></head><body>",
             "<h1>Experiment comparison</h1>", _table(report), "<h2>Markdown</h2>",
             f"<pre>{html.escape(markdown)}</pre>"]
    for title, items in svgs.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.extend(f"<div>{svg}</div>" for svg in items)
    if errors:
        parts.append("<h2>Plots DVC could not load</h2><ul>")
        parts.extend(f"<li>{html.escape(str(e.get('name')))} @ {html.escape(str(e.get('rev')))}: "
                     f"{html.escape(str(e.get('msg')))}</li>" for e in errors)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(report: dict) -> str:
    cols = ["run", "status", "n", "run_avg_reward", "run_success_rate", "delta_avg_reward", "delta_avg_reward_ci95",
            "delta_success_rate", "delta_success_rate_ci95", "fail_to_success", "success_to_fail", "mcnemar_p",
            "verdict"]
    rows = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in ["run", "changed params", *cols[1:]]) + "</tr>"]
    for r in report["runs"]:
        params = ", ".join(f"{k}={v}" for k, v in r.get("changed_params", {}).items())
        cells = [r["run"], params] + [r.get(c, "") for c in cols[1:]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def write_html(path: str | Path, report: dict, revs: list[str], repo: str | Path = ".") -> None:
    from .compare import render_markdown

    specs, errors = plot_specs(revs, repo)
    svgs = {title: [render_svg(s) for s in items] for title, items in specs.items()}
    with atomic_open(path, "w") as f:
        f.write(build_html(report, render_markdown(report), svgs, errors))
