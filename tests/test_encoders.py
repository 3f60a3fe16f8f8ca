"""The pixel encoder (fisher_decorator.encoders) and the agents with encoders in front.

Parity with the authors' JAX ``ImpalaEncoder`` runs their own code (``/work/authors`` or ``$FIDEC_AUTHORS_DIR``)
in a JAX environment (``/work/jaxvenv`` or ``$FIDEC_JAX_PYTHON``) and skips without one. Both sides compute in
fp64; the tolerance is the first-order rounding bound of the forward pass (below), not a measured difference.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fisher_decorator.agents import make_agent
from fisher_decorator.agents.deflow import DeFlowConfig
from fisher_decorator.agents.fidec import FiDecConfig
from fisher_decorator.agents.fql import FQLConfig
from fisher_decorator.encoders import ImpalaEncoder, make_encoder, max_pool_same
from tests.precision import FUSED_ROLLOUT_FACTOR, U_FP32, assert_as_accurate

AUTHORS = Path(os.environ.get("FIDEC_AUTHORS_DIR", "/work/authors"))
JAX_PYTHON = Path(os.environ.get("FIDEC_JAX_PYTHON", "/work/jaxvenv/bin/python"))
U64 = 2.0**-53


def impala_small_params(channels: int, h: int = 64, w: int = 64) -> int:
    """impala_small's parameter count, written out layer by layer from the authors' modules."""
    conv = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    total, c = 0, channels
    for f in (16, 32, 32):
        total += conv(c, f) + 2 * conv(f, f)  # first conv, one residual block of two convs
        c, h, w = f, math.ceil(h / 2), math.ceil(w / 2)
    return total + (h * w * c) * 512 + 512


@pytest.mark.parametrize("shape", [(64, 64, 9), (64, 64, 3), (37, 45, 6)])
def test_shape_and_parameter_count(shape):
    enc = make_encoder("impala_small", shape)
    frames = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    out = enc(frames)
    assert out.shape == (5, 512) and out.dtype == torch.float32
    assert sum(p.numel() for p in enc.parameters()) == impala_small_params(shape[2], shape[0], shape[1])
    assert (out >= -0.1701).all()  # GELU-tanh's minimum: the final activation is applied
    with pytest.raises(ValueError, match="frames must be"):
        enc(frames[..., :-1])


def test_max_pool_same_pads_after_with_minus_infinity():
    # flax SAME on 4 -> 2 (window 3, stride 2): total padding 1, all of it after; windows rows {0,1,2} and {2,3,pad}.
    x = -torch.arange(16.0).reshape(1, 1, 4, 4)  # all negative: a zero pad would win every window touching it
    out = max_pool_same(x)
    expected = torch.tensor([[0.0, -2.0], [-8.0, -10.0]])
    assert torch.equal(out[0, 0], expected)


def test_init_is_xavier_uniform_with_conv_fans():
    enc = make_encoder("impala_small", (64, 64, 9), generator=torch.Generator().manual_seed(0))
    conv = enc.stacks[1].blocks[0][0]  # 32 -> 32 channels: fans 288 / 288
    bound = math.sqrt(6.0 / (9 * 32 + 9 * 32))
    w = conv.weight.detach()
    assert w.abs().max() <= bound and (conv.bias == 0).all()
    # U(-a, a) has std a / sqrt(3); 9216 draws: the sample std is within 5 standard errors (~0.7% each).
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 5 * 0.0074


def test_gradients_reach_every_encoder_parameter():
    enc = make_encoder("impala_small", (64, 64, 9))
    enc(torch.randint(0, 256, (3, 64, 64, 9), dtype=torch.uint8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def _abs_forward(enc: ImpalaEncoder, frames: torch.Tensor) -> torch.Tensor:
    """The forward pass on |weights|, |biases|, |input|: at every layer an upper bound of the sum of |terms| of
    every dot product (ReLU, max-pool are monotone; GELU(z) <= z for z >= 0), hence of every rounding error's
    scale, propagated through the later layers."""
    mirror = make_encoder("impala_small", enc.obs_shape, dtype=torch.float64, fused_gelu=False)
    with torch.no_grad():
        for p, q in zip(mirror.parameters(), enc.parameters(), strict=True):
            p.copy_(q.abs())
        return mirror(frames.abs())


def test_bfloat16_encoder_within_its_rounding_bound():
    torch.manual_seed(0)
    enc = make_encoder("impala_small", (64, 64, 9), dtype=torch.float64)
    frames = torch.randint(0, 256, (4, 64, 64, 9), dtype=torch.uint8)
    with torch.no_grad():
        exact = enc(frames)
        bf16 = make_encoder("impala_small", (64, 64, 9), compute_dtype="bfloat16")
        bf16.load_state_dict({k: v.float() for k, v in enc.state_dict().items()})
        out = bf16(frames)
    assert out.dtype == torch.float32
    # 10 GEMM layers, each rounding inputs, products and outputs to bf16 (u = 2^-8); accumulation is fp32.
    bound = 10 * 3 * 2.0**-8 * _abs_forward(enc, frames)
    assert ((out.double() - exact).abs() <= bound).all()


# ------------------------------------------------------------------------------------------------ JAX parity

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import utils.encoders as E
    # Their module casts its input with x.astype(jnp.float32); widened to fp64 so both sides compute in fp64.
    E.jnp = types.SimpleNamespace(float32=jnp.float64)
    out = {}
    for name, shape in json.loads(sys.argv[2]).items():
        rng = np.random.RandomState(0)
        x = rng.randint(0, 256, (3, *shape)).astype(np.uint8)
        enc = E.encoder_modules["impala_small"]()
        params = enc.init(jax.random.PRNGKey(0), x)
        # their initial kernels in fp64, and random non-zero biases (theirs start at zero) so every term counts
        params = jax.tree_util.tree_map(
            lambda a: (rng.uniform(-0.1, 0.1, a.shape) if a.ndim == 1 else np.asarray(a)).astype(np.float64),
            params,
        )
        y = np.asarray(enc.apply(params, x))
        flat = {"/".join(k.key for k in path): np.asarray(v) for path, v in
                jax.tree_util.tree_leaves_with_path(params)}
        np.savez(sys.argv[3] + f"/{name}.npz", x=x, y=y, **flat)
    """
)


