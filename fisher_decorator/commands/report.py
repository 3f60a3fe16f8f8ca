"""``fidec report``: a sweep's results in the paper's format, beside the paper's FiDec numbers.

fidec report sweeps/NAME                  # -> sweeps/NAME/report/{results.md, results.csv, tasks.csv, runs.csv, curves/}
fidec report sweeps/NAME --out /tmp/rep --no-plots

Per task family: mean over its tasks of each run's score (mean success at the score steps, 800k/900k/1M under
the paper budget), then mean +- sample std over seeds, in %; the paper's number beside it and the difference.
Also works on any folder of run directories (from `fidec train`).
"""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.sweep.report import write_report

    written = write_report(args.path, args.out, plots=not args.no_plots)  # errors: cli.main says them
    text = written["markdown"].read_text()
    start = text.find("## Per task family")
    end = text.find("## Per task\n")
    print(text[start:end].strip() if start >= 0 else text)
    curves = sum(1 for k in written if k.startswith("curve:"))
    print(f"\nwrote {written['markdown']}, results.csv, tasks.csv, runs.csv and {curves} curve PNG(s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a sweep's results table (markdown + CSV) beside the paper's, and learning curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="sweep directory (or any folder of run directories)")
    p.add_argument("--out", help="output folder (default: <path>/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=_run)
