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
    # the distillation term's coefficient is alpha without gradient: the residual sees alpha * dD/dr
    base = agent.flow_actions(b["observations"], noise.base)
    r = agent.residual(b["observations"], base)
    assert r.requires_grad


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
    base = agent.flow_actions(obs, noise.base)
    r = agent.residual(obs, base)
    q_loss, _ = agent.q_loss(obs, (base + r).clamp(-1, 1))
    assert norm(grads(q_loss, res)) > 0
    actor, info = agent.actor_loss(b, noise, with_metrics=False)
    bc = agent.flow_matching_loss(b, noise)
    # actor - bc - q_loss = distill (+ alpha_loss, which has no residual gradient)
    g_actor, g_q, g_bc = grads(actor, res), grads(q_loss, res), grads(bc, res)
    assert norm(g_bc) == 0.0
    g_distill = [a - q for a, q in zip(g_actor, g_q)]
    assert norm(g_distill) > 0


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
    pol = list(agent.onestep_policy.parameters())
    actor, _ = agent.actor_loss(b, noise, with_metrics=False)
    bc = agent.flow_matching_loss(b, noise)
    assert norm(grads(actor, pol)) > 0 and norm(grads(bc, pol)) == 0.0
    q_loss, _ = agent.q_loss(
        b["observations"], agent.onestep_policy(b["observations"], noise.base).clamp(-1, 1)
    )
    assert norm(grads(q_loss, pol)) > 0


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