def _load_flax_params(enc: ImpalaEncoder, flat: dict[str, np.ndarray]) -> None:
    """Flax names -> our modules: stack i's Conv_0 is its first conv, Conv_1/Conv_2 its block's; MLP_0/Dense_0."""
    with torch.no_grad():
        for i, stack in enumerate(enc.stacks):
            convs = [stack.conv, *stack.blocks[0]]
            for j, conv in enumerate(convs):
                kernel = flat[f"params/stack_blocks_{i}/Conv_{j}/kernel"]  # [3, 3, in, out]
                conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(flat[f"params/stack_blocks_{i}/Conv_{j}/bias"]))
        enc.dense[0].weight.copy_(torch.from_numpy(flat["params/MLP_0/Dense_0/kernel"].T.copy()))
        enc.dense[0].bias.copy_(torch.from_numpy(flat["params/MLP_0/Dense_0/bias"]))


@pytest.mark.skipif(
    not (JAX_PYTHON.exists() and (AUTHORS / "utils" / "encoders.py").exists()),
    reason="needs the authors' code and a JAX environment (FIDEC_AUTHORS_DIR, FIDEC_JAX_PYTHON)",
)
def test_parity_with_the_authors_jax_encoder_in_fp64(tmp_path):
    shapes = {"frames64": (64, 64, 9), "odd": (37, 45, 6)}
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [str(JAX_PYTHON), "-c", _JAX_SCRIPT, str(AUTHORS), json.dumps(shapes), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, shape in shapes.items():
        with np.load(tmp_path / f"{name}.npz") as f:
            flat = {k: f[k] for k in f.files}
        enc = make_encoder("impala_small", shape, dtype=torch.float64, fused_gelu=False)
        _load_flax_params(enc, flat)
        frames = torch.from_numpy(flat["x"])
        with torch.no_grad():
            ours = enc(frames)
        theirs = torch.from_numpy(flat["y"])
        # fp64 on both sides: each of the 10 layers in sequence rounds its dot products (n <= 2048 terms) with
        # relative error <= n * u; with the authors' init the layers' gains are O(1) (|output| ~ |activations|),
        # so each side is within 10 * n * u of the output's scale, the two within twice that (~4.5e-12 relative).
        # Any wiring difference (padding side, flatten order, activation) is O(1e-2) or more.
        bound = 2 * 10 * 2048 * U64 * ours.abs().amax(dim=1, keepdim=True)
        err = (ours - theirs).abs()
        assert (err <= bound).all(), f"{name}: max error {err.max():.3g}, bound {bound.max():.3g}"


# ------------------------------------------------------------------------------------------------ agents

CONFIGS = {"fidec": FiDecConfig, "deflow": DeFlowConfig, "fql": FQLConfig}
SMALL = dict(encoder="impala_small", actor_hidden_dims=(32, 32), value_hidden_dims=(32, 32))


def _agent(name: str, **kw):
    return make_agent(name, (64, 64, 9), 5, CONFIGS[name](**SMALL, **kw), seed=0)


def _batch(B: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randint(0, 256, (B, 64, 64, 9), dtype=torch.uint8, generator=g),
        "next_observations": torch.randint(0, 256, (B, 64, 64, 9), dtype=torch.uint8, generator=g),
        "actions": torch.rand(B, 5, generator=g) * 2 - 1,
        "rewards": -torch.rand(B, generator=g),
        "masks": torch.ones(B),
    }


def _actor_net(agent):
    return agent.residual if hasattr(agent, "residual") else agent.onestep_policy


def _grads(loss, module) -> list[torch.Tensor | None]:
    params = list(module.parameters())
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _moved(grads) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["fidec", "deflow", "fql"])
def test_gradient_flow_matches_the_authors(name):
    """Critic encoder: critic loss only (the actor's Q term holds the critic, encoder included). Flow encoder:
    flow-matching loss only (rollouts and Fisher scores without gradient). Actor encoder: the actor's loss
    (distillation/penalty and Q). No loss reaches the target critic's encoder."""
    agent = _agent(name)
    batch = _batch()
    noise = agent.sample_noise(6)
    obs = agent.encode(batch["observations"])
    enc_batch = {
        **batch,
        "observations": obs,
        "next_observations": agent.encode(batch["next_observations"], target=True),
    }
    critic_loss, _ = agent.critic_loss(enc_batch, noise)
    flow_loss = agent.flow_matching_loss(enc_batch, noise)
    actor_loss, _ = agent.actor_loss(enc_batch, noise)
    actor_rest = actor_loss - flow_loss  # the actor's loss besides the flow-matching term
    critic_enc, flow_enc, actor_enc = (
        agent.critic.encoder,
        agent.velocity_field.encoder,
        _actor_net(agent).encoder,
    )
    assert _moved(_grads(critic_loss, critic_enc))
    assert not _moved(_grads(critic_loss, flow_enc)) and not _moved(_grads(critic_loss, actor_enc))
    assert _moved(_grads(flow_loss, flow_enc))
    assert not _moved(_grads(flow_loss, critic_enc)) and not _moved(_grads(flow_loss, actor_enc))
    assert _moved(_grads(actor_rest, actor_enc))
    assert not _moved(_grads(actor_rest, critic_enc)) and not _moved(_grads(actor_rest, flow_enc))
    assert all(not p.requires_grad for p in agent.target_critic.encoder.parameters())


