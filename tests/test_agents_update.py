"""The update as a pure function of (parameters, optimizer state, batch, noise); noises; sampling; configs."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from fisher_decorator.agents import AGENTS, DeFlowConfig, FiDecConfig, FiDecNoise, FlowNoise, make_agent
from fisher_decorator.config import ConfigError
from fisher_decorator.ops import available_backends

OBS, ACT, B = 6, 2, 8
SMALL = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), flow_steps=4)


def make(name, seed=0, **kw):
    cls = AGENTS[name].config_class
    return make_agent(name, OBS, ACT, cls(**{**SMALL, **kw}), seed=seed)


def batch(seed=0, n=B):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, OBS, generator=g),
        "actions": torch.rand(n, ACT, generator=g) * 2 - 1,
        "rewards": torch.randn(n, generator=g),
        "masks": (torch.rand(n, generator=g) > 0.2).float(),
        "next_observations": torch.randn(n, OBS, generator=g),
    }


def params(agent):
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def assert_same_state(a, b):
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.mark.parametrize("name", list(AGENTS))
def test_update_replays_bit_for_bit_from_state_batch_and_noise(name):
    agent = make(name)
    for i in range(2):
        agent.update(batch(i))
    snapshot = copy.deepcopy(agent.checkpoint_state())
    b = batch(7)
    noise = agent.sample_noise(B)
    info1 = agent.update(b, noise)
    after1 = params(agent)
    agent.load_checkpoint_state(copy.deepcopy(snapshot))
    info2 = agent.update(b, noise)
    assert_same_state(after1, params(agent))
    for k in info1:
        assert torch.equal(info1[k], info2[k]), k
    # the optimizer state is part of the function: a fresh Adam gives another result
    fresh = make(name)
    fresh.load_state_dict(snapshot["model"])
    fresh.update(b, noise)
    assert any(not torch.equal(v, after1[k]) for k, v in params(fresh).items())


@pytest.mark.parametrize("name", list(AGENTS))
def test_default_noise_comes_from_the_agent_generator_and_is_replayable(name):
    a, b_ = make(name, seed=5), make(name, seed=5)
    for i in range(3):
        a.update(batch(i))
        b_.update(batch(i), b_.sample_noise(B))  # explicit draw == implicit draw
    assert_same_state(params(a), params(b_))
    c = make(name, seed=6)
    assert any(not torch.equal(v, params(a)[k]) for k, v in params(c).items())


def test_fidec_noise_fields_shapes_and_draw_order():
    agent = make("fidec", num_fisher_samples=3, fisher_t=0.9, fisher_t_width=0.05)
    g = torch.Generator().manual_seed(123)
    noise = agent.sample_noise(B, generator=g)
    assert isinstance(noise, FiDecNoise)
    shapes = {k: tuple(v.shape) for k, v in noise.tensors().items()}
    assert shapes == {
        "next_action": (B, ACT),
        "flow_x0": (B, ACT),
        "flow_t": (B, 1),
        "base": (B, ACT),
        "metric": (B, ACT),
        "fisher_noise": (B, 3, ACT),
        "fisher_x0": (B, 3, ACT),
        "fisher_t": (B, 3),
    }
    # the documented order: next-action, flow x0, flow t, base, Fisher noise, Fisher x0, Fisher t, metric
    g = torch.Generator().manual_seed(123)
    expected = [
        torch.randn(B, ACT, generator=g),
        torch.randn(B, ACT, generator=g),
        torch.rand(B, 1, generator=g),
        torch.randn(B, ACT, generator=g),
        torch.randn(B, 3, ACT, generator=g),
        torch.randn(B, 3, ACT, generator=g),
        0.85 + 0.05 * torch.rand(B, 3, generator=g),
        torch.randn(B, ACT, generator=g),
    ]
    got = [noise.next_action, noise.flow_x0, noise.flow_t, noise.base]
    got += [noise.fisher_noise, noise.fisher_x0, noise.fisher_t, noise.metric]
    for e, v in zip(expected, got):
        torch.testing.assert_close(v, e, rtol=1e-6, atol=1e-7)
    assert noise.fisher_t.min() >= 0.85 and noise.fisher_t.max() <= 0.9
    fixed = make("fidec", fisher_t=0.95).sample_noise(B)
    assert torch.all(fixed.fisher_t == 0.95)


def test_flow_noise_for_deflow_and_fql():
    for name in ("deflow", "fql"):
        noise = make(name).sample_noise(B)
        assert type(noise) is FlowNoise
        assert set(noise.tensors()) == {"next_action", "flow_x0", "flow_t", "base", "metric"}


@pytest.mark.parametrize("name", list(AGENTS))
def test_metrics_never_change_the_trajectory(name):
    """The diagnostic rollout runs only on metric steps, but its noise is drawn every step."""
    a, b_ = make(name, seed=2), make(name, seed=2)
    for i in range(4):
        ia = a.update(batch(i), with_metrics=True)
        ib = b_.update(batch(i), with_metrics=(i % 2 == 0))
    assert_same_state(params(a), params(b_))
    assert "actor/mse" in ia and "grad/global_norm" in ia
    assert "actor/mse" not in ib and "grad/global_norm" not in ib
    assert torch.equal(a.noise_generator.get_state(), b_.noise_generator.get_state())


def test_diagnostic_rollout_runs_only_when_metrics_are_requested():
    agent = make("fidec", num_fisher_samples=2)
    rollouts, forwards = [], []
    flow_actions = agent.flow_actions
    agent.flow_actions = lambda obs, noise: rollouts.append(tuple(noise.shape)) or flow_actions(obs, noise)
    hook = agent.velocity_field.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    agent.update(batch(), with_metrics=False)
    without, fwd_without = list(rollouts), list(forwards)
    rollouts.clear()
    forwards.clear()
    agent.update(batch(), with_metrics=True)
    hook.remove()
    d = agent.action_dim
    # rollouts: next action (B), base (B), Fisher (B x K); module passes: Fisher velocities, flow matching
    assert sorted(without) == sorted([(B, d), (B, d), (B, 2, d)])
    assert sorted(fwd_without) == sorted([B * 2, B])
    assert sorted(rollouts) == sorted([*without, (B, d)])  # plus exactly one B-row policy rollout for `mse`
    assert sorted(forwards) == sorted(fwd_without)


@pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")
def test_fidec_backends_give_the_same_update():
    ref = make("fidec", penalty_backend="reference", num_fisher_samples=3)
    fused = make("fidec", penalty_backend="cpu", num_fisher_samples=3)
    b = batch()
    noise = ref.sample_noise(B)
    i_ref, i_fused = ref.update(b, noise), fused.update(b, noise)
    for k in i_ref:
        torch.testing.assert_close(i_fused[k], i_ref[k], rtol=1e-5, atol=1e-6, msg=k)
    for k, v in params(ref).items():
        torch.testing.assert_close(params(fused)[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("clip", [1e-3, 1e6])  # binding, and too large to bind
def test_grad_clip_scales_the_gradient_adam_receives(clip):
    """Adam's first step stores exp_avg = (1 - beta1) * g for the gradient g it was given: that must be the
    raw gradient (autograd of the loss here, fp64) times min(1, clip / (||g_raw|| + 1e-6)), the norm in fp64."""
    agent = make_agent("deflow", OBS, ACT, DeFlowConfig(**SMALL, grad_clip=clip), seed=0, dtype=torch.float64)
    twin = make_agent("deflow", OBS, ACT, DeFlowConfig(**SMALL, grad_clip=clip), seed=0, dtype=torch.float64)
    b = {k: v.double() for k, v in batch().items()}
    noise = agent.sample_noise(B)
    loss, _ = twin.total_loss(b, noise, with_metrics=True)
    names = [n for n, p in twin.named_parameters() if p.requires_grad]
    raw = torch.autograd.grad(loss, [twin.get_parameter(n) for n in names], allow_unused=True)
    raw = [torch.zeros_like(twin.get_parameter(n)) if g is None else g for n, g in zip(names, raw)]
    raw_norm = math.sqrt(sum(float(g.square().sum()) for g in raw))
    scale = min(1.0, clip / (raw_norm + 1e-6))
    assert (scale < 1e-2) == (clip == 1e-3)  # the small clip binds, the large one does not

    info = agent.update(b, noise)
    beta1 = agent.optimizer.param_groups[0]["betas"][0]
    seen = [agent.optimizer.state[agent.get_parameter(n)]["exp_avg"] / (1 - beta1) for n in names]
    # fp64 throughout: sums of <= ~1e4 products, relative error ~1e4 * 2^-53 ~ 1e-12 of the largest term
    top = max(float(g.abs().max()) for g in raw) * scale
    for n, g, s in zip(names, raw, seen):
        torch.testing.assert_close(s, g * scale, rtol=1e-10, atol=1e-10 * top, msg=n)
    seen_norm = math.sqrt(sum(float(s.square().sum()) for s in seen))
    assert float(info["grad/global_norm"]) == pytest.approx(raw_norm, rel=1e-10)
    assert float(info["grad/clip_scale"]) == pytest.approx(scale, rel=1e-10)
    assert float(info["grad/norm_clipped"]) == pytest.approx(seen_norm, rel=1e-10)
    assert seen_norm == pytest.approx(raw_norm * scale, rel=1e-10) and seen_norm <= clip * (1 + 1e-10)


def test_fql_clips_nothing():
    agent = make("fql")
    assert agent.config.grad_clip is None
    info = agent.update(batch())
    assert "grad/clip_scale" not in info and "grad/norm_clipped" not in info


@pytest.mark.parametrize("name", ["fidec", "deflow"])
def test_sampling_modes(name):
    agent = make(name)
    obs = torch.randn(5, OBS)
    g = torch.Generator().manual_seed(0)
    for mode in ("default", "best_of_n", "iterative"):
        a = agent.sample_actions(obs, generator=g, mode=mode, num_samples=4, num_refine_steps=3)
        assert a.shape == (5, ACT) and a.abs().max() <= 1 and not a.requires_grad
    single = agent.sample_actions(obs[0], generator=g)
    assert single.shape == (ACT,)
    # best-of-n keeps the candidate base action with the highest Q, then refines it
    noise = torch.randn(5, 4, ACT, generator=g)
    base = agent.flow_actions(obs, noise)
    q = agent.critic(obs.repeat_interleave(4, 0), base.reshape(20, ACT)).mean(0).reshape(5, 4)
    best = base[torch.arange(5), q.argmax(1)]
    torch.testing.assert_close(
        agent.sample_actions(obs, noise=noise, mode="best_of_n"), agent.refine(obs, best)
    )
    # iterative refinement returns one of the chain a_0, T(a_0), T(T(a_0)), ... with the highest Q
    z = torch.randn(5, ACT, generator=g)
    chain = [agent.flow_actions(obs, z)]
    for _ in range(3):
        chain.append(agent.refine(obs, chain[-1]))
    qs = torch.stack([agent.critic(obs, c).mean(0) for c in chain])
    expected = torch.stack(chain)[qs.argmax(0), torch.arange(5)]
    torch.testing.assert_close(
        agent.sample_actions(obs, noise=z, mode="iterative", num_refine_steps=3), expected
    )
    with pytest.raises(ConfigError, match="sampling mode"):
        agent.sample_actions(obs, mode="greedy")


def test_fql_samples_only_by_default():
    agent = make("fql")
    assert agent.sample_actions(torch.randn(3, OBS)).shape == (3, ACT)
    with pytest.raises(ConfigError, match="default"):
        agent.sample_actions(torch.randn(3, OBS), mode="best_of_n")


def test_config_defaults_are_the_authors():
    cfg = FiDecConfig()
    assert (cfg.lr, cfg.discount, cfg.tau, cfg.grad_clip, cfg.q_agg, cfg.flow_steps) == (
        3e-4,
        0.99,
        0.005,
        5.0,
        "mean",
        10,
    )
    assert (cfg.alpha, cfg.use_lagrange, cfg.target_divergence, cfg.normalize_q_loss) == (
        10.0,
        True,
        0.001,
        False,
    )
    assert (cfg.num_fisher_samples, cfg.fisher_t, cfg.fisher_t_width) == (4, 0.95, 0.0)
    assert (cfg.fisher_damping, cfg.fisher_score_eps, cfg.fisher_trace_eps) == (1e-3, 1e-6, 1e-6)
    assert cfg.actor_hidden_dims == (512,) * 4 and cfg.value_hidden_dims == (512,) * 4
    assert cfg.layer_norm and not cfg.actor_layer_norm and cfg.num_critics == 2
    for f in dataclasses.fields(cfg):
        assert f.metadata.get("doc"), f"field {f.name} has no doc"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(q_agg="max"), "q_agg"),
        (dict(fisher_score="exact"), "fisher_score"),
        (dict(penalty_backend="gpu"), "penalty_backend"),
        (dict(num_fisher_samples=0), "num_fisher_samples"),
        (dict(fisher_t=1.5), "fisher_t"),
        (dict(fisher_t=0.0005, fisher_t_width=0.1), "empty t range"),
        (dict(discount=1.5), "discount"),
        (dict(actor_hidden_dims=()), "actor_hidden_dims"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_configs_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        make("fidec", **kw)


def test_bad_batch_and_agent_errors():
    agent = make("deflow")
    b = batch()
    del b["masks"]
    with pytest.raises(KeyError, match="masks"):
        agent.update(b)
    b = batch()
    b["observations"] = b["observations"][:, :3]
    with pytest.raises(ValueError, match="observations"):
        agent.update(b)
    with pytest.raises(ValueError, match="fidec, deflow, fql"):
        make_agent("sac", OBS, ACT)
    with pytest.raises(TypeError, match="FiDecConfig"):
        make_agent("fidec", OBS, ACT, AGENTS["fql"].config_class())


def test_checkpoint_state_rejects_another_agent():
    state = make("deflow").checkpoint_state()
    with pytest.raises(ValueError, match="deflow"):
        make("fidec").load_checkpoint_state(state)
