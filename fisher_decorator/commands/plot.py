"""``fidec plot``: learning curves of runs as a PNG (seeds of a task and agent shaded together).

fidec plot runs/*                                  # every run below runs/ -> runs/curves.png
fidec plot runs/a runs/b --out curves.png --metrics evaluation/success,actor/alpha_value
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.plotting import find_runs, plot_learning_curves, plot_toy_bandit, run_train_config

    runs = find_runs(args.paths)
    if args.out:
        out = Path(args.out)
    else:  # the folder the given paths share: `fidec plot runs/*` -> runs/curves.png
        common = Path(os.path.commonpath([os.path.abspath(p) for p in args.paths]))
        out = (common if common.is_dir() else common.parent) / "curves.png"
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    png = plot_learning_curves(runs, out, metrics=metrics, smooth=args.smooth)
    print(f"learning curves of {len(runs)} run(s): {png}")
    toy = {}
    for run in runs:
        cfg = run_train_config(run)
        if (
            cfg["task"] == "toy-bandit"
            and cfg["agent"] in ("fidec", "deflow")
            and (run / "checkpoint.pt").is_file()
        ):
            toy.setdefault(cfg["agent"], run)
    if toy and not args.no_toy:
        print(f"toy-bandit figure: {plot_toy_bandit(toy, out.with_name('toy_bandit.png'))}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="learning curves of runs (PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", help="run directories or folders containing them")
    p.add_argument("--out", help="output PNG (default: <path>/curves.png)")
    p.add_argument("--metrics", help="comma list of metrics (default: success, return and main losses)")
    p.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="N",
        help="moving average over N logged points, raw curve faint behind it (default 1: none)",
    )
    p.add_argument("--no-toy", action="store_true", help="skip the toy-bandit figure for toy-bandit runs")
    p.set_defaults(func=_run)
