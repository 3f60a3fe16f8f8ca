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
  fused-mkl         fused with every GEMM on MKL (gemm_path=mkl: the path before the per-machine probe).
  fused-bf16        fused with bf16 rollout GEMMs (rollout_dtype=bfloat16).
  fused-bf16-autocast  fused-bf16 with the networks' forward/backward under bf16 autocast (autocast=bfloat16):
                    every GEMM of the update in bf16; parameters, Adam and losses fp32.
  compiled          fused with the loss under torch.compile (inductor; compile time excluded).
  fused-tf32        (GPU) fused with TF32 rollout GEMMs, the precision JAX uses for fp32 on Ampere+.
  compiled-cudagraphs (GPU) compiled with mode="reduce-overhead": the loss replayed as a CUDA graph.

"fused" runs on the GEMM path this machine's probe chose (fisher_decorator.gemm_path; the choice is in
the rows' machine record).

    python -m benchmarks.train_throughput --loaded --agents fidec --modes fused   # + idle vs loaded

--loaded: each of those cases in a fresh process per OpenMP wait policy (libgomp's default spinning, and the
PASSIVE policy `import fisher_decorator` sets), rounds alternating between idle and with one busy-loop
process (started here, timed once it runs) on the same CPUs; rows give p50 idle, p50 loaded and the ratio.

