"""Gradient flow exactly as the authors' code, checked on gradients (not by reading the code).

- Euler rollouts and Fisher scores carry no gradient.
- The critic gets no gradient from the actor loss (its Q term uses the critic held constant).
- The flow field gets its gradient from the flow-matching loss only (none from the penalty or Q).
- log_alpha moves only through alpha_loss, by -(D - target_divergence).
- The residual (FQL: the one-step policy) gets gradients from the distillation and Q terms.
- The target critic gets no gradient at all.
"""

from __future__ import annotations

import pytest
import torch

from fisher_decorator.agents import make_agent

OBS, ACT, B = 5, 3, 6
SMALL = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), flow_steps=3)


def make(name, **kw):
    cls = make_agent(name, OBS, ACT).config_class
    extra = dict(num_fisher_samples=3, fisher_t_width=0.05, fisher_t=0.9) if name == "fidec" else {}
    return make_agent(name, OBS, ACT, cls(**{**SMALL, **extra, **kw}), seed=1, dtype=torch.float64)


def batch():
    g = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
        "actions": torch.rand(B, ACT, generator=g, dtype=torch.float64) * 2 - 1,
        "rewards": torch.randn(B, generator=g, dtype=torch.float64),
        "masks": torch.ones(B, dtype=torch.float64),
        "next_observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
    }


def grads(loss, params):
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def norm(gs):
    return sum(float(g.abs().sum()) for g in gs)


# Independent fp64 evaluations of SPEC 4-7, written out here from the formulas (no agent loss code).
# Tolerance: every compared quantity is a sum of at most ~1e3 fp64 products over the same inputs, so the two
# evaluations differ by about 1e3 * 2^-53 ~ 1e-13 of the largest term; 1e-10 of the largest entry bounds it.
TOL = 1e-10


