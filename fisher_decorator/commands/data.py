"""``fidec data ...``: list, generate, verify and inspect datasets; measure generator throughput.

fidec data list                               # known datasets, how to get each, which are present
fidec data generate cube-single-play-v0       # official recipe: 1000 + 100 episodes of 1001 steps
fidec data generate cube-single-play-v0 --episodes 50 --workers 2 --dataset-dir /tmp/ds
fidec data download antmaze-large-navigate-v0  # official files (also: a family, paper, d4rl); resumable
fidec data verify [DIR]                       # every file in DIR: keys, shapes, NaN/Inf, episodes, SHA-256
fidec data info cube-single-play-singletask-task2-v0    # provenance, sizes, rewards, action statistics
fidec data bench                              # episodes/s per worker of each generator
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from fisher_decorator.datasets.registry import (
    D4RL_DATASETS,
    OGBENCH_RECIPES,
    OGBENCH_URL,
    PAPER_REGENERABLE,
    get_recipe,
)


def _dir(args) -> pathlib.Path:
    from fisher_decorator.datasets.loading import default_dataset_dir

    return pathlib.Path(args.dataset_dir).expanduser() if args.dataset_dir else default_dataset_dir()


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-dir",
        default=None,
        help="dataset directory (default: $FIDEC_DATASET_DIR, else ~/.ogbench/data)",
    )


# ------------------------------------------------------------------------------------------------------------


def _list(args) -> int:
    directory = _dir(args)
    rows = []
    for name, r in sorted(OGBENCH_RECIPES.items()):
        present = all((directory / f).exists() for f in r.files)
        rows.append(
            {
                "dataset": name,
                "kind": "ogbench",
                "how": f"fidec data generate {name} (or: fidec data download {name})"
                if r.regenerable
                else f"fidec data download {name} ({OGBENCH_URL}/{r.files[0]} + -val)",
                "recipe": f"{r.num_episodes}+{r.num_val_episodes} x {r.max_episode_steps}",
                "present": present,
                "regenerated": (directory / f"{name}.manifest.json").exists(),
            }
        )
    for name, spec in sorted(D4RL_DATASETS.items()):
        present = any((directory / f).exists() for f in spec.candidate_files)
        rows.append(
            {
                "dataset": name,
                "kind": "d4rl",
                "how": f"fidec data download {name} ({spec.url})",
                "recipe": "-",
                "present": present,
                "regenerated": False,
            }
        )
    if args.json:
        print(json.dumps({"dataset_dir": str(directory), "datasets": rows}, indent=2))
        return 0
    print(f"dataset directory: {directory}")
    print(f"{'dataset':34} {'episodes x steps':18} {'here':12} how to get it")
    for row in rows:
        here = ("regenerated" if row["regenerated"] else "yes") if row["present"] else "-"
        print(f"{row['dataset']:34} {row['recipe']:18} {here:12} {row['how']}")
    return 0


def _generate(args) -> int:
    from fisher_decorator.datasets.generation import generate

    directory = _dir(args)
    datasets = list(PAPER_REGENERABLE) if args.datasets == ["paper"] else args.datasets
    for dataset in datasets:  # errors: one line each, from cli.main
        get_recipe(dataset)
        manifest = generate(
            dataset,
            directory,
            episodes=args.episodes,
            val_episodes=args.val_episodes,
            max_episode_steps=args.max_episode_steps,
            seed=args.seed,
            workers=args.workers,
            shard_episodes=args.shard_episodes,
            force=args.force,
            keep_shards=args.keep_shards,
            progress=not args.quiet,
        )
        files, gen = manifest["files"], manifest.get("generation", {})
        print(
            f"{dataset}: wrote {directory / files['train']['name']} ({files['train']['transitions']} transitions) "
            f"and {files['val']['name']} ({files['val']['transitions']}); "
            f"success events train {manifest['stats']['train']['success_events']}"
            + (f"; {gen.get('wall_seconds', 0):.1f} s with {gen.get('workers')} worker(s)" if gen else "")
        )
    return 0


def _download(args) -> int:
    from fisher_decorator.datasets.download import download_dataset, resolve_names

    directory = _dir(args)
    for dataset in resolve_names(args.datasets):  # errors: one line each, from cli.main
        for r in download_dataset(dataset, directory, mirror=args.mirror, progress=not args.quiet):
            if r["status"] == "present":
                print(f"{dataset}: {r['name']} already in {directory} (kept; `fidec data verify` checks it)")
            else:
                print(
                    f"{dataset}: {directory / r['name']} ({r['bytes']} bytes, SHA-256 {r['sha256'][:16]}...): "
                    f"verified, {r['summary']}"
                )
    return 0


def _verify(args) -> int:
    from fisher_decorator.datasets.verify import verify_directory

    directory = pathlib.Path(args.directory).expanduser() if args.directory else _dir(args)
    results = verify_directory(directory)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print(f"verifying {directory}")
        if not results:
            print("  no dataset files found")
        for r in results:
            print(f"  {'OK ' if r.ok else 'BAD'} {r.name:34} {r.source:12} {r.detail}")
    bad = [r for r in results if not r.ok and not r.detail.endswith("(not checked)")]
    return 1 if bad else 0


def _info(args) -> int:
    from fisher_decorator.datasets.bench import action_statistics
    from fisher_decorator.datasets.loading import load_task_datasets

    task = args.task
    if task in OGBENCH_RECIPES:  # a dataset name: use OGBench's default task
        base, version = task.rsplit("-", 1)
        task = f"{base}-singletask-{version}"
    data = load_task_datasets(task, args.dataset_dir)
    out = {"provenance": data.provenance()}
    for split, arrays in (("train", data.train), ("val", data.val)):
        if arrays is None:
            continue
        out[split] = {
            "transitions": int(arrays["observations"].shape[0]),
            "episodes": int(arrays["terminals"].sum()),
            "ob_dim": int(arrays["observations"].shape[1]),
            "action_dim": int(arrays["actions"].shape[1]),
            "reward_mean": round(float(arrays["rewards"].mean()), 5),
            "solved_fraction": round(float(1 - arrays["masks"].mean()), 5),
            "actions": action_statistics(arrays["actions"]),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out["provenance"].items():
        print(f"{key}: {value}")
    for split in ("train", "val"):
        if split in out:
            s = out[split]
            print(
                f"{split}: {s['transitions']} transitions, {s['episodes']} episodes, ob_dim {s['ob_dim']}, "
                f"reward mean {s['reward_mean']}, task solved in {100 * s['solved_fraction']:.2f}% of transitions"
            )
            print(f"  action mean {s['actions']['mean']}\n  action std  {s['actions']['std']}")
    return 0


def _bench(args) -> int:
    from fisher_decorator.datasets.bench import load_average, measure_throughput
    from fisher_decorator.datasets.generation import software_versions
    from fisher_decorator.info import cpu_name

    datasets = args.datasets or list(PAPER_REGENERABLE)
    rows = []
    for dataset in datasets:
        before = load_average()
        row = measure_throughput(
            dataset, episodes=args.episodes, max_episode_steps=args.max_episode_steps, repeats=args.repeats
        )
        row["loadavg_before"], row["loadavg_after"] = before, load_average()
        rows.append(row)
        print(
            f"{dataset:30} {row['episodes_per_s_median']:.3f} episodes/s per worker "
            f"({row['env_steps_per_s_median']:.0f} steps/s; repeats {row['episodes_per_s_per_worker']}; "
            f"load {row['loadavg_before']} -> {row['loadavg_after']})"
        )
    if args.output:
        from fisher_decorator.datasets.fileio import write_json

        path = pathlib.Path(args.output)
        result = json.loads(path.read_text()) if path.exists() else {}  # keep earlier runs and other sections
        result.update(cpu=cpu_name(), cpu_count=os.cpu_count(), versions=software_versions())
        run = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
        result["generator_throughput_runs"] = [*result.get("generator_throughput_runs", []), run]
        write_json(path, result)
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="OGBench/D4RL datasets: download, generate offline, verify, inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    q = dsub.add_parser("list", help="known datasets, how to obtain each, which are in the dataset directory")
    _add_dir(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_list)

    q = dsub.add_parser("generate", help="regenerate OGBench datasets offline with OGBench's oracles")
    q.add_argument(
        "datasets",
        nargs="+",
        metavar="DATASET",
        help=f"e.g. cube-single-play-v0; 'paper' = {' '.join(PAPER_REGENERABLE)}",
    )
    _add_dir(q)
    q.add_argument("--episodes", type=int, default=None, help="training episodes (default: official recipe)")
    q.add_argument(
        "--val-episodes", type=int, default=None, help="validation episodes (default: episodes // 10)"
    )
    q.add_argument("--max-episode-steps", type=int, default=None, help="rows per episode (default: official)")
    q.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    q.add_argument("--seed", type=int, default=0, help="base seed; episode i's seeds derive from (seed, i)")
    q.add_argument(
        "--shard-episodes", type=int, default=10, help="episodes per shard (the unit of resumption)"
    )
    q.add_argument("--force", action="store_true", help="replace existing files (official or other plan)")
    q.add_argument("--keep-shards", action="store_true", help="keep the per-shard files after merging")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_generate)

    q = dsub.add_parser(
        "download", help="download official dataset files (resumable; verified before they get their name)"
    )
    q.add_argument(
        "datasets",
        nargs="+",
        metavar="DATASET",
        help="an OGBench dataset (antmaze-large-navigate-v0) or family (antmaze-large-navigate), a D4RL "
        "dataset (antmaze-large-diverse-v2, pen-human-v1), 'paper' (the paper's 10 OGBench datasets), 'd4rl' "
        "(all 18), 'd4rl-antmaze' or 'd4rl-adroit'",
    )
    _add_dir(q)
    q.add_argument("--mirror", help="base URL serving the same file names (default: the official URLs)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_download)

    q = dsub.add_parser("verify", help="validate every dataset file in a directory (exit 1 if any is bad)")
    q.add_argument("directory", nargs="?", default=None, help="default: the dataset directory")
    _add_dir(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_verify)

    q = dsub.add_parser("info", help="load a task's data and print provenance and statistics")
    q.add_argument("task", help="task (cube-single-play-singletask-task2-v0), dataset, or D4RL name")
    _add_dir(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_info)

    q = dsub.add_parser("bench", help="episodes/s per worker of the offline generators")
    q.add_argument("datasets", nargs="*", metavar="DATASET", help="default: the paper's datasets + pointmaze")
    q.add_argument("--episodes", type=int, default=3, help="episodes per repeat")
    q.add_argument("--repeats", type=int, default=2)
    q.add_argument("--max-episode-steps", type=int, default=None, help="default: official length")
    q.add_argument("--output", default=None, help="write/merge the results into this JSON file")
    q.set_defaults(func=_bench)
