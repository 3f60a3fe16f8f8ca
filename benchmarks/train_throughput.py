"""Training throughput: updates/s of FiDec, DeFlow and FQL in every speed mode, timed in one run.

    python -m benchmarks.train_throughput                      # all agents and modes (~10 min, 2 cores)
    python -m benchmarks.train_throughput --agents fidec --modes eager-reference,fused
    python -m benchmarks.train_throughput --toy                # also the README's toy command
    python -m benchmarks.train_throughput --jax-python /path/to/jax-venv/bin/python --authors-repo DIR
                                                               # + the authors' JAX update, same run

Paper size: B = 256, 4x512 networks, K = 8 Fisher samples, N = 10 Euler steps, obs 28 / action 5
(cube-single), the task preset's flags (FiDec: fisher_t 0.9, width 0.05; normalize_q_loss).

Modes
  eager-reference   the straightforward port the targets are measured against: plain nn.Linear chain
                    (ATen GELU), the K Fisher rollouts of SPEC 4 run one sample at a time (K rollouts of B
                    rows), the authors' diagnostic `mse` rollout on every update, reference penalty,
                    foreach Adam.
  reference-batched the same plain kernels with the K Fisher rollouts as one (B*K)-row batch and the
                    diagnostic rollout only on logging steps (what `rollout_backend=reference` runs).
  fused             the defaults: fused rollouts, compiled GELU, fused penalty, fused Adam.
  fused-bf16        fused with bf16 rollout GEMMs (rollout_dtype=bfloat16).
  compiled          fused with the loss under torch.compile (inductor; compile time excluded).
  fused-tf32        (GPU) fused with TF32 rollout GEMMs, the precision JAX uses for fp32 on Ampere+.
  compiled-cudagraphs (GPU) compiled with mode="reduce-overhead": the loss replayed as a CUDA graph.

Each case is warmed up, then the cases are timed round-robin, so a drift of a shared machine hits
them alike. Per case: p20/p50/p80 ms per update, updates/s, a breakdown measured separately in the
same run (rollouts / optimizer / the rest = losses + backward), model GFLOP per update (written out
in `update_flops`), achieved GFLOP/s and its fraction of this machine's GEMM peak measured in the
same run, and peak memory of one update. Rows go to results/train_throughput-<machine>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.common import cpu_peak_bytes, cuda_peak_bytes, machine, quantiles, timed, write_rows
from fisher_decorator.agents import FiDecAgent, make_agent
from fisher_decorator.trainer import resolve_configs

OBS, ACT, B = 28, 5, 256
TASK = "cube-single-play-singletask-task2-v0"
MODES = ("eager-reference", "reference-batched", "fused", "fused-bf16", "compiled")
GPU_MODES = ("fused-tf32", "compiled-cudagraphs")  # on a CUDA device only
PLAIN = dict(rollout_backend="reference", fused_gelu=False, fused_adam=False)


class PerSampleFiDec(FiDecAgent):
    """FiDec with SPEC 4's Fisher samples drawn one k at a time: K rollouts of B rows (the plain port)."""

    @torch.no_grad()
    def fisher_samples(self, obs, noise):
        B_, K, d = noise.fisher_noise.shape
        sampled = torch.stack([self.flow_actions(obs, noise.fisher_noise[:, k]) for k in range(K)], dim=1)
        t = noise.fisher_t[..., None]
        x_t = (1.0 - t) * noise.fisher_x0 + t * sampled
        velocity = self.velocity_field(
            obs.repeat_interleave(K, dim=0), x_t.reshape(B_ * K, d), noise.fisher_t.reshape(B_ * K, 1)
        )
        return velocity.reshape(B_, K, d), x_t


def mlp_flops(dims: list[int]) -> int:
    """Multiply-adds x 2 of one forward pass of an MLP with these layer widths, per row."""
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def update_flops(agent_name: str, cfg, with_mse: bool) -> dict[str, int]:
    """Model FLOPs of one update (the plain port's count; the fused path skips some of the first layer's).

    Forward passes count once, backward passes twice (activations and weights); the actor's Q term
    back-propagates through the critic to the actions only (about one forward). LayerNorm, GELU and
    the penalty are left out (elementwise, O(width) per row).
    """
    H, Hq, N = list(cfg.actor_hidden_dims), list(cfg.value_hidden_dims), cfg.flow_steps
    v = mlp_flops([OBS + ACT + 1, *H, ACT])  # velocity field
    r = mlp_flops([OBS + ACT, *H, ACT])  # residual / one-step policy
    q = 2 * mlp_flops([OBS + ACT, *Hq, 1])  # both critic heads
    K = getattr(cfg, "num_fisher_samples", 0) if agent_name == "fidec" else 0
    policy_rollout_rows = B  # critic target a' = policy(s')
    out = {
        "critic": 3 * B * q + B * q,  # Q(s,a) fwd+bwd, target heads on (s', a')
        "flow_matching": 3 * B * v,
        "q_term": 2 * B * q,  # critic on the actor's action, back to the action only
    }
    if agent_name == "fql":
        out["actor"] = 3 * B * r + B * r  # one-step policy on (s, z) with grad; on (s', z) for the target
        out["rollouts"] = N * B * v  # the distillation target euler(s, z)
    else:
        out["actor"] = 3 * B * r + policy_rollout_rows * r  # residual with grad; refine a' in the target
        out["rollouts"] = N * (policy_rollout_rows + B + B * K) * v  # a', base actions, Fisher samples
        out["fisher_velocity"] = B * K * v
    if with_mse:
        out["rollouts"] += N * B * v + (B * r if agent_name != "fql" else B * r)
    out["total"] = sum(out.values())
    return out


