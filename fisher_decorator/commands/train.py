"""``fidec train``: train one or several agents on a task, with the task's preset applied.

fidec train                                    # toy-bandit: FiDec and DeFlow, ~1 min, writes a PNG
fidec train --agent fidec --task cube-single-play-singletask-task2-v0 --seed 0 --out runs/cube2-fidec
fidec train ... --set fisher_t=0.9 --set actor_hidden_dims=256,256
fidec train --out runs/cube2-fidec --resume    # continue a killed run from its checkpoint
fidec train --agent fidec --task cube-single-play-singletask-task2-v0 --seeds 0,1,2,3 --out runs/cube2
                                               # 4 seeds stacked in one process: runs/cube2/seed<i>/
fidec train --agent fidec --task cube-double-play-singletask-task2-v0 --online-steps 1000000 --out runs/c2
                                               # 1M offline steps, then 1M online (fidec finetune: from a
                                               # finished offline run)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fisher_decorator.agents import AGENTS, agent_class, overrides_for
from fisher_decorator.config import ConfigError, TrainConfig, describe, to_dict, train_command

DEFAULT_TOY_AGENTS = ("fidec", "deflow")


def parse_sets(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _agents(arg: str | None, task: str) -> list[str]:
    if arg is None:
        return list(DEFAULT_TOY_AGENTS) if task == "toy-bandit" else ["fidec"]
    names = [a.strip() for a in arg.split(",") if a.strip()]
    for n in names:
        agent_class(n)
    if len(set(names)) != len(names):
        raise ConfigError(f"--agent lists an agent twice: {arg}")
    return names


def _print_fields(agents: list[str]) -> None:
    blocks = [("train", TrainConfig)] + [(a, agent_class(a).config_class) for a in agents]
    for title, cls in blocks:
        print(f"[{title}]")
        for name, tname, value, doc in describe(cls):
            print(f"  {name} ({tname}) = {value!r}\n      {doc}")


def run_dirs_for(args, agents: list[str], seed: int) -> dict[str, Path]:
    if args.out is not None:
        out = Path(args.out)
        return {agents[0]: out} if len(agents) == 1 else {a: out / a for a in agents}
    parent = Path("runs") / args.task / f"seed{seed}"
    return {a: parent / a for a in agents}


def multiseed_roots_for(args, agents: list[str]) -> dict[str, Path]:
    """With --seeds: each agent's root (seed i in <root>/seed<i>); default runs/<task>/<agent>."""
    if args.out is not None:
        out = Path(args.out)
        return {agents[0]: out} if len(agents) == 1 else {a: out / a for a in agents}
    return {a: Path("runs") / args.task / a for a in agents}


def _resumed_run(args, agent: str, agents: list[str], seeds: list[int] | None) -> Path | None:
    """With --resume: the run directory whose config.json the run continues with (None: none yet)."""
    if not args.resume:
        return None
    from fisher_decorator.multiseed import seed_dir
    from fisher_decorator.trainer import CONFIG

    root = Path(args.out) if len(agents) == 1 else Path(args.out) / agent
    run = seed_dir(root, seeds[0]) if seeds is not None else root
    return run if (run / CONFIG).is_file() else None


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _preset_notice(task: str) -> None:
    from fisher_decorator.presets import has_paper_preset

    if not has_paper_preset(task):
        print(
            f"note: no paper preset for {task}; using FQL's defaults (the OGBench settings without a "
            "per-task entry)",
            file=sys.stderr,
        )


def command_line(args: argparse.Namespace, agent: str) -> str:
    """The ``fidec train`` command that reproduces this run (recorded in config.json)."""
    names = (
        "seed",
        "seeds",
        "steps",
        "out",
        "dataset_dir",
        "device",
        "threads",
        "eval_episodes",
        "eval_interval",
    )
    online = ("online_steps", "balanced_sampling", "buffer_size")
    flags = {
        name: getattr(args, name) for name in (*names, "log_interval", "save_interval", "wandb", *online)
    }
    sets = [item.partition("=")[::2] for item in args.set or []]
    return train_command(agent, args.task, flags, sets)


