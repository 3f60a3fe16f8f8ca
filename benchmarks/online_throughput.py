"""Online fine-tuning throughput: env steps/s and updates/s of the online loop (fisher_decorator.online).

    python -m benchmarks.online_throughput                          # toy-bandit and cube-single, fidec + fql
    python -m benchmarks.online_throughput --tasks cube-double-play-singletask-task2-v0 --dataset-dir DIR
    python -m benchmarks.online_throughput --small                  # 2x64 networks, batch 64

One online step is the authors' protocol: reset when an episode ended, one action from the policy (one Euler
rollout of one state), one ``env.step``, the transition into the replay buffer, one batch, one update. Per
(task, agent) a Trainer runs ``--offline-steps`` updates (warm-up, not timed) and then ``--online-steps``
online steps; the loop times its two halves itself (``OnlineLoop.env_time``: act + step + store;
``update_time``: batch + update), so a row gives env steps/s (the acting half alone), updates/s (the update
half alone), online steps/s of the whole loop (wall clock of the online phase, evaluation off) and the
share of the loop spent in the environment. A second figure times ``env.step`` alone with random actions (no
policy), so the env's own cost and the policy's acting cost can be told apart.

Without --dataset-dir an OGBench task gets a tiny dataset made here with ``fidec data generate`` (2 episodes):
the dataset's size does not enter an online step's cost (batches are index draws from the buffer).
Paper size: 4x512 networks, batch 256, K = 8, 10 Euler steps (the task presets). Rows go to
results/online_throughput-<machine>.json.
"""

from __future__ import annotations

# isort: off
import fisher_decorator  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads; fisher_decorator.threads)

# isort: on
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, write_rows

SMALL = {"actor_hidden_dims": "64,64", "value_hidden_dims": "64,64", "batch_size": "64"}


def _dataset_dir(task: str, given: str | None, tmp: Path) -> str | None:
    from fisher_decorator.presets import parse_task

    info = parse_task(task)
    if given is not None or info.kind != "ogbench":
        return given
    from fisher_decorator.cli import main

    d = tmp / "data"
    argv = ["data", "generate", info.dataset, "--episodes", "2", "--val-episodes", "1", "--workers", "1"]
    assert main([*argv, "--dataset-dir", str(d), "--quiet"]) in (0, None)
    return str(d)


def env_only_rate(task_obj, steps: int, seed: int = 0) -> float:
    """env.step calls per second with uniform random actions (no policy), resets included."""
    from fisher_decorator.online import env_factory

    env = env_factory(task_obj)()
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    d = task_obj.action_dim
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, d).astype(np.float32))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - t0)
    close = getattr(env, "close", None)
    if close is not None:
        close()
    return rate


def run_case(task: str, agent: str, args, tmp: Path, dataset_dir: str | None) -> dict:
    from fisher_decorator.online import OnlineConfig
    from fisher_decorator.trainer import Trainer, resolve_configs

    overrides = dict(SMALL) if args.small else {}
    flags = {
        "steps": args.offline_steps,
        "eval_interval": 0,
        "log_interval": args.offline_steps + args.online_steps,
        "save_interval": args.offline_steps + args.online_steps,
        "dataset_dir": dataset_dir,
        "progress": False,
        "device": args.device,
        "threads": args.threads,
    }
    overrides["tensorboard"] = "false"
    train_cfg, agent_cfg, record = resolve_configs(task, agent, flags=flags, overrides=overrides)
    online = OnlineConfig(online_steps=args.online_steps, buffer_size=args.buffer_size)
    marks = {}

    def mark(step, trainer):
        if step == train_cfg.steps:
            marks["t0"] = time.perf_counter()

    trainer = Trainer(
        train_cfg, agent_cfg, tmp / f"{task}-{agent}", record=record, online=online, callback=mark
    )
    summary = trainer.run()
    wall = time.perf_counter() - marks["t0"]  # the online phase, checkpoint and summary included
    o = summary["online"]
    loop = trainer.online_loop
    return {
        "case": {"task": task, "agent": agent, "small": bool(args.small), "device": str(trainer.device)},
        "online_steps": args.online_steps,
        "batch_size": train_cfg.batch_size,
        "actor_hidden_dims": list(agent_cfg.actor_hidden_dims),
        "env_steps_per_sec": o["env_steps_per_sec"],
        "updates_per_sec": o["updates_per_sec"],
        "online_steps_per_sec": args.online_steps / wall,
        "env_share": loop.env_time / (loop.env_time + loop.update_time),
        "episodes": o["episodes"],
        "env_only_steps_per_sec": env_only_rate(trainer.task, args.env_steps),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="toy-bandit,cube-single-play-singletask-task2-v0")
    p.add_argument("--agents", default="fidec,fql")
    p.add_argument("--online-steps", type=int, default=200)
    p.add_argument("--offline-steps", type=int, default=5, help="warm-up updates before the online phase")
    p.add_argument("--env-steps", type=int, default=2000, help="steps of the env-only figure")
    p.add_argument("--buffer-size", type=int, default=100_000)
    p.add_argument("--dataset-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--small", action="store_true", help="2x64 networks, batch 64 (else the paper's size)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            dataset_dir = _dataset_dir(task, args.dataset_dir, tmp)
            for agent in [a.strip() for a in args.agents.split(",") if a.strip()]:
                row = run_case(task, agent, args, tmp, dataset_dir)
                rows.append(row)
                print(
                    f"{task} {agent}: {row['env_steps_per_sec']:.0f} env steps/s (acting), "
                    f"{row['updates_per_sec']:.1f} updates/s, {row['online_steps_per_sec']:.1f} online steps/s, "
                    f"env share {100 * row['env_share']:.1f}%; env alone {row['env_only_steps_per_sec']:.0f} steps/s"
                )
    env = machine(args.device)
    path = write_rows("online_throughput", env, rows)
    print(f"{env['device_name']} ({env.get('torch_threads')} threads): rows in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