def make_case(agent_name: str, mode: str, device: str):
    overrides = {}
    if mode in ("eager-reference", "reference-batched"):
        overrides.update(PLAIN)
        if agent_name == "fidec":
            overrides["penalty_backend"] = "reference"
    if mode == "fused-bf16":
        overrides["rollout_dtype"] = "bfloat16"
    if mode == "fused-tf32":
        overrides["rollout_dtype"] = "tf32"
    if mode in ("compiled", "compiled-cudagraphs"):
        overrides["compile"] = True
    if mode == "compiled-cudagraphs":
        overrides["compile_mode"] = "reduce-overhead"
    _, cfg, _ = resolve_configs(TASK, agent_name, overrides=overrides)
    if agent_name == "fidec" and mode == "eager-reference":
        agent = PerSampleFiDec(cfg, OBS, ACT, seed=0, device=device)
    else:
        agent = make_agent(agent_name, OBS, ACT, cfg, seed=0, device=device)
    g = torch.Generator().manual_seed(0)
    batch = {
        "observations": torch.randn(B, OBS, generator=g),
        "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
        "rewards": -torch.rand(B, generator=g),
        "masks": torch.ones(B),
        "next_observations": torch.randn(B, OBS, generator=g),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    with_metrics = mode == "eager-reference"  # the authors compute `mse` (a policy rollout) every update
    return agent, batch, with_metrics


def time_rollouts(agent, batch, n: int) -> float:
    """Median seconds of the rollouts one update makes (the update's shapes and noises)."""
    noise = agent.sample_noise(B)
    obs, next_obs = batch["observations"], batch["next_observations"]
    calls = [(next_obs, noise.next_action), (obs, noise.base)]
    if hasattr(noise, "fisher_noise"):
        if isinstance(agent, PerSampleFiDec):
            calls += [(obs, noise.fisher_noise[:, k]) for k in range(noise.fisher_noise.shape[1])]
        else:
            calls.append((obs, noise.fisher_noise))
    ts = [timed(lambda: [agent.flow_actions(o, z) for o, z in calls]) for _ in range(n)]
    return sorted(ts)[len(ts) // 2]


def time_optimizer(agent, n: int) -> float:
    for p in agent.trainable_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    state = {k: v.clone() for k, v in agent.state_dict().items()}
    opt_state = agent.optimizer.state_dict()
    ts = [timed(agent.optimizer.step) for _ in range(n)]
    agent.load_state_dict(state)
    agent.optimizer.load_state_dict(opt_state)
    return sorted(ts)[len(ts) // 2]


def gemm_peak(dtype: torch.dtype, device: str, rounds: int = 20) -> float:
    """GFLOP/s of the best of ``rounds`` 2048x512x512 GEMMs in ``dtype`` (this run's reference peak)."""
    a, w = torch.randn(2048, 512, device=device).to(dtype), torch.randn(512, 512, device=device).to(dtype)
    out = torch.empty(2048, 512, dtype=dtype, device=device)
    for _ in range(3):
        torch.mm(a, w, out=out)
    best = min(timed(lambda: torch.mm(a, w, out=out)) for _ in range(rounds))
    return 2 * 2048 * 512 * 512 / best / 1e9


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
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
    return {"case": {"command": "fidec train --task toy-bandit"}, "wall_s": wall, "loadavg_before": load0,
            "loadavg_after": os.getloadavg()}  # fmt: skip


def time_authors_jax(args, agents: list[str]) -> list[dict]:
    """The authors' jitted update timed in a subprocess (their Python env), right after ours."""
    if not args.authors_repo:
        raise SystemExit("--jax-python needs --authors-repo (a checkout of ARC0127/Fisher-Decorator)")
    rows = []
    for name in (a for a in agents if a in ("fidec", "deflow")):
        cmd = [
            args.jax_python,
            "-m",
            "benchmarks.jax_update_timer",
            "--authors-repo",
            args.authors_repo,
            "--agent",
            name,
        ]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"the JAX timer failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"authors' JAX {name}: {res['p50_ms']:.1f} ms/update (jax {res['jax']})", flush=True)
        rows.append({
            "case": {"op": "train_update", "agent": name, "mode": "authors-jax", "B": B, "K": 8 if name == "fidec" else None,
                     "N": 10, "hidden": [512] * 4, "obs": OBS, "act": ACT, "mse_every_update": True},
            "p20_ms": res["p20_ms"], "p50_ms": res["p50_ms"], "p80_ms": res["p80_ms"],
            "updates_per_s": 1e3 / res["p50_ms"], "jax": res["jax"], "rounds": res["updates"],
        })  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="fidec,deflow,fql")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--jax-python",
        help="a Python with jax/flax/optax/ml_collections/distrax, to time the authors' update",
    )
    p.add_argument(
        "--authors-repo", help="checkout of github.com/ARC0127/Fisher-Decorator (with --jax-python)"
    )
    p.add_argument("--toy", action="store_true", help="also time the README's toy-bandit command")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    agents = args.agents.split(",")
    modes = args.modes.split(",")
    valid = MODES + (GPU_MODES if args.device.startswith("cuda") else ())
    unknown = sorted(set(modes) - set(valid))
    if unknown:
        p.error(f"unknown mode(s) {unknown} on {args.device}; choose from {list(valid)}")

    cases = {f"{a}/{m}": make_case(a, m, args.device) for a in agents for m in modes}
    for key, (agent, batch, with_metrics) in cases.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            agent.update(batch, with_metrics=with_metrics)
        print(f"warm-up {key:<28} {time.perf_counter() - t0:7.1f} s", flush=True)
    load0 = os.getloadavg()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for key, (agent, batch, with_metrics) in cases.items():
            times[key].append(timed(functools.partial(agent.update, batch, with_metrics=with_metrics)))
    jax_rows = time_authors_jax(args, agents) if args.jax_python else []
    peaks = {
        "float32": gemm_peak(torch.float32, args.device),
        "bfloat16": gemm_peak(torch.bfloat16, args.device),
    }
    load1 = os.getloadavg()

    rows = []
    for key, ts in times.items():
        agent, batch, with_metrics = cases[key]
        name, mode = key.split("/")
        p20, p50, p80 = quantiles(ts)
        rollout_s = time_rollouts(agent, batch, 3)
        optim_s = time_optimizer(agent, 5)
        flops = update_flops(name, agent.config, with_mse=with_metrics)
        peak = peaks["bfloat16" if mode == "fused-bf16" else "float32"]
        rows.append({
            "case": {"op": "train_update", "agent": name, "mode": mode, "B": B,
                     "K": getattr(agent.config, "num_fisher_samples", None), "N": agent.config.flow_steps,
                     "hidden": list(agent.config.actor_hidden_dims), "obs": OBS, "act": ACT,
                     "mse_every_update": with_metrics},
            "p20_ms": 1e3 * p20, "p50_ms": 1e3 * p50, "p80_ms": 1e3 * p80, "updates_per_s": 1.0 / p50,
            "breakdown_ms": {"rollouts": 1e3 * rollout_s, "optimizer": 1e3 * optim_s,
                             "losses_backward_other": 1e3 * (p50 - rollout_s - optim_s)},
            "update_flops": flops, "gflops_per_s": flops["total"] / p50 / 1e9,
            "gemm_peak_gflops": peak, "fraction_of_gemm_peak": flops["total"] / p50 / 1e9 / peak,
            "peak_bytes": (cuda_peak_bytes if args.device.startswith("cuda") else cpu_peak_bytes)(
                functools.partial(agent.update, batch, with_metrics=with_metrics)),
            "rounds": len(ts), "loadavg_before": load0, "loadavg_after": load1,
        })  # fmt: skip
    rows += jax_rows
    for name in agents:
        jax_row = next((r for r in jax_rows if r["case"]["agent"] == name), None)
        for r in rows:
            if jax_row is not None and r["case"]["agent"] == name:
                r["speedup_vs_authors_jax"] = jax_row["p50_ms"] / r["p50_ms"]
        base = next(
            (r for r in rows if r["case"]["agent"] == name and r["case"]["mode"] == "eager-reference"), None
        )
        for r in rows:
            if r["case"]["agent"] == name and base is not None:
                r["speedup_vs_eager_reference"] = base["p50_ms"] / r["p50_ms"]
    for r in rows:
        c = r["case"]
        if c["mode"] == "authors-jax":
            print(f"{c['agent']:<7} {c['mode']:<18} p50 {r['p50_ms']:8.1f} ms  {r['updates_per_s']:6.2f}/s  "
                  f"x{r.get('speedup_vs_eager_reference', float('nan')):.2f}  (jax {r['jax']})")  # fmt: skip
            continue
        print(f"{c['agent']:<7} {c['mode']:<18} p50 {r['p50_ms']:8.1f} ms  {r['updates_per_s']:6.2f}/s  "
              f"x{r.get('speedup_vs_eager_reference', float('nan')):.2f}  rollouts {r['breakdown_ms']['rollouts']:6.1f} "
              f"optim {r['breakdown_ms']['optimizer']:5.1f}  {r['gflops_per_s']:6.1f} GFLOP/s "
              f"({100 * r['fraction_of_gemm_peak']:.0f}% of GEMM peak)")  # fmt: skip
    print(f"GEMM peak this run: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")
    if args.toy:
        toy = time_toy()
        rows.append(toy)
        print(f"fidec train --task toy-bandit: {toy['wall_s']:.1f} s wall")
    path = write_rows("train_throughput", machine("cuda" if args.device.startswith("cuda") else "cpu"), rows)
    print(f"rows written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
