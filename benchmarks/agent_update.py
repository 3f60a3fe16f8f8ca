"""Updates/s of one agent update at the paper's size, and the wall time of the README's toy command.

    python -m benchmarks.agent_update                 # FiDec reference vs fused penalty (+ DeFlow, FQL)
    python -m benchmarks.agent_update --toy           # also time `fidec train --task toy-bandit`

The update is the agents' own (``FlowAgent.update``) at B = 256, 4x512 networks, K = 8 Fisher samples,
N = 10 Euler steps, obs 28 / action 5 (cube-single), with the task preset's FiDec variant flags
(fisher_t 0.9, width 0.05, normalize_q_loss). Cases are timed in the same process after a warm-up,
interleaved round by round, so slow drifts of a shared machine hit every case alike. A "metrics"
case is a logging step (adds the diagnostic rollout and gradient statistics). Rows go to
results/agent_update-<machine>.json with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.common import machine, quantiles, write_rows
from fisher_decorator.ops import available_backends
from fisher_decorator.trainer import resolve_configs

OBS, ACT, B = 28, 5, 256
TASK = "cube-single-play-singletask-task2-v0"


def make_case(agent: str, backend: str | None):
    from fisher_decorator.agents import make_agent

    overrides = {"penalty_backend": backend} if backend else {}
    _, cfg, _ = resolve_configs(TASK, agent, overrides=overrides)
    a = make_agent(agent, OBS, ACT, cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = {
        "observations": torch.randn(B, OBS, generator=g),
        "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
        "rewards": -torch.rand(B, generator=g),
        "masks": torch.ones(B),
        "next_observations": torch.randn(B, OBS, generator=g),
    }
    return a, batch


def time_updates(cases: dict, rounds: int, warmup: int, per_round: int) -> dict[str, list[float]]:
    for agent, batch, with_metrics in cases.values():
        for _ in range(warmup):
            agent.update(batch, with_metrics=with_metrics)
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (agent, batch, with_metrics) in cases.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                agent.update(batch, with_metrics=with_metrics)
                times[k].append(time.perf_counter() - t0)
    return times


def time_toy() -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            sys.executable,
            "-m",
            "fisher_decorator",
            "train",
            "--task",
            "toy-bandit",
            "--out",
            d,
            "--no-progress",
        ]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
    return {
        "case": {"command": "fidec train --task toy-bandit"},
        "wall_s": wall,
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "stdout": proc.stdout.strip().splitlines(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--toy", action="store_true", help="also time the README's toy-bandit command")
    p.add_argument("--no-baselines", action="store_true", help="FiDec only")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in ("reference", "cpu") if b in available_backends()]
    cases = {}
    for be in backends:
        a, b = make_case("fidec", be)
        cases[f"fidec/{be}"] = (a, b, False)
        cases[f"fidec/{be}/metrics"] = (a, b, True)
    if not args.no_baselines:
        for name in ("deflow", "fql"):
            a, b = make_case(name, None)
            cases[name] = (a, b, False)
    load0 = os.getloadavg()
    times = time_updates(cases, args.rounds, args.warmup, args.per_round)
    load1 = os.getloadavg()
    rows = []
    for k, ts in times.items():
        p20, p50, p80 = quantiles(ts)
        agent, _, metrics = cases[k]
        rows.append({
            "case": {"update": k, "B": B, "K": agent.config.num_fisher_samples if k.startswith("fidec") else None,
                     "N": agent.config.flow_steps, "hidden": list(agent.config.actor_hidden_dims),
                     "obs": OBS, "act": ACT, "metrics": metrics},
            "p20_ms": 1e3 * p20, "p50_ms": 1e3 * p50, "p80_ms": 1e3 * p80,
            "updates_per_s": 1.0 / p50, "samples": len(ts),
            "loadavg_before": load0, "loadavg_after": load1,
        })  # fmt: skip
    ref = next((r for r in rows if r["case"]["update"] == "fidec/reference"), None)
    for r in rows:
        if ref is not None:
            r["speedup_vs_fidec_reference"] = ref["p50_ms"] / r["p50_ms"]
        print(f"{r['case']['update']:<26} p50 {r['p50_ms']:8.1f} ms  {r['updates_per_s']:6.2f} updates/s"
              + (f"  x{r['speedup_vs_fidec_reference']:.3f} vs fidec/reference" if ref else ""))  # fmt: skip
    if args.toy:
        toy = time_toy()
        rows.append(toy)
        print(f"fidec train --task toy-bandit: {toy['wall_s']:.1f} s wall (load {toy['loadavg_before']})")
    env = machine("cpu")
    env["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path = write_rows("agent_update", env, rows)
    print(f"rows written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
