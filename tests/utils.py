"""Comparison helpers whose failures say where and how much two tensors differ."""

from __future__ import annotations

import torch


def assert_verbose_allclose(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float,
    atol: float | torch.Tensor,
    name: str = "tensor",
    max_print: int = 5,
) -> None:
    """allclose, and on failure: how many elements differ, the worst ones, NaN/Inf disagreements."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    inf_mismatch = torch.isinf(a) != torch.isinf(e)
    both_finite = torch.isfinite(a) & torch.isfinite(e)
    err = torch.where(both_finite, (a - e).abs(), torch.zeros_like(a))
    if isinstance(atol, torch.Tensor):  # an elementwise bound (rounding analysis), e.g. tests/mlp_cases.py
        atol = atol.detach().to(torch.float64).cpu()
    bad = (err > atol + rtol * e.abs()) & both_finite
    bad |= nan_mismatch | inf_mismatch
    same_inf = torch.isinf(a) & torch.isinf(e)
    bad |= same_inf & (torch.sign(a) != torch.sign(e))
    if not bad.any():
        return
    n_bad = int(bad.sum())
    atol_text = "elementwise bound" if isinstance(atol, torch.Tensor) else atol
    lines = [f"{name}: {n_bad} of {a.numel()} elements differ (rtol={rtol}, atol={atol_text})"]
    if nan_mismatch.any():
        lines.append(f"  NaN mismatch at {int(nan_mismatch.sum())} elements")
    if inf_mismatch.any():
        lines.append(f"  Inf mismatch at {int(inf_mismatch.sum())} elements")
    flat_err = torch.where(bad, err.nan_to_num(float("inf")), torch.full_like(err, -1.0)).flatten()
    worst = torch.argsort(flat_err, descending=True)[:max_print]
    for i in worst.tolist():
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape))
        lines.append(
            f"  at {idx}: actual {a[idx].item():.6g}, expected {e[idx].item():.6g}, "
            f"abs err {err[idx].item():.3g}"
            + (f" > bound {atol[idx].item():.3g}" if isinstance(atol, torch.Tensor) else "")
        )
    raise AssertionError("\n".join(lines))
