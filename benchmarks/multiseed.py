"""Multi-seed throughput: S seeds stacked in one update (``fidec train --seeds``) against the same S seeds
updated one after another by single agents (S separate runs sharing the device), timed in one run.

    python -m benchmarks.multiseed                              # FiDec, 4 seeds, small and paper size
    python -m benchmarks.multiseed --num-seeds 1,4,16 --sizes small --agents fidec,fql
    python -m benchmarks.multiseed --compile                    # also both under torch.compile (slow to build)

Sizes (obs 28 / action 5, cube-single; N = 10 Euler steps; the task preset's other flags):
  small  B = 64, hidden 4x256, K = 8      (where a GPU is launch-bound and stacking should pay)
  paper  B = 256, hidden 4x512, K = 8     (the authors' OGBench runs)

Modes
  sequential   S single agents with the run's default (fused) config, one update each per step.
  stacked      one StackedAgents update of all S seeds (vmapped loss, stacked fused rollouts).
  *-compiled   the same with ``compile=True`` (compile time excluded).

A step is one update of every seed. Each case is warmed up, then the cases are timed round-robin so
a drift of a shared machine hits them alike. Per case: p20/p50/p80 ms per step, updates/s per seed
(1 / p50) and in all (S / p50), the ratio stacked / sequential at the same S and size, and the load
average and CPU pressure (Linux PSI: how long runnable tasks waited for a core) around the timing,
which say whether other processes shared the machine. Rows go to results/multiseed-<machine>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import cuda_peak_bytes, machine, quantiles, timed, write_rows
from fisher_decorator.agents import make_agent
from fisher_decorator.multiseed import StackedAgents
from fisher_decorator.trainer import resolve_configs

OBS, ACT = 28, 5
TASK = "cube-single-play-singletask-task2-v0"
SIZES = {"small": dict(B=64, hidden=256, K=8), "paper": dict(B=256, hidden=512, K=8)}


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 10 s some runnable task waited for a CPU (None where not available)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return float(dict(kv.split("=") for kv in line.split()[1:])["avg10"])


def make_case(agent: str, size: str, S: int, mode: str, device: str):
    """(step function, config) of one case: ``step()`` updates every seed once."""
    sz = SIZES[size]
    overrides = {"actor_hidden_dims": [sz["hidden"]] * 4, "value_hidden_dims": [sz["hidden"]] * 4}
    if agent == "fidec":
        overrides["num_fisher_samples"] = sz["K"]
    _, cfg, _ = resolve_configs(TASK, agent, overrides=overrides)
    if mode.endswith("-compiled"):
        cfg = dataclasses.replace(cfg, compile=True)
    g = torch.Generator().manual_seed(0)
    B = sz["B"]
    batches = [
        {
            "observations": torch.randn(B, OBS, generator=g),
            "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rewards": -torch.rand(B, generator=g),
            "masks": torch.ones(B),
            "next_observations": torch.randn(B, OBS, generator=g),
        }
        for _ in range(S)
    ]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    agents = [make_agent(agent, OBS, ACT, cfg, seed=s, device=device) for s in range(S)]
    if mode.startswith("stacked"):
        stacked = StackedAgents(agents)
        return (lambda: stacked.update(batches, with_metrics=False)), cfg

    def sequential():
        for a, b in zip(agents, batches):
            a.update(b, with_metrics=False)

    return sequential, cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="fidec")
    p.add_argument("--sizes", default="small,paper")
    p.add_argument("--num-seeds", default="4", help="comma list of S")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also the *-compiled modes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ["sequential", "stacked"] + (["sequential-compiled", "stacked-compiled"] if args.compile else [])
    env = machine("cuda" if args.device.startswith("cuda") else "cpu")
    rows = []
    for agent in args.agents.split(","):
        for size in args.sizes.split(","):
            for S in (int(s) for s in args.num_seeds.split(",")):
                cases = {m: make_case(agent, size, S, m, args.device) for m in modes}
                for m, (step, _) in cases.items():
                    t0 = time.perf_counter()
                    for _ in range(args.warmup):
                        step()
                    print(
                        f"warm-up {agent} {size} S={S} {m:<20} {time.perf_counter() - t0:7.1f} s", flush=True
                    )
                load0, psi0 = os.getloadavg(), cpu_pressure()
                times = {m: [] for m in cases}
                for _ in range(args.rounds):
                    for m, (step, _) in cases.items():
                        times[m].append(timed(step))
                load1, psi1 = os.getloadavg(), cpu_pressure()
                block = []
                for m, ts in times.items():
                    step, cfg = cases[m]
                    p20, p50, p80 = quantiles(ts)
                    row = {
                        "case": {"op": "multiseed_step", "agent": agent, "size": size, "mode": m, "seeds": S,
                                 "B": SIZES[size]["B"], "hidden": list(cfg.actor_hidden_dims),
                                 "K": getattr(cfg, "num_fisher_samples", None), "N": cfg.flow_steps,
                                 "obs": OBS, "act": ACT},
                        "p20_ms": 1e3 * p20, "p50_ms": 1e3 * p50, "p80_ms": 1e3 * p80,
                        "updates_per_s_per_seed": 1.0 / p50, "updates_per_s_total": S / p50,
                        "rounds": len(ts), "loadavg_before": load0, "loadavg_after": load1,
                        "cpu_pressure_avg10_before": psi0, "cpu_pressure_avg10_after": psi1,
                    }  # fmt: skip
                    if args.device.startswith("cuda"):
                        row["peak_bytes"] = cuda_peak_bytes(step)
                    block.append(row)
                for row in block:
                    base = (
                        "sequential-compiled" if row["case"]["mode"].endswith("-compiled") else "sequential"
                    )
                    ref = next(r for r in block if r["case"]["mode"] == base)
                    row["speedup_vs_sequential"] = ref["p50_ms"] / row["p50_ms"]
                    c = row["case"]
                    print(f"{agent:<6} {size:<5} S={S:<3} {c['mode']:<20} p50 {row['p50_ms']:8.1f} ms/step  "
                          f"{row['updates_per_s_per_seed']:7.2f} updates/s per seed  "
                          f"{row['updates_per_s_total']:7.2f} in all  x{row['speedup_vs_sequential']:.2f}  "
                          f"load {load0[0]:.1f}-{load1[0]:.1f}", flush=True)  # fmt: skip
                rows += block
    path = write_rows("multiseed", env, rows)
    print(f"rows written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
