"""The throughput options of the agents (issue 7) compute the same update as the plain paths:
fused rollouts, compiled GELU, fused Adam, the jacobian Fisher estimator, torch.compile, bf16
rollouts; and the batch prefetcher hands out exactly the sampler's batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fisher_decorator.ops as ops_module
from fisher_decorator.agents import AGENTS, FiDecConfig, make_agent
from fisher_decorator.ops import available_backends, fisher_quadratic_jacobian
from fisher_decorator.sampler import BatchPrefetcher, TransitionSampler
from tests.precision import U_BF16, assert_rounded_at, unclamped
from tests.test_agents_update import ACT, OBS, SMALL, B, batch, make, params

needs_ext = pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")
PLAIN = dict(rollout_backend="reference", fused_gelu=False, fused_adam=False, penalty_backend="reference")


def run_updates(agent, n=3):
    infos = []
    for i in range(n):
        noise = agent.sample_noise(B)
        infos.append(agent.update(batch(i), noise))
    return infos


@needs_ext
@pytest.mark.parametrize("name", list(AGENTS))
def test_fused_paths_give_the_plain_update(name):
    """Fused rollout + compiled GELU + fused Adam + fused penalty vs the plain port: fp32 rounding apart."""
    plain = make(name, **{k: v for k, v in PLAIN.items() if k != "penalty_backend" or name == "fidec"})
    fused = make(name)
    assert fused.optimizer.defaults.get("fused") and not plain.optimizer.defaults.get("fused")
    for ip, i_f in zip(run_updates(plain), run_updates(fused)):
        for k in ip:
            torch.testing.assert_close(i_f[k], ip[k], rtol=2e-4, atol=2e-5, msg=k)
    pp, pf = params(plain), params(fused)
    for k in pp:
        torch.testing.assert_close(pf[k], pp[k], rtol=0, atol=1e-5, msg=k)


@needs_ext
@pytest.mark.parametrize("name", ["fidec", "deflow"])
@pytest.mark.parametrize("with_metrics", [False, True])
def test_an_updates_rollouts_run_as_one(name, with_metrics, monkeypatch):
    """The critic target's, the base actions', the Fisher samples' and (logging steps) the mse diagnostic's
    rollouts run as one grouped rollout, and nothing else rolls out; the update is the one with separate
    rollouts, to fp32 rounding."""
    grouped, separate = make(name), make(name)
    separate.update_rollouts = lambda batch, noise, *, with_metrics: []  # each loss rolls out its own
    calls = {"grouped": [], "single": 0}
    real_groups, real_single = ops_module.euler_rollout_groups, ops_module.euler_rollout

    def count_groups(params, rollouts, steps, **kw):
        calls["grouped"].append(len(rollouts))
        return real_groups(params, rollouts, steps, **kw)

    def count_single(*args, **kw):
        calls["single"] += 1
        return real_single(*args, **kw)

    monkeypatch.setattr(ops_module, "euler_rollout_groups", count_groups)
    monkeypatch.setattr(ops_module, "euler_rollout", count_single)
    noise = grouped.sample_noise(B)
    info_g = grouped.update(batch(3), noise, with_metrics=with_metrics)
    expected = 2 + (name == "fidec") + with_metrics
    assert calls == {"grouped": [expected], "single": 0}
    info_s = separate.update(batch(3), noise, with_metrics=with_metrics)
    assert calls["single"] == expected
    for k in info_s:
        torch.testing.assert_close(info_g[k], info_s[k], rtol=2e-5, atol=2e-6, msg=k)
    pg, ps = params(grouped), params(separate)
    for k in ps:
        torch.testing.assert_close(pg[k], ps[k], rtol=0, atol=1e-6, msg=k)


@needs_ext
@pytest.mark.parametrize("rollout_dtype", ["float32", "bfloat16"])
def test_rollouts_follow_the_optimizer_steps(rollout_dtype):
    """After fused-Adam steps (which leave version counters alone) the agent rolls out its current weights,
    not copies kept from before (bf16 rollouts once used the first update's weight copies for ever)."""
    agent = make("fidec", rollout_dtype=rollout_dtype)
    obs = batch(0)["observations"]
    z = torch.randn(B, ACT, generator=torch.Generator().manual_seed(5))
    before = agent.flow_actions(obs, z).clone()
    run_updates(agent, 2)
    fresh = ops_module.euler_rollout(
        agent.velocity_field,
        obs,
        z,
        agent.config.flow_steps,
        rollout_dtype=rollout_dtype,
        workspace=ops_module.RolloutWorkspace(),
    )
    assert torch.equal(agent.flow_actions(obs, z), fresh) and not torch.equal(before, fresh)


@needs_ext
@pytest.mark.parametrize("name", list(AGENTS))
def test_bf16_rollouts_stay_close(name):
    """bf16 rollout GEMMs change the sampled actions by bf16 rounding (and not less: the agent's
    rollouts really ran in bf16); losses move by about as much."""
    ref, bf16 = make(name), make(name, rollout_dtype="bfloat16")
    obs, noise = batch(9)["observations"], torch.randn(B, 8, ACT, generator=torch.Generator().manual_seed(9))
    full = ref.flow_actions(obs, noise)
    assert_rounded_at(bf16.flow_actions(obs, noise), full, U_BF16, where=unclamped(full), name="actions")
    for ir, ib in zip(run_updates(ref, 2), run_updates(bf16, 2)):
        for k in ("critic/critic_loss", "actor/bc_flow_loss"):
            torch.testing.assert_close(ib[k], ir[k], rtol=5e-2, atol=5e-3, msg=k)


@needs_ext
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_jacobian_estimator_is_the_divergence(backend):
    agent = make("fidec", fisher_estimator="jacobian", penalty_backend=backend, num_fisher_samples=3)
    b = batch(3)
    noise = agent.sample_noise(B)
    _, info = agent.actor_loss(b, noise)
    obs = b["observations"]
    with torch.no_grad():
        base = agent.flow_actions(obs, noise.base)
        residual = agent.residual(obs, base)
        velocity, x_t = agent.fisher_samples(obs, noise)
        quad = fisher_quadratic_jacobian(agent.velocity_field, obs, x_t, noise.fisher_t, residual,
                                         damping=agent.config.fisher_damping, backend="reference")  # fmt: skip
        g = velocity / (1 - noise.fisher_t[..., None])
        c = ((g * g).sum(-1).mean(1) + agent.config.fisher_damping * ACT) / ACT
    torch.testing.assert_close(info["distill_loss"], (quad / (c * ACT)).mean(), rtol=1e-4, atol=1e-7)
    before = params(agent)
    agent.update(b, noise)
    assert any(not torch.equal(before[k], v) for k, v in params(agent).items())


@needs_ext
@pytest.mark.parametrize("name", list(AGENTS))
def test_total_loss_compiles_without_graph_breaks(name):
    """fullgraph=True fails on any graph break: the custom ops' fake impls let dynamo trace everything."""
    torch._dynamo.reset()
    agent = make(name, num_fisher_samples=2) if name == "fidec" else make(name)
    b = batch(1)
    noise = agent.sample_noise(B)
    compiled = torch.compile(agent.total_loss, fullgraph=True, backend="aot_eager")
    loss_c, info_c = compiled(b, noise, with_metrics=True)
    loss_e, info_e = agent.total_loss(b, noise, with_metrics=True)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for k in info_e:
        torch.testing.assert_close(info_c[k], info_e[k], rtol=1e-4, atol=1e-5, msg=k)


@needs_ext
@pytest.mark.slow
def test_compiled_update_matches_eager():
    """The agent's compile=True option (inductor) against the eager update, a few steps."""
    torch._dynamo.reset()
    eager, compiled = make("fidec", num_fisher_samples=2), make("fidec", num_fisher_samples=2, compile=True)
    for ie, ic in zip(run_updates(eager, 2), run_updates(compiled, 2)):
        for k in ie:
            torch.testing.assert_close(ic[k], ie[k], rtol=1e-3, atol=1e-4, msg=k)


def _data(n=500):
    rng = np.random.default_rng(0)
    return {
        "observations": rng.standard_normal((n, OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "next_observations": rng.standard_normal((n, OBS)).astype(np.float32),
    }


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetcher_hands_out_the_sampler_batches_and_states(depth):
    data = _data()
    plain = TransitionSampler(data, seed=5)
    want, states = [], []
    for _ in range(6):
        want.append(plain.sample(32))
        states.append(plain.state())
    with BatchPrefetcher(TransitionSampler(data, seed=5), 32, depth) as pre:
        for i in range(6):
            got = pre.next()
            for k in want[i]:
                assert torch.equal(got[k], want[i][k]), (i, k)
            # the checkpointable state is the one after the batch handed out, not after the prefetched ones
            assert torch.equal(pre.state(), states[i])
    resumed = TransitionSampler(data, seed=0)
    resumed.load_state(states[2])
    with BatchPrefetcher(resumed, 32, depth) as pre:
        assert torch.equal(pre.next()["actions"], want[3]["actions"])


def test_prefetcher_reports_a_failing_sampler():
    class Broken(TransitionSampler):
        def sample(self, batch_size, generator=None):
            raise OSError("disk gone")

    with BatchPrefetcher(Broken(_data(), seed=0), 8, 2) as pre:
        with pytest.raises(RuntimeError, match="prefetch thread failed") as err:
            pre.next()
        assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(ValueError, match="prefetch depth"):
        BatchPrefetcher(TransitionSampler(_data(), seed=0), 8, -1)


def test_agent_rejects_unknown_rollout_options():
    from fisher_decorator.config import ConfigError

    with pytest.raises(ConfigError, match="rollout_dtype must be one of"):
        make_agent("fidec", OBS, ACT, FiDecConfig(**SMALL, rollout_dtype="fp8"))
    with pytest.raises(ConfigError, match="fisher_estimator must be one of"):
        make_agent("fidec", OBS, ACT, FiDecConfig(**SMALL, fisher_estimator="hessian"))
