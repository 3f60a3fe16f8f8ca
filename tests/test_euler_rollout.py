"""euler_rollout: the fused rollout against the plain per-step reference, bf16, workspace reuse, errors."""

from __future__ import annotations

import pytest
import torch

from fdkernels.euler_rollout import euler_rollout_ref
from fisher_decorator.ops import RolloutWorkspace, available_backends, euler_rollout, euler_rollout_groups
from fisher_decorator.ops.euler_rollout import onednn_linear_gelu_available
from tests.mlp_cases import make_mlp
from tests.precision import (
    FUSED_ROLLOUT_FACTOR,
    U_BF16,
    U_FP32,
    U_FP64,
    U_TF32,
    assert_as_accurate,
    assert_rounded_at,
    gamma,
    unclamped,
)
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
    params64 = make_mlp(obs, d, hidden, torch.float64, scale=2.0)
    params = [(w.to(dtype), b.to(dtype)) for w, b in params64]
    s, noise = _inputs(B, K, obs, d, dtype)
    want = euler_rollout_ref(params, s, noise, steps)
    got = euler_rollout(params, s, noise, steps, backend="cpu", hidden_impl=impl)
    assert got.shape == noise.shape and got.dtype == dtype
    # The fused path sums W_s s + W_x x + t w_t in another order than one GEMM over concat [s, x, t]:
    # agreement to rounding, not bit for bit.
    if dtype == torch.float32:  # as accurate as the plain fp32 chain, against fp64
        exact = euler_rollout_ref(params64, *_inputs(B, K, obs, d, torch.float64), steps)
        floor = 4 * U_FP32 * exact.abs().max().item()  # a few roundings of the actions
        assert_as_accurate(got, want, exact, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name="actions")
    else:  # both orders are within gamma_n(u) per sum of n products, per layer and step
        n = max((obs + d + 1, *hidden))
        tol = steps * (len(hidden) + 1) * gamma(n, U_FP64)
        assert_verbose_allclose(got, want, rtol=tol, atol=tol, name="actions")


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
@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_rollout_error_at_most_twice_plain_bf16(impl):
    """bf16 rollouts (x accumulated in fp32) are no worse than a plain bf16 chain against fp64, and
    really run in bf16: they differ from the fp32 rollout by bf16 rounding, not fp32 rounding."""
    params = make_mlp(28, 5, (128, 128, 128), torch.float64)  # Xavier scale, as the agents initialise
    s, noise = _inputs(32, 8, 28, 5, torch.float64)
    exact = euler_rollout_ref(params, s, noise, 10)
    p32 = [(w.float(), b.float()) for w, b in params]
    got = euler_rollout(
        p32, s.float(), noise.float(), 10, backend="cpu", rollout_dtype="bfloat16", hidden_impl=impl
    )
    plain = euler_rollout_ref(
        [(w.bfloat16(), b.bfloat16()) for w, b in params], s.bfloat16(), noise.bfloat16(), 10
    )
    assert got.dtype == torch.float32
    # floor: one bf16 rounding of the unit-scale actions
    assert_as_accurate(got, plain, exact, floor=U_BF16 * exact.abs().max().item(), name="bf16 actions")
    full = euler_rollout(p32, s.float(), noise.float(), 10, backend="cpu", hidden_impl=impl)
    assert_rounded_at(got, full, U_BF16, where=unclamped(full), name="bf16 actions")


@needs_ext
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16"])
def test_workspace_is_reused_and_weight_changes_are_seen(impl, rollout_dtype):
    """Buffers are reused; weight copies (bf16, oneDNN-packed: 64 x 5 rows) follow an in-place weight change."""
    params = [(w.float(), b.float()) for w, b in make_mlp(6, 3, (32, 32), torch.float64)]
    ws = RolloutWorkspace()
    s, noise = _inputs(64, 5, 6, 3, torch.float32)
    kw = dict(backend="cpu", rollout_dtype=rollout_dtype, hidden_impl=impl)
    a1 = euler_rollout(params, s, noise, 4, workspace=ws, **kw).clone()
    n_buffers = len(ws._buffers)
    a2 = euler_rollout(params, s, noise, 4, workspace=ws, **kw)
    assert torch.equal(a1, a2) and len(ws._buffers) == n_buffers  # same buffers, same result
    with torch.no_grad():
        params[1][0].mul_(-1.0)  # an optimizer step changes a weight in place: every copy must follow
    a3 = euler_rollout(params, s, noise, 4, workspace=ws, **kw)
    want = euler_rollout(params, s, noise, 4, workspace=RolloutWorkspace(), **kw)
    assert torch.equal(a3, want) and not torch.equal(a3, a1)


