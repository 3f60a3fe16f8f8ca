"""fisher_penalty: every backend against the reference, the reference against a NumPy oracle,
gradients, registration (opcheck, torch.compile), edge cases and argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from fdkernels.fisher_penalty import fisher_penalty_ref
from fisher_decorator.ops import available_backends, fisher_matrix, fisher_penalty, flow_score
from tests.fisher_oracle import oracle_fisher_penalty
from tests.utils import assert_verbose_allclose

HAS_CPU_EXT = "cpu" in available_backends()
needs_ext = pytest.mark.skipif(not HAS_CPU_EXT, reason="compiled extension not built")


def make_inputs(B, K, d, dtype=torch.float64, t_kind="scalar", seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(B, K, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    x = torch.randn(B, K, d, generator=g, dtype=torch.float64).to(dtype)
    r = (0.1 * torch.randn(B, d, generator=g, dtype=torch.float64)).to(dtype)
    if t_kind == "scalar":
        t = 0.9
    elif t_kind == "B":
        t = torch.rand(B, generator=g, dtype=torch.float64) * 0.1 + 0.85
    else:
        t = torch.rand(B, K, generator=g, dtype=torch.float64) * 0.1 + 0.85
    if isinstance(t, torch.Tensor):
        t = t.to(torch.float64 if dtype == torch.float64 else torch.float32)
    to = lambda a: a.to(device) if isinstance(a, torch.Tensor) else a
    return to(v), to(x), to(t), to(r)


def run(backend, v, x, t, r, **kw):
    """(penalty, trace, grad_residual) from one backend; the gradient of sum(penalty * w)."""
    r = r.detach().clone().requires_grad_(True)
    pen, trace = fisher_penalty(v, x, t, r, backend=backend, **kw)
    w = penalty_weights(pen)
    (grad,) = torch.autograd.grad((pen * w).sum(), r) if pen.numel() else (torch.zeros_like(r),)
    return pen.detach(), trace.detach(), grad


def penalty_weights(pen: torch.Tensor) -> torch.Tensor:
    """The per-state weights w of the loss sum(penalty * w) whose gradient the tests compare."""
    return torch.linspace(0.5, 1.5, pen.numel(), dtype=pen.dtype, device=pen.device).reshape(pen.shape)


def rounding_bounds(v, x, t, r, *, dtype, score="velocity", damping=1e-3, score_eps=1e-6, trace_eps=1e-6):
    """Worst-case rounding error of (penalty, trace_per_dim, grad_residual) computed in ``dtype``, by any of the
    backends' summation orders, from the fp64 values of the same inputs.

    Every quantity is a sum of products: a sum of n terms computed in precision u has an error of at most
    ~n u times the sum of the terms' absolute values (Higham, ch. 3). So each bound is n u times the same formula
    evaluated on absolute values (|g| for the score, sum_i |g_ki| |r_i| for each dot product), plus the
    quotient's share of the trace's error. n counts the longest chain of roundings any backend takes: the K-sum
    of F, the d x d quadratic form of the reference (2d) and the score and normalisation steps (constant).
    """
    u = torch.finfo(dtype).eps / 2
    B, K, d = v.shape
    v, x, r = v.double().cpu(), x.double().cpu(), r.double().cpu()
    if isinstance(t, torch.Tensor):  # float, [B] or [B, K]
        tt = t.double().cpu().reshape(B, -1).expand(B, K)[..., None]
    else:
        tt = torch.full((B, K, 1), float(t), dtype=torch.float64)
    inv = 1.0 / torch.clamp(1.0 - tt, min=score_eps)
    g = (tt * v - x) * inv if score == "tweedie" else v * inv
    gabs = (tt * v.abs() + x.abs()) * inv if score == "tweedie" else v.abs() * inv  # bounds |g| and its error
    dots = (g * r[:, None, :]).sum(-1)  # [B, K]
    dots_abs = (gabs * r.abs()[:, None, :]).sum(-1)
    trace_sum = (g**2).sum(-1).mean(-1) + damping * d
    trace_abs = (gabs**2).sum(-1).mean(-1) + damping * d
    c = torch.clamp(trace_sum / d, min=trace_eps)
    num = (dots**2).mean(-1) + damping * (r**2).sum(-1)
    num_abs = (dots_abs**2).mean(-1) + damping * (r**2).sum(-1)
    n = 2 * K + 3 * d + 16
    rel_c = n * u * trace_abs / trace_sum  # relative error of the trace (and of 1 / c)
    pen_err = (n * u * num_abs + num.abs() * rel_c) / (d * c)
    trace_err = n * u * trace_abs / d
    grad_abs = 2 * ((dots_abs[..., None] * gabs).mean(1) + damping * r.abs()) / (c[:, None] * d)
    grad = 2 * ((dots[..., None] * g).mean(1) + damping * r) / (c[:, None] * d)
    w = torch.linspace(0.5, 1.5, B, dtype=torch.float64)[:, None]
    grad_err = w * (n * u * grad_abs + grad.abs() * rel_c[:, None])
    return pen_err, trace_err, grad_err


def assert_within(actual, expected, bound, name):
    """|actual - expected| <= bound elementwise (bound a tensor of the expected's shape)."""
    err = (actual.double().cpu() - expected.double().cpu()).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = int(torch.argmax((err / bound.clamp_min(1e-300)).flatten()))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.numel()} elements beyond the rounding bound; worst at flat index {i}: "
            f"error {err.flatten()[i].item():.3g} vs bound {bound.flatten()[i].item():.3g} "
            f"(actual {actual.flatten()[i].item():.6g}, expected {expected.flatten()[i].item():.6g})"
        )


