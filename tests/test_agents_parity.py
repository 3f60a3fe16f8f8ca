"""One update of each agent on a fixed tiny batch with fixed noises against the fp64 NumPy oracle.

Checked: every loss and metric (fp64 and fp32 agents), the gradient (directional derivatives of
the oracle's loss by central differences, with the stop-gradients of SPEC), and the parameters
after the update (global-norm clip, one Adam step, Polyak target) computed by the oracle from
the agent's gradient.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fisher_decorator.agents import make_agent
from fisher_decorator.agents.base import AgentConfig
from fisher_decorator.ops import available_backends
from tests import agent_oracle as oracle

OBS, ACT, B = 4, 3, 5
SMALL = dict(actor_hidden_dims=(8, 8), value_hidden_dims=(8, 8), flow_steps=3)

CASES = {
    "fidec-authors-default": ("fidec", dict(num_fisher_samples=3)),
    "fidec-variant-min-normq-clip": (
        "fidec",
        dict(
            num_fisher_samples=3,
            fisher_t=0.9,
            fisher_t_width=0.05,
            q_agg="min",
            normalize_q_loss=True,
            grad_clip=0.5,
            discount=0.995,
            target_divergence=0.01,
        ),
    ),
    "fidec-tweedie-fixed-alpha": (
        "fidec",
        dict(
            num_fisher_samples=2, fisher_score="tweedie", use_lagrange=False, alpha=3.0, fisher_damping=0.01
        ),
    ),
    "deflow": ("deflow", dict(normalize_q_loss=True)),
    "deflow-fixed-alpha-clip": ("deflow", dict(use_lagrange=False, alpha=2.0, grad_clip=0.3)),
    "fql": ("fql", dict(alpha=3.0, normalize_q_loss=True)),
    "fql-clip-min": ("fql", dict(q_agg="min", grad_clip=0.2)),
}


def make(agent_name, extra, dtype=torch.float64, backend="reference"):
    cls = make_agent(agent_name, OBS, ACT).config_class
    kw = {**SMALL, **extra}
    if agent_name == "fidec":
        kw["penalty_backend"] = backend
    return make_agent(agent_name, OBS, ACT, cls(**kw), seed=3, dtype=dtype)


def fixed_batch(dtype):
    g = torch.Generator().manual_seed(11)
    f = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    batch = {
        "observations": f(B, OBS),
        "actions": (torch.rand(B, ACT, generator=g, dtype=torch.float64) * 1.8 - 0.9),
        "rewards": f(B),
        "masks": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        "next_observations": f(B, OBS),
    }
    return {k: v.to(dtype) for k, v in batch.items()}


def to_np(t):
    return t.detach().to(torch.float64).numpy()


def oracle_params(agent, named: dict[str, np.ndarray]) -> dict:
    """The oracle's parameter layout from a flat {torch name: array} dict."""

    def seq(prefix, n):
        return [
            (named[f"{prefix}.linears.{i}.weight"], named[f"{prefix}.linears.{i}.bias"]) for i in range(n)
        ]

    def heads(prefix, mod):
        out = []
        for h in range(mod.num_heads):
            layers = [
                (named[f"{prefix}.weights.{i}"][h], named[f"{prefix}.biases.{i}"][h, 0])
                for i in range(len(mod.weights))
            ]
            norms = None
            if mod.layer_norm:
                norms = [
                    (named[f"{prefix}.norm_weights.{i}"][h, 0], named[f"{prefix}.norm_biases.{i}"][h, 0])
                    for i in range(len(mod.norm_weights))
                ]
            out.append((layers, norms))
        return out

    P = {
        "vf": seq("velocity_field", len(agent.velocity_field.linears)),
        "critic": heads("critic", agent.critic),
        "target": heads("target_critic", agent.target_critic),
    }
    if hasattr(agent, "residual"):
        P["res"] = seq("residual", len(agent.residual.linears))
        if agent.log_alpha is not None:
            P["log_alpha"] = float(named["log_alpha"])
    else:
        P["pol"] = seq("onestep_policy", len(agent.onestep_policy.linears))
    return P


def oracle_cfg(agent) -> dict:
    return dataclasses.asdict(agent.config)


