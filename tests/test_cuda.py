"""The CUDA (and Triton-on-GPU) paths against the references the CPU tests use: the GELU kernels, velocity_jvp,
the fused rollout, the penalty in bf16/fp16, opcheck and torch.compile of the CUDA ops, one update of each
agent on the GPU against the same update on the CPU, backend="auto" on CUDA tensors, a CUDA-graph-captured
update, multi-seed on the GPU, and that bf16/tf32 rollouts really run in the precision asked for.

Every test is marked ``gpu`` (skipped without a CUDA device, see conftest.py); benchmarks/gpu_check.sh runs
them after building the CUDA kernels. Tolerances follow flash-attention's rule against an fp64 evaluation of
the same inputs: the GPU's error is at most twice the error of the same computation done another way in the
same dtype (plain PyTorch, or the CPU path the CPU tests check), plus ``n`` unit roundoffs of the result's
scale, n the longest chain of roundings in the computation (a sum of n products in precision u is off by at
most ~n u times its terms' magnitude).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fdkernels.euler_rollout import euler_rollout_ref
from fdkernels.fisher_penalty import HAS_TRITON, fisher_penalty_ref
from fdkernels.linear_gelu import gelu_tanh_grad_ref
from fdkernels.velocity_jvp import velocity_jvp_ref, velocity_mlp_ref
from fisher_decorator.agents import AGENTS, make_agent
from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.cli import main
from fisher_decorator.logger import read_csv
from fisher_decorator.multiseed import StackedAgents, unstack_info
from fisher_decorator.ops import (
    RolloutWorkspace,
    backend_info,
    compiled_module,
    euler_rollout,
    fisher_penalty,
    fisher_quadratic_jacobian,
    gelu_tanh,
    velocity_jvp,
)
from fisher_decorator.ops._extension import resolve_backend
from fisher_decorator.trainer import CHECKPOINT
from tests.mlp_cases import make_batch, make_mlp
from tests.test_agents_fast_paths import PLAIN
from tests.test_agents_update import ACT, OBS, SMALL, B, batch
from tests.test_euler_rollout import CASES as ROLLOUT_CASES
from tests.test_euler_rollout import _id as rollout_id
from tests.test_euler_rollout import _inputs as rollout_inputs
from tests.test_fisher_penalty import LOWP_CASES, check_reduced_precision, make_inputs, run
from tests.test_gelu_ops import IDS as GELU_IDS
from tests.test_gelu_ops import TOL as GELU_TOL
from tests.test_multiseed import cli as train_cli
from tests.test_velocity_jvp import CASES as JVP_CASES
from tests.test_velocity_jvp import _case_id as jvp_id
from tests.utils import assert_verbose_allclose

pytestmark = pytest.mark.gpu

CUDA = "cuda"
F64 = torch.float64
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
GPU_BACKENDS = ["cuda", pytest.param("triton", marks=needs_triton)]
FP = [torch.float32, torch.float64]
FP_IDS = ["fp32", "fp64"]
# Unit roundoff of the GEMM inputs in each reduced precision: bf16 keeps 8 bits, tf32 11.
LOWP_U = {"bfloat16": 2.0**-8, "tf32": 2.0**-11}


@pytest.fixture(autouse=True)
def _full_fp32_matmuls():
    """fp32 GEMMs in full fp32 unless a test asks for tf32 (and no test leaks tf32 into the next)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    assert torch.backends.cuda.matmul.allow_tf32 is False, "a tf32 switch was left on"
    torch.backends.cuda.matmul.allow_tf32 = old[0]
    torch.set_float32_matmul_precision(old[1])


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def max_err(a: torch.Tensor, exact: torch.Tensor) -> float:
    return (
        (a.detach().double().cpu() - exact.detach().double().cpu()).abs().max().item()
        if exact.numel()
        else 0.0
    )


def assert_within_rounding(got, plain, exact, *, dtype, n: int, name: str) -> None:
    """|got - exact| <= 2 |plain - exact| + n u max|exact| (max over the tensor): ``plain`` is the same
    computation done another way in ``dtype``, ``exact`` its fp64 evaluation from the same inputs."""
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    err, err_plain = max_err(got, exact), max_err(plain, exact)
    scale = exact.detach().double().abs().max().item() if exact.numel() else 0.0
    bound = 2 * err_plain + n * unit_roundoff(dtype) * scale
    assert err <= bound, (
        f"{name}: |got - fp64| = {err:.3g} > 2 x {err_plain:.3g} (plain {dtype}) + {n} u x {scale:.3g} = {bound:.3g}"
    )


def to_cuda(params):
    return [(w.to(CUDA), b.to(CUDA)) for w, b in params]


