"""`gymtrl`: the terminal edge. `gymtrl <stage>` runs a pipeline stage exactly as dvc.yaml does
(`python -m gymtrl.stages.<stage>`); `gymtrl inspect` and `gymtrl compare` are the tools beside it."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import orjson

from .params import ParamsError, load_params
from .stages.common import main as stage_main

# The pipeline's stages, in dvc.yaml's order: CLI name -> (module in gymtrl.stages, help).
STAGES = {
    "base-model": ("base_model", "materialize model.name_or_path as a loadable model directory"),
    "demo": ("demo", "embedded environment: calculator tasks and reference rollouts"),
    "filter": ("filter", "keep rollouts by reward and turns; catalog every valid one for pair"),
    "convert": ("convert", "filtered rollouts -> TRL conversational SFT dataset"),
    "pair": ("pair", "all rollouts -> TRL conversational preference pairs (from filter's catalog)"),
    "train": ("train", "SFT / DPO with TRL"),
    "evaluate": ("evaluate", "base vs trained model on held-out tasks"),
    "collect": ("collect", "the trained model plays the training tasks, k samples each (the next round's data)"),
}


def _compare(args, params) -> None:
    from .tools import compare

    report = compare.run(args.runs, args.baseline, params, args.examples)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(compare.render_markdown(report))
    if args.html:
        from .tools.report import write_html

        write_html(args.html, report, [r["rev"] for r in report["runs"] if r["status"] == "success"])


def _inspect(args, params) -> None:
    from .tools.inspect_rollouts import inspect_rollouts, render_text

    found = inspect_rollouts(args.paths, params)
    if args.json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        print(render_text(found))


def _next_round(args, params) -> int:
    from .tools import next_round

    try:
        return next_round.run(params, args.set or [], execute=not args.no_run)
    except next_round.RoundError as err:
        print(f"gymtrl next-round: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gymtrl", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text)

    p = sub.add_parser("compare", help="paired comparison of experiments on the same held-out tasks")
    p.add_argument("runs", nargs="*", help="experiment names or git revisions (default: workspace + experiments)")
    p.add_argument("--baseline", help="compare against this run's trained model (default: the base model)")
    p.add_argument("--json", action="store_true", help="machine-readable report (default: a Markdown table)")
    p.add_argument("--examples", type=int, default=0, metavar="N", help="show N flipped tasks per direction")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with the plots")
    p.set_defaults(func=_compare)

    p = sub.add_parser("next-round", help="freeze this round's collection and run the next round (dvc exp run)")
    p.add_argument("-S", "--set", action="append", metavar="KEY=VALUE",
                   help="also set this param in the next round (passed to dvc exp run -S), e.g. train.method=dpo")
    p.add_argument("--no-run", action="store_true", help="freeze and print the experiment command, do not run it")
    p.set_defaults(func=_next_round)

    p = sub.add_parser("inspect", help="what is in a rollouts file, and what filter and pair would keep")
    p.add_argument("paths", nargs="+", help="files, folders or globs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in STAGES:
        module, _ = STAGES[args.command]
        stage = importlib.import_module(f".stages.{module}", __package__)
        return stage_main(module, stage.run, ["--params", args.params])
    try:
        return args.func(args, load_params(args.params)) or 0
    except (ParamsError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"gymtrl {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
