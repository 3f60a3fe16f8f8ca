"""The fused rollout's per-step CPU kernels (csrc/rollout_layers_cpu.cpp) against their references in
fdkernels/euler_rollout.py: fidec::rollout_first_layer_gelu_ (an Euler step's first layer in one pass) and
fidec::rollout_out_layer_euler_ (the last hidden bias + GELU, the output layer and x += v / N in one pass)."""

from __future__ import annotations

import pytest
import torch

from fdkernels.euler_rollout import rollout_first_layer_gelu_ref, rollout_out_layer_euler_ref
from fisher_decorator.ops import available_backends
from tests.precision import U_FP32, U_FP64, assert_bf16_rounding_of, gamma

pytestmark = pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")

# |gelu_tanh'| <= 1.13 everywhere: an error in the pre-activation moves the output by at most that much
GELU_SLOPE = 1.13
CASES = [  # M rows, H, d, B states
    (1, 1, 1, 1),
    (7, 33, 5, 3),
    (13, 17, 1, 13),
    (64, 512, 5, 8),
    (0, 9, 2, 4),
]


def _inputs(M, H, d, B, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    row_state = torch.randint(0, B, (M,), generator=g)  # any mapping, not only K consecutive rows per state
    return rnd(M, d), rnd(d, H, scale=0.5), rnd(B, H, scale=2.0), rnd(H), 0.7, row_state


def _run(h_dtype, x, w_xT, sb, w_t, t, rs):
    h = torch.full((x.shape[0], w_xT.shape[1]), float("nan"), dtype=h_dtype)
    assert torch.ops.fidec.rollout_first_layer_gelu_(h, x, w_xT, sb, w_t, t, rs) is None  # in place
    return h


def _bound(x, w_xT, sb, w_t, t, rs, u):
    """Per element: the pre-activation's sum of d + 2 terms rounds to gamma_{d+2} times the sum of their
    magnitudes, GELU passes it on with slope <= 1.13, and GELU's own evaluation adds a few roundings."""
    xd, wd, sbd, wtd = (a.double() for a in (x, w_xT, sb, w_t))
    terms = sbd[rs].abs() + abs(t) * wtd.abs() + xd.abs() @ wd.abs()
    exact = rollout_first_layer_gelu_ref(xd, wd, sbd, wtd, t, rs)
    return GELU_SLOPE * gamma(x.shape[1] + 2, u) * terms + 16 * u * (exact.abs() + 1e-30), exact


@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-H{}-d{}-B{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_first_layer_matches_the_reference(case, dtype):
    x, w_xT, sb, w_t, t, rs = _inputs(*case, dtype)
    got = _run(dtype, x, w_xT, sb, w_t, t, rs)
    bound, exact = _bound(x, w_xT, sb, w_t, t, rs, U_FP64 if dtype == torch.float64 else U_FP32)
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), f"worst {(err / bound).max().item():.2f} x the rounding bound"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-H{}-d{}-B{}".format(*c))
def test_bf16_output_is_the_fp32_result_rounded(case):
    x, w_xT, sb, w_t, t, rs = _inputs(*case, torch.float32)
    got = _run(torch.bfloat16, x, w_xT, sb, w_t, t, rs)
    assert got.dtype == torch.bfloat16
    assert_bf16_rounding_of(got, _run(torch.float32, x, w_xT, sb, w_t, t, rs), "bf16 h")


def test_non_finite_inputs_propagate_to_their_row():
    x, w_xT, sb, w_t, t, rs = _inputs(6, 40, 3, 2, torch.float32)
    x[2, 1] = float("nan")
    x[4, 0] = float("inf")
    got = _run(torch.float32, x, w_xT, sb, w_t, t, rs)
    want = rollout_first_layer_gelu_ref(x.double(), w_xT.double(), sb.double(), w_t.double(), t, rs)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.isfinite(got[[0, 1, 3, 5]]).all()


def test_opcheck():
    x, w_xT, sb, w_t, t, rs = _inputs(5, 9, 2, 3, torch.float32)
    torch.library.opcheck(
        torch.ops.fidec.rollout_first_layer_gelu_.default, (torch.empty(5, 9), x, w_xT, sb, w_t, t, rs)
    )


def test_errors_name_the_argument():
    x, w_xT, sb, w_t, t, rs = _inputs(5, 9, 2, 3, torch.float32)
    h = torch.empty(5, 9)
    cases = [
        ((torch.empty(5, 9).t(), x, w_xT, sb, w_t, t, rs), "h must be a contiguous"),
        ((h, x[:4], w_xT, sb, w_t, t, rs), r"x must be \[M, d\] with M = 5"),
        ((h, x, w_xT.t(), sb, w_t, t, rs), r"w_xT must be \[d, H\] = \[2, 9\]"),
        ((h, x, w_xT, sb[:, :4], w_t, t, rs), r"state_bias must be \[B, H\] with H = 9"),
        ((h, x, w_xT, sb, w_t[:3], t, rs), r"w_t must be \[H\] = \[9\]"),
        ((h, x, w_xT, sb, w_t, t, rs.int()), "row_state must be int64"),
        ((h, x, w_xT, sb, w_t, t, rs + 3), r"row_state must index state_bias's 3 rows"),
        ((h, x.double(), w_xT, sb, w_t, t, rs), "must be Float .the accumulation dtype"),
        ((torch.empty(5, 9, dtype=torch.float16), x, w_xT, sb, w_t, t, rs), "h must be float32, bfloat16"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fidec.rollout_first_layer_gelu_(*args)


# ------------------------------------------------------------------------ rollout_out_layer_euler_
OUT_CASES = [  # M rows, H, d
    (1, 1, 1),
    (7, 33, 5),
    (13, 17, 1),
    (64, 512, 5),
    (0, 9, 2),
]


def _out_inputs(M, H, d, dtype, h_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dt)

    return rnd(M, d), rnd(M, H, scale=2.0, dt=h_dtype or dtype), rnd(H), rnd(d, H, scale=0.2), rnd(d), 0.1


def _out_bound(x, h, b, w_out, b_out, scale, u):
    """x + s (b_out + sum_j a_j w_j), a = gelu(h + b): each a_j off by |gelu'| <= 1.13 times its input's rounding
    plus a few of its own (16 u |a_j|), the dot by gamma_{H+1} of its magnitudes, then two more roundings."""
    hd, bd, wd, bod, xd = (t.double() for t in (h, b, w_out, b_out, x))
    z = hd + bd
    a = torch.nn.functional.gelu(z, approximate="tanh")
    a_err = GELU_SLOPE * u * z.abs() + 16 * u * a.abs()
    dot_mag = a.abs() @ wd.abs().t() + bod.abs()
    err = abs(scale) * (a_err @ wd.abs().t() + gamma(h.shape[1] + 1, u) * dot_mag)
    exact = rollout_out_layer_euler_ref(xd, hd, bd, wd, bod, scale)
    return err + 2 * u * (exact.abs() + xd.abs()) + 1e-300, exact


@pytest.mark.parametrize("case", OUT_CASES, ids=lambda c: "M{}-H{}-d{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_out_layer_matches_the_reference(case, dtype):
    x, h, b, w_out, b_out, scale = _out_inputs(*case, dtype)
    got = x.clone()
    assert torch.ops.fidec.rollout_out_layer_euler_(got, h, b, w_out, b_out, scale) is None  # in place
    bound, exact = _out_bound(x, h, b, w_out, b_out, scale, U_FP64 if dtype == torch.float64 else U_FP32)
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), f"worst {(err / bound).max().item():.2f} x the rounding bound"


@pytest.mark.parametrize("case", OUT_CASES, ids=lambda c: "M{}-H{}-d{}".format(*c))
def test_out_layer_takes_bf16_activations_widened(case):
    """bf16 h (the bf16 GEMM's output) is read widened to fp32: the same result as the fp32 h of those values."""
    x, h, b, w_out, b_out, scale = _out_inputs(*case, torch.float32, h_dtype=torch.bfloat16)
    got, want = x.clone(), x.clone()
    torch.ops.fidec.rollout_out_layer_euler_(got, h, b, w_out, b_out, scale)
    torch.ops.fidec.rollout_out_layer_euler_(want, h.float(), b, w_out, b_out, scale)
    atol = 8 * U_FP32 * (want.abs().max().item() if want.numel() else 0.0) + 1e-30
    torch.testing.assert_close(got, want, rtol=8 * U_FP32, atol=atol)


def test_out_layer_non_finite_activations_reach_their_row_only():
    x, h, b, w_out, b_out, scale = _out_inputs(5, 40, 3, torch.float32)
    h[1, 7] = float("nan")
    h[3, 0] = -float("inf")  # gelu(-inf) is NaN, as torch's
    got = x.clone()
    torch.ops.fidec.rollout_out_layer_euler_(got, h, b, w_out, b_out, scale)
    want = rollout_out_layer_euler_ref(
        x.double(), h.double(), b.double(), w_out.double(), b_out.double(), scale
    )
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got[[1, 3]]).all()
    assert torch.isfinite(got[[0, 2, 4]]).all()


def test_out_layer_opcheck():
    x, h, b, w_out, b_out, scale = _out_inputs(5, 9, 2, torch.float32)
    torch.library.opcheck(torch.ops.fidec.rollout_out_layer_euler_.default, (x, h, b, w_out, b_out, scale))


def test_out_layer_errors_name_the_argument():
    x, h, b, w_out, b_out, s = _out_inputs(5, 9, 2, torch.float32)
    cases = [
        ((x.t(), h, b, w_out, b_out, s), "x must be a contiguous"),
        ((x, h[:4], b, w_out, b_out, s), r"h must be \[M, H\] with M = 5"),
        ((x, h, b[:3], w_out, b_out, s), r"b must be \[H\] = \[9\]"),
        ((x, h, b, w_out.t(), b_out, s), r"w_out must be \[d, H\] = \[2, 9\]"),
        ((x, h, b, w_out, b_out[:1], s), r"b_out must be \[d\] = \[2\]"),
        ((x.half(), h, b, w_out, b_out, s), "x must be float32 or float64"),
        ((x, h.double(), b, w_out, b_out, s), "h must be x's dtype Float or bfloat16"),
        ((x, h, b.double(), w_out, b_out, s), "b, w_out and b_out must be x's dtype"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fidec.rollout_out_layer_euler_(*args)
