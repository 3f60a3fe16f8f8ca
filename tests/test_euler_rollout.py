"""euler_rollout: the fused rollout against the plain per-step reference, bf16, workspace reuse, errors."""

from __future__ import annotations

import pytest
import torch

from fdkernels.euler_rollout import euler_rollout_ref
from fisher_decorator.ops import RolloutWorkspace, available_backends, euler_rollout
from fisher_decorator.ops.euler_rollout import onednn_linear_gelu_available
from tests.mlp_cases import make_mlp
from tests.utils import assert_verbose_allclose

HAS_EXT = "cpu" in available_backends()
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")
IMPLS = ["mm"] + (["onednn"] if onednn_linear_gelu_available() else [])
CASES = [  # B, K (0: noise [B, d]), obs, d, hidden, steps
    (1, 0, 1, 1, (13,), 1),
    (3, 2, 28, 5, (32, 17), 3),
    (37, 8, 3, 1, (16, 16, 16), 10),
    (16, 8, 28, 5, (512, 512), 10),
    (4, 3, 2, 3, (), 4),  # a single linear layer
]


def _inputs(B, K, obs, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, obs, generator=g, dtype=torch.float64).to(dtype)
    shape = (B, K, d) if K else (B, d)
    return s, torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _id(c):
    return f"B{c[0]}-K{c[1]}-obs{c[2]}-d{c[3]}-h{'x'.join(map(str, c[4])) or 'none'}-N{c[5]}"


@needs_ext
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fused_rollout_matches_reference(case, dtype, impl):
    B, K, obs, d, hidden, steps = case
    if impl == "onednn" and dtype == torch.float64:
        pytest.skip("oneDNN's fused linear is fp32/bf16 only")
    params = make_mlp(obs, d, hidden, dtype, scale=2.0)
    s, noise = _inputs(B, K, obs, d, dtype)
    want = euler_rollout_ref(params, s, noise, steps)
    got = euler_rollout(params, s, noise, steps, backend="cpu", hidden_impl=impl)
    assert got.shape == noise.shape and got.dtype == dtype
    # The fused path sums W_s s + W_x x + t w_t in another order than one GEMM over concat [s, x, t]:
    # agreement to rounding, not bit for bit.
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 2e-5)
    assert_verbose_allclose(got, want, rtol=rtol, atol=atol, name="actions")


def test_reference_backend_is_the_plain_rollout():
    params = make_mlp(4, 2, (8,), torch.float64)
    s, noise = _inputs(3, 2, 4, 2, torch.float64)
    got = euler_rollout(params, s, noise, 5, backend="reference")
    x = noise.reshape(-1, 2)
    sr = s.repeat_interleave(2, 0)
    for i in range(5):
        h = torch.nn.functional.gelu(torch.cat([sr, x, torch.full((6, 1), i / 5.0, dtype=torch.float64)], 1)
                                     @ params[0][0].T + params[0][1], approximate="tanh")  # fmt: skip
        x = x + (h @ params[1][0].T + params[1][1]) / 5
    assert torch.equal(got, x.clamp(-1, 1).reshape(3, 2, 2))


@needs_ext
def test_bf16_rollout_error_at_most_twice_plain_bf16():
    """bf16 rollouts (x accumulated in fp32) are no worse than a plain bf16 chain, against fp64."""
    params = make_mlp(28, 5, (128, 128, 128), torch.float64)  # Xavier scale, as the agents initialise
    s, noise = _inputs(32, 8, 28, 5, torch.float64)
    exact = euler_rollout_ref(params, s, noise, 10)
    p32 = [(w.float(), b.float()) for w, b in params]
    got = euler_rollout(p32, s.float(), noise.float(), 10, backend="cpu", rollout_dtype="bfloat16")
    plain = euler_rollout_ref(
        [(w.bfloat16(), b.bfloat16()) for w, b in params], s.bfloat16(), noise.bfloat16(), 10
    )
    err = (got.double() - exact).abs().max().item()
    err_plain = (plain.double() - exact).abs().max().item()
    assert got.dtype == torch.float32
    assert err <= 2 * err_plain + 1e-3, (err, err_plain)
    assert err < 0.05  # the stated tolerance of bf16 rollouts on unit-scale actions


@needs_ext
def test_workspace_is_reused_and_weight_changes_are_seen():
    params = [(w.float(), b.float()) for w, b in make_mlp(6, 3, (32, 32), torch.float64)]
    ws = RolloutWorkspace()
    s, noise = _inputs(8, 4, 6, 3, torch.float32)
    a1 = euler_rollout(params, s, noise, 4, backend="cpu", rollout_dtype="bfloat16", workspace=ws).clone()
    n_buffers = len(ws._buffers)
    a2 = euler_rollout(params, s, noise, 4, backend="cpu", rollout_dtype="bfloat16", workspace=ws)
    assert torch.equal(a1, a2) and len(ws._buffers) == n_buffers  # same buffers, same result
    with torch.no_grad():
        params[1][0].mul_(-1.0)  # an optimizer step changes a weight in place: the bf16 copy must follow
    a3 = euler_rollout(params, s, noise, 4, backend="cpu", rollout_dtype="bfloat16", workspace=ws)
    want = euler_rollout(
        params, s, noise, 4, backend="cpu", rollout_dtype="bfloat16", workspace=RolloutWorkspace()
    )
    assert torch.equal(a3, want) and not torch.equal(a3, a1)


@needs_ext
def test_rollout_has_no_gradient():
    params = [
        (w.clone().requires_grad_(True), b.clone().requires_grad_(True)) for w, b in make_mlp(4, 2, (8,))
    ]
    s, noise = _inputs(3, 2, 4, 2, torch.float64)
    for backend in ("reference", "cpu"):
        assert not euler_rollout(params, s, noise, 3, backend=backend).requires_grad


def test_rollout_errors():
    params = make_mlp(4, 2, (8,), torch.float64)
    s, noise = _inputs(3, 2, 4, 2, torch.float64)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        euler_rollout(params, s, noise, 0)
    with pytest.raises(ValueError, match=r"noise must be \[B, d\] or \[B, K, d\] with B = 3"):
        euler_rollout(params, s, noise[:2], 3)
    with pytest.raises(ValueError, match="rollout_dtype must be one of"):
        euler_rollout(params, s, noise, 3, rollout_dtype="fp8")
    with pytest.raises(ValueError, match="tf32.*CUDA"):
        euler_rollout(params, s, noise, 3, rollout_dtype="tf32")
    with pytest.raises(ValueError, match=r"first layer's weight must be"):
        euler_rollout(params, s[:, :2], noise, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16", "tf32"])
def test_gpu_rollout_matches_reference(backend, rollout_dtype):
    params = [
        (w.float().cuda(), b.float().cuda()) for w, b in make_mlp(28, 5, (512, 512, 512), torch.float64)
    ]
    s, noise = (z.float().cuda() for z in _inputs(256, 8, 28, 5, torch.float32))
    want = euler_rollout_ref(params, s, noise, 10)
    got = euler_rollout(params, s, noise, 10, backend=backend, rollout_dtype=rollout_dtype)
    tol = 2e-5 if rollout_dtype == "float32" else 5e-2
    assert_verbose_allclose(got, want, rtol=tol, atol=tol, name="actions")
