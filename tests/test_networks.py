"""Networks (SPEC "Networks") and the Euler rollout every agent uses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fisher_decorator.flows import euler_rollout, flow_matching_target
from fisher_decorator.networks import (
    MLP,
    CriticEnsemble,
    StateActionMLP,
    VelocityField,
    gelu,
    polyak_update,
)
from tests.utils import assert_verbose_allclose


def test_gelu_is_the_tanh_approximation():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert_verbose_allclose(gelu(x), expected, rtol=1e-12, atol=1e-14, name="gelu")
    assert not torch.allclose(gelu(x), F.gelu(x), atol=1e-6)  # not the erf form


def test_mlp_init_is_xavier_uniform_fan_avg_with_zero_bias():
    g = torch.Generator().manual_seed(0)
    mlp = MLP(300, (500, 200), 7, generator=g)
    for lin in mlp.linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = lin.weight.detach()
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.97 * bound  # really uniform over the whole range
        # variance of U(-a, a) = a^2 / 3 = 2 / (fan_in + fan_out)
        assert abs(w.var().item() - bound**2 / 3) < 0.05 * bound**2 / 3
        assert torch.count_nonzero(lin.bias) == 0


def test_mlp_init_is_deterministic_in_the_generator():
    a = MLP(5, (8, 8), 3, generator=torch.Generator().manual_seed(1))
    b = MLP(5, (8, 8), 3, generator=torch.Generator().manual_seed(1))
    c = MLP(5, (8, 8), 3, generator=torch.Generator().manual_seed(2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.linears[0].weight, c.linears[0].weight)


def test_mlp_forward_layer_order_and_layer_norm():
    torch.manual_seed(0)
    mlp = MLP(4, (6, 5), 2, layer_norm=True, dtype=torch.float64)
    with torch.no_grad():
        for n in mlp.norms:
            n.weight.uniform_(0.5, 1.5)
            n.bias.uniform_(-0.5, 0.5)
    x = torch.randn(7, 4, dtype=torch.float64)
    h = x
    for i, lin in enumerate(mlp.linears):
        h = h @ lin.weight.T + lin.bias
        if i < 2:
            h = gelu(h)
            mu = h.mean(-1, keepdim=True)
            var = h.var(-1, unbiased=False, keepdim=True)
            h = (h - mu) / torch.sqrt(var + 1e-6) * mlp.norms[i].weight + mlp.norms[i].bias
    assert_verbose_allclose(mlp(x), h, rtol=1e-12, atol=1e-12, name="mlp")
    assert len(mlp.norms) == 2 and all(n.eps == 1e-6 for n in mlp.norms)
    assert len(MLP(4, (6, 5), 2).norms) == 0


def test_velocity_field_input_is_concat_s_x_t():
    vf = VelocityField(3, 2, (8,), dtype=torch.float64)
    s, x = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, 1, dtype=torch.float64)
    expected = MLP.forward(vf, torch.cat([s, x, t], -1))
    assert_verbose_allclose(vf(s, x, t), expected, rtol=0, atol=0, name="[N,1] t")
    assert_verbose_allclose(vf(s, x, t[:, 0]), expected, rtol=0, atol=0, name="[N] t")
    const = vf(s, x, 0.3)
    assert_verbose_allclose(const, vf(s, x, torch.full((5, 1), 0.3, dtype=torch.float64)), rtol=0, atol=0)
    assert vf.linears[0].in_features == 3 + 2 + 1 and vf.linears[-1].out_features == 2


def _per_head_reference(critic: CriticEnsemble, s, a):
    out = []
    x0 = torch.cat([s, a], -1)
    for h in range(critic.num_heads):
        x = x0
        for i in range(len(critic.weights)):
            x = x @ critic.weights[i][h] + critic.biases[i][h, 0]
            if i < len(critic.weights) - 1:
                x = F.layer_norm(
                    gelu(x),
                    (x.shape[-1],),
                    critic.norm_weights[i][h, 0],
                    critic.norm_biases[i][h, 0],
                    eps=1e-6,
                )
        out.append(x[:, 0])
    return torch.stack(out)


def test_critic_ensemble_heads_match_independent_mlps():
    critic = CriticEnsemble(5, 3, (16, 16, 16), num_heads=2, dtype=torch.float64)
    with torch.no_grad():
        for p in list(critic.norm_weights) + list(critic.norm_biases) + list(critic.biases):
            p.add_(0.1 * torch.randn_like(p))
    s, a = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    q = critic(s, a)
    assert q.shape == (2, 9)
    assert_verbose_allclose(q, _per_head_reference(critic, s, a), rtol=1e-12, atol=1e-12, name="q")
    assert not torch.allclose(q[0], q[1])  # heads are independently initialised


def test_critic_ensemble_is_one_batched_computation():
    critic = CriticEnsemble(5, 3, (16, 16), num_heads=2)
    s, a = torch.randn(4, 5), torch.randn(4, 3)
    with torch.profiler.profile() as prof:
        critic(s, a)
    names = [e.key for e in prof.key_averages()]
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::baddbmm", 0) == 3  # one batched GEMM per layer for both heads
    assert "aten::addmm" not in names and "aten::mm" not in names


def test_critic_init_per_head_fans_and_ln_defaults():
    critic = CriticEnsemble(30, 5, (64, 64), num_heads=2)
    w0 = critic.weights[0].detach()
    bound = math.sqrt(6.0 / (35 + 64))
    assert w0.shape == (2, 35, 64) and w0.abs().max() <= bound
    assert all(torch.all(p == 1) for p in critic.norm_weights)
    assert all(torch.count_nonzero(p) == 0 for p in list(critic.norm_biases) + list(critic.biases))


def test_critic_detach_params_blocks_critic_gradient_not_action_gradient():
    critic = CriticEnsemble(3, 2, (8,))
    s = torch.randn(4, 3)
    a = torch.randn(4, 2, requires_grad=True)
    critic(s, a, detach_params=True).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_polyak_update():
    src, tgt = (
        StateActionMLP(3, 2, (4,)),
        StateActionMLP(3, 2, (4,), generator=torch.Generator().manual_seed(5)),
    )
    before = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(tgt, src, 0.25)
    for b, s, t in zip(before, src.parameters(), tgt.parameters()):
        assert_verbose_allclose(t, 0.25 * s + 0.75 * b, rtol=1e-6, atol=1e-7, name="polyak")


def test_bad_hidden_dims():
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(3, (), 2)
    with pytest.raises(ValueError, match="hidden_dims"):
        CriticEnsemble(3, 2, (8, 0))


# ------------------------------------------------------------------------- Euler rollout


def test_euler_rollout_matches_the_spec_loop_and_clips():
    vf = VelocityField(3, 2, (16,), dtype=torch.float64)
    with torch.no_grad():
        vf.linears[-1].bias.fill_(3.0)  # push some samples past the boundary
    s, z = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    x = z.clone()
    N = 7
    for i in range(N):
        x = x + vf(s, x, torch.full((6, 1), i / N, dtype=torch.float64)) / N
    got = euler_rollout(vf, s, z, N)
    assert_verbose_allclose(got, x.clamp(-1, 1), rtol=1e-12, atol=1e-12, name="rollout")
    assert got.max() == 1.0 and not got.requires_grad


def test_euler_rollout_k_samples_are_one_batch_of_repeated_states():
    vf = VelocityField(3, 2, (16,), dtype=torch.float64)
    s = torch.randn(4, 3, dtype=torch.float64)
    z = torch.randn(4, 5, 2, dtype=torch.float64)
    got = euler_rollout(vf, s, z, 4)
    assert got.shape == (4, 5, 2)
    for k in range(5):
        assert_verbose_allclose(
            got[:, k], euler_rollout(vf, s, z[:, k], 4), rtol=1e-12, atol=1e-12, name=f"k={k}"
        )
    # A LayerNorm field runs the module-call loop: (B*K)-row batches, one per Euler step. (A plain
    # field runs the fused op, whose batching tests/test_euler_rollout.py checks against the reference.)
    vf_ln = VelocityField(3, 2, (16,), layer_norm=True, dtype=torch.float64)
    calls = []
    vf_ln.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    euler_rollout(vf_ln, s, z, 4)
    assert calls == [20] * 4


def test_euler_rollout_without_gradient_and_bad_inputs():
    vf = VelocityField(3, 2, (8,))
    out = euler_rollout(vf, torch.randn(2, 3), torch.randn(2, 2, requires_grad=True), 2)
    assert not out.requires_grad
    with pytest.raises(ValueError, match="steps"):
        euler_rollout(vf, torch.randn(2, 3), torch.randn(2, 2), 0)
    with pytest.raises(ValueError, match="noise"):
        euler_rollout(vf, torch.randn(2, 3), torch.randn(3, 2), 2)


def test_flow_matching_target():
    a, x0, t = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5, 1)
    xt, v = flow_matching_target(a, x0, t)
    assert_verbose_allclose(xt, (1 - t) * x0 + t * a, rtol=0, atol=0)
    assert_verbose_allclose(v, a - x0, rtol=0, atol=0)