# ------------------------------------------------------------------------------------------ GELU kernels
@pytest.mark.parametrize("dtype", list(GELU_TOL), ids=GELU_IDS)
def test_gelu_fwd_cuda_matches_fp64_and_the_cpu_kernel(dtype):
    """The CUDA kernel runs csrc/gelu_row.h like the CPU kernel: same tolerance against fp64 GELU, tails too."""
    x64 = torch.cat([torch.linspace(-12, 12, 200_001, dtype=F64), 3 * torch.randn(50_000, dtype=F64)])
    x = x64.to(dtype)
    y, dy = torch.ops.fidec.gelu_fwd(x.to(CUDA))
    assert y.device.type == "cuda" and y.dtype == dtype and dy.dtype == dtype
    xd = x.double()
    rtol, atol = GELU_TOL[dtype]
    assert_verbose_allclose(y, F.gelu(xd, approximate="tanh").to(dtype), rtol=rtol, atol=atol, name="gelu")
    assert_verbose_allclose(dy, gelu_tanh_grad_ref(xd).to(dtype), rtol=rtol, atol=atol, name="gelu'")
    y_cpu, dy_cpu = torch.ops.fidec.gelu_fwd(x)
    assert_verbose_allclose(y, y_cpu, rtol=rtol, atol=atol, name="gelu cuda vs cpu")
    assert_verbose_allclose(dy, dy_cpu, rtol=rtol, atol=atol, name="gelu' cuda vs cpu")


def test_gelu_fwd_cuda_saturation_nan_and_empty():
    x = torch.tensor([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30, float("inf")], device=CUDA)
    y, dy = torch.ops.fidec.gelu_fwd(x)
    assert torch.isfinite(y[:-1]).all() and torch.isfinite(dy).all()
    assert_verbose_allclose(y[1:-2], torch.tensor([0.0, 0.0, 0.0, 50.0, 1e4]), rtol=1e-6, atol=1e-6)
    assert_verbose_allclose(dy[1:-2], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]), rtol=1e-6, atol=1e-6)
    assert y[-1].item() == float("inf")
    assert torch.isnan(torch.ops.fidec.gelu_fwd(torch.tensor([float("nan")], device=CUDA))[0]).all()
    e, de = torch.ops.fidec.gelu_fwd(torch.empty(0, 7, device=CUDA))
    assert e.shape == (0, 7) and de.shape == (0, 7)


@pytest.mark.parametrize("dtype", list(GELU_TOL), ids=GELU_IDS)
@pytest.mark.parametrize(
    "G,R,H", [(1, 1, 1), (3, 2, 7), (2, 8, 33), (5, 1, 512), (16, 8, 100), (256, 8, 512)]
)
def test_bias_gelu_cuda_matches_fp64(G, R, H, dtype):
    h = (3 * torch.randn(G, R, H, dtype=F64)).to(dtype)
    b = torch.randn(G, H, dtype=F64).to(dtype)
    want = F.gelu(h.double() + b.double()[:, None, :], approximate="tanh")
    hc = h.to(CUDA)
    assert torch.ops.fidec.bias_gelu_(hc, b.to(CUDA)) is None  # in place
    rtol, atol = GELU_TOL[dtype]
    assert_verbose_allclose(hc, want.to(dtype), rtol=rtol, atol=atol, name="bias_gelu_")


def test_bias_gelu_cuda_grid_stride_loop():
    """More elements than the launch's grid cap (65535 * 8 blocks of 256 threads): the kernels' grid-stride
    loop, a path only the GPU takes. Checked on the device (the tensor is 280 MB in bf16)."""
    G, R, H = 140, 1000, 1000  # 1.4e8 > 65535 * 8 * 256 = 1.34e8
    gen = torch.Generator(device=CUDA).manual_seed(0)
    h = (3 * torch.randn(G, R, H, device=CUDA, generator=gen)).bfloat16()
    b = torch.randn(G, H, device=CUDA, generator=gen).bfloat16()
    want = F.gelu(h.float() + b.float()[:, None, :], approximate="tanh")  # fp32: exact enough for bf16
    torch.ops.fidec.bias_gelu_(h, b)
    rtol, atol = GELU_TOL[torch.bfloat16]
    excess = (h.float() - want).abs() - (atol + rtol * want.abs())
    worst = int(excess.flatten().argmax())
    assert excess.flatten()[worst].item() <= 0, (
        f"bias_gelu_ beyond tolerance at flat index {worst} of {h.numel()}"
    )


@pytest.mark.parametrize("dtype", list(GELU_TOL), ids=GELU_IDS)
@pytest.mark.parametrize("N,H", [(1, 1), (3, 7), (17, 33), (4, 512), (2048, 512)])
def test_gelu_jvp_cuda_matches_autograd(N, H, dtype):
    h = (3 * torch.randn(N, H, dtype=F64)).to(dtype)
    b = torch.randn(H, dtype=F64).to(dtype)
    th = torch.randn(N, H, dtype=F64).to(dtype)
    y, ty, dy = torch.ops.fidec.gelu_jvp(h.to(CUDA), b.to(CUDA), th.to(CUDA))
    assert y.device.type == "cuda" and ty.dtype == dtype
    hd, bd, thd = h.double(), b.double(), th.double()
    y_ref, ty_ref = torch.func.jvp(lambda z: F.gelu(z + bd, approximate="tanh"), (hd,), (thd,))
    rtol, atol = GELU_TOL[dtype]
    assert_verbose_allclose(y, y_ref.to(dtype), rtol=rtol, atol=atol, name="y")
    assert_verbose_allclose(dy, gelu_tanh_grad_ref(hd + bd).to(dtype), rtol=rtol, atol=atol, name="dy")
    assert_verbose_allclose(ty, ty_ref.to(dtype), rtol=rtol, atol=atol * 4, name="ty")


