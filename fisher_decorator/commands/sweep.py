"""``fidec sweep``: train a grid of agents x tasks x seeds, locally or on a Ray cluster; resumable.

fidec sweep --agents fidec,deflow --tasks cube-single-play-singletask-task1-v0,cube-single-play-singletask-task2-v0 \\
    --seeds 0-1 --budget small --out sweeps/check          # minutes on a laptop CPU: checks the pipeline
fidec sweep --agents fidec,deflow,fql --tasks paper --seeds 0-3 --out sweeps/paper   # the paper's table
fidec sweep --out sweeps/paper                            # continue: resume killed runs, retry failed ones
fidec sweep --out sweeps/paper --seeds 4-7                # add seeds to a sweep
fidec sweep ... --address ray://head:10001 --gpus-per-run 0.25 --cpus-per-run 2   # 4 runs per GPU
fidec sweep --out sweeps/paper --status                   # the manifest's states
fidec report sweeps/paper                                 # the table beside the paper's numbers

--tasks takes task names, families (cube-single-play = its task1..task5) and 'paper' (the 50 tasks of the
paper's table). Runs go to <out>/runs/<task>/<agent>/seed<k>; <out>/manifest.json records each run's state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _definition(args, stored):
    from fisher_decorator.commands.train import parse_sets
    from fisher_decorator.config import parse_seeds
    from fisher_decorator.sweep.grid import (
        SweepDefinition,
        SweepError,
        parse_agents,
        parse_tasks,
    )

    grid = (args.agents, args.tasks, args.seeds)
    if stored is None and None in grid:
        missing = [f for f, v in zip(("--agents", "--tasks", "--seeds"), grid) if v is None]
        raise SweepError(
            f"a new sweep needs {', '.join(missing)} (or --out of an existing sweep to continue it)"
        )
    if stored is not None and all(v is None for v in grid):
        given = [args.budget, args.steps, args.set, args.dataset_dir]
        if all(v is None for v in given):
            return None  # continue the stored sweep as it is
    return SweepDefinition(
        agents=tuple(parse_agents(args.agents)) if args.agents else stored.agents,
        tasks=tuple(parse_tasks(args.tasks)) if args.tasks else stored.tasks,
        seeds=tuple(parse_seeds(args.seeds)) if args.seeds else stored.seeds,
        budget=args.budget or (stored.budget if stored else "paper"),
        steps=args.steps if args.steps is not None else (stored.steps if stored else None),
        overrides=tuple(parse_sets(args.set).items()) if args.set else (stored.overrides if stored else ()),
        dataset_dir=args.dataset_dir or (stored.dataset_dir if stored else None),
    )


def _status(out: Path) -> int:
    from fisher_decorator.sweep.manifest import Manifest, ManifestError

    manifest = Manifest.open(out)
    if not manifest.runs:
        raise ManifestError(f"{out}: no manifest (not a sweep directory, or nothing started yet)")
    print(f"{'run':64} {'state':8} {'tries':>5} {'step':>8}  note / error")
    for rid, e in manifest.runs.items():
        text = e.get("error") or e.get("note") or ""
        step = e.get("step")
        print(f"{rid:64} {e['state']:8} {e.get('attempts', 0):>5} {'' if step is None else step:>8}  {text}")
    print(", ".join(f"{n} {s}" for s, n in manifest.counts().items()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.config import ConfigError
    from fisher_decorator.sweep.grid import load_budgets
    from fisher_decorator.sweep.runner import Resources, load_definition, run_sweep

    if args.list_budgets:
        for name, b in load_budgets().items():
            print(f"{name}: {b.description}\n")
        return 0
    if args.out is None:
        raise ConfigError("--out (the sweep directory) is required")
    out = Path(args.out)
    if args.status:
        return _status(out)
    # errors (bad grid, manifest, dataset) reach cli.main, which prints them in one line
    stored = load_definition(out)
    definition = _definition(args, stored)
    resources = Resources(
        backend=args.backend,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        workers=args.workers,
        retries=args.retries,
    )
    if args.dry_run:
        return _dry_run(out, definition or stored, resources)
    summary = run_sweep(out, definition, resources, progress=not args.no_progress)
    counts = summary["counts"]
    print(f"sweep {summary['sweep']}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for rid, error in summary["failed"].items():
        print(f"  failed {rid}: {error}")
    if not args.no_report:
        try:
            from fisher_decorator.sweep.report import write_report

            written = write_report(out)
            print(f"report: {written['markdown']} (+ results.csv, tasks.csv, runs.csv, curves/)")
        except ImportError as exc:  # matplotlib missing: the table without plots
            from fisher_decorator.sweep.report import write_report

            written = write_report(out, plots=False)
            print(f"report: {written['markdown']} (no plots: {exc})")
    if summary["failed"]:
        return 1
    return 0 if counts["done"] == summary["runs"] else 1


def _dry_run(out: Path, definition, resources) -> int:
    from fisher_decorator.sweep.grid import resolve_run
    from fisher_decorator.sweep.runner import dataset_dir_for

    resources.check()
    sweep_dir = out.expanduser().resolve()
    dataset_dir = dataset_dir_for(definition, sweep_dir)
    runs = definition.runs()
    for spec in runs:
        r = resolve_run(
            definition,
            spec,
            sweep_dir=sweep_dir,
            dataset_dir=dataset_dir,
            cpus_per_run=resources.cpus_per_run,
            gpus_per_run=resources.gpus_per_run,
        )
        print(r.record["command"])
    print(
        f"{len(runs)} run(s): {len(definition.agents)} agent(s) x {len(definition.tasks)} task(s) x "
        f"{len(definition.seeds)} seed(s), budget {definition.budget}; datasets in {dataset_dir}",
        file=sys.stderr,
    )
    print(json.dumps(definition.to_dict()), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of agents x tasks x seeds (process pool or Ray), resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to run (stored in <out>/sweep.json; omit to continue the stored sweep)")
    g.add_argument("--agents", help="comma list: fidec, deflow, fql")
    g.add_argument("--tasks", help="comma list of tasks, families, 'paper', or 'visual' (the 5 pixel tasks)")
    g.add_argument("--seeds", help="e.g. 0-3, 0,2,5")
    g.add_argument(
        "--budget", help="paper (default: 1M steps, as the authors) or small (minutes); --list-budgets"
    )
    g.add_argument(
        "--steps", type=int, help="updates per run (a multiple of 10; rescales the budget's schedule)"
    )
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run")
    g.add_argument("--dataset-dir", help="dataset directory (default: the budget's)")
    p.add_argument("--out", help="sweep directory, e.g. sweeps/NAME (required)")
    s = p.add_argument_group("where and how (not stored: a sweep may continue elsewhere)")
    s.add_argument(
        "--backend", default="auto", choices=("auto", "pool", "ray"), help="auto: Ray if installed"
    )
    s.add_argument(
        "--address", help="Ray cluster address (ray://host:10001, auto); needs pip install '.[sweep]'"
    )
    s.add_argument("--cpus-per-run", type=int, default=1, help="CPUs (torch threads) per run (default 1)")
    s.add_argument("--gpus-per-run", type=float, default=0.0, help="GPU per run; 0.25 runs 4 per GPU")
    s.add_argument("--workers", type=int, help="pool: runs at a time (default: CPUs // --cpus-per-run)")
    s.add_argument("--retries", type=int, default=1, help="restarts of a run whose process dies (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print each run's equivalent fidec train command")
    p.add_argument("--status", action="store_true", help="print the manifest's run states and exit")
    p.add_argument("--list-budgets", action="store_true", help="describe the budgets and exit")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
