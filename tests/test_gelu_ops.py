"""The compiled GELU ops (csrc/gelu_cpu.cpp, shared math csrc/gelu_row.h): bias_gelu_ and gelu_jvp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fdkernels.linear_gelu import gelu_tanh_grad_ref, linear_gelu_ref
from fisher_decorator.ops import available_backends
from tests.precision import assert_bf16_rounding_of
from tests.utils import assert_verbose_allclose

pytestmark = pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")

TOL = {
    torch.float64: (1e-13, 1e-14),
    torch.float32: (2e-6, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}
DTYPES = list(TOL)
IDS = ["fp64", "fp32", "bf16", "fp16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("G,R,H", [(1, 1, 1), (3, 2, 7), (2, 8, 33), (5, 1, 512), (16, 8, 100)])
def test_bias_gelu_matches_torch(G, R, H, dtype):
    h = (3 * torch.randn(G, R, H, dtype=torch.float64)).to(dtype)
    b = torch.randn(G, H, dtype=torch.float64).to(dtype)
    want = F.gelu(h.double() + b.double()[:, None, :], approximate="tanh")
    assert torch.ops.fidec.bias_gelu_(h, b) is None  # in place
    rtol, atol = TOL[dtype]
    assert_verbose_allclose(h, want.to(dtype), rtol=rtol, atol=atol, name="bias_gelu_")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("N,H", [(1, 1), (3, 7), (17, 33), (4, 512)])
def test_gelu_jvp_matches_autograd(N, H, dtype):
    h = (3 * torch.randn(N, H, dtype=torch.float64)).to(dtype)
    b = torch.randn(H, dtype=torch.float64).to(dtype)
    th = torch.randn(N, H, dtype=torch.float64).to(dtype)
    y, ty, dy = torch.ops.fidec.gelu_jvp(h, b, th)
    hd, bd, thd = h.double(), b.double(), th.double()
    y_ref, ty_ref = torch.func.jvp(lambda z: F.gelu(z + bd, approximate="tanh"), (hd,), (thd,))
    dy_ref = torch.func.vmap(torch.func.grad(lambda z: F.gelu(z, approximate="tanh")))((hd + bd).flatten())
    rtol, atol = TOL[dtype]
    assert_verbose_allclose(y, y_ref.to(dtype), rtol=rtol, atol=atol, name="y")
    assert_verbose_allclose(dy, dy_ref.reshape(N, H).to(dtype), rtol=rtol, atol=atol, name="dy")
    assert_verbose_allclose(ty, ty_ref.to(dtype), rtol=rtol, atol=atol * 4, name="ty")


@pytest.mark.parametrize("H", [1, 7, 33, 512])
def test_bf16_gelu_ops_are_the_fp32_kernels_rounded(H):
    """The bf16 rows (bit-pattern conversions, vectorised) against the fp32 rows on the widened inputs."""
    g = torch.Generator().manual_seed(H)
    h = (4 * torch.randn(3, 5, H, generator=g)).bfloat16()
    b = torch.randn(3, H, generator=g).bfloat16()
    th = torch.randn(15, H, generator=g).bfloat16()
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -1e-40, 0.0, -0.0])
    flat = h.view(-1)
    flat[: min(flat.numel(), specials.numel())] = specials[: flat.numel()].bfloat16()

    got = h.clone()
    torch.ops.fidec.bias_gelu_(got, b)
    want = h.float()
    torch.ops.fidec.bias_gelu_(want, b.float())
    assert_bf16_rounding_of(got, want, "bias_gelu_")

    y, dy = torch.ops.fidec.gelu_fwd(h)
    y32, dy32 = torch.ops.fidec.gelu_fwd(h.float())
    assert_bf16_rounding_of(y, y32, "gelu_fwd y")
    assert_bf16_rounding_of(dy, dy32, "gelu_fwd dy")

    hf = h.reshape(15, H)
    out = torch.ops.fidec.gelu_jvp(hf, b[0], th)
    ref = torch.ops.fidec.gelu_jvp(hf.float(), b[0].float(), th.float())
    for name, o, r in zip(("y", "ty", "dy"), out, ref):
        assert_bf16_rounding_of(o, r, f"gelu_jvp {name}")


def test_gelu_grad_reference_is_the_derivative():
    h = torch.linspace(-8, 8, 1001, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(F.gelu(h, approximate="tanh").sum(), h)
    assert_verbose_allclose(gelu_tanh_grad_ref(h.detach()), auto, rtol=1e-12, atol=1e-13)


def test_gelu_saturation_is_finite():
    h = torch.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]])
    y, ty, dy = torch.ops.fidec.gelu_jvp(h, torch.zeros(5), torch.ones_like(h))
    assert torch.isfinite(y).all() and torch.isfinite(dy).all()
    assert_verbose_allclose(y, torch.tensor([[0.0, 0.0, 0.0, 50.0, 1e4]]), rtol=1e-6, atol=1e-6)
    assert_verbose_allclose(dy, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]), rtol=1e-6, atol=1e-6)


def test_linear_gelu_reference_chain():
    a, w, b, ta = torch.randn(6, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64), \
        torch.randn(3, 9, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)  # fmt: skip
    y, ty, dy = linear_gelu_ref(a, w, b, ta=ta)
    f = lambda a_: F.gelu(a_ @ w.t() + b.repeat_interleave(2, 0), approximate="tanh")
    y_ref, ty_ref = torch.func.jvp(f, (a,), (ta,))
    assert_verbose_allclose(y, y_ref, rtol=1e-14, atol=1e-15)
    assert_verbose_allclose(ty, ty_ref, rtol=1e-12, atol=1e-14)


def test_opcheck_gelu_ops():
    h, b, th = torch.randn(4, 9), torch.randn(9), torch.randn(4, 9)
    torch.library.opcheck(torch.ops.fidec.gelu_jvp.default, (h, b, th))
    torch.library.opcheck(torch.ops.fidec.bias_gelu_.default, (torch.randn(2, 3, 9), torch.randn(2, 9)))


def test_gelu_op_errors_name_the_argument():
    with pytest.raises(RuntimeError, match=r"bias must be \[G, H\]"):
        torch.ops.fidec.bias_gelu_(torch.randn(2, 3, 4), torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.fidec.bias_gelu_(torch.randn(2, 4, 3).transpose(1, 2), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match=r"th must have h's shape"):
        torch.ops.fidec.gelu_jvp(torch.randn(2, 3), torch.randn(3), torch.randn(3, 3))
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.fidec.gelu_jvp(torch.randn(2, 3), torch.randn(3), torch.randn(2, 3).double())


def test_gelu_fwd_dense_sweep_fp32():
    """The float kernel's own exp/tanh against fp64 GELU over 10^6 points, tails and NaN included."""
    x = torch.cat([torch.linspace(-12, 12, 10**6), torch.tensor([-1e30, -1e4, 1e4, 1e30, float("inf")])])
    y, dy = torch.ops.fidec.gelu_fwd(x)
    xd = x.double()
    y_ref = F.gelu(xd, approximate="tanh")
    assert_verbose_allclose(y[:-1], y_ref[:-1].float(), rtol=2e-6, atol=2e-7, name="gelu")
    assert_verbose_allclose(dy[:-2], gelu_tanh_grad_ref(xd[:-2]).float(), rtol=2e-6, atol=2e-6, name="gelu'")
    assert y[-1] == float("inf")
    assert torch.isnan(torch.ops.fidec.gelu_fwd(torch.tensor([float("nan")]))[0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_gelu_tanh_autograd(dtype):
    from fisher_decorator.ops import gelu_tanh

    x = torch.randn(7, 33, dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(gelu_tanh(x).square().sum(), x)
    (g_ref,) = torch.autograd.grad(F.gelu(x, approximate="tanh").square().sum(), x)
    rtol, atol = TOL[dtype]
    assert_verbose_allclose(g, g_ref, rtol=rtol * 4, atol=atol * 4, name="grad")
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(gelu_tanh, (x[:2, :5].detach().clone().requires_grad_(True),))