def compare(backend, v, x, t, r, dtype, **kw):
    """The backend in ``dtype`` against the reference in fp64 on the same inputs, within the rounding bound of
    a ``dtype`` computation (doubled: the fp64 value carries its own rounding, negligible unless dtype is fp64).
    The reference in ``dtype`` must meet the same bound, so the bound is not looser than the reference itself."""
    t64 = t.double() if isinstance(t, torch.Tensor) else t
    exact = run("reference", v.double(), x.double(), t64, r.double(), **kw)
    bounds = [2 * b for b in rounding_bounds(v, x, t, r, dtype=dtype, **kw)]
    got = run(backend, v, x, t, r, **kw)
    assert all(a.dtype == dtype for a in got)
    for name, a, e, b in zip(("penalty", "trace_per_dim", "grad_residual"), got, exact, bounds):
        assert_within(a, e, b, f"{backend} {name}")
    if backend != "reference":
        ref = run("reference", v, x, t, r, **kw)
        for name, a, e, b in zip(("penalty", "trace_per_dim", "grad_residual"), ref, exact, bounds):
            assert_within(a, e, b, f"reference {name}")


# ---------------------------------------------------------------------------------------------
# The reference against the independent NumPy oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["velocity", "tweedie"])
@pytest.mark.parametrize("t_kind", ["scalar", "B", "BK"])
@pytest.mark.parametrize("B,K,d", [(1, 1, 1), (3, 2, 5), (4, 17, 21), (2, 8, 64)])
def test_reference_matches_numpy_oracle(B, K, d, t_kind, score):
    v, x, t, r = make_inputs(B, K, d, t_kind=t_kind)
    t_np = t.numpy() if isinstance(t, torch.Tensor) else t
    pen_o, tr_o, grad_o, fn_o = oracle_fisher_penalty(v.numpy(), x.numpy(), t_np, r.numpy(), score=score)
    pen, tr, grad = run("reference", v, x, t, r, score=score)
    w = torch.linspace(0.5, 1.5, B, dtype=torch.float64)
    assert_verbose_allclose(pen, torch.from_numpy(pen_o), rtol=1e-11, atol=1e-14, name="penalty")
    assert_verbose_allclose(tr, torch.from_numpy(tr_o), rtol=1e-12, atol=0, name="trace_per_dim")
    assert_verbose_allclose(grad, torch.from_numpy(grad_o) * w[:, None], rtol=1e-10, atol=1e-14, name="grad")
    fn = fisher_matrix(v, x, t, score=score, normalize=True)
    assert_verbose_allclose(fn, torch.from_numpy(fn_o), rtol=1e-11, atol=1e-14, name="F_n")


