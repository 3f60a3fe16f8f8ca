"""velocity_jvp and euler_rollout on the Triton backend, under the interpreter (small shapes)."""

from __future__ import annotations

import pytest
import torch

from fdkernels.euler_rollout import euler_rollout_ref
from fisher_decorator.ops import euler_rollout, velocity_jvp
from tests.mlp_cases import make_batch, make_mlp
from tests.test_velocity_jvp import check_against_func_jvp
from tests.utils import assert_verbose_allclose


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("N,obs,d,hidden", [(1, 1, 1, (13,)), (7, 28, 5, (32, 17)), (9, 3, 2, ())])
def test_triton_velocity_jvp(N, obs, d, hidden, dtype):
    check_against_func_jvp("triton", N, obs, d, hidden, dtype)


def test_triton_velocity_jvp_gradcheck():
    params = make_mlp(4, 3, (9, 7))
    s, x, t, tangent = make_batch(5, 4, 3)
    tangent.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda tan: velocity_jvp(params, s, x, t, tan, backend="triton")[1], (tangent,)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("B,K,obs,d,hidden,steps", [(1, 1, 1, 1, (13,), 2), (5, 3, 28, 5, (32, 17), 3)])
def test_triton_rollout(B, K, obs, d, hidden, steps, dtype):
    params = make_mlp(obs, d, hidden, dtype)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, obs, generator=g, dtype=torch.float64).to(dtype)
    noise = torch.randn(B, K, d, generator=g, dtype=torch.float64).to(dtype)
    got = euler_rollout(params, s, noise, steps, backend="triton")
    want = euler_rollout_ref(params, s, noise, steps)
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 2e-5)
    assert_verbose_allclose(got, want, rtol=rtol, atol=atol, name="actions")
