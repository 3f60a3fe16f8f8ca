"""Microbenchmark of fisher_penalty: fwd, bwd and fwd+bwd of each backend against the reference.

    pytest benchmarks/bench_fisher_penalty.py                 # the full grid (~10 min on 2 CPU cores)
    pytest benchmarks/bench_fisher_penalty.py -k "256-8-21"   # the target shape only
    python -m benchmarks.report                               # tables of ratios into benchmarks/README.md

Rows (p20/p50/p80 in ms, peak memory, machine, versions, commit) go to
results/fisher_penalty-<machine>.json. The reference materialises a d x d metric per sample
(the authors' way): its cost and memory grow with d^2, the fused kernels' with K d.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from benchmarks.common import cpu_peak_bytes, cuda_peak_bytes, quantiles
from fdkernels.fisher_penalty import fisher_penalty_ref
from fisher_decorator.ops import available_backends, fisher_penalty

SHAPES = list(itertools.product((256, 1024, 4096), (4, 8, 16), (5, 8, 21, 64, 256)))
MODES = ("fwd", "bwd", "fwdbwd")
REFERENCE_BYTES_LIMIT = 3 * 2**30  # the reference's [B, K, d, d] outer products beyond this are not run


def _backends() -> list[str]:
    have = available_backends()
    if torch.cuda.is_available():
        return ["reference", "reference_compiled"] + [b for b in ("cuda", "triton") if b in have]
    return ["reference"] + [b for b in ("cpu",) if b in have]


def _penalty_fn(backend: str, v, x, t):
    if backend == "reference_compiled":
        compiled = torch.compile(lambda r: fisher_penalty_ref(v, x, t, r)[0], fullgraph=True)
        return compiled
    return lambda r: fisher_penalty(v, x, t, r, backend=backend)[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,K,d", SHAPES, ids=[f"{b}-{k}-{d}" for b, k, d in SHAPES])
@pytest.mark.parametrize("backend", _backends())
def test_fisher_penalty(benchmark, bench_rows, device, backend, B, K, d, mode):
    ref_bytes = 4 * B * K * d * d
    if backend.startswith("reference") and ref_bytes > REFERENCE_BYTES_LIMIT:
        pytest.skip(f"reference needs ~{ref_bytes / 2**30:.1f} GiB for its [B, K, d, d] outer products")
    g = torch.Generator().manual_seed(0)
    v = torch.randn(B, K, d, generator=g).to(device)
    x = torch.randn(B, K, d, generator=g).to(device)
    t = (0.85 + 0.1 * torch.rand(B, K, generator=g)).to(device)
    r = (0.1 * torch.randn(B, d, generator=g)).to(device).requires_grad_(True)
    fn = _penalty_fn(backend, v, x, t)
    ones = torch.ones(B, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if mode == "fwd":
        step = lambda: fn(r)
    elif mode == "bwd":
        pen = fn(r)
        step = lambda: torch.autograd.grad(pen, r, grad_outputs=ones, retain_graph=True)
    else:
        step = lambda: torch.autograd.grad(fn(r).sum(), r)

    def run():
        out = step()
        sync()
        return out

    for _ in range(3):  # warm-up (and compile, for reference_compiled)
        run()
    benchmark.pedantic(run, rounds=max(5, min(200, int(2e7 // (B * K * d)))), iterations=1, warmup_rounds=1)
    p20, p50, p80 = (1e3 * q for q in quantiles(benchmark.stats.stats.data))
    peak = cuda_peak_bytes(run) if device == "cuda" else cpu_peak_bytes(run)
    bench_rows.append({
        "case": {"op": "fisher_penalty", "backend": backend, "mode": mode, "B": B, "K": K, "d": d,
                 "dtype": "float32", "device": device},
        "p20_ms": p20, "p50_ms": p50, "p80_ms": p80, "rounds": len(benchmark.stats.stats.data),
        "peak_bytes": peak,
    })  # fmt: skip