@needs_ext
@pytest.mark.parametrize("score", ["velocity", "tweedie"])
def test_cpu_matches_numpy_oracle(score):
    v, x, t, r = make_inputs(5, 8, 21, t_kind="BK")
    pen_o, tr_o, grad_o, _ = oracle_fisher_penalty(v.numpy(), x.numpy(), t.numpy(), r.numpy(), score=score)
    pen, tr, grad = run("cpu", v, x, t, r, score=score)
    w = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    assert_verbose_allclose(pen, torch.from_numpy(pen_o), rtol=1e-11, atol=1e-14, name="penalty")
    assert_verbose_allclose(tr, torch.from_numpy(tr_o), rtol=1e-12, atol=0, name="trace_per_dim")
    assert_verbose_allclose(grad, torch.from_numpy(grad_o) * w[:, None], rtol=1e-10, atol=1e-14, name="grad")


# ---------------------------------------------------------------------------------------------
# Backends against the reference over the grid
# ---------------------------------------------------------------------------------------------
GRID_B, GRID_K, GRID_D = (1, 3, 256), (1, 2, 8, 17), (1, 2, 5, 21, 64)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("score", ["velocity", "tweedie"])
@pytest.mark.parametrize("t_kind", ["scalar", "B", "BK"])
@pytest.mark.parametrize("B,K,d", list(itertools.product(GRID_B, GRID_K, GRID_D)))
def test_cpu_matches_reference(B, K, d, t_kind, score, dtype):
    v, x, t, r = make_inputs(B, K, d, dtype, t_kind, seed=B * 1000 + K * 100 + d)
    compare("cpu", v, x, t, r, dtype, score=score)


LOWP_CASES = [(3, 8, 5), (17, 4, 21)]


def check_reduced_precision(backend, dtype, B, K, d, device="cpu"):
    """flash-attention's rule: |kernel - fp64| <= 2 |plain PyTorch in the same dtype - fp64| + floor, with
    floor = eps(dtype): the kernel's outputs are stored in ``dtype``, one rounding of at most eps/2 of the
    largest value (the kernels accumulate in fp32, so their error can be that rounding alone)."""
    v, x, _, r = make_inputs(B, K, d, torch.float64, seed=7, device=device)
    v, x, r = v.to(dtype), x.to(dtype), r.to(dtype)
    t = torch.full(
        (B, K), 0.875, device=device
    )  # exact in bf16/fp16, so only the kernels' arithmetic differs
    floor = torch.finfo(dtype).eps
    ref64 = run("reference", v.double(), x.double(), t.double(), r.double())
    ref_lp = run("reference", v, x, t.to(dtype), r)
    got = run(backend, v, x, t, r)
    for name, a, p, e in zip(("penalty", "trace", "grad"), got, ref_lp, ref64):
        assert a.dtype == dtype, f"{name}: the kernel returned {a.dtype}, not {dtype}"
        scale = e.abs().max().item()
        err_kernel = (a.double() - e).abs().max().item() / scale
        err_torch = (p.double() - e).abs().max().item() / scale
        assert err_kernel <= 2 * err_torch + floor, (
            f"{name}: kernel {err_kernel:.3g} vs torch {err_torch:.3g}"
        )


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,K,d", LOWP_CASES)
def test_reduced_precision_cpu(dtype, B, K, d):
    check_reduced_precision("cpu", dtype, B, K, d)