def np_inputs(batch, noise):
    return {k: to_np(v) for k, v in batch.items()}, {k: to_np(v) for k, v in noise.tensors().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_losses_and_metrics_match_oracle_fp64(case):
    name, extra = CASES[case]
    agent = make(name, extra)
    batch = fixed_batch(torch.float64)
    noise = agent.sample_noise(B)
    _, info = agent.total_loss(batch, noise, with_metrics=True)
    named = {k: to_np(v) for k, v in agent.named_parameters()}
    P = oracle_params(agent, named)
    nb, nn_ = np_inputs(batch, noise)
    total, expected = oracle.losses(name, P, P, oracle_cfg(agent), nb, nn_)
    for key, value in expected.items():
        assert key in info, f"agent does not report {key}"
        np.testing.assert_allclose(float(info[key]), value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_matches_oracle_directional_derivatives(case):
    name, extra = CASES[case]
    agent = make(name, extra)
    batch = fixed_batch(torch.float64)
    noise = agent.sample_noise(B)
    loss, _ = agent.total_loss(batch, noise, with_metrics=False)
    trainable = {k: p for k, p in agent.named_parameters() if not k.startswith("target_critic.")}
    grads = torch.autograd.grad(loss, list(trainable.values()), allow_unused=True)
    grads = {k: (np.zeros(p.shape) if g is None else to_np(g)) for (k, p), g in zip(trainable.items(), grads)}
    named = {k: to_np(v) for k, v in agent.named_parameters()}
    frozen = oracle_params(agent, named)
    cfg = oracle_cfg(agent)
    nb, nn_ = np_inputs(batch, noise)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(3):
        u = {k: rng.standard_normal(np.shape(v)) for k, v in grads.items()}
        plus = {**named, **{k: named[k] + eps * u[k] for k in u}}
        minus = {**named, **{k: named[k] - eps * u[k] for k in u}}
        lp, _ = oracle.losses(name, oracle_params(agent, plus), frozen, cfg, nb, nn_)
        lm, _ = oracle.losses(name, oracle_params(agent, minus), frozen, cfg, nb, nn_)
        fd = (lp - lm) / (2 * eps)
        analytic = sum(float((grads[k] * u[k]).sum()) for k in grads)
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (fd, analytic)


@pytest.mark.parametrize("case", list(CASES))
def test_update_matches_oracle_clip_adam_polyak(case):
    name, extra = CASES[case]
    agent = make(name, extra)
    batch = fixed_batch(torch.float64)
    noise = agent.sample_noise(B)
    probe = copy.deepcopy(agent)
    loss, _ = probe.total_loss(batch, noise, with_metrics=False)
    loss.backward()
    named = {k: to_np(v) for k, v in agent.named_parameters()}
    trainable = {k: named[k] for k, p in agent.named_parameters() if not k.startswith("target_critic.")}
    grads = {k: to_np(p.grad) for k, p in probe.named_parameters() if not k.startswith("target_critic.")}
    target = {k[len("target_critic.") :]: v for k, v in named.items() if k.startswith("target_critic.")}
    cfg = oracle_cfg(agent)
    new, new_target, norm, scale = oracle.adam_clip_polyak(trainable, grads, target, cfg, lr=cfg["lr"])
    if cfg["grad_clip"] is not None and "clip" in case:
        assert scale < 1.0, "this case is meant to exercise the clip"
    info = agent.update(batch, noise, with_metrics=True)
    np.testing.assert_allclose(float(info["grad/global_norm"]), norm, rtol=1e-10)
    after = {k: to_np(v) for k, v in agent.named_parameters()}
    for k, v in new.items():
        np.testing.assert_allclose(after[k], v, rtol=1e-9, atol=1e-12, err_msg=k)
    for k, v in new_target.items():
        np.testing.assert_allclose(after["target_critic." + k], v, rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b in ("reference", "cpu")])
@pytest.mark.parametrize("case", ["fidec-authors-default", "fidec-variant-min-normq-clip", "deflow", "fql"])
def test_fp32_agent_matches_oracle(case, backend):
    name, extra = CASES[case]
    agent64 = make(name, extra)
    agent = make(name, extra, dtype=torch.float32, backend=backend)
    agent.load_state_dict({k: v.float() for k, v in agent64.state_dict().items()})
    batch = fixed_batch(torch.float32)
    noise = agent.sample_noise(B)
    _, info = agent.total_loss(batch, noise, with_metrics=True)
    named = {k: to_np(v) for k, v in agent.named_parameters()}
    P = oracle_params(agent, named)
    nb, nn_ = np_inputs(batch, noise)
    _, expected = oracle.losses(name, P, P, oracle_cfg(agent), nb, nn_)
    for key, value in expected.items():
        np.testing.assert_allclose(float(info[key]), value, rtol=2e-4, atol=2e-5, err_msg=key)


def test_oracle_covers_every_config_field_it_reads():
    # the oracle reads configs by the dataclass field names: a renamed field must fail loudly here
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    assert {"flow_steps", "q_agg", "discount", "normalize_q_loss", "grad_clip", "tau", "lr"} <= fields