def _online_config(args, agent: str, agents: list[str], given: dict):
    """The run's OnlineConfig: the flags given, over a resumed run's stored online config (None: offline only)."""
    from fisher_decorator.online import make_online_config

    previous = _resumed_run(args, agent, agents, None)
    stored = json.loads((previous / "config.json").read_text()).get("online") if previous else None
    if stored is None and all(v is None for v in given.values()):
        return None
    return make_online_config(stored, **given)


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.config import parse_seeds
    from fisher_decorator.multiseed import (
        MultiSeedTrainer,
        is_multiseed_root,
        read_multiseed,
        seed_dir,
    )
    from fisher_decorator.trainer import CONFIG, Trainer, load_run_config, resolve_configs, resume_configs

    if args.list_tasks:
        from fisher_decorator.presets import list_tasks

        print("\n".join(list_tasks()))
        return 0
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out (the run directory to continue)")
    seeds = None
    if args.seeds is not None:
        if args.seed is not None:
            raise ConfigError("give either --seed (one run) or --seeds (several, stacked), not both")
        seeds = parse_seeds(args.seeds)
    if args.resume and is_multiseed_root(args.out):
        old = read_multiseed(args.out)
        args.task, args.agent = args.task or old["task"], args.agent or old["agent"]
        seeds = seeds if seeds is not None else list(old["seeds"])
    elif args.resume and (Path(args.out) / CONFIG).is_file():
        old, _, _ = load_run_config(args.out)
        args.task, args.agent = args.task or old.task, args.agent or old.agent
    args.task = args.task or "toy-bandit"
    agents = _agents(args.agent, args.task)
    if args.list_fields:
        _print_fields(agents)
        return 0
    flags = {
        "seed": args.seed,
        "steps": args.steps,
        "dataset_dir": args.dataset_dir,
        "device": args.device,
        "eval_episodes": args.eval_episodes,
        "eval_interval": args.eval_interval,
        "log_interval": args.log_interval,
        "save_interval": args.save_interval,
        "threads": args.threads,
        "progress": False if args.no_progress else None,
        "wandb": True if args.wandb else None,
    }
    overrides = parse_sets(args.set)
    if seeds is not None and any(k.rpartition(".")[2] == "seed" for k in overrides):
        raise ConfigError("with --seeds the seeds come from --seeds, not --set seed=...")
    resolved = {}
    for i, a in enumerate(agents):
        previous = _resumed_run(args, a, agents, seeds)
        if previous is None:
            if i == 0:
                _preset_notice(args.task)
            resolved[a] = resolve_configs(
                args.task, a, flags=flags, overrides=overrides_for(a, agents, overrides)
            )
            continue
        # A resumed run keeps its own config; only what was passed explicitly changes.
        train_cfg, agent_cfg, record, changes = resume_configs(
            previous, task=args.task, agent=a, flags=flags, overrides=overrides_for(a, agents, overrides)
        )
        changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        print(
            f"resuming {previous} with its config.json" + (f"; changed: {changed}" if changed else ""),
            file=sys.stderr,
        )
        resolved[a] = (train_cfg, agent_cfg, record)
    seed = next(iter(resolved.values()))[0].seed
    dirs = run_dirs_for(args, agents, seed)
    if args.print_config:
        print(
            json.dumps(
                {a: {"train": to_dict(t), "agent": to_dict(c)} for a, (t, c, _) in resolved.items()},
                indent=2,
            )
        )
        return 0
    summaries, multi = {}, {}
    online_given = {
        "online_steps": args.online_steps,
        "balanced_sampling": True if args.balanced_sampling else None,
        "buffer_size": args.buffer_size,
    }
    if seeds is not None and any(v is not None for v in online_given.values()):
        raise ConfigError("online fine-tuning runs one seed per process: use --seed, not --seeds")
    if seeds is None:
        for agent, (train_cfg, agent_cfg, record) in resolved.items():
            record["command"] = command_line(args, agent)
            online = _online_config(args, agent, agents, online_given)
            trainer = Trainer(
                train_cfg, agent_cfg, dirs[agent], resume=args.resume, record=record, online=online
            )
            summaries[agent] = trainer.run()
    else:
        roots = multiseed_roots_for(args, agents)
        trainers = {  # all built (their directories checked) before the first one trains
            agent: MultiSeedTrainer(
                train_cfg,
                agent_cfg,
                seeds,
                roots[agent],
                resume=args.resume,
                record={**record, "command": command_line(args, agent)},
            )
            for agent, (train_cfg, agent_cfg, record) in resolved.items()
        }
        dirs = {a: seed_dir(roots[a], seeds[0]) for a in agents}
        for agent, trainer in trainers.items():
            multi[agent] = trainer.run()
            summaries.update({f"{agent} seed {s['seed']}": s for s in multi[agent]["summaries"]})
    for agent, s in summaries.items():
        score = "n/a" if s["score"] is None else f"{s['score']:.4f}"
        steps = ",".join(map(str, s["score_steps"])) or "-"
        if s["missing_score_steps"]:
            score += f" (not evaluated at {','.join(map(str, s['missing_score_steps']))})"
        ups = f"{s['updates_per_sec']:.1f}" if s["updates_per_sec"] else "n/a"
        print(
            f"{agent}: {s['steps']} steps, {ups} updates/s, score = mean {s['score_key']} at step(s) {steps}: {score}"
        )
        if s.get("online"):
            from fisher_decorator.online import score_text

            o = s["online"]
            print(
                f"  online: {o['online_steps']} steps, {o['score_key']} before {score_text(o['score_before'])}, "
                f"after {score_text(o['score_after'])}"
            )
        print(f"  run dir: {s['run_dir']}")
    for agent, m in multi.items():
        ups = m["updates_per_sec_per_seed"]
        mean = "n/a" if m["score_mean"] is None else f"{m['score_mean']:.4f}"
        print(
            f"{agent}: {len(m['seeds'])} seeds stacked, {ups:.1f} updates/s per seed "
            f"({m['updates_per_sec_total']:.1f} in all), mean score {mean}; root: {m['root']}"
        )
    if args.task == "toy-bandit" and not args.no_plot:
        residual = {a: d for a, d in dirs.items() if a in ("fidec", "deflow")}
        if residual and not _have_matplotlib():
            print(
                "toy-bandit figure skipped: matplotlib is not installed (pip install 'fisher-decorator[logging]')",
                file=sys.stderr,
            )
        elif residual:
            from fisher_decorator.plotting import plot_toy_bandit

            parent = Path(args.out) if args.out is not None else next(iter(dirs.values())).parent
            if seeds is not None and args.out is None:
                parent = Path("runs") / args.task
            png = plot_toy_bandit(residual, parent / "toy_bandit.png")
            which = f" (seed {seeds[0]})" if seeds is not None else ""
            print(f"toy-bandit figure{which}: {png}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train agents on a task (default: FiDec and DeFlow on the built-in toy-bandit)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--agent",
        help=f"agent or comma list of agents: {', '.join(AGENTS)} (default: fidec; toy-bandit: fidec,deflow)",
    )
    p.add_argument(
        "--task",
        help="toy-bandit (default) or an OGBench single task, e.g. cube-single-play-singletask-task2-v0",
    )
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument(
        "--seeds",
        metavar="S0,S1,...",
        help="train one run per seed in this process, the seeds' networks stacked (one batched update); "
        "seed i writes <out>/seed<i>/, a run directory like a single run's (default out: runs/<task>/<agent>)",
    )
    p.add_argument("--steps", type=int, help="gradient updates (default: the task preset's)")
    p.add_argument(
        "--out",
        help="run directory (with several agents: their parent); default runs/<task>/seed<seed>/<agent>",
    )
    p.add_argument("--dataset-dir", help="directory of the OGBench dataset files")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    p.add_argument("--eval-interval", type=int, help="steps between evaluations (0: none)")
    p.add_argument("--log-interval", type=int, help="steps between log rows")
    p.add_argument("--save-interval", type=int, help="steps between checkpoints")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any train or agent config field (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--wandb",
        action="store_true",
        help="log to Weights & Biases with the authors' metric names (extra 'wandb'; --set wandb_project=...)",
    )
    p.add_argument(
        "--online-steps",
        type=int,
        help="online fine-tuning steps after the offline ones (one env step and one update each)",
    )
    p.add_argument(
        "--balanced-sampling",
        action="store_true",
        help="online: half of each batch from the offline data, half from a separate online buffer",
    )
    p.add_argument("--buffer-size", type=int, help="online: replay buffer capacity (default 2000000)")
    p.add_argument("--no-plot", action="store_true", help="toy-bandit: skip the figure")
    p.add_argument("--list-tasks", action="store_true", help="list the task names and exit")
    p.add_argument("--list-fields", action="store_true", help="list every config field with its doc and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved configs and exit")
    p.set_defaults(func=_run)