@pytest.mark.parametrize("dtype", FP, ids=FP_IDS)
def test_gelu_tanh_autograd_cuda(dtype):
    x = torch.randn(7, 33, dtype=dtype, device=CUDA, requires_grad=True)
    (g,) = torch.autograd.grad(gelu_tanh(x).square().sum(), x)
    (g_ref,) = torch.autograd.grad(F.gelu(x, approximate="tanh").square().sum(), x)
    rtol, atol = GELU_TOL[dtype]
    assert_verbose_allclose(g, g_ref, rtol=rtol * 4, atol=atol * 4, name="grad")
    if dtype == F64:
        assert torch.autograd.gradcheck(gelu_tanh, (x[:2, :5].detach().clone().requires_grad_(True),))


def test_cuda_op_errors_name_the_argument():
    h, b = torch.randn(2, 3, 4, device=CUDA), torch.randn(2, 4, device=CUDA)
    with pytest.raises(RuntimeError, match=r"bias must be \[G, H\]"):
        torch.ops.fidec.bias_gelu_(h, b[:1])
    with pytest.raises(RuntimeError, match="h must be a contiguous"):
        torch.ops.fidec.bias_gelu_(torch.randn(2, 4, 3, device=CUDA).transpose(1, 2), b)
    with pytest.raises(RuntimeError, match="bias must have h's dtype and device"):
        torch.ops.fidec.bias_gelu_(h, b.cpu())
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.fidec.gelu_jvp(h[0], b[0], h[0].double())
    v, x, t, r = make_inputs(3, 4, 5, torch.float32, device=CUDA)
    with pytest.raises(ValueError, match="x_t is on cpu but velocity is on cuda"):
        fisher_penalty(v, x.cpu(), t, r)
    with pytest.raises(ValueError, match="backend 'cpu' needs cpu tensors"):
        fisher_penalty(v, x, t, r, backend="cpu")


# ------------------------------------------------------------------------------------------ velocity_jvp
def _jvp_chain(obs: int, d: int, hidden: tuple[int, ...]) -> int:
    """Longest chain of roundings of v and J v: each layer's dot product, twice (primal and tangent)."""
    return 2 * (obs + d + 1 + sum(hidden)) + 8


