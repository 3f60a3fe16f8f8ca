"""Times the authors' jitted JAX update (FiDec or DeFlow) at the paper size; prints one JSON line.

Run by ``python -m benchmarks.train_throughput --jax-python PY --authors-repo DIR`` in a Python that
has jax, flax, optax, ml_collections and distrax, with DIR a checkout of the authors' code
(github.com/ARC0127/Fisher-Decorator). Nothing of theirs is copied here: their modules are imported
from DIR at run time. Sizes and flags as benchmarks/train_throughput.py (B=256, 4x512, K=8, N=10,
obs 28 / action 5, fisher_t 0.9, width 0.05, normalize_q_loss; cube-single preset).

``--serve``: after the warm-up, print one JSON line ``{"ready": ...}``, then for each line ``N`` read from
stdin time N updates and print ``{"ms": [...]}``; an empty line or EOF ends it. train_throughput times
the JAX update this way between its own rounds, so a shared host's drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--authors-repo", required=True)
    p.add_argument("--agent", choices=("fidec", "deflow"), default="fidec")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--serve", action="store_true", help="time updates on request (a line N on stdin)")
    args = p.parse_args()
    sys.path.insert(0, args.authors_repo)
    import jax
    import numpy as np

    if args.agent == "fidec":
        from agents.fidec import FiDecAgent as Agent
        from agents.fidec import get_config
    else:
        from agents.deflow import DeFlowAgent as Agent
        from agents.deflow import get_config

    cfg = get_config()
    cfg.normalize_q_loss = True
    cfg.target_divergence = 0.001
    if args.agent == "fidec":
        cfg.fisher_t, cfg.fisher_t_width, cfg.num_fisher_samples = 0.9, 0.05, 8
    B, OBS, ACT = 256, 28, 5
    rng = np.random.default_rng(0)
    agent = Agent.create(0, np.zeros((1, OBS), np.float32), np.zeros((1, ACT), np.float32), cfg)
    batch = {
        "observations": rng.standard_normal((B, OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (B, ACT)).astype(np.float32),
        "rewards": -rng.uniform(0, 1, B).astype(np.float32),
        "masks": np.ones(B, np.float32),
        "next_observations": rng.standard_normal((B, OBS)).astype(np.float32),
    }
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        agent, info = agent.update(batch)
        jax.block_until_ready(info)
    compile_s = time.perf_counter() - t0

    def one() -> float:
        nonlocal agent
        t0 = time.perf_counter()
        agent, info = agent.update(batch)
        jax.block_until_ready(info)
        return time.perf_counter() - t0

    if args.serve:
        print(json.dumps({"ready": True, "agent": args.agent, "jax": jax.__version__, "warmup_s": compile_s}),
              flush=True)  # fmt: skip
        for line in sys.stdin:
            if not line.strip():
                break
            print(json.dumps({"ms": [1e3 * one() for _ in range(int(line))]}), flush=True)
        return
    times = []
    for _ in range(args.updates):
        t0 = time.perf_counter()
        agent, info = agent.update(batch)
        jax.block_until_ready(info)
        times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    print(json.dumps({"agent": args.agent, "jax": jax.__version__, "p20_ms": 1e3 * q(0.2), "p50_ms": 1e3 * q(0.5),
                      "p80_ms": 1e3 * q(0.8), "updates": len(times), "warmup_s": compile_s}))  # fmt: skip


if __name__ == "__main__":
    main()
