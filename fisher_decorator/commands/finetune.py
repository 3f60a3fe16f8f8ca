"""``fidec finetune``: online fine-tuning from an offline run's checkpoint (the authors' ``--restore_path``).

fidec finetune --run runs/cube2-fidec --online-steps 1000000            # writes runs/cube2-fidec-online
fidec finetune --run runs/cube2-fidec --online-steps 1000000 --balanced-sampling --out runs/cube2-bal
fidec finetune --run runs/cube2-fidec --set fix_bc_flow_online=true --online-steps 1000000
fidec finetune --out runs/cube2-fidec-online --resume                   # continue a killed run

The run keeps the offline run's task, agent, seed and configs (``--set`` may change agent fields, e.g. the
authors' online grid runs normalize_q_loss=false); its steps continue the offline count (1M -> 2M), it
evaluates after its first online update and every --eval-interval, and its summary.json gives the score
before (the offline run's evaluation at its last step) and after fine-tuning. See fisher_decorator.online.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.commands.train import parse_sets
    from fisher_decorator.config import ConfigError
    from fisher_decorator.online import finetune_trainer, score_text

    run = args.run
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out (the fine-tuning run to continue)")
        if run is None:
            config = Path(args.out) / "config.json"
            if not config.is_file():
                raise FileNotFoundError(f"cannot resume: no config.json in {args.out}")
            run = json.loads(config.read_text()).get("restored_from", {}).get("run")
            if run is None:
                raise ConfigError(
                    f"{args.out} is not a fine-tuning run (its config.json names no offline run)"
                )
    elif run is None:
        raise ConfigError("--run OFFLINE_RUN is required (the run directory whose checkpoint to fine-tune)")
    flags = {
        "eval_episodes": args.eval_episodes,
        "eval_interval": args.eval_interval,
        "log_interval": args.log_interval,
        "save_interval": args.save_interval,
        "device": args.device,
        "threads": args.threads,
        "dataset_dir": args.dataset_dir,
        "progress": False if args.no_progress else None,
    }
    online = {
        "online_steps": args.online_steps,
        "balanced_sampling": True if args.balanced_sampling else None,
        "buffer_size": args.buffer_size,
        "reward_shift": args.reward_shift,
    }
    command = " ".join(["fidec", "finetune", *sys.argv[2:]]) if sys.argv[1:2] == ["finetune"] else None
    trainer = finetune_trainer(
        run,
        args.out,
        online=online,
        flags=flags,
        overrides=parse_sets(args.set),
        resume=args.resume,
        record={"command": command} if command else None,
    )
    if trainer.online_steps <= 0:
        raise ConfigError("--online-steps must be > 0 (how many online steps to fine-tune for)")
    summary = trainer.run()
    o = summary["online"]
    print(
        f"{summary['agent']} {summary['task']} seed {summary['seed']}: {o['online_steps']} online steps "
        f"after {o['offline_steps']} offline; {o['score_key']} before {score_text(o['score_before'])}, "
        f"after {score_text(o['score_after'])}; {o['episodes']} exploration episodes, "
        f"{o['env_steps_per_sec'] or 0:.1f} env steps/s, {o['updates_per_sec'] or 0:.1f} updates/s"
    )
    print(f"  run dir: {summary['run_dir']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune an offline run online from its checkpoint (the authors' --restore_path)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", help="the offline run directory (its config.json and checkpoint.pt)")
    p.add_argument("--online-steps", type=int, help="online steps: one env step and one update each")
    p.add_argument("--out", help="the fine-tuning run's directory (default: <run>-online)")
    p.add_argument(
        "--balanced-sampling",
        action="store_true",
        help="half of each batch from the offline data, half from a separate online buffer",
    )
    p.add_argument("--buffer-size", type=int, help="replay buffer capacity (default 2000000)")
    p.add_argument(
        "--reward-shift", type=float, help="added to online rewards (default: -1 on D4RL AntMaze, else 0)"
    )
    p.add_argument("--dataset-dir", help="directory of the dataset files (default: the offline run's)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    p.add_argument("--eval-interval", type=int, help="online steps between evaluations (0: none)")
    p.add_argument("--log-interval", type=int, help="online steps between log rows")
    p.add_argument("--save-interval", type=int, help="online steps between checkpoints")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an agent field (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
