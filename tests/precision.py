"""Rounding bounds for the numeric tests: unit roundoffs, the worst-case error of a sum of products,
and two checks that replace hand-tuned tolerances.

- :func:`assert_as_accurate` (flash-attention's rule): a path's error against an fp64 evaluation is at
  most twice the plain path's error in the same precision, plus a floor of a few roundings of the
  result. Both paths meet the same rounding and the same amplification (Euler steps, Adam updates),
  so the bound holds on every machine without knowing either.
- :func:`assert_rounded_at`: a reduced-precision result differs from the full-precision one by at
  least a fraction of that precision's unit roundoff, so a path that silently ran in fp32 fails.
"""

from __future__ import annotations

import torch

# Unit roundoffs u (half the spacing of the numbers in [1, 2)): the largest relative error of one rounding.
U_FP64 = 2.0**-53
U_FP32 = 2.0**-24
U_TF32 = 2.0**-11  # 10 stored mantissa bits
U_BF16 = 2.0**-8  # 7 stored mantissa bits

# A reduced-precision result must differ from the fp32 one by at least this fraction of u (RMS, relative
# to the RMS of the result). Rounding the inputs alone moves each element by a relative error spread
# uniformly over [-u/2, u/2]..[-u, u] (RMS >= u / (2 sqrt 3) ~ u / 3.5), and every layer and step adds
# such a rounding, so a real bf16/tf32 run sits above u / 4; a run that silently stayed in fp32 differs
# from fp32 by at most ~n 2^-24 <= 2^-15 (n <= 512), 2^3 below u_bf16 / 16 = 2^-12 (by ~sqrt(n) 2^-24 ~
# 2^-20 in practice, 2^5 below u_tf32 / 16 = 2^-15).
ROUNDED_FRACTION = 1.0 / 16

# The fused rollout's first layer rounds W_s s + b, then + t w_t, then + W_x x, where the plain chain rounds
# one GEMM over concat [s, x, t]: up to 3 roundings for 1, so flash-attention's factor 2 times 3.
FUSED_ROLLOUT_FACTOR = 6.0


def gamma(n: int, u: float = U_FP32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of a sum of n products (times its
    condition number sum |a_i b_i| / |sum a_i b_i|)."""
    return n * u / (1.0 - n * u)


def rms(t: torch.Tensor) -> float:
    t = t.detach().double()
    return t.pow(2).mean().sqrt().item() if t.numel() else 0.0


def max_abs_err(got: torch.Tensor, exact: torch.Tensor) -> float:
    return (got.detach().double().cpu() - exact.detach().double().cpu()).abs().max().item()


def assert_as_accurate(
    got: torch.Tensor,
    plain: torch.Tensor,
    exact: torch.Tensor,
    *,
    floor: float,
    factor: float = 2.0,
    name: str = "tensor",
) -> None:
    """max|got - exact| <= factor * max|plain - exact| + floor: ``got`` (a fused / stacked / reordered
    path) is no less accurate against the fp64 evaluation ``exact`` than the plain path ``plain`` in
    the same precision. ``floor``: a few roundings of the result's magnitude (both errors may be ~0)."""
    err, err_plain = max_abs_err(got, exact), max_abs_err(plain, exact)
    assert err <= factor * err_plain + floor, (
        f"{name}: error {err:.3g} against fp64 > {factor} x the plain path's {err_plain:.3g} + {floor:.3g}"
    )


def assert_rounded_at(
    got: torch.Tensor,
    full: torch.Tensor,
    u: float,
    *,
    where: torch.Tensor | None = None,
    fraction: float = ROUNDED_FRACTION,
    name: str = "tensor",
) -> None:
    """rms(got - full) >= fraction * u * rms(full) over ``where`` (default: everywhere): ``got`` was
    computed in a precision with unit roundoff ``u``, not in ``full``'s (see ROUNDED_FRACTION)."""
    g, f = got.detach().double().cpu(), full.detach().double().cpu()
    if where is not None:
        g, f = g[where.cpu()], f[where.cpu()]
    assert f.numel() > 0, f"{name}: nothing to compare"
    diff, scale = rms(g - f), rms(f)
    assert diff >= fraction * u * scale, (
        f"{name}: differs from the full-precision result by {diff:.3g} RMS, less than {fraction:.3g} x "
        f"u={u:.3g} x {scale:.3g}: the reduced precision was not used"
    )


def unclamped(actions: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Elements a clipped rollout did not clip (a clipped element is the same in every precision)."""
    return actions.detach().abs() < bound


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The gap between bf16 neighbours at |x| (8 significant bits; subnormal gap below 2^-126)."""
    e = torch.floor(torch.log2(x.abs().clamp(min=2.0**-126)))
    return torch.exp2(e - 7)


def assert_bf16_rounding_of(got: torch.Tensor, want_fp32: torch.Tensor, name: str) -> None:
    """bf16 ``got`` is ``want_fp32`` (the fp32 kernel) rounded to nearest: half a bf16 step off, plus a few fp32
    ulps because the two compiled loops may contract multiply-adds differently (8 ulps allowed)."""
    g, w = got.float(), want_fp32
    nan = torch.isnan(w)
    assert torch.equal(torch.isnan(g), nan), f"{name}: NaN pattern differs"
    inf = torch.isinf(w)
    assert torch.equal(g[inf], w[inf]), f"{name}: infinities differ"
    keep = ~nan & ~inf & torch.isfinite(g)
    g, w = g[keep], w[keep]
    half_step = 0.5 * torch.maximum(bf16_spacing(w), bf16_spacing(g))
    fp32_slack = 8 * 2.0**-23 * w.abs() + 2.0**-149
    worst = ((g - w).abs() / (half_step + fp32_slack)).max().item() if w.numel() else 0.0
    assert worst <= 1.0, f"{name}: {worst:.3f} x the rounding bound from the fp32 kernel"
