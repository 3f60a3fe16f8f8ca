"""velocity_jvp against torch.func.jvp of the reference MLP; its backward; the "jacobian" Fisher estimator."""

from __future__ import annotations

import math

import pytest
import torch

from fdkernels.velocity_jvp import velocity_jvp_ref, velocity_mlp_ref
from fisher_decorator.ops import available_backends, fisher_penalty, fisher_quadratic_jacobian, velocity_jvp
from tests.mlp_cases import make_batch, make_mlp, mlp_jvp_rounding_bound
from tests.utils import assert_verbose_allclose

BACKENDS = ["reference"] + (["cpu"] if "cpu" in available_backends() else [])
CASES = [  # N, obs, d, hidden
    (1, 1, 1, (13,)),
    (7, 28, 5, (32, 17)),
    (33, 3, 1, (64, 64, 64)),
    (64, 28, 5, (512, 512)),
    (5, 2, 3, ()),  # a single linear layer
]


def _case_id(c):
    return f"N{c[0]}-obs{c[1]}-d{c[2]}-h{'x'.join(map(str, c[3])) or 'none'}"


def check_against_func_jvp(backend, N, obs, d, hidden, dtype):
    params = make_mlp(obs, d, hidden, dtype)
    s, x, t, tangent = make_batch(N, obs, d, dtype)
    v, jv = velocity_jvp(params, s, x, t, tangent, backend=backend)
    pd = [(w.double(), b.double()) for w, b in params]
    v_ref, jv_ref = torch.func.jvp(
        lambda x_: velocity_mlp_ref(pd, s.double(), x_, t.double()), (x.double(),), (tangent.double(),)
    )
    assert v.dtype == dtype and jv.dtype == dtype
    # Doubled: the fp64 "exact" values carry the same kind of rounding (which matters only for fp64).
    v_err, jv_err = (2 * e for e in mlp_jvp_rounding_bound(params, s, x, t, tangent, dtype))
    assert_verbose_allclose(v, v_ref, rtol=0, atol=v_err, name="v")
    assert_verbose_allclose(jv, jv_ref, rtol=0, atol=jv_err, name="jv")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_velocity_jvp_matches_func_jvp(backend, case, dtype):
    check_against_func_jvp(backend, *case, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_velocity_jvp_bf16_close_to_fp64(backend):
    if backend == "reference":
        pytest.skip(
            "the reference is torch.func.jvp in the inputs' dtype; compared through the kernels' bound"
        )
    params = make_mlp(28, 5, (64, 64), torch.float64)
    s, x, t, tangent = make_batch(16, 28, 5, torch.float64)
    to = lambda z: z.to(torch.bfloat16)
    pb = [(to(w), to(b)) for w, b in params]
    v, jv = velocity_jvp(pb, to(s), to(x), to(t), to(tangent), backend=backend)
    v_lp, jv_lp = velocity_jvp_ref(pb, to(s), to(x), to(t), to(tangent))
    v64, jv64 = velocity_jvp_ref([(w.double(), b.double()) for w, b in pb], s.to(torch.bfloat16).double(),
                                 x.to(torch.bfloat16).double(), t.to(torch.bfloat16).double(),
                                 tangent.to(torch.bfloat16).double())  # fmt: skip
    for got, plain, exact in ((v, v_lp, v64), (jv, jv_lp, jv64)):
        err = (got.double() - exact).abs().max().item()
        err_plain = (plain.double() - exact).abs().max().item()
        assert err <= 2 * err_plain + 1e-2 * exact.abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_velocity_jvp_gradcheck_tangent_only(backend):
    params = make_mlp(4, 3, (9, 7))
    s, x, t, tangent = make_batch(5, 4, 3)
    tangent.requires_grad_(True)
    f = lambda tan: velocity_jvp(params, s, x, t, tan, backend=backend)[1]
    assert torch.autograd.gradcheck(f, (tangent,))
    # Nothing else is differentiable: the flow field is a constant of the penalty.
    params_g = [(w.clone().requires_grad_(True), b.clone().requires_grad_(True)) for w, b in params]
    xg = x.clone().requires_grad_(True)
    v, jv = velocity_jvp(params_g, s, xg, t, tangent, backend=backend)
    assert not v.requires_grad
    grads = torch.autograd.grad(jv.sum(), [xg, *[p for pair in params_g for p in pair]], allow_unused=True)
    assert all(g is None for g in grads)


def test_velocity_jvp_compiles_fullgraph():
    if "cpu" not in available_backends():
        pytest.skip("compiled extension not built")
    torch._dynamo.reset()
    params = make_mlp(4, 3, (9, 7))
    s, x, t, tangent = make_batch(5, 4, 3)
    f = lambda tan: velocity_jvp(params, s, x, t, tan, backend="cpu")[1].square().sum()
    t1, t2 = tangent.clone().requires_grad_(True), tangent.clone().requires_grad_(True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(t2)
    ref = f(t1)
    assert_verbose_allclose(out, ref, rtol=1e-12, atol=0)
    assert_verbose_allclose(
        torch.autograd.grad(out, t2)[0], torch.autograd.grad(ref, t1)[0], rtol=1e-12, atol=1e-14
    )


def test_velocity_jvp_errors():
    params = make_mlp(4, 3, (9,))
    s, x, t, tangent = make_batch(5, 4, 3)
    with pytest.raises(ValueError, match=r"first layer's weight must be \[hidden, obs_dim \+ d \+ 1\]"):
        velocity_jvp(params, s[:, :3], x, t, tangent)
    with pytest.raises(ValueError, match="tangent must have x's shape"):
        velocity_jvp(params, s, x, t, tangent[:, :2])
    with pytest.raises(TypeError, match="tangent must have x's dtype"):
        velocity_jvp(params, s, x, t, tangent.float())
    with pytest.raises(ValueError, match=r"x must be \[N, d\] with N = 5"):
        velocity_jvp(params, s, x[:3], t, tangent[:3])
    with pytest.raises(TypeError, match="sequence of \\(weight, bias\\) pairs"):
        velocity_jvp([params[0][0]], s, x, t, tangent)


def _gaussian_flow_mlp(mean: torch.Tensor, cov: torch.Tensor, t: float, obs: int, offset: float = 60.0):
    """A 2-layer MLP that is exactly the optimal flow velocity of N(mean, cov) at time t.

    For the linear path x_t = (1-t) x0 + t a, x0 ~ N(0, I): v(x) = E[a - x0 | x_t = x] is affine in x,
    v = A (x - t mean) + mean with A = (t cov - (1-t) I) S^-1, S = (1-t)^2 I + t^2 cov. GELU is the
    identity on large arguments, so layer 1 passes x through shifted by ``offset``.
    """
    d = mean.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    S = (1 - t) ** 2 * eye + t**2 * cov
    A = (t * cov - (1 - t) * eye) @ torch.linalg.inv(S)
    w1 = torch.zeros(d, obs + d + 1, dtype=torch.float64)
    w1[:, obs : obs + d] = eye
    b1 = torch.full((d,), offset, dtype=torch.float64)
    w2 = A
    b2 = mean - A @ (t * mean) - A @ b1
    return [(w1, b1), (w2, b2)], S


def test_jacobian_estimator_matches_fisher_on_a_gaussian():
    """With the exact score of a Gaussian, E[g g^T] = -E[J_x g] = S^-1: both estimators agree."""
    torch.manual_seed(0)
    d, obs, t, B, K = 3, 2, 0.9, 4, 20000
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.0], [-0.2, 0.1, 0.05]], dtype=torch.float64)
    cov, mean = L @ L.T, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    params, S = _gaussian_flow_mlp(mean, cov, t, obs)
    s = torch.randn(B, obs, dtype=torch.float64)
    a = mean + torch.randn(B, K, d, dtype=torch.float64) @ L.T
    x_t = (1 - t) * torch.randn(B, K, d, dtype=torch.float64) + t * a
    vel = velocity_mlp_ref(params, s.repeat_interleave(K, 0), x_t.reshape(-1, d), t).reshape(B, K, d)
    r = 0.1 * torch.randn(B, d, dtype=torch.float64)
    exact = torch.einsum("bi,ij,bj->b", r, torch.linalg.inv(S), r)
    for backend in BACKENDS:
        quad_jac = fisher_quadratic_jacobian(
            params, s, x_t, t, r, score="tweedie", damping=0.0, backend=backend
        )
        assert_verbose_allclose(quad_jac, exact, rtol=1e-9, atol=0, name=f"jacobian ({backend})")
    # The score estimator: r^T F r = penalty * c * d (undo the trace normalisation).
    pen, c = fisher_penalty(vel, x_t, t, r, score="tweedie", damping=0.0, backend="reference")
    quad_score = pen * c * d
    assert_verbose_allclose(
        quad_score, exact, rtol=4 * math.sqrt(2.0 / K) * 3, atol=0, name="score estimator"
    )