def test_one_encoder_per_network_and_the_target_a_polyak_copy():
    agent = _agent("fidec")
    encoders = [agent.critic.encoder, agent.velocity_field.encoder, agent.residual.encoder]
    assert len({id(e) for e in encoders}) == 3  # not shared: three modules, three parameter sets
    assert not torch.equal(encoders[0].dense[0].weight, encoders[1].dense[0].weight)
    trainable = {id(p) for p in agent.trainable_parameters()}
    assert all(id(p) in trainable for e in encoders for p in e.parameters())
    before_c = [p.detach().clone() for p in agent.critic.encoder.parameters()]
    before_t = [p.detach().clone() for p in agent.target_critic.encoder.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before_c, before_t, strict=True))
    agent.update(_batch())
    tau = agent.config.tau
    for c, t, t_new in zip(before_c, before_t, agent.target_critic.encoder.parameters(), strict=True):
        torch.testing.assert_close(t_new, (1 - tau) * t + tau * c)  # the critic as it was before the step


def test_each_encoder_runs_once_per_state_per_update():
    """The encoders see B states of obs and B of next obs per update, never B*K (Fisher samples) nor once per
    Euler step: the rollouts and the penalty op take the encoded state."""
    agent = _agent("fidec", num_fisher_samples=4, flow_steps=10)
    calls: list[tuple[str, int]] = []
    for name, net in (
        ("critic", agent.critic),
        ("target", agent.target_critic),
        ("flow", agent.velocity_field),
        ("actor", agent.residual),
    ):
        net.encoder.register_forward_hook(
            lambda m, args, out, name=name: calls.append((name, args[0].shape[0]))
        )
    agent.update(_batch(B=6), with_metrics=True)
    assert sorted(calls) == sorted(
        [("critic", 6), ("flow", 6), ("actor", 6), ("target", 6), ("flow", 6), ("actor", 6)]
    )
    calls.clear()
    agent.sample_actions(_batch(B=3)["observations"], mode="best_of_n", num_samples=5)
    assert sorted(calls) == [("actor", 3), ("critic", 3), ("flow", 3)]


