"""``fidec eval``: evaluate a run's checkpoint on its task.

fidec eval --run runs/cube2-fidec --episodes 50
MUJOCO_GL=egl fidec eval --run runs/cube2-fidec --episodes 10 --video-episodes 2
fidec eval --run runs/toy-bandit/seed0/fidec --sampling iterative
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fisher_decorator.config import EVAL_SAMPLING


def _run(args: argparse.Namespace) -> int:
    from fisher_decorator.checkpoint import write_json
    from fisher_decorator.envs import make_task
    from fisher_decorator.evaluation import evaluate_agent, save_videos
    from fisher_decorator.trainer import load_agent

    run = Path(args.run)  # errors: one line each, from cli.main
    agent, cfg, step = load_agent(run, checkpoint=args.checkpoint, device=args.device)
    task = make_task(cfg.task, dataset_dir=cfg.dataset_dir, seed=cfg.seed)
    seed = cfg.seed if args.seed is None else args.seed
    mode = args.sampling or cfg.eval_sampling
    t0 = time.perf_counter()
    stats, videos = evaluate_agent(
        agent,
        task,
        episodes=args.episodes if args.episodes is not None else cfg.eval_episodes,
        seed=seed,
        step=step,
        mode=mode,
        num_samples=args.num_samples or cfg.eval_num_samples,
        refine_steps=args.refine_steps or cfg.eval_refine_steps,
        video_episodes=args.video_episodes,
        video_frame_skip=args.video_frame_skip or cfg.video_frame_skip,
    )
    task.close()
    result = {
        "run": str(run),
        "task": cfg.task,
        "agent": cfg.agent,
        "checkpoint_step": step,
        "episodes": args.episodes if args.episodes is not None else cfg.eval_episodes,
        "sampling": mode,
        "seed": seed,
        **{f"evaluation/{k}": v for k, v in stats.items()},
        "eval_time_s": time.perf_counter() - t0,
    }
    if videos:
        result["videos"] = [str(p) for p in save_videos(videos, run / "videos" / "eval", step)]
    out = Path(args.output) if args.output else run / f"eval_step{step}_{mode}.json"
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run's checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (holds config.json and checkpoint.pt)")
    p.add_argument("--checkpoint", help="a checkpoint file other than the run's latest")
    p.add_argument("--episodes", type=int, help="episodes (default: the run's eval_episodes)")
    p.add_argument(
        "--sampling", choices=EVAL_SAMPLING, help="action selection (default: the run's eval_sampling)"
    )
    p.add_argument("--num-samples", type=int, help="best_of_n: candidates per state")
    p.add_argument("--refine-steps", type=int, help="iterative: refinement steps")
    p.add_argument("--video-episodes", type=int, default=0, help="extra rendered episodes saved as GIFs")
    p.add_argument("--video-frame-skip", type=int, help="keep every n-th frame (default: the run's, 3)")
    p.add_argument("--seed", type=int, help="evaluation seed (default: the run's)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--output", help="JSON file for the result (default <run>/eval_step<N>_<sampling>.json)")
    p.set_defaults(func=_run)