Each case is warmed up, then the cases are timed round-robin, so a drift of a shared machine hits
them alike. Per case: p20/p50/p80 ms per update, updates/s, a breakdown measured separately in the
same run (rollouts / optimizer / the rest = losses + backward), model GFLOP per update (written out
in `update_flops`), achieved GFLOP/s and its fraction of this machine's GEMM peak measured in the
same run, and peak memory of one update. Rows go to results/train_throughput-<machine>.json.
"""

from __future__ import annotations

# isort: off
import fisher_decorator  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads; fisher_decorator.threads)

# isort: on
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
from fisher_decorator import gemm_path
from fisher_decorator.agents import FiDecAgent, make_agent
from fisher_decorator.flows import flow_rollouts
from fisher_decorator.ops.euler_rollout import packed_linear_available
from fisher_decorator.threads import configure_threads
from fisher_decorator.trainer import resolve_configs

OBS, ACT, B = 28, 5, 256
TASK = "cube-single-play-singletask-task2-v0"
MODES = (
    "eager-reference",
    "reference-batched",
    "fused",
    "fused-mkl",
    "fused-bf16",
    "fused-bf16-autocast",
    "compiled",
)
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

    def update_rollouts(self, batch, noise, *, with_metrics):
        return []  # the plain port makes each rollout where the loss needs it


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
    if mode in ("fused-bf16", "fused-bf16-autocast"):
        overrides["rollout_dtype"] = "bfloat16"
    if mode == "fused-bf16-autocast":
        overrides["autocast"] = "bfloat16"
    if mode == "fused-mkl":
        overrides["gemm_path"] = "mkl"
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


def use_path(agent) -> dict:
    """The case's GEMM path (process-wide: the last agent built sets it, so each case sets its own before
    it runs); returns the record (setting and choice per dtype)."""
    return gemm_path.configure_gemm_path(agent.config.gemm_path, agent.device)


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
    grouped = agent.update_rollouts(batch, noise, with_metrics=False)
    if len(grouped) > 1:  # what the update runs: one grouped rollout (fisher_decorator.flows.flow_rollouts)
        field = agent.velocity_field
        pairs = [(field.select_obs(o), z) for o, z in grouped]
        ts = [
            timed(lambda: flow_rollouts(field, pairs, agent.config.flow_steps, agent.rollout_options))
            for _ in range(n)
        ]
        return sorted(ts)[len(ts) // 2]
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
    """GFLOP/s of the best of ``rounds`` 2048x512x512 GEMMs in ``dtype`` on the fastest of MKL (torch.mm) and,
    on a CPU, oneDNN's linear on a plain and on a packed weight (this run's reference peak)."""
    a, w = torch.randn(2048, 512, device=device).to(dtype), torch.randn(512, 512, device=device).to(dtype)
    out = torch.empty(2048, 512, dtype=dtype, device=device)
    fns = [lambda: torch.mm(a, w, out=out)]
    if device == "cpu" and gemm_path.onednn_available():
        fns.append(lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
        if packed_linear_available():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 2048)
            fns.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    for fn in fns:
        for _ in range(3):
            fn()
    best = min(timed(fn) for _ in range(rounds) for fn in fns)
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


class JaxTimer:
    """The authors' jitted update in a server subprocess (their Python env; ``jax_update_timer --serve``),
    timed on request between our rounds, so a shared host's drift hits both sides alike."""

    def __init__(self, args, agent: str):
        if not args.authors_repo:
            raise SystemExit("--jax-python needs --authors-repo (a checkout of ARC0127/Fisher-Decorator)")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cmd = [args.jax_python, "-m", "benchmarks.jax_update_timer", "--authors-repo", args.authors_repo,
               "--agent", agent, "--serve"]  # fmt: skip
        self.agent = agent
        self.proc = subprocess.Popen(
            cmd, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.info = self._read()
        self.ms: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the JAX timer failed:\n{self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def time(self, n: int = 1) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        self.ms += self._read()["ms"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)

    def row(self) -> dict:
        p20, p50, p80 = quantiles([m / 1e3 for m in self.ms])
        print(f"authors' JAX {self.agent}: {1e3 * p50:.1f} ms/update (jax {self.info['jax']}, interleaved)")
        return {
            "case": {"op": "train_update", "agent": self.agent, "mode": "authors-jax", "B": B,
                     "K": 8 if self.agent == "fidec" else None, "N": 10, "hidden": [512] * 4, "obs": OBS,
                     "act": ACT, "mse_every_update": True},
            "p20_ms": 1e3 * p20, "p50_ms": 1e3 * p50, "p80_ms": 1e3 * p80, "updates_per_s": 1.0 / p50,
            "jax": self.info["jax"], "rounds": len(self.ms), "interleaved_with_ours": True,
            "loadavg": os.getloadavg(),
        }  # fmt: skip


BUSY_LOOP = "print('running', flush=True)\nwhile True:\n    pass\n"
# libgomp's spin count when no wait policy is set; given explicitly, it wins over the PASSIVE policy that
# `import fisher_decorator` sets, so a child can run with libgomp's default waiting
WAIT_POLICIES = {"spin": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}  # fmt: skip


def start_busy_loop() -> subprocess.Popen:
    """One other process busy on this machine's CPUs; returns once it runs (it prints, then spins)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "running":
        proc.kill()
        raise RuntimeError("the busy-loop process did not start")
    return proc


def loaded_child(key: str, rounds: int, warmup: int, device: str) -> dict:
    """In this (fresh) process: p50 of one case idle and with a busy loop beside it, rounds alternating."""
    name, mode = key.split("/")
    agent, batch, with_metrics = make_case(name, mode, device)
    step = functools.partial(agent.update, batch, with_metrics=with_metrics)
    for _ in range(warmup):
        step()
    idle, loaded = [], []
    load0 = os.getloadavg()
    for _ in range(rounds):
        idle += [timed(step) for _ in range(2)]
        busy = start_busy_loop()
        try:
            loaded += [timed(step) for _ in range(2)]
        finally:
            busy.kill()
            busy.wait()
    p50_idle, p50_loaded = quantiles(idle)[1], quantiles(loaded)[1]
    return {"idle_p50_ms": 1e3 * p50_idle, "loaded_p50_ms": 1e3 * p50_loaded, "loaded_over_idle": p50_loaded / p50_idle,
            "idle_ms": [1e3 * t for t in idle], "loaded_ms": [1e3 * t for t in loaded],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "torch_threads": torch.get_num_threads(), "loadavg_before": load0, "loadavg_after": os.getloadavg()}  # fmt: skip


def time_loaded(keys: list[str], args) -> list[dict]:
    """Each case idle vs loaded, in a fresh process per OpenMP wait policy (libgomp reads it at start)."""
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for key in keys:
        for policy, env in WAIT_POLICIES.items():
            full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--loaded-child", key, "--rounds",
                   str(args.rounds), "--warmup", str(args.warmup), "--device", args.device]  # fmt: skip
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, cwd=root, env={**full, **env}
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the loaded run of {key} ({policy}) failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            name, mode = key.split("/")
            print(f"{key:<28} {policy:<8} idle {res['idle_p50_ms']:7.1f} ms  loaded {res['loaded_p50_ms']:7.1f} ms  "
                  f"x{res['loaded_over_idle']:.2f}", flush=True)  # fmt: skip
            rows.append({"case": {"op": "train_update_loaded", "agent": name, "mode": mode, "omp_wait": policy,
                                  "busy_processes": 1, "B": B, "obs": OBS, "act": ACT}, **res})  # fmt: skip
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
    p.add_argument("--loaded", action="store_true", help="also time each case idle vs beside a busy process")
    p.add_argument("--loaded-only", action="store_true", help="only the --loaded rows")
    p.add_argument("--loaded-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configure_threads(args.threads)  # 0: the CPUs this process may use (what training runs use)
    if args.loaded_child:
        print(json.dumps(loaded_child(args.loaded_child, args.rounds, args.warmup, args.device)))
        return 0
    agents = args.agents.split(",")
    modes = args.modes.split(",")
    valid = MODES + (GPU_MODES if args.device.startswith("cuda") else ())
    unknown = sorted(set(modes) - set(valid))
    if unknown:
        p.error(f"unknown mode(s) {unknown} on {args.device}; choose from {list(valid)}")

    if args.loaded_only:
        path = write_rows(
            "train_throughput", machine(_kind(args.device)), time_loaded(_keys(agents, modes), args)
        )
        print(f"rows written to {path}")
        return 0
    cases = {f"{a}/{m}": make_case(a, m, args.device) for a in agents for m in modes}
    for key, (agent, batch, with_metrics) in cases.items():
        t0 = time.perf_counter()
        use_path(agent)
        for _ in range(args.warmup):
            agent.update(batch, with_metrics=with_metrics)
        print(f"warm-up {key:<28} {time.perf_counter() - t0:7.1f} s", flush=True)
    # the JAX update timed in every round, between ours: a shared host's drift (GEMM throughput here moved
    # between 147 and 196 GFLOP/s from one second to the next) hits both sides alike
    jax = [JaxTimer(args, a) for a in agents if a in ("fidec", "deflow")] if args.jax_python else []
    load0 = os.getloadavg()
    times = {k: [] for k in cases}
    try:
        for _ in range(args.rounds):
            for key, (agent, batch, with_metrics) in cases.items():
                use_path(agent)
                times[key].append(timed(functools.partial(agent.update, batch, with_metrics=with_metrics)))
            for timer in jax:
                timer.time(1)
    finally:
        for timer in jax:
            timer.close()
    jax_rows = [timer.row() for timer in jax]
    peaks = {
        "float32": gemm_peak(torch.float32, args.device),
        "bfloat16": gemm_peak(torch.bfloat16, args.device),
    }
    load1 = os.getloadavg()

    rows = []
    for key, ts in times.items():
        agent, batch, with_metrics = cases[key]
        name, mode = key.split("/")
        gemm = use_path(agent)
        p20, p50, p80 = quantiles(ts)
        rollout_s = time_rollouts(agent, batch, 3)
        optim_s = time_optimizer(agent, 5)
        flops = update_flops(name, agent.config, with_mse=with_metrics)
        peak = peaks["bfloat16" if mode.startswith("fused-bf16") else "float32"]
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
            # the roofline: every model FLOP at the run's best GEMM rate, nothing else costing anything
            "floor_ms_at_gemm_peak": flops["total"] / peak / 1e6,
            "peak_bytes": (cuda_peak_bytes if args.device.startswith("cuda") else cpu_peak_bytes)(
                functools.partial(agent.update, batch, with_metrics=with_metrics)),
            "rounds": len(ts), "loadavg_before": load0, "loadavg_after": load1, "gemm_path": gemm,
        })  # fmt: skip
    rows += jax_rows
    for name in agents:
        jax_row = next((r for r in jax_rows if r["case"]["agent"] == name), None)
        for r in rows:
            if jax_row is not None and r["case"]["agent"] == name:
                r["speedup_vs_authors_jax"] = jax_row["p50_ms"] / r["p50_ms"]
                if "floor_ms_at_gemm_peak" in r:  # what no implementation of these FLOPs can beat here
                    r["speedup_vs_authors_jax_at_gemm_peak"] = jax_row["p50_ms"] / r["floor_ms_at_gemm_peak"]
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
        jax_note = ""
        if "speedup_vs_authors_jax" in r:
            jax_note = (f"  {r['speedup_vs_authors_jax']:.2f}x JAX (at most "
                        f"{r['speedup_vs_authors_jax_at_gemm_peak']:.2f}x at GEMM peak)")  # fmt: skip
        print(f"{c['agent']:<7} {c['mode']:<18} p50 {r['p50_ms']:8.1f} ms  {r['updates_per_s']:6.2f}/s  "
              f"x{r.get('speedup_vs_eager_reference', float('nan')):.2f}  rollouts {r['breakdown_ms']['rollouts']:6.1f} "
              f"optim {r['breakdown_ms']['optimizer']:5.1f}  {r['gflops_per_s']:6.1f} GFLOP/s "
              f"({100 * r['fraction_of_gemm_peak']:.0f}% of GEMM peak){jax_note}")  # fmt: skip
    print(f"GEMM peak this run: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")
    if args.loaded:
        rows += time_loaded(list(cases), args)
    if args.toy:
        toy = time_toy()
        rows.append(toy)
        print(f"fidec train --task toy-bandit: {toy['wall_s']:.1f} s wall")
    path = write_rows("train_throughput", machine("cuda" if args.device.startswith("cuda") else "cpu"), rows)
    print(f"rows written to {path}")
    return 0


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _keys(agents: list[str], modes: list[str]) -> list[str]:
    return [f"{a}/{m}" for a in agents for m in modes]


if __name__ == "__main__":
    sys.exit(main())