@pytest.mark.parametrize("dtype", FP, ids=FP_IDS)
@pytest.mark.parametrize("case", JVP_CASES, ids=jvp_id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_velocity_jvp_cuda_matches_fp64(backend, case, dtype):
    N, obs, d, hidden = case
    params = make_mlp(obs, d, hidden, dtype)
    s, x, t, tangent = make_batch(N, obs, d, dtype)
    v, jv = velocity_jvp(
        to_cuda(params), s.to(CUDA), x.to(CUDA), t.to(CUDA), tangent.to(CUDA), backend=backend
    )
    assert v.device.type == "cuda" and v.dtype == dtype and jv.dtype == dtype
    pc = to_cuda(params)
    v_plain, jv_plain = velocity_jvp_ref(pc, s.to(CUDA), x.to(CUDA), t.to(CUDA), tangent.to(CUDA))
    pd = [(w.double(), b.double()) for w, b in params]
    v64, jv64 = torch.func.jvp(
        lambda x_: velocity_mlp_ref(pd, s.double(), x_, t.double()), (x.double(),), (tangent.double(),)
    )
    n = _jvp_chain(obs, d, hidden)
    assert_within_rounding(v, v_plain, v64, dtype=dtype, n=n, name="v")
    assert_within_rounding(jv, jv_plain, jv64, dtype=dtype, n=n, name="jv")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_velocity_jvp_cuda_gradcheck_tangent_only(backend):
    params = to_cuda(make_mlp(4, 3, (9, 7)))
    s, x, t, tangent = (z.to(CUDA) for z in make_batch(5, 4, 3))
    tangent.requires_grad_(True)
    f = lambda tan: velocity_jvp(params, s, x, t, tan, backend=backend)[1]
    assert torch.autograd.gradcheck(f, (tangent,))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_velocity_jvp_cuda_bf16_close_to_fp64(backend):
    """test_velocity_jvp_bf16_close_to_fp64 on the GPU: no worse than torch.func.jvp in bf16 (+ one bf16
    rounding of the result's scale)."""
    params = make_mlp(28, 5, (64, 64), F64)
    s, x, t, tangent = make_batch(16, 28, 5, F64)
    bf = lambda z: z.to(device=CUDA, dtype=torch.bfloat16)
    pb = [(bf(w), bf(b)) for w, b in params]
    got = velocity_jvp(pb, bf(s), bf(x), bf(t), bf(tangent), backend=backend)
    plain = velocity_jvp_ref(pb, bf(s), bf(x), bf(t), bf(tangent))
    exact = velocity_jvp_ref(
        [(w.double(), b.double()) for w, b in pb], *(bf(z).double() for z in (s, x, t, tangent))
    )
    for name, a, p, e in zip(("v", "jv"), got, plain, exact):
        assert a.dtype == torch.bfloat16, name
        err, err_plain = max_err(a, e), max_err(p, e)
        assert err <= 2 * err_plain + LOWP_U["bfloat16"] * e.abs().max().item(), (name, err, err_plain)


@pytest.mark.parametrize("score", ["velocity", "tweedie"])
def test_jacobian_fisher_estimator_cuda_is_the_cpu_one(score):
    """fisher_quadratic_jacobian (the "jacobian" estimator) on CUDA against the CPU kernels, fp64."""
    params = make_mlp(6, 3, (32, 32), F64)
    g = torch.Generator().manual_seed(3)
    B_, K = 7, 5
    s, x_t = torch.randn(B_, 6, generator=g, dtype=F64), torch.randn(B_, K, 3, generator=g, dtype=F64)
    t = 0.8 + 0.15 * torch.rand(B_, K, generator=g, dtype=F64)
    r = 0.1 * torch.randn(B_, 3, generator=g, dtype=F64)
    got = fisher_quadratic_jacobian(
        to_cuda(params), s.to(CUDA), x_t.to(CUDA), t.to(CUDA), r.to(CUDA), score=score, backend="cuda"
    )
    cpu = fisher_quadratic_jacobian(params, s, x_t, t, r, score=score, backend="cpu")
    exact = fisher_quadratic_jacobian(params, s, x_t, t, r, score=score, backend="reference")
    assert_within_rounding(got, cpu, exact, dtype=F64, n=_jvp_chain(6, 3, (32, 32)) + K, name=score)


# ------------------------------------------------------------------------------------------ fused rollout
def _rollout_chain(obs: int, d: int, hidden: tuple[int, ...], steps: int) -> int:
    """Every Euler step runs the whole MLP on the state the previous steps rounded."""
    return steps * (obs + d + 1 + sum(hidden) + 4)


@pytest.mark.parametrize("dtype", FP, ids=FP_IDS)
@pytest.mark.parametrize("case", ROLLOUT_CASES, ids=rollout_id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_rollout_cuda_matches_fp64(backend, case, dtype):
    B_, K, obs, d, hidden, steps = case
    params = make_mlp(obs, d, hidden, dtype, scale=2.0)
    s, noise = rollout_inputs(B_, K, obs, d, dtype)
    got = euler_rollout(to_cuda(params), s.to(CUDA), noise.to(CUDA), steps, backend=backend)
    assert got.shape == noise.shape and got.dtype == dtype and got.device.type == "cuda"
    plain = euler_rollout_ref(to_cuda(params), s.to(CUDA), noise.to(CUDA), steps)
    exact = euler_rollout_ref(
        [(w.double(), b.double()) for w, b in params], s.double(), noise.double(), steps
    )
    assert_within_rounding(
        got, plain, exact, dtype=dtype, n=_rollout_chain(obs, d, hidden, steps), name="actions"
    )


def test_fused_rollout_cuda_workspace_sees_weight_changes():
    params = to_cuda([(w.float(), b.float()) for w, b in make_mlp(6, 3, (32, 32), F64)])
    s, noise = (z.to(CUDA) for z in rollout_inputs(8, 4, 6, 3, torch.float32))
    ws = RolloutWorkspace()
    kw = dict(backend="cuda", rollout_dtype="bfloat16", workspace=ws)
    a1 = euler_rollout(params, s, noise, 4, **kw).clone()
    n_buffers = len(ws._buffers)
    assert torch.equal(euler_rollout(params, s, noise, 4, **kw), a1) and len(ws._buffers) == n_buffers
    with torch.no_grad():
        params[1][0].mul_(-1.0)  # as an optimizer step does: the cached bf16 copy must follow
    a3 = euler_rollout(params, s, noise, 4, **kw)
    fresh = euler_rollout(
        params, s, noise, 4, backend="cuda", rollout_dtype="bfloat16", workspace=RolloutWorkspace()
    )
    assert torch.equal(a3, fresh) and not torch.equal(a3, a1)


def _paper_rollout():
    """A Fisher-sample rollout of the paper's shape: B = 256 states x K = 8 samples, 3 x 512 hidden, N = 10."""
    params64 = to_cuda(make_mlp(28, 5, (512, 512, 512), F64))
    s64, noise64 = (z.to(CUDA) for z in rollout_inputs(256, 8, 28, 5, F64))
    p32 = [(w.float(), b.float()) for w, b in params64]
    s32, n32 = s64.float(), noise64.float()
    exact = euler_rollout_ref([(w.double(), b.double()) for w, b in p32], s32.double(), n32.double(), 10)
    return p32, s32, n32, exact


@pytest.mark.parametrize("rollout_dtype", ["bfloat16", "tf32"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reduced_precision_rollout_is_used_and_within_its_rounding(backend, rollout_dtype):
    """bf16/tf32 GEMMs: no worse than the plain chain in that precision (+ one rounding of the result), and
    visibly coarser than fp32: 16x fp32's own error, far below the 2^13 (tf32) or 2^16 (bf16) ratio of the
    unit roundoffs and far above the 2x by which two fp32 summation orders differ."""
    p32, s32, n32, exact = _paper_rollout()
    fp32 = euler_rollout(p32, s32, n32, 10, backend=backend)
    got = euler_rollout(p32, s32, n32, 10, backend=backend, rollout_dtype=rollout_dtype)
    assert got.dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after the tf32 rollout
    if rollout_dtype == "bfloat16":
        plain = euler_rollout_ref(
            [(w.bfloat16(), b.bfloat16()) for w, b in p32], s32.bfloat16(), n32.bfloat16(), 10
        )
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            plain = euler_rollout_ref(p32, s32, n32, 10)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    err, err_plain, err_fp32 = max_err(got, exact), max_err(plain, exact), max_err(fp32, exact)
    scale = exact.abs().max().item()
    assert err <= 2 * err_plain + LOWP_U[rollout_dtype] * scale, (err, err_plain)
    assert err > 16 * err_fp32, (
        f"{rollout_dtype} rollout error {err:.3g} is fp32's ({err_fp32:.3g}): not {rollout_dtype}"
    )


@pytest.mark.parametrize("rollout_dtype", ["tf32", "bfloat16"])
def test_agent_reduced_precision_rollouts_really_run_in_it(rollout_dtype):
    """rollout_dtype="tf32" / "bfloat16" in an agent: its rollouts move away from fp32 by that precision's
    rounding (no worse than the plain chain in it), its update runs, and the tf32 switch is back off."""
    cfg = AGENTS["fidec"].config_class(actor_hidden_dims=(512, 512, 512), value_hidden_dims=(64, 64))
    fp32 = make_agent("fidec", 28, 5, cfg, seed=0, device=CUDA)
    lowp_cfg = dataclasses.replace(cfg, rollout_dtype=rollout_dtype)
    lowp = make_agent("fidec", 28, 5, lowp_cfg, seed=0, device=CUDA)
    g = torch.Generator().manual_seed(0)
    obs, noise = torch.randn(256, 28, generator=g).to(CUDA), torch.randn(256, 8, 5, generator=g).to(CUDA)
    params64 = [
        (w.double(), b.double()) for w, b in ((m.weight, m.bias) for m in fp32.velocity_field.linears)
    ]
    with torch.no_grad():
        exact = euler_rollout_ref(params64, obs.double(), noise.double(), cfg.flow_steps)
        err32 = max_err(fp32.flow_actions(obs, noise), exact)
        err_lowp = max_err(lowp.flow_actions(obs, noise), exact)
        if rollout_dtype == "bfloat16":
            bf = [(w.bfloat16(), b.bfloat16()) for w, b in params64]
            plain = euler_rollout_ref(bf, obs.bfloat16(), noise.bfloat16(), cfg.flow_steps)
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                p32 = [(w.float(), b.float()) for w, b in params64]
                plain = euler_rollout_ref(p32, obs, noise, cfg.flow_steps)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
    err_plain = max_err(plain, exact)
    assert err_lowp > 16 * err32, (
        f"{rollout_dtype} rollout error {err_lowp:.3g} vs fp32 {err32:.3g}: {rollout_dtype} was not used"
    )
    bound = 2 * err_plain + LOWP_U[rollout_dtype] * exact.abs().max().item()
    assert err_lowp <= bound, (err_lowp, err_plain)
    b = {k: v.to(CUDA) for k, v in _batch(28, 5, 256).items()}
    info = lowp.update(b)
    assert all(torch.isfinite(v).all() for v in info.values())
    assert torch.backends.cuda.matmul.allow_tf32 is False


def _batch(obs: int, act: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "observations": torch.randn(n, obs, generator=g),
        "actions": torch.rand(n, act, generator=g) * 2 - 1,
        "rewards": torch.randn(n, generator=g),
        "masks": torch.ones(n),
        "next_observations": torch.randn(n, obs, generator=g),
    }


# ------------------------------------------------------------------------------------------ Fisher penalty
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B_,K,d", LOWP_CASES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reduced_precision_penalty_cuda(backend, dtype, B_, K, d):
    """check_reduced_precision of test_fisher_penalty.py (flash-attention's rule) with the inputs on the GPU."""
    check_reduced_precision(backend, dtype, B_, K, d, device=CUDA)


@pytest.mark.parametrize("dtype", FP, ids=FP_IDS)
@pytest.mark.parametrize("B_,K,d", [(0, 3, 5), (5, 4096, 3), (3, 2, 1000)], ids=["empty", "K4096", "d1000"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_penalty_cuda_awkward_shapes(backend, B_, K, d, dtype):
    """No batch; K beyond what a 48 KB shared-memory default holds per block in the backward; d beyond one
    warp's 32 lanes many times over. Against fp64 with the chain of the K-sum and the d-dot."""
    v, x, t, r = make_inputs(B_, K, d, dtype, "BK", device=CUDA)
    got = run(backend, v, x, t, r, score="tweedie")
    plain = run("reference", v, x, t, r, score="tweedie") if B_ else got
    exact = run("reference", v.double(), x.double(), t.double(), r.double(), score="tweedie")
    for name, a, p, e in zip(("penalty", "trace", "grad"), got, plain, exact):
        assert a.shape == e.shape and a.device.type == "cuda", name
        assert_within_rounding(a, p, e, dtype=dtype, n=2 * K + 3 * d + 16, name=name)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_penalty_cuda_non_contiguous_inputs(backend):
    v, x, t, r = make_inputs(6, 4, 5, t_kind="BK", device=CUDA)
    vt = v.transpose(0, 1).contiguous().transpose(0, 1)
    rt = r.t().contiguous().t()
    assert not vt.is_contiguous() and not rt.is_contiguous()
    for got, want in zip(run(backend, vt, x, t.t().contiguous().t(), rt), run("reference", v, x, t, r)):
        assert_within_rounding(got, want, want, dtype=F64, n=2 * 4 + 3 * 5 + 16, name="non-contiguous")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_penalty_cuda_edge_cases(backend):
    """test_fisher_penalty.py's edge cases on the GPU: t at and beyond 1 (score_eps), tiny scores (trace_eps),
    a zero residual, huge scores (trace normalisation makes the penalty scale-free), no gradient to scores."""
    v, x, _, r = make_inputs(4, 3, 5, device=CUDA)
    n = 2 * 3 + 3 * 5 + 16  # the penalty's chain of roundings, as in test_penalty_cuda_awkward_shapes
    for t in (0.999, 1.0, 1.5):
        got, want = run(backend, v, x, t, r, score="tweedie"), run("reference", v, x, t, r, score="tweedie")
        for name, a, e in zip(("penalty", "trace", "grad"), got, want):
            assert torch.isfinite(a).all(), (t, name)
            assert_within_rounding(a, e, e, dtype=F64, n=n, name=f"t={t} {name}")
    pen, tr, _ = run(backend, v * 1e-12, x, 0.9, r, damping=0.0, trace_eps=1e-6)
    assert torch.equal(tr, torch.full_like(tr, 1e-6))
    pen_ref, _, _ = run("reference", v * 1e-12, x, 0.9, r, damping=0.0, trace_eps=1e-6)
    assert_within_rounding(pen, pen_ref, pen_ref, dtype=F64, n=n, name="tiny scores")
    pen, _, g = run(backend, v, x, 0.9, torch.zeros_like(r))
    assert torch.equal(pen, torch.zeros_like(pen)) and torch.equal(g, torch.zeros_like(g))
    v32, x32, r32 = v.float(), x.float(), r.float()
    small, huge = (
        run(backend, v32, x32, 0.9, r32, damping=0.0),
        run(backend, v32 * 1e15, x32, 0.9, r32, damping=0.0),
    )
    assert torch.isfinite(huge[0]).all() and torch.isfinite(huge[1]).all()
    # both carry their own rounding, and scaling v rounds once more
    assert_within_rounding(huge[0], small[0], small[0], dtype=torch.float32, n=2 * n + 1, name="huge scores")
    vg, xg, rg = (
        v.clone().requires_grad_(True),
        x.clone().requires_grad_(True),
        r.clone().requires_grad_(True),
    )
    pen, trace = fisher_penalty(vg, xg, 0.9, rg, score="tweedie", backend=backend)
    gv, gx, gr = torch.autograd.grad(pen.sum(), (vg, xg, rg), allow_unused=True)
    assert gv is None and gx is None and gr is not None and not trace.requires_grad


# ------------------------------------------------------------------------------------------ registration
def test_opcheck_cuda_ops():
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(CUDA)
    torch.library.opcheck(torch.ops.fidec.gelu_fwd.default, (rnd(4, 9),))
    torch.library.opcheck(torch.ops.fidec.gelu_jvp.default, (rnd(4, 9), rnd(9), rnd(4, 9)))
    torch.library.opcheck(torch.ops.fidec.bias_gelu_.default, (rnd(2, 3, 9), rnd(2, 9)))
    v, x, t, r = make_inputs(3, 4, 5, torch.float32, t_kind="BK", device=CUDA)
    r.requires_grad_(True)
    args = (v, x, t, r, "tweedie", 1e-3, 1e-6, 1e-6)
    torch.library.opcheck(torch.ops.fidec.fisher_penalty_fwd.default, args)
    _, trace, scores = torch.ops.fidec.fisher_penalty_fwd(*args)
    bwd_args = (torch.ones(3, device=CUDA), scores, r.detach(), trace, 1e-3)
    torch.library.opcheck(torch.ops.fidec.fisher_penalty_bwd.default, bwd_args)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_cuda_ops_compile_fullgraph(compile_backend):
    """The penalty, velocity_jvp and the GELU ops on CUDA tensors traced whole (fullgraph), forward and
    gradient, against eager and an fp64 evaluation."""
    torch._dynamo.reset()
    params32 = to_cuda([(w.float(), b.float()) for w, b in make_mlp(4, 3, (64, 64), F64)])
    s, x, t, _ = (z.float().to(CUDA) for z in make_batch(32, 4, 3))
    v, xt, tt, r = make_inputs(32, 4, 3, torch.float32, t_kind="B", device=CUDA)
    h, bias = torch.randn(32, 64, device=CUDA), torch.randn(32, 64, device=CUDA)

    def loss(r_, params, s_, x_, t_, v_, xt_, tt_, h_, bias_, backend):
        pen, trace = fisher_penalty(v_, xt_, tt_, r_, backend=backend)
        _, jv = velocity_jvp(params, s_, x_, t_, r_, backend=backend)
        if backend == "cuda":
            a = h_.reshape(32, 1, 64).clone()  # [G, R, H]: one bias row per state
            torch.ops.fidec.bias_gelu_(a, bias_)
            y, _ = torch.ops.fidec.gelu_fwd(a)
        else:
            y = F.gelu(F.gelu(h_ + bias_, approximate="tanh"), approximate="tanh")
        return (2.0 * pen).mean() + jv.square().mean() + 1e-3 * y.sum() + 0.0 * trace.sum()

    def value_and_grad(fn, dtype, device, backend):
        cast = lambda z: z.to(device=device, dtype=dtype)
        rr = cast(r).requires_grad_(True)
        pp = [(cast(w), cast(b)) for w, b in params32]
        out = fn(rr, pp, cast(s), cast(x), cast(t), cast(v), cast(xt), cast(tt), cast(h), cast(bias), backend)
        return out.detach(), torch.autograd.grad(out, rr)[0]

    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    got = value_and_grad(compiled, torch.float32, CUDA, "cuda")
    eager = value_and_grad(loss, torch.float32, CUDA, "cuda")
    exact = value_and_grad(loss, F64, "cpu", "reference")
    for name, a, p, e in zip(("loss", "grad"), got, eager, exact):
        assert_within_rounding(a, p, e, dtype=torch.float32, n=2 * (4 + 3 + 1 + 128) + 64, name=name)


# ------------------------------------------------------------------------------------------ backends
def test_auto_backend_is_cuda_on_cuda_tensors():
    """With the CUDA kernels built, "auto" picks them for CUDA tensors, and an agent's default update
    dispatches every compiled CUDA op (names recorded by the profiler, inputs on the GPU)."""
    assert compiled_module().with_cuda, f"the extension has no CUDA kernels: {backend_info()['cuda']}"
    assert backend_info()["cuda"] == "available", backend_info()["cuda"]
    assert resolve_backend("auto", torch.device(CUDA)) == "cuda"
    agent = make_agent("fidec", OBS, ACT, AGENTS["fidec"].config_class(**SMALL), seed=0, device=CUDA)
    b = {k: v.to(CUDA) for k, v in batch(0).items()}
    agent.update(b)  # buffers and lazy state first
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        agent.update(b)
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    for op in (
        "fidec::fisher_penalty_fwd",
        "fidec::fisher_penalty_bwd",
        "fidec::bias_gelu_",
        "fidec::gelu_fwd",
    ):
        assert op in names, f"{op} did not run in a CUDA update with the default (auto) backends"


# ------------------------------------------------------------------------------------------ agents
# Longest chain of roundings of one update of the SMALL agents: forward and backward (2) through the Euler
# steps plus the actor and critic nets (flow_steps + 2) of (layers x width) dot-product terms, plus the
# losses' means over B x d.
UPDATE_CHAIN = (
    2 * (SMALL["flow_steps"] + 2) * (len(SMALL["actor_hidden_dims"]) + 1) * max(SMALL["actor_hidden_dims"])
)
UPDATE_CHAIN += B * ACT


def agent_on(name, device, dtype, *, seed=0, state=None, **kw):
    """An agent of the SMALL config (plus ``kw``); ``state`` (a state dict) loaded in ``dtype``."""
    cls = AGENTS[name].config_class
    extra = {k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(cls)}}
    agent = make_agent(name, OBS, ACT, cls(**{**SMALL, **extra}), seed=seed, device=device, dtype=dtype)
    if state is not None:
        agent.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return agent


def on(b: dict, device, dtype) -> dict:
    return {k: v.to(device=device, dtype=dtype) for k, v in b.items()}


def compare_updates(got_info, plain_info, exact_info, got, plain, exact, *, dtype, where: str) -> None:
    """Every metric and every parameter (target critic included) of one update, by the rounding rule."""
    for k, e in exact_info.items():
        assert_within_rounding(
            got_info[k], plain_info[k], e, dtype=dtype, n=UPDATE_CHAIN, name=f"{where} {k}"
        )
    ps, pp = got.state_dict(), plain.state_dict()
    for k, e in exact.state_dict().items():
        assert_within_rounding(ps[k], pp[k], e, dtype=dtype, n=UPDATE_CHAIN, name=f"{where} {k}")


@pytest.mark.parametrize("dtype", FP, ids=FP_IDS)
@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_update_on_cuda_is_the_cpu_update(name, dtype):
    """Two updates (the second with Adam state) with the defaults on CUDA (fused rollouts, CUDA GELU and
    penalty, fused Adam) against the same updates on the CPU, both against fp64 with the plain paths."""
    src = agent_on(name, "cpu", dtype)
    state = src.state_dict()
    exact = agent_on(name, "cpu", F64, state=state, **PLAIN)
    cpu = agent_on(name, "cpu", dtype, state=state)
    gpu = agent_on(name, CUDA, dtype, state=state)
    assert gpu.optimizer.defaults.get("fused")
    for step in range(2):
        b, noise = batch(step), src.sample_noise(B)
        e = exact.update(on(b, "cpu", F64), noise.to(dtype=F64))
        c = cpu.update(on(b, "cpu", dtype), noise)
        g = gpu.update(on(b, CUDA, dtype), noise.to(device=CUDA))
        assert all(v.device.type == "cuda" for v in g.values())
        compare_updates(g, c, e, gpu, cpu, exact, dtype=dtype, where=f"{name} step {step}")


def test_reduce_overhead_update_is_the_eager_update():
    """compile_mode="reduce-overhead": the loss (forward and backward) recorded as CUDA graphs and replayed.
    Each update against the eager CUDA update and fp64; cudagraphs may not be skipped (an error here) and
    later updates must replay recorded graphs."""
    torch._dynamo.reset()
    replays = []
    replay = torch.cuda.CUDAGraph.replay

    def counting_replay(self):
        replays.append(1)
        return replay(self)

    src = agent_on("fidec", "cpu", torch.float32)
    state = src.state_dict()
    exact = agent_on("fidec", "cpu", F64, state=state, **PLAIN)
    eager = agent_on("fidec", CUDA, torch.float32, state=state)
    graphed = agent_on(
        "fidec", CUDA, torch.float32, state=state, compile=True, compile_mode="reduce-overhead"
    )
    with torch._inductor.config.patch({"triton.cudagraph_or_error": True}):
        torch.cuda.CUDAGraph.replay = counting_replay
        try:
            for step in range(4):
                b, noise = batch(step), src.sample_noise(B)
                e = exact.update(on(b, "cpu", F64), noise.to(dtype=F64))
                p = eager.update(on(b, CUDA, torch.float32), noise.to(device=CUDA))
                # compared at once: a graph's outputs are overwritten by its next replay
                g = graphed.update(on(b, CUDA, torch.float32), noise.to(device=CUDA))
                compare_updates(g, p, e, graphed, eager, exact, dtype=torch.float32, where=f"step {step}")
        finally:
            torch.cuda.CUDAGraph.replay = replay
    assert replays, "no CUDA graph was replayed: the reduce-overhead update ran eagerly"


@pytest.mark.parametrize("name", list(AGENTS))
def test_stacked_update_on_cuda_is_each_seeds_update(name):
    """StackedAgents on the GPU (vmapped loss, stacked fused rollouts through the CUDA bias+GELU kernel): seed
    i against the single agent of seed i on the CPU, both against fp64 with the plain paths, three updates."""
    seeds = (0, 1)
    srcs = [agent_on(name, "cpu", torch.float32, seed=s) for s in seeds]
    exact = [agent_on(name, "cpu", F64, seed=s, state=a.state_dict(), **PLAIN) for s, a in zip(seeds, srcs)]
    singles = [
        agent_on(name, "cpu", torch.float32, seed=s, state=a.state_dict()) for s, a in zip(seeds, srcs)
    ]
    gpus = [agent_on(name, CUDA, torch.float32, seed=s) for s in seeds]  # same init: a seeded CPU generator
    pending = {}
    for i, a in enumerate(gpus):  # the stack draws each seed's noise from its agent: hand it the CPU draw
        a.sample_noise = lambda batch_size, generator=None, i=i: pending.pop(i)
    stacked = StackedAgents(gpus)
    for step in range(3):
        bs = [batch(10 * step + i) for i in range(len(seeds))]
        noises = [a.sample_noise(B) for a in srcs]
        pending.update({i: n.to(device=CUDA) for i, n in enumerate(noises)})
        got = unstack_info(stacked.update([on(b, CUDA, torch.float32) for b in bs]))
        assert not pending, "the stacked update did not draw every seed's noise"
        for i in range(len(seeds)):
            e = exact[i].update(on(bs[i], "cpu", F64), noises[i].to(dtype=F64))
            p = singles[i].update(on(bs[i], "cpu", torch.float32), noises[i])
            for k, ev in e.items():
                assert_within_rounding(
                    got[i][k], p[k], ev, dtype=torch.float32, n=UPDATE_CHAIN, name=f"step {step} seed {i} {k}"
                )
    stacked.sync_to_agents()
    for i in range(len(seeds)):
        gs, ps = gpus[i].state_dict(), singles[i].state_dict()
        for k, ev in exact[i].state_dict().items():
            assert_within_rounding(
                gs[k], ps[k], ev, dtype=torch.float32, n=UPDATE_CHAIN, name=f"seed {i} {k}"
            )


def test_penalty_reference_on_cuda_is_the_cpu_reference():
    """The reference penalty (what the stacked update runs) on CUDA in fp64: the same formula as on the CPU."""
    v, x, t, r = make_inputs(64, 8, 21, F64, "BK")
    got = fisher_penalty_ref(v.to(CUDA), x.to(CUDA), t.to(CUDA), r.to(CUDA))
    want = fisher_penalty_ref(v, x, t, r)
    for a, e in zip(got, want):
        assert_within_rounding(a, e, e, dtype=F64, n=2 * 8 + 3 * 21 + 16, name="reference penalty")


@pytest.mark.parametrize("seeds", [None, "0,1"], ids=["one-seed", "two-seeds-stacked"])
def test_train_entry_point_on_cuda(tmp_path, seeds):
    """`fidec train --device cuda` end to end (one run, and two seeds stacked): logs, evaluation, checkpoint,
    `--resume` to more steps, `fidec eval` of the result."""
    out = tmp_path / "runs"
    extra = ["--seeds", seeds] if seeds else []
    assert train_cli(out, "--device", CUDA, *extra) == 0
    run_dirs = [out / f"seed{s}" for s in seeds.split(",")] if seeds else [out]
    for d in run_dirs:
        assert json.loads((d / "config.json").read_text())["train"]["device"] == CUDA
        rows = read_csv(d / "train.csv")
        assert [r["step"] for r in rows] == [2, 4]
        assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert train_cli(out, "--device", CUDA, "--steps", "6", "--resume") == 0
    for d in run_dirs:
        assert load_checkpoint(d / CHECKPOINT)["step"] == 6
        assert main(["eval", "--run", str(d), "--episodes", "8", "--device", CUDA]) == 0
