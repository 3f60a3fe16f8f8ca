"""The fused Triton linear + bias + GELU (+ tangent) kernel against its reference, under the interpreter."""

from __future__ import annotations

import pytest
import torch

from fdkernels.linear_gelu import linear_gelu_ref, linear_gelu_triton
from tests.utils import assert_verbose_allclose

CASES = [(1, 1, 1), (5, 7, 3), (37, 13, 70), (64, 33, 65)]  # M, in, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("gelu", [True, False], ids=["gelu", "linear"])
@pytest.mark.parametrize("tangent", [True, False], ids=["jvp", "primal"])
@pytest.mark.parametrize("group_bias", [False, True], ids=["bias", "group-bias"])
@pytest.mark.parametrize("M,K,N", CASES)
def test_linear_gelu_triton(M, K, N, group_bias, tangent, gelu, dtype):
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(M, K, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(N, K, generator=g, dtype=torch.float64).to(dtype)
    groups = M if group_bias else None
    b = torch.randn(*((groups,) if groups else ()), N, generator=g, dtype=torch.float64).to(dtype)
    ta = torch.randn(M, K, generator=g, dtype=torch.float64).to(dtype) if tangent else None
    got = linear_gelu_triton(a, w, b, gelu=gelu, ta=ta)
    want = linear_gelu_ref(a, w, b, gelu=gelu, ta=ta)
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (2e-5, 2e-5)
    for name, x, y in zip(("y", "ty", "dy"), got, want):
        assert (x is None) == (y is None), name
        if x is not None:
            assert_verbose_allclose(x, y, rtol=rtol, atol=atol * max(1.0, y.abs().max().item()), name=name)


def test_group_bias_rows_per_state():
    a, w = torch.randn(6, 4), torch.randn(5, 4)
    b = torch.randn(3, 5)  # 3 states x 2 samples
    y, _, _ = linear_gelu_triton(a, w, b, gelu=False)
    assert_verbose_allclose(y, a @ w.T + b.repeat_interleave(2, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per-group bias"):
        linear_gelu_triton(torch.randn(7, 4), w, b)