@needs_ext
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16"])
def test_a_fused_adam_step_is_seen(impl, rollout_dtype):
    """Fused Adam updates the weights without moving their version counters: a workspace that kept weight
    copies keyed on versions would roll out the old weights (as it once did for bf16)."""
    params = [
        (torch.nn.Parameter(w.float()), torch.nn.Parameter(b.float()))
        for w, b in make_mlp(6, 3, (32, 32), torch.float64)
    ]
    flat = [t for layer in params for t in layer]
    opt = torch.optim.Adam(flat, lr=0.1, fused=True)
    ws = RolloutWorkspace()
    s, noise = _inputs(64, 5, 6, 3, torch.float32)
    kw = dict(backend="cpu", rollout_dtype=rollout_dtype, hidden_impl=impl)
    before = euler_rollout(params, s, noise, 4, workspace=ws, **kw).clone()
    for t in flat:
        t.grad = torch.ones_like(t)
    opt.step()
    after = euler_rollout(params, s, noise, 4, workspace=ws, **kw)
    fresh = euler_rollout(params, s, noise, 4, workspace=RolloutWorkspace(), **kw)
    assert torch.equal(after, fresh) and not torch.equal(after, before)


GROUPS = [  # per group: B, K (0: noise [B, d])
    [(5, 0), (5, 0), (5, 8)],  # an update's next-action, base and Fisher rollouts
    [(1, 0), (3, 2)],
    [(7, 3), (2, 0), (1, 1), (4, 5)],
]


def _group_inputs(groups, obs, d, dtype):
    return [_inputs(B, K, obs, d, dtype, seed=10 + i) for i, (B, K) in enumerate(groups)]


@needs_ext
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("d", [1, 5])
@pytest.mark.parametrize("groups", GROUPS, ids=lambda g: "+".join(f"{b}x{k}" for b, k in g))
def test_grouped_rollouts_are_each_groups_own_rollout(groups, d, dtype, impl):
    """One rollout over every group's rows gives each group its own rollout, to rounding (another row count
    may block the GEMMs otherwise; the per-row arithmetic is the same)."""
    if impl == "onednn" and dtype == torch.float64:
        pytest.skip("oneDNN's linear is fp32/bf16 only")
    obs, hidden, steps = 7, (33, 33), 6
    params64 = make_mlp(obs, d, hidden, torch.float64, scale=2.0)
    params = [(w.to(dtype), b.to(dtype)) for w, b in params64]
    rollouts = _group_inputs(groups, obs, d, dtype)
    got = euler_rollout_groups(params, rollouts, steps, backend="cpu", hidden_impl=impl)
    assert [g.shape for g in got] == [z.shape for _, z in rollouts]
    for i, (g, (s, z)) in enumerate(zip(got, rollouts)):
        own = euler_rollout(params, s, z, steps, backend="cpu", hidden_impl=impl)
        if dtype == torch.float32:  # as accurate as the plain fp32 chain (and so as the group's own rollout)
            exact = euler_rollout_ref(params64, s.double(), z.double(), steps)
            plain = euler_rollout_ref(params, s, z, steps)
            floor = 4 * U_FP32 * exact.abs().max().item()
            assert_as_accurate(g, plain, exact, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name=f"group {i}")
            assert_as_accurate(own, plain, exact, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name=f"own {i}")
        else:
            tol = steps * (len(hidden) + 1) * gamma(max(obs + d + 1, *hidden), U_FP64)
            assert_verbose_allclose(g, own, rtol=tol, atol=tol, name=f"group {i}")


@needs_ext
def test_grouped_bf16_rollouts_run_in_bf16():
    params = [(w.float(), b.float()) for w, b in make_mlp(6, 3, (64, 64), torch.float64)]
    rollouts = _group_inputs([(4, 0), (4, 8)], 6, 3, torch.float32)
    got = euler_rollout_groups(params, rollouts, 5, backend="cpu", rollout_dtype="bfloat16")
    for g, (s, z) in zip(got, rollouts):
        full = euler_rollout(params, s, z, 5, backend="cpu")
        assert_rounded_at(g, full, U_BF16, where=unclamped(full), name="bf16 grouped actions")


def test_grouped_rollouts_on_the_reference_backend_are_separate_rollouts():
    params = make_mlp(4, 2, (8,), torch.float64)
    rollouts = _group_inputs([(3, 0), (2, 4)], 4, 2, torch.float64)
    got = euler_rollout_groups(params, rollouts, 5, backend="reference")
    for g, (s, z) in zip(got, rollouts):
        assert torch.equal(g, euler_rollout(params, s, z, 5, backend="reference"))
    assert euler_rollout_groups(params, [], 5) == []


