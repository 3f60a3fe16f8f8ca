"""Microbenchmarks of the flow-field ops against their references: euler_rollout and velocity_jvp.

    pytest benchmarks/bench_mlp_ops.py      # rows to results/mlp_ops-<machine>.json

Sizes are those of a FiDec update on cube-single (obs 28, action 5, 4x512 velocity MLP, N = 10
Euler steps): K = 1 is a rollout of B states (critic targets, base actions), K = 8 the Fisher
samples. The reference rollout is the straightforward port (the whole MLP on concat [s, x, t] at
every step); the fused one is fisher_decorator.ops.euler_rollout.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import cpu_peak_bytes, cuda_peak_bytes, quantiles
from fdkernels.euler_rollout import euler_rollout_ref
from fisher_decorator.ops import RolloutWorkspace, available_backends, euler_rollout, velocity_jvp
from fisher_decorator.ops.euler_rollout import onednn_linear_gelu_available

OBS, D, HIDDEN, STEPS = 28, 5, (512, 512, 512, 512), 10


def _params(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = (OBS + D + 1, *HIDDEN, D)
    out = []
    for i in range(len(dims) - 1):
        bound = (6.0 / (dims[i] + dims[i + 1])) ** 0.5
        w = (torch.rand(dims[i + 1], dims[i], generator=g) * 2 - 1) * bound
        out.append((w.to(device), torch.zeros(dims[i + 1], device=device)))
    return out


def _flops_per_row() -> int:
    dims = (OBS + D + 1, *HIDDEN, D)
    return sum(2 * dims[i] * dims[i + 1] for i in range(len(dims) - 1))


def _rollout_variants(device: str) -> list[str]:
    if device == "cuda":
        return ["reference", "cuda", "cuda-tf32", "cuda-bf16", "triton", "triton-tf32"]
    out = ["reference"]
    if "cpu" in available_backends():
        out += ["cpu-mm", "cpu-mm-bf16"]
        if onednn_linear_gelu_available():
            out += ["cpu-onednn", "cpu-onednn-bf16"]
    return out


def _record(benchmark, bench_rows, device, case, run, flops):
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    p20, p50, p80 = (1e3 * q for q in quantiles(benchmark.stats.stats.data))
    peak = cuda_peak_bytes(run) if device == "cuda" else cpu_peak_bytes(run)
    bench_rows.append({
        "case": case, "p20_ms": p20, "p50_ms": p50, "p80_ms": p80,
        "rounds": len(benchmark.stats.stats.data), "peak_bytes": peak, "gflops": flops / (p50 * 1e-3) / 1e9,
    })  # fmt: skip


@pytest.mark.parametrize("K", [1, 8])
@pytest.mark.parametrize("variant", _rollout_variants("cuda" if torch.cuda.is_available() else "cpu"))
def test_euler_rollout(benchmark, bench_rows, device, variant, K):
    B = 256
    params = _params(device)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(B, OBS, generator=g).to(device)
    noise = torch.randn(B, K, D, generator=g).to(device)
    ws = RolloutWorkspace()
    parts = variant.split("-")
    backend = parts[0]
    rollout_dtype = {"bf16": "bfloat16", "tf32": "tf32"}.get(parts[-1], "float32")
    impl = parts[1] if len(parts) > 1 and parts[1] in ("mm", "onednn") else "auto"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if backend == "reference":
        fn = lambda: euler_rollout_ref(params, s, noise, STEPS)
    else:
        fn = lambda: euler_rollout(params, s, noise, STEPS, backend=backend, rollout_dtype=rollout_dtype,
                                   workspace=ws, hidden_impl=impl)  # fmt: skip

    def run():
        out = fn()
        sync()
        return out

    case = {
        "op": "euler_rollout",
        "backend": variant,
        "mode": "fwd",
        "B": B,
        "K": K,
        "d": D,
        "device": device,
    }
    _record(benchmark, bench_rows, device, case, run, STEPS * B * K * _flops_per_row())


def _jvp_backends(device: str) -> list[str]:
    """The backends that run on ``device`` (the compiled ``cpu`` one takes CPU tensors only)."""
    here = ("cuda", "triton") if device == "cuda" else ("cpu",)
    return ["reference"] + [b for b in here if b in available_backends()]


@pytest.mark.parametrize("backend", _jvp_backends("cuda" if torch.cuda.is_available() else "cpu"))
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_velocity_jvp(benchmark, bench_rows, device, backend, mode):
    N = 2048  # B * K rows of the jacobian Fisher estimator
    params = _params(device)
    g = torch.Generator().manual_seed(2)
    s, x = torch.randn(N, OBS, generator=g).to(device), torch.randn(N, D, generator=g).to(device)
    t = torch.full((N,), 0.9, device=device)
    tangent = torch.randn(N, D, generator=g).to(device).requires_grad_(mode == "fwdbwd")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        _, jv = velocity_jvp(params, s, x, t, tangent, backend=backend)
        if mode == "fwdbwd":
            torch.autograd.grad(jv.square().sum(), tangent)
        sync()

    case = {"op": "velocity_jvp", "backend": backend, "mode": mode, "B": N, "K": 1, "d": D, "device": device}
    _record(benchmark, bench_rows, device, case, run, (2 if mode == "fwd" else 3) * N * _flops_per_row())