# ---------------------------------------------------------------------------------------------
# Gradients, registration, compile
# ---------------------------------------------------------------------------------------------
def check_gradcheck(backend):
    v, x, t, r = make_inputs(3, 4, 5, t_kind="BK")
    r = r.requires_grad_(True)
    for score in ("velocity", "tweedie"):
        f = lambda r_, score=score: fisher_penalty(v, x, t, r_, score=score, backend=backend)[0]
        assert torch.autograd.gradcheck(f, (r,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
def test_gradcheck(backend):
    check_gradcheck(backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
def test_no_gradient_to_scores(backend):
    """The scores are constants (stop_gradient): velocity and x_t get no gradient at all."""
    v, x, t, r = make_inputs(3, 4, 5, t_kind="BK")
    v.requires_grad_(True)
    x.requires_grad_(True)
    r.requires_grad_(True)
    pen, trace = fisher_penalty(v, x, t, r, score="tweedie", backend=backend)
    gv, gx, gr = torch.autograd.grad(pen.sum(), (v, x, r), allow_unused=True)
    assert gv is None and gx is None and gr is not None
    assert not trace.requires_grad


@needs_ext
def test_backward_saves_only_scores_residual_and_scale():
    B, K, d = 16, 8, 21
    v, x, t, r = make_inputs(B, K, d, torch.float32)
    r.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda a: saved.append(tuple(a.shape)) or a, lambda a: a):
        pen, _ = fisher_penalty(v, x, t, r, backend="cpu")
    assert sorted(saved) == sorted([(B, K, d), (B, d), (B,)]), saved


@needs_ext
def test_opcheck_compiled_ops():
    v, x, t, r = make_inputs(3, 4, 5, torch.float32, t_kind="BK")
    r.requires_grad_(True)
    args = (v, x, t, r, "tweedie", 1e-3, 1e-6, 1e-6)
    torch.library.opcheck(torch.ops.fidec.fisher_penalty_fwd.default, args)
    pen, trace, scores = torch.ops.fidec.fisher_penalty_fwd(*args)
    bwd_args = (torch.ones(3), scores, r.detach(), trace, 1e-3)
    torch.library.opcheck(torch.ops.fidec.fisher_penalty_bwd.default, bwd_args)


@needs_ext
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    torch._dynamo.reset()
    v, x, t, r = make_inputs(8, 4, 5, torch.float32, t_kind="B")

    def loss(v, x, t, r):
        pen, trace = fisher_penalty(v, x, t, r, backend="cpu")
        return (pen * 2.0).mean() + 0.0 * trace.sum()

    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    r1 = r.clone().requires_grad_(True)
    r2 = r.clone().requires_grad_(True)
    eager = loss(v, x, t, r1)
    got = compiled(v, x, t, r2)
    (g1,) = torch.autograd.grad(eager, r1)
    (g2,) = torch.autograd.grad(got, r2)
    assert_verbose_allclose(got, eager, rtol=1e-6, atol=0, name="loss")
    assert_verbose_allclose(g2, g1, rtol=1e-6, atol=1e-9, name="grad")


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------
def _edge_backends():
    return ["reference", *(["cpu"] if HAS_CPU_EXT else [])]


@pytest.mark.parametrize("backend", _edge_backends())
@pytest.mark.parametrize("t", [0.999, 1.0, 1.5], ids=["t0.999", "t1", "t>1"])
def test_t_near_one_uses_score_eps(backend, t):
    v, x, _, r = make_inputs(4, 3, 5)
    pen_o, tr_o, grad_o, _ = oracle_fisher_penalty(v.numpy(), x.numpy(), t, r.numpy(), score="tweedie")
    pen, tr, _ = run(backend, v, x, t, r, score="tweedie")
    assert torch.isfinite(pen).all() and torch.isfinite(tr).all()
    assert_verbose_allclose(pen, torch.from_numpy(pen_o), rtol=1e-9, atol=0, name="penalty")
    assert_verbose_allclose(tr, torch.from_numpy(tr_o), rtol=1e-9, atol=0, name="trace")


@pytest.mark.parametrize("backend", _edge_backends())
def test_tiny_scores_clamp_trace(backend):
    v, x, t, r = make_inputs(4, 3, 5, scale=1e-12)
    pen, tr, g = run(backend, v, x, t, r, damping=0.0, trace_eps=1e-6)
    assert torch.equal(tr, torch.full_like(tr, 1e-6))
    pen_o, _, _, _ = oracle_fisher_penalty(v.numpy(), x.numpy(), t, r.numpy(), damping=0.0, trace_eps=1e-6)
    assert_verbose_allclose(pen, torch.from_numpy(pen_o), rtol=1e-9, atol=1e-300, name="penalty")


@pytest.mark.parametrize("backend", _edge_backends())
def test_zero_residual(backend):
    v, x, t, r = make_inputs(4, 3, 5)
    pen, _, g = run(backend, v, x, t, torch.zeros_like(r))
    assert torch.equal(pen, torch.zeros_like(pen)) and torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("backend", _edge_backends())
@pytest.mark.parametrize("dtype,scale", [(torch.float64, 1e100), (torch.float32, 1e15)], ids=["fp64", "fp32"])
def test_huge_values(backend, dtype, scale):
    """Trace normalisation makes the penalty scale-free: huge scores give the same penalty."""
    v, x, t, r = make_inputs(4, 3, 5, dtype)
    pen_small, _, _ = run(backend, v, x, t, r, damping=0.0)
    pen_huge, tr, _ = run(backend, v * scale, x, t, r, damping=0.0)
    assert torch.isfinite(pen_huge).all() and torch.isfinite(tr).all()
    bound = rounding_bounds(v, x, t, r, dtype=dtype, damping=0.0)[0]
    bound = bound + rounding_bounds(v * scale, x, t, r, dtype=dtype, damping=0.0)[0]
    assert_within(pen_huge, pen_small, bound, "penalty at huge scale")


@pytest.mark.parametrize("backend", _edge_backends())
def test_empty_batch(backend):
    v, x, t, r = make_inputs(0, 3, 5, t_kind="scalar")
    pen, tr = fisher_penalty(v, x, t, r, backend=backend)
    assert pen.shape == (0,) and tr.shape == (0,)


@pytest.mark.parametrize("backend", _edge_backends())
def test_non_contiguous_inputs(backend):
    v, x, t, r = make_inputs(6, 4, 5, t_kind="BK")
    vt = v.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    rt = r.t().contiguous().t()
    assert not vt.is_contiguous() and not rt.is_contiguous()
    a = run(backend, vt, x, t.t().contiguous().t(), rt)
    b = run("reference", v, x, t, r)
    for got, want in zip(a, b):
        assert_verbose_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_flow_score_kinds():
    v, x, t, _ = make_inputs(2, 3, 4, t_kind="BK")
    tt = t[..., None]
    assert_verbose_allclose(flow_score(v, x, t), v / (1 - tt), rtol=1e-14, atol=0)
    assert_verbose_allclose(flow_score(v, x, t, kind="tweedie"), (tt * v - x) / (1 - tt), rtol=1e-14, atol=0)
    assert_verbose_allclose(flow_score(v, x, 1.0, eps=1e-3), v / 1e-3, rtol=1e-14, atol=0)


def test_fisher_matrix_is_symmetric_damped_and_psd():
    v, x, t, _ = make_inputs(5, 2, 6)
    F = fisher_matrix(v, x, t, damping=1e-3)
    assert torch.equal(F, F.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(F) >= 1e-3 - 1e-9).all()  # rank-2 sum plus damping
    Fn = fisher_matrix(v, x, t, damping=1e-3, normalize=True)
    assert_verbose_allclose(
        torch.diagonal(Fn, dim1=-2, dim2=-1).mean(-1), torch.ones(5, dtype=F.dtype), rtol=1e-12, atol=0
    )


def test_isotropic_fisher_reduces_to_l2():
    """If F = c I, F_n = I and the penalty is ||r||^2 / d: DeFlow's penalty (SPEC 5)."""
    B, K, d = 4, 2, 3
    g = torch.Generator().manual_seed(1)
    # K=2*d samples +-e_j * s give mean g g^T = s^2 / d * I exactly.
    basis = torch.eye(d, dtype=torch.float64)
    v = torch.cat([basis, -basis])[None].expand(B, 2 * d, d) * 0.1  # velocity-score with t=0.9 -> g = v / 0.1
    x = torch.zeros_like(v)
    r = torch.randn(B, d, generator=g, dtype=torch.float64)
    pen, _ = fisher_penalty_ref(v, x, 0.9, r, damping=0.0)
    assert_verbose_allclose(pen, (r**2).sum(-1) / d, rtol=1e-12, atol=0)
    del K


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------
def _err_cases():
    v, x, t, r = make_inputs(3, 4, 5, torch.float32)
    return [
        ("velocity must be", (v[0], x[0], t, r), {}),
        ("x_t must have velocity's shape", (v, x[:, :2], t, r), {}),
        (r"residual must be \[B, d\] = \[3, 5\]", (v, x, t, r[:2]), {}),
        (r"residual must be \[B, d\] = \[3, 5\]", (v, x, t, r[:, :4]), {}),
        (r"t must be a float, a \[B\]", (v, x, torch.full((4,), 0.9), r), {}),
        (r"t must be a float, a \[B\]", (v, x, torch.full((3, 3), 0.9), r), {}),
        ("K = 0", (v[:, :0], x[:, :0], t, r), {}),
        ("d = 0", (v[..., :0], x[..., :0], t, r[:, :0]), {}),
        ("score must be one of", (v, x, t, r), {"score": "exact"}),
        ("backend must be one of", (v, x, t, r), {"backend": "fast"}),
        ("damping must be finite and >= 0", (v, x, t, r), {"damping": -1.0}),
        ("damping must be finite and >= 0", (v, x, t, r), {"damping": float("inf")}),
        ("damping must be finite and >= 0", (v, x, t, r), {"damping": float("nan")}),
        ("score_eps must be finite and > 0", (v, x, t, r), {"score_eps": 0.0}),
        ("score_eps must be finite and > 0", (v, x, t, r), {"score_eps": float("inf")}),
        ("trace_eps must be finite and > 0", (v, x, t, r), {"trace_eps": float("nan")}),
        ("x_t is on meta", (v, x.to("meta"), t, r), {}),
        ("residual is on meta", (v, x, t, r.to("meta")), {}),
    ]


@pytest.mark.parametrize("backend", _edge_backends())
@pytest.mark.parametrize("where", ["t", "velocity", "x_t", "residual"])
def test_non_finite_input_propagates_like_the_reference(backend, where):
    """A NaN or inf in any input gives NaN/inf where the reference gives it, never a finite stand-in (the
    clamps 1 / max(1 - t, eps) and max(trace, trace_eps) must not swallow a NaN)."""
    v, x, t, r = make_inputs(4, 3, 5, t_kind="BK")
    for bad in (float("nan"), float("inf")):
        args = {"velocity": v.clone(), "x_t": x.clone(), "t": t.clone(), "residual": r.clone()}
        args[where].view(-1)[1] = bad
        want, want_tr = fisher_penalty(*args.values(), score="tweedie", backend="reference")
        got, got_tr = fisher_penalty(*args.values(), score="tweedie", backend=backend)
        bounds = rounding_bounds(*args.values(), dtype=torch.float64, score="tweedie")
        for a, e, b in ((got, want, bounds[0]), (got_tr, want_tr, bounds[1])):
            # Non-finite where the reference is; an inf residual may give inf (matrix-free: a sum of squares)
            # where the reference's d x d form gives NaN (inf - inf), so NaN must match only for a NaN input.
            same = torch.equal(torch.isfinite(a), torch.isfinite(e))
            if bad != bad:
                same = same and torch.equal(torch.isnan(a), torch.isnan(e))
            assert same, f"{where}={bad}: {backend} gives {a.tolist()}, the reference {e.tolist()}"
            fin = torch.isfinite(e)
            assert_within(a[fin], e[fin], 2 * b[fin], f"{where}={bad} finite rows")
        assert not torch.isfinite(want).all(), f"{where}={bad} should reach the penalty"


@needs_ext
def test_raw_ops_reject_bad_options_and_empty_samples():
    v, x, t, r = make_inputs(2, 3, 4, t_kind="BK")
    fwd, bwd = torch.ops.fidec.fisher_penalty_fwd, torch.ops.fidec.fisher_penalty_bwd
    for kw in ({"damping": float("inf")}, {"damping": -1.0}, {"score_eps": 0.0}, {"trace_eps": float("nan")}):
        opts = {"damping": 1e-3, "score_eps": 1e-6, "trace_eps": 1e-6, **kw}
        name = next(iter(kw))
        with pytest.raises(RuntimeError, match=f"{name} must be finite"):
            fwd(v, x, t, r, "velocity", opts["damping"], opts["score_eps"], opts["trace_eps"])
    pen, trace, scores = fwd(v, x, t, r, "velocity", 1e-3, 1e-6, 1e-6)
    with pytest.raises(RuntimeError, match="K >= 1"):
        bwd(torch.ones_like(pen), scores[:, :0], r, trace, 1e-3)
    with pytest.raises(RuntimeError, match="damping must be finite"):
        bwd(torch.ones_like(pen), scores, r, trace, float("inf"))


@pytest.mark.parametrize("msg,args,kw", _err_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_value_errors_name_the_problem(msg, args, kw):
    with pytest.raises(ValueError, match=msg):
        fisher_penalty(*args, **kw)


def test_type_errors_name_the_problem():
    v, x, t, r = make_inputs(3, 4, 5, torch.float32)
    with pytest.raises(TypeError, match="velocity must have a floating dtype"):
        fisher_penalty(v.int(), x, t, r)
    with pytest.raises(TypeError, match="residual must have velocity's dtype"):
        fisher_penalty(v, x, t, r.double())
    with pytest.raises(TypeError, match="x_t must have velocity's dtype"):
        fisher_penalty(v, x.half(), t, r)
    with pytest.raises(TypeError, match="t must be a float or a floating tensor"):
        fisher_penalty(v, x, torch.ones(3, dtype=torch.int64), r)
    with pytest.raises(TypeError, match="velocity must be a torch.Tensor"):
        fisher_penalty(v.numpy(), x, t, r)
    with pytest.raises(TypeError, match="t must be a float or a tensor"):
        fisher_penalty(v, x, "0.9", r)


@needs_ext
def test_compiled_op_checks_arguments_too():
    """Called directly, the C++ op names the argument it rejects."""
    v, x, t, r = make_inputs(3, 4, 5, torch.float32, t_kind="BK")
    with pytest.raises(RuntimeError, match=r"residual must be \[B, d\]"):
        torch.ops.fidec.fisher_penalty_fwd(v, x, t, r[:2], "velocity", 1e-3, 1e-6, 1e-6)
    with pytest.raises(RuntimeError, match="t must be Float for Float inputs"):
        torch.ops.fidec.fisher_penalty_fwd(v, x, t.double(), r, "velocity", 1e-3, 1e-6, 1e-6)


def test_backend_errors_are_clear():
    v, x, t, r = make_inputs(3, 4, 5, torch.float32)
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        fisher_penalty(v, x, t, r, backend="cuda")


def test_triton_on_cpu_without_interpreter_is_refused():
    pytest.importorskip("triton")
    v, x, t, r = make_inputs(3, 4, 5, torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fisher_penalty(v, x, t, r, backend="triton")


# ---------------------------------------------------------------------------------------------
# GPU (skipped without one)
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("B,K,d", [(1, 1, 1), (3, 17, 21), (256, 8, 64), (1000, 4, 300)])
def test_gpu_backends_match_reference(backend, dtype, B, K, d):
    v, x, t, r = make_inputs(B, K, d, dtype, "BK", device="cuda")
    compare(backend, v, x, t, r, dtype, score="tweedie")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_gradcheck(backend):
    v, x, t, r = make_inputs(3, 4, 5, t_kind="BK", device="cuda")
    r.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r_: fisher_penalty(v, x, t, r_, backend=backend)[0], (r,))