@pytest.mark.parametrize("name", ["fidec", "deflow", "fql"])
def test_update_and_acting_with_an_encoder(name):
    agent = _agent(name)
    info = agent.update(_batch())
    assert all(torch.isfinite(v).all() for v in info.values())
    obs = _batch()["observations"]
    a1 = agent.sample_actions(obs[0], generator=torch.Generator().manual_seed(1))
    ab = agent.sample_actions(obs[:1], generator=torch.Generator().manual_seed(1))
    assert a1.shape == (5,) and torch.equal(a1, ab[0])
    # float frames in [0, 255] (what the evaluation env hands over) act exactly as the uint8 ones
    af = agent.sample_actions(obs[:1].float(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(af, ab)
    with pytest.raises(ValueError, match="must be"):
        agent.update({**_batch(), "observations": torch.zeros(6, 64, 64, 3, dtype=torch.uint8)})


def test_state_tasks_are_unchanged_by_the_encoder_option():
    a = make_agent("fidec", 7, 3, FiDecConfig(actor_hidden_dims=(16,), value_hidden_dims=(16,)), seed=3)
    assert a.obs_shape is None and not any("encoder" in k for k in a.state_dict())
    x = torch.randn(4, 7)
    assert a.encode(x) is x


def test_fused_rollouts_and_penalty_with_an_encoder_as_accurate_as_the_plain_path():
    """Fused rollouts and penalty op (defaults) on encoded states: no less accurate against an fp64 evaluation
    than the plain reference path in fp32 (flash-attention's rule, the factor of the fused rollout's first
    layer), for every loss of the update."""
    fused = _agent("fidec")
    plain = _agent("fidec", rollout_backend="reference", penalty_backend="reference")
    exact = make_agent(
        "fidec",
        (64, 64, 9),
        5,
        FiDecConfig(**SMALL, rollout_backend="reference", penalty_backend="reference"),
        dtype=torch.float64,
    )
    state = fused.state_dict()
    plain.load_state_dict(state)
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    batch, noise = _batch(), fused.sample_noise(6)
    batch64 = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        got = fused.total_loss(batch, noise)[1]
        ref = plain.total_loss(batch, noise)[1]
        ex = exact.total_loss(batch64, noise.to(dtype=torch.float64))[1]
    for key in ("critic/critic_loss", "actor/bc_flow_loss", "actor/distill_loss", "actor/q", "actor/mse"):
        assert_as_accurate(
            got[key],
            ref[key],
            ex[key],
            floor=8 * U_FP32 * ex[key].abs().item(),
            factor=FUSED_ROLLOUT_FACTOR,
            name=key,
        )


def test_rollouts_read_the_flow_encoders_columns():
    """flow_actions on the concatenated features is the Euler loop of the velocity field on them (which selects
    its own encoder's columns), for the fused and the reference backend: as accurate against the fp64 loop as
    the fp32 loop is (a wrong column slice is off by O(1))."""
    import copy

    def loop(field, feats, z, N):
        x = z.clone()
        for i in range(N):
            x = x + field(feats, x, i / N) / N
        return x.clamp(-1, 1)

    for backend in ("auto", "reference"):
        agent = _agent("fidec", rollout_backend=backend)
        N = agent.config.flow_steps
        with torch.no_grad():
            feats = agent.encode(_batch()["observations"])
            z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
            exact = loop(copy.deepcopy(agent.velocity_field).double(), feats.double(), z.double(), N)
            assert_as_accurate(
                agent.flow_actions(feats, z),
                loop(agent.velocity_field, feats, z, N),
                exact,
                floor=8 * U_FP32,
                factor=FUSED_ROLLOUT_FACTOR,
                name=f"rollout ({backend})",
            )