def euler(agent, obs, z):
    """SPEC "Sampling": x_{i+1} = x_i + v(s, x_i, i/N) / N from x_0 = z, clipped to [-1, 1]; z [B, d] or [B, K, d]."""
    n = agent.config.flow_steps
    shape = z.shape
    x = z.reshape(-1, shape[-1])
    s = obs.repeat_interleave(x.shape[0] // obs.shape[0], dim=0)
    with torch.no_grad():
        for i in range(n):
            x = x + agent.velocity_field(s, x, torch.full((x.shape[0], 1), i / n, dtype=x.dtype)) / n
    return x.clamp(-1.0, 1.0).reshape(shape)


def divergence_grad(agent, obs, noise, r):
    """(D, dD/dr [B, d]) by SPEC 5: FiDec D = mean_b (mean_k (g_k . r)^2 + lambda ||r||^2) / (c d),
    dD/dr = 2 (mean_k (g_k . r) g_k + lambda r) / (c B d); DeFlow D = mean_b ||r||^2 / d, dD/dr = 2 r / (B d)."""
    B, d = r.shape
    if agent.name == "deflow":
        return r.square().sum() / (B * d), 2 * r / (B * d)
    cfg = agent.config
    K = noise.fisher_noise.shape[1]
    t = noise.fisher_t[..., None]  # [B, K, 1]
    x = (1 - t) * noise.fisher_x0 + t * euler(agent, obs, noise.fisher_noise)
    with torch.no_grad():
        v = agent.velocity_field(
            obs.repeat_interleave(K, dim=0), x.reshape(B * K, d), noise.fisher_t.reshape(B * K, 1)
        ).reshape(B, K, d)
    g = v / (1 - t).clamp(min=cfg.fisher_score_eps)  # the "velocity" score (SPEC 4)
    c = ((g.square().sum(-1).mean(1) + cfg.fisher_damping * d) / d).clamp(min=cfg.fisher_trace_eps)
    dot = (g * r[:, None, :]).sum(-1)
    lam = cfg.fisher_damping
    D = ((dot.square().mean(1) + lam * r.square().sum(-1)) / (c * d)).mean()
    return D, 2 * ((dot[..., None] * g).mean(1) + lam * r) / (c[:, None] * B * d)


def q_loss_grad(agent, obs, a):
    """d q_loss / d a for q_loss = -mean_b mean_k Q_k(s, clip(a)) (SPEC 7, not normalised), by autograd
    through the critic's action input only."""
    assert not agent.config.normalize_q_loss
    clipped = a.detach().clamp(-1, 1).requires_grad_(True)
    (dq,) = torch.autograd.grad(agent.critic(obs, clipped).mean(0).sum(), clipped)
    inside = (a.detach() >= -1) & (a.detach() <= 1)
    return -dq * inside / a.shape[0]


def assert_close_to(actual, expected, msg=""):
    scale = (
        max(float(e.abs().max()) for e in expected)
        if isinstance(expected, list)
        else float(expected.abs().max())
    )
    assert scale > 0, msg
    for a, e in zip(actual, expected) if isinstance(expected, list) else [(actual, expected)]:
        torch.testing.assert_close(a, e, rtol=TOL, atol=TOL * scale, msg=msg)


def output_of(module):
    """A forward hook that keeps the module's outputs that carry gradient (the no-grad passes of the critic
    target and the metrics are left out), with ``.grad`` after backward."""
    out = []

    def hook(m, i, o):
        if o.requires_grad:
            o.retain_grad()
            out.append(o)

    return out, module.register_forward_hook(hook)


AGENTS = ["fidec", "deflow", "fql"]


@pytest.mark.parametrize("name", AGENTS)
def test_rollouts_and_scores_have_no_gradient(name):
    agent = make(name)
    b = batch()
    noise = agent.sample_noise(B)
    assert not agent.flow_actions(b["observations"], noise.base).requires_grad
    assert not agent.flow_actions(b["observations"], noise.base[:, None].expand(B, 4, ACT)).requires_grad
    if name == "fidec":
        v, x = agent.fisher_samples(b["observations"], noise)
        assert not v.requires_grad and not x.requires_grad


@pytest.mark.parametrize("name", AGENTS)
def test_critic_gets_no_gradient_from_the_actor_loss(name):
    agent = make(name, normalize_q_loss=True)
    b = batch()
    noise = agent.sample_noise(B)
    actor_loss, _ = agent.actor_loss(b, noise, with_metrics=True)
    critic_params = list(agent.critic.parameters())
    assert norm(grads(actor_loss, critic_params)) == 0.0
    critic_loss, _ = agent.critic_loss(b, noise)
    assert norm(grads(critic_loss, critic_params)) > 0
    # and the critic loss moves nothing but the critic
    others = [p for n, p in agent.named_parameters() if not n.startswith(("critic.", "target_critic."))]
    assert norm(grads(critic_loss, others)) == 0.0


@pytest.mark.parametrize("name", AGENTS)
def test_flow_field_gets_gradient_from_flow_matching_only(name):
    agent = make(name)
    b = batch()
    noise = agent.sample_noise(B)
    vf = list(agent.velocity_field.parameters())
    total, _ = agent.total_loss(b, noise, with_metrics=True)
    bc = agent.flow_matching_loss(b, noise)
    g_total, g_bc = grads(total, vf), grads(bc, vf)
    assert norm(g_bc) > 0
    for gt, gb in zip(g_total, g_bc):
        torch.testing.assert_close(gt, gb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["fidec", "deflow"])
def test_log_alpha_moves_only_through_alpha_loss(name):
    agent = make(name, target_divergence=0.003)
    b = batch()
    noise = agent.sample_noise(B)
    total, info = agent.total_loss(b, noise, with_metrics=False)
    (g,) = torch.autograd.grad(total, [agent.log_alpha])
    D = float(info["actor/distill_loss"])
    torch.testing.assert_close(g, torch.tensor(-(D - 0.003), dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # the distillation term's coefficient is alpha without gradient: the residual's output r sees
    # alpha * dD/dr + d q_loss / dr, both evaluated here from SPEC 5-7
    out, handle = output_of(agent.residual)
    total, _ = agent.total_loss(b, noise, with_metrics=False)
    handle.remove()
    total.backward()
    (r,) = out
    obs = b["observations"]
    base = euler(agent, obs, noise.base)
    assert_close_to(r.detach(), agent.residual(obs, base).detach())  # the residual at a_b = euler(s, z)
    alpha = float(agent.log_alpha.detach().exp())
    expected = alpha * divergence_grad(agent, obs, noise, r.detach())[1] + q_loss_grad(agent, obs, base + r)
    assert_close_to(r.grad, expected)


@pytest.mark.parametrize("name", ["fidec", "deflow"])
def test_fixed_alpha_mode_has_no_log_alpha(name):
    agent = make(name, use_lagrange=False, alpha=2.5)
    assert agent.log_alpha is None
    _, info = agent.total_loss(batch(), agent.sample_noise(B), with_metrics=False)
    assert float(info["actor/alpha_loss"]) == 0.0 and float(info["actor/alpha_value"]) == 2.5


@pytest.mark.parametrize("name", ["fidec", "deflow"])
def test_residual_gets_gradient_from_divergence_and_q(name):
    agent = make(name)
    b = batch()
    noise = agent.sample_noise(B)
    res = list(agent.residual.parameters())
    obs = b["observations"]
    base = euler(agent, obs, noise.base)
    r = agent.residual(obs, base)
    q_loss, _ = agent.q_loss(obs, (base + r).clamp(-1, 1))
    actor, info = agent.actor_loss(b, noise, with_metrics=False)
    bc = agent.flow_matching_loss(b, noise)
    # actor - bc - q_loss = distill (+ alpha_loss, which has no residual gradient)
    g_actor, g_q, g_bc = grads(actor, res), grads(q_loss, res), grads(bc, res)
    assert norm(g_bc) == 0.0
    g_distill = [a - q for a, q in zip(g_actor, g_q)]
    # by the chain rule through r's Jacobian: alpha J^T dD/dr and J^T dq_loss/dr, dD/dr and dq_loss/dr from SPEC
    alpha = float(info["alpha_value"])
    assert alpha == pytest.approx(10.0)
    rd = r.detach()
    D, dD = divergence_grad(agent, obs, noise, rd)
    assert float(info["distill_loss"]) == pytest.approx(float(D), rel=TOL, abs=0)
    expect_distill = torch.autograd.grad(r, res, alpha * dD, retain_graph=True)
    expect_q = torch.autograd.grad(r, res, q_loss_grad(agent, obs, base + rd))
    assert_close_to(g_q, list(expect_q), "q")
    assert_close_to(g_distill, list(expect_distill), "distill")


def test_fisher_penalty_gradient_reaches_residual_only_and_equals_closed_form():
    agent = make("fidec", use_lagrange=False, alpha=1.0)
    b = batch()
    noise = agent.sample_noise(B)
    obs = b["observations"]
    base = agent.flow_actions(obs, noise.base)
    r = agent.residual(obs, base).detach().requires_grad_(True)
    v, x = agent.fisher_samples(obs, noise)
    from fisher_decorator.ops import fisher_penalty, flow_score

    pen, c = fisher_penalty(v, x, noise.fisher_t, r, backend="reference")
    (gr,) = torch.autograd.grad(pen.mean(), r)
    g = flow_score(v, x, noise.fisher_t)
    d = ACT
    dot = (g * r[:, None, :]).sum(-1)  # [B, K]
    expected = 2 * ((dot[..., None] * g).mean(1) + 1e-3 * r) / (c[:, None] * B * d)
    torch.testing.assert_close(gr, expected.detach(), rtol=1e-10, atol=1e-14)


def test_fql_one_step_policy_gets_distill_and_q_gradients():
    agent = make("fql", alpha=3.0)
    b = batch()
    noise = agent.sample_noise(B)
    obs = b["observations"]
    pol = list(agent.onestep_policy.parameters())
    out, handle = output_of(agent.onestep_policy)
    actor, _ = agent.actor_loss(b, noise, with_metrics=False)
    handle.remove()
    bc = agent.flow_matching_loss(b, noise)
    assert norm(grads(bc, pol)) == 0.0
    actor.backward()
    (mu,) = out
    # d actor / d mu = alpha * 2 (mu - euler(s, z)) / (B d) + d q_loss / d mu
    target = euler(agent, obs, noise.base)
    expected = 3.0 * 2 * (mu.detach() - target) / mu.numel() + q_loss_grad(agent, obs, mu)
    assert_close_to(mu.grad, expected)
    assert norm([p.grad for p in pol]) > 0


@pytest.mark.parametrize("name", AGENTS)
def test_target_critic_is_not_trained_and_follows_polyak(name):
    agent = make(name)
    assert all(not p.requires_grad for p in agent.target_critic.parameters())
    assert not any(p is q for p in agent.target_critic.parameters() for q in agent.trainable_parameters())
    agent.update(batch())  # target == critic at creation; move them apart first
    before = [p.clone() for p in agent.target_critic.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    agent.update(batch())
    tau = agent.config.tau
    assert any(not torch.equal(c, n) for c, n in zip(critic_before, agent.critic.parameters()))
    # towards the critic of before the step, as the authors' target_update
    for b_, t, c in zip(before, agent.target_critic.parameters(), critic_before):
        torch.testing.assert_close(t, tau * c + (1 - tau) * b_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", AGENTS)
def test_one_optimizer_over_all_trainable_parameters(name):
    agent = make(name)
    opt_params = [p for g in agent.optimizer.param_groups for p in g["params"]]
    named = dict(agent.named_parameters())
    expected = [p for n, p in named.items() if not n.startswith("target_critic.")]
    assert len(agent.optimizer.param_groups) == 1
    assert {id(p) for p in opt_params} == {id(p) for p in expected}
    assert isinstance(agent.optimizer, torch.optim.Adam)
    group = agent.optimizer.param_groups[0]
    assert group["lr"] == 3e-4 and group["eps"] == 1e-8 and group["betas"] == (0.9, 0.999)
    if name != "fql":
        assert any(p is agent.log_alpha for p in opt_params)
