"""`gymtrl <stage>`: the CLI edge. Parses params once, runs one stage, turns known errors into messages."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson

from .params import ParamsError, load_params


def _base_model(args, params):
    from .models import materialize_base

    from .io import write_json

    info = materialize_base(params.model.name_or_path, args.out, params.model.trust_remote_code)
    write_json(args.metrics, info)
    return info


def _demo(args, params):
    from .stages import demo as stage

    return stage.run(params, out_dir=args.out, metrics_path=args.metrics)


def _filter(args, params):
    from .stages import filter as stage

    return stage.run(params, out_dir=args.out, metrics_path=args.metrics, plots_path=args.plots,
                     catalog_dir=args.catalog)


def _convert(args, params):
    from .stages import convert as stage

    return stage.run(params, filtered_dir=args.filtered, model_dir=args.model, out_dir=args.out,
                     metrics_path=args.metrics)


def _pair(args, params):
    from .stages import pair as stage

    return stage.run(params, model_dir=args.model, out_dir=args.out, metrics_path=args.metrics,
                     catalog_dir=args.catalog)


def _train(args, params):
    from .stages import train as stage

    return stage.run(params, model_dir=args.model, sft_dir=args.sft, pairs_dir=args.pairs, out_dir=args.out,
                     ckpt_dir=args.checkpoints, live_dir=args.live, metrics_path=args.metrics)


def _evaluate(args, params):
    from .stages import evaluate as stage

    return stage.run(params, base_dir=args.base, trained_dir=args.trained, out_dir=args.out,
                     metrics_dir=args.metrics_dir, plots_dir=args.plots_dir)


def _compare(args, params):
    from . import compare

    report = compare.run(args.runs, args.baseline, params.eval.success_threshold, args.examples)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(compare.render_markdown(report))
    if args.html:
        from .report import write_html

        write_html(args.html, report, [r["rev"] for r in report["runs"] if r["status"] == "success"])
    return None


def _inspect(args, params):
    from .stages import inspect as stage

    summary = stage.summarize(args.paths, params)
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        print(stage.render_text(summary))
    return None


# The pipeline stages: help, handler, and the paths each reads or writes (dvc.yaml uses the defaults).
STAGE_COMMANDS = {
    "base-model": ("materialize model.name_or_path as a loadable model directory", _base_model,
                   {"--out": "models/base", "--metrics": "metrics/base_model.json"}),
    "demo": ("embedded environment: calculator tasks and reference rollouts", _demo,
             {"--out": "data/demo", "--metrics": "metrics/demo.json"}),
    "filter": ("keep rollouts by reward and turns; catalog every valid one for pair", _filter,
               {"--out": "data/filtered", "--metrics": "metrics/filter.json", "--plots": "plots/filter_rewards.json",
                "--catalog": "data/catalog"}),
    "convert": ("filtered rollouts -> TRL conversational SFT dataset", _convert,
                {"--filtered": "data/filtered", "--model": "models/base", "--out": "data/sft",
                 "--metrics": "metrics/convert.json"}),
    "pair": ("all rollouts -> TRL conversational preference pairs (from filter's catalog when it is current)",
             _pair, {"--model": "models/base", "--out": "data/pairs", "--metrics": "metrics/pair.json",
                     "--catalog": "data/catalog"}),
    "train": ("SFT / DPO with TRL", _train,
              {"--model": "models/base", "--sft": "data/sft", "--pairs": "data/pairs", "--out": "models/trained",
               "--checkpoints": "checkpoints/train", "--live": "dvclive/train", "--metrics": "metrics/train.json"}),
    "evaluate": ("base vs trained model on held-out tasks", _evaluate,
                 {"--base": "models/base", "--trained": "models/trained", "--out": "data/eval",
                  "--metrics-dir": "metrics", "--plots-dir": "plots"}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gymtrl", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, (help_text, func, paths) in STAGE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for flag, default in paths.items():
            p.add_argument(flag, default=default, help=f"(default: {default})")
        p.set_defaults(func=func)

    p = sub.add_parser("compare", help="paired comparison of experiments on the same held-out tasks")
    p.add_argument("runs", nargs="*", help="experiment names or git revisions (default: workspace + experiments)")
    p.add_argument("--baseline", help="compare against this run's trained model (default: the base model)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="Markdown table, ready for a pull request (default)")
    fmt.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--examples", type=int, default=0, metavar="N", help="show N flipped tasks per direction")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with the plots")
    p.set_defaults(func=_compare)

    p = sub.add_parser("inspect", help="what is in a rollouts file, and what filter and pair would keep")
    p.add_argument("paths", nargs="+", help="files, folders or globs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_inspect)
    return parser


def _record_time(command: str, seconds: float) -> None:
    """Stage wall times go to an untracked log, so tracked metrics stay identical across reruns."""
    if command in ("inspect", "compare"):
        return
    log = Path(".gymtrl") / "timings.jsonl"
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as f:
        f.write(orjson.dumps({"stage": command, "seconds": round(seconds, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + b"\n")


def main(argv: list[str] | None = None) -> int:
    from .stages.common import StageError

    args = build_parser().parse_args(argv)
    try:
        if args.command in ("inspect", "compare"):
            from .params import Params

            params = load_params(args.params) if Path(args.params).exists() else Params()
        else:
            params = load_params(args.params)
        started = time.perf_counter()
        result = args.func(args, params)
        _record_time(args.command, time.perf_counter() - started)
    except (ParamsError, StageError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"gymtrl {args.command}: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