@needs_ext
def test_grouped_rollout_errors_name_the_group():
    params = make_mlp(4, 2, (8,), torch.float64)
    (s0, z0), (s1, z1) = _group_inputs([(3, 0), (2, 4)], 4, 2, torch.float64)
    with pytest.raises(ValueError, match="rollout 1: noise must be"):
        euler_rollout_groups(params, [(s0, z0), (s1, z1[:1])], 5, backend="cpu")
    with pytest.raises(TypeError, match="rollout 1: .*dtype"):
        euler_rollout_groups(params, [(s0, z0), (s1.float(), z1.float())], 5, backend="cpu")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        euler_rollout_groups(params, [(s0, z0), (s1, z1)], 0, backend="cpu")


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


GPU_UNIT_ROUNDOFF = {"float32": U_FP32, "bfloat16": U_BF16, "tf32": U_TF32}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16", "tf32"])
def test_gpu_rollout_matches_reference(backend, rollout_dtype, monkeypatch):
    """Against fp64, each precision is no worse than twice the plain chain in that precision (for tf32:
    the plain fp32 chain with TF32 GEMMs); bf16 and tf32 also differ from the fp32 rollout by their own
    rounding, so a path that silently ran fp32 GEMMs fails."""
    matmul = torch.backends.cuda.matmul
    monkeypatch.setattr(matmul, "allow_tf32", False)  # the fp32 references are true fp32
    params64 = [(w.cuda(), b.cuda()) for w, b in make_mlp(28, 5, (512, 512, 512), torch.float64)]
    s64, noise64 = (z.cuda() for z in _inputs(256, 8, 28, 5, torch.float64))
    exact = euler_rollout_ref(params64, s64, noise64, 10)
    params = [(w.float(), b.float()) for w, b in params64]
    s, noise = s64.float(), noise64.float()
    full = euler_rollout_ref(params, s, noise, 10)
    if rollout_dtype == "bfloat16":
        plain = euler_rollout_ref(
            [(w.bfloat16(), b.bfloat16()) for w, b in params64], s64.bfloat16(), noise64.bfloat16(), 10
        )
    elif rollout_dtype == "tf32":
        matmul.allow_tf32 = True
        plain = euler_rollout_ref(params, s, noise, 10)
        matmul.allow_tf32 = False
    else:
        plain = full
    got = euler_rollout(params, s, noise, 10, backend=backend, rollout_dtype=rollout_dtype)
    assert not matmul.allow_tf32  # the tf32 path restores the global flag
    u = GPU_UNIT_ROUNDOFF[rollout_dtype]
    # floor: a few roundings of the unit-scale actions in that precision (nvcc's fast-math GELU included)
    name = f"{backend} {rollout_dtype} actions"
    assert_as_accurate(got, plain, exact, floor=4 * u * exact.abs().max().item(), name=name)
    if rollout_dtype != "float32":
        assert_rounded_at(got, full, u, where=unclamped(full), name=name)


@needs_ext
def test_rollout_options_are_what_the_agent_rolls_out_with():
    """The agent holds one RolloutOptions (backend, dtype, workspace); flow_rollout with it is the op with those
    fields; the two spellings cannot be mixed; bad fields are refused when the options are made."""
    from fisher_decorator.agents import make_agent
    from fisher_decorator.agents.fql import FQLConfig
    from fisher_decorator.flows import flow_rollout
    from fisher_decorator.ops import RolloutOptions

    cfg = FQLConfig(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), rollout_dtype="bfloat16")
    agent = make_agent("fql", 5, 3, cfg, seed=0)
    assert (agent.rollout_options.backend, agent.rollout_options.dtype) == ("auto", "bfloat16")
    s, noise = _inputs(6, 4, 5, 3, torch.float32)
    got = agent.flow_actions(s, noise).clone()
    assert len(agent.rollout_options.workspace._buffers) > 0  # the agent's buffers were used
    want = euler_rollout(
        agent.velocity_field, s, noise, cfg.flow_steps, backend="auto", rollout_dtype="bfloat16"
    )
    assert torch.equal(got, want)
    ref = flow_rollout(agent.velocity_field, s, noise, cfg.flow_steps, RolloutOptions("reference"))
    assert not torch.equal(got, ref)  # bf16 GEMMs are not the fp32 reference: the dtype was honoured
    with pytest.raises(TypeError, match="either options or"):
        flow_rollout(agent.velocity_field, s, noise, 2, RolloutOptions(), backend="cpu")
    with pytest.raises(ValueError, match="rollout dtype must be one of"):
        RolloutOptions(dtype="float16")
    with pytest.raises(ValueError, match="rollout backend must be auto or one of"):
        RolloutOptions(backend="tpu")
