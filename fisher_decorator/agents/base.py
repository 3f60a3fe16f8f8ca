"""What the three agents share: the config fields, the update noise, the critic, the update step.

An update is a pure function of (parameters, optimizer state, batch, noise): every random draw
of an update is made by :meth:`FlowAgent.sample_noise` from one ``torch.Generator`` (or passed in
as a noise dataclass), so an update can be replayed bit for bit, compared across penalty backends
and checked against other implementations.

The update follows the authors' ``TrainState.apply_loss_fn`` and ``update``: one loss (critic +
actor), one backward, the gradient scaled by ``min(1, grad_clip / (global_norm + 1e-6))``, one
Adam step over every trainable parameter (``log_alpha`` included), and the target critic by
Polyak averaging, ``target <- tau * critic + (1 - tau) * target``, with the critic as it was
*before* this step's Adam update: the authors' (and FQL's) ``target_update`` reads the old
agent's ``self.network`` while writing the new one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fisher_decorator.agents.step import apply_step, clip_gradients_
from fisher_decorator.config import ConfigError, _positive, option, validate
from fisher_decorator.encoders import ENCODER_DTYPES, ENCODERS, make_encoder
from fisher_decorator.flows import flow_matching_target, flow_rollout, flow_rollouts
from fisher_decorator.gemm_path import GEMM_PATHS, configure_gemm_path
from fisher_decorator.networks import AUTOCAST_DTYPES, CriticEnsemble, VelocityField, set_autocast
from fisher_decorator.ops import BACKENDS, ROLLOUT_DTYPES, RolloutOptions

Batch = dict[str, torch.Tensor]
Info = dict[str, torch.Tensor]
BATCH_KEYS = ("observations", "actions", "rewards", "masks", "next_observations")
Q_AGG = ("mean", "min")


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of a run (streams never share draws)."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class AgentConfig:
    """Fields every agent has (defaults: the authors' ``get_config``)."""

    lr: float = option(3e-4, "Adam learning rate (Adam eps 1e-8, as optax).")
    adam_eps: float = option(1e-8, "Adam epsilon.")
    actor_hidden_dims: tuple[int, ...] = option(
        (512, 512, 512, 512), "Hidden widths of the flow and actor MLPs."
    )
    value_hidden_dims: tuple[int, ...] = option((512, 512, 512, 512), "Hidden widths of each critic head.")
    layer_norm: bool = option(True, "LayerNorm after every hidden activation of the critic.")
    actor_layer_norm: bool = option(False, "LayerNorm in the flow and actor MLPs.")
    num_critics: int = option(2, "Critic ensemble size (heads evaluated in one batched computation).")
    discount: float = option(0.99, "Discount factor gamma.")
    tau: float = option(
        0.005, "Target critic Polyak rate: target <- tau * critic (before the step) + (1 - tau) * target."
    )
    grad_clip: float | None = option(5.0, "Global-norm gradient clip (None: no clipping).")
    q_agg: str = option("mean", "How the target heads are combined in the critic target.", choices=Q_AGG)
    flow_steps: int = option(10, "Euler steps N of the behaviour flow.")
    normalize_q_loss: bool = option(
        False, "Scale the actor's Q loss by 1 / mean|Q| (no gradient through it)."
    )
    fused_gelu: bool = option(
        True, "The networks' GELU-tanh by the compiled kernel (same values to rounding, ~3x faster on CPU)."
    )
    fused_adam: bool = option(
        True,
        "Adam as one fused kernel (torch's fused=True; same update to rounding) where the device has it.",
    )
    compile: bool = option(
        False,
        "torch.compile the loss (fullgraph, inductor); backward and Adam stay eager. Off by default: on a "
        "2-core CPU it measured no faster than the fused eager update (benchmarks/train_throughput.py).",
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode when compile is on; 'reduce-overhead' captures CUDA graphs on a GPU.",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    rollout_backend: str = option(
        "auto",
        "Backend of the Euler rollouts (reference: the plain port; cpu/cuda/triton: fused; auto: fastest here).",
        choices=("auto", *BACKENDS),
    )
    rollout_dtype: str = option(
        "float32",
        "Precision of the rollouts' GEMMs (bfloat16: CPU with AVX-512 bf16 or GPU; tf32: Ampere+ GPU). "
        "Rollout states, losses and updates stay fp32.",
        choices=ROLLOUT_DTYPES,
    )
    gemm_path: str = option(
        "auto",
        "CPU GEMM path of the networks, rollouts and JVP: auto (the faster of MKL and oneDNN on this machine, "
        "measured by a short probe cached per machine and torch version), mkl or onednn. Recorded in config.json.",
        choices=GEMM_PATHS,
    )
    autocast: str = option(
        "none",
        "bfloat16: the networks' forward and backward under autocast (bf16 GEMMs and activations; parameters, "
        "Adam and losses stay fp32). With rollout_dtype=bfloat16 the whole update's GEMMs run in bf16.",
        choices=AUTOCAST_DTYPES,
    )
    encoder: str | None = option(
        None,
        "Image encoder of pixel tasks (impala_small in the authors' visual grid): one per network "
        "(critic, flow, actor), as the authors'; None for state tasks.",
        choices=(None, *ENCODERS),
    )
    encoder_dtype: str = option(
        "float32",
        "Precision of the encoders' convolutions (bfloat16: autocast, fp32 features).",
        choices=ENCODER_DTYPES,
    )

    def check(self) -> None:
        _positive(self, "lr", "adam_eps", "num_critics", "flow_steps", "grad_clip")
        if not 0.0 <= self.discount <= 1.0:
            raise ConfigError(f"discount must be in [0, 1], got {self.discount}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("actor_hidden_dims", "value_hidden_dims"):
            dims = getattr(self, name)
            if not dims or any(h <= 0 for h in dims):
                raise ConfigError(f"{name} must be a non-empty tuple of positive widths, got {dims}")


@dataclass
class FlowNoise:
    """Every random draw of one update of FQL or DeFlow (FiDec adds the Fisher draws).

    next_action: [B, d] noise of the next action a' = policy(s', z) in the critic target.
    flow_x0: [B, d] x0 of the flow-matching loss.  flow_t: [B, 1] its t ~ U[0, 1).
    base: [B, d] noise of the base action euler(s, z) (DeFlow/FiDec) or of mu(s, z) (FQL).
    metric: [B, d] noise of the diagnostic policy sample (the ``mse`` metric); drawn every step,
        used only when metrics are computed, so the random streams never depend on the log interval.
    """

    next_action: torch.Tensor
    flow_x0: torch.Tensor
    flow_t: torch.Tensor
    base: torch.Tensor
    metric: torch.Tensor

    def to(self, device=None, dtype=None) -> FlowNoise:
        return type(self)(**{k: v.to(device=device, dtype=dtype) for k, v in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class FlowAgent(nn.Module):
    """Base of the agents: a behaviour flow ``velocity_field``, a critic ensemble and its target.

    Subclasses add their actor networks in ``_build_actor`` and define ``policy_actions`` and
    ``actor_loss``. Construction is deterministic in ``seed`` (its own generator, not the global one).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = AgentConfig
    noise_class: ClassVar[type] = FlowNoise
    # normalize_q_loss: 1 / max(mean|q|, eps) with this eps, or 1 / mean|q| when None.
    q_norm_eps: ClassVar[float | None] = None

    def __init__(
        self,
        config: AgentConfig,
        obs_dim: int,
        action_dim: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        validate(config)
        # Pixel tasks: obs_dim is the frame shape (H, W, C); the networks see the encoders' features.
        self.obs_shape = tuple(int(s) for s in obs_dim) if config.encoder else None
        if self.obs_shape is not None:
            obs_dim = make_encoder(config.encoder, self.obs_shape, device="meta").out_dim
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        self.config = config
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = int(seed)
        init = torch.Generator().manual_seed(derive_seed(seed, "init"))
        kw = dict(generator=init, dtype=dtype, fused_gelu=config.fused_gelu)
        self.velocity_field = VelocityField(
            obs_dim, action_dim, config.actor_hidden_dims, layer_norm=config.actor_layer_norm, **kw
        )
        self._build_actor(init, dtype)
        self.critic = CriticEnsemble(
            obs_dim,
            action_dim,
            config.value_hidden_dims,
            num_heads=config.num_critics,
            layer_norm=config.layer_norm,
            **kw,
        )
        if self.obs_shape is not None:
            self._attach_encoders(dtype)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.to(self.device)
        configure_gemm_path(config.gemm_path, self.device)  # measured once per machine, then cached
        set_autocast(self, config.autocast)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(derive_seed(seed, "noise"))
        # backend, GEMM dtype and the rollout buffers reused across updates, held once
        self.rollout_options = RolloutOptions(config.rollout_backend, config.rollout_dtype)
        fused = (
            config.fused_adam
            and self.device.type in ("cpu", "cuda")
            and dtype in (torch.float32, torch.float64)
        )
        self.optimizer = torch.optim.Adam(
            self.trainable_parameters(), lr=config.lr, eps=config.adam_eps, fused=fused or None
        )
        self.num_updates = 0

    # ------------------------------------------------------------------ construction hooks
    def _build_actor(self, generator: torch.Generator, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def _attach_encoders(self, dtype: torch.dtype) -> None:
        """One encoder per network, as the authors' agents (critic, bc flow, actor), the target critic's a
        copy of the critic's. Drawn from their own stream, after the networks (state tasks' init unchanged)."""
        init = torch.Generator().manual_seed(derive_seed(self.seed, "init/encoders"))
        actor = next(getattr(self, n) for n in ("residual", "onestep_policy") if hasattr(self, n))
        self._encoded = (self.critic, self.velocity_field, actor)
        for i, net in enumerate(self._encoded):
            encoder = make_encoder(
                self.config.encoder,
                self.obs_shape,
                compute_dtype=self.config.encoder_dtype,
                fused_gelu=self.config.fused_gelu,
                generator=init,
                dtype=dtype,
            )
            net.attach_encoder(encoder, slice(i * self.obs_dim, (i + 1) * self.obs_dim))

    def encode(self, obs: torch.Tensor, *, target: bool = False) -> torch.Tensor:
        """Pixel tasks: frames [B, H, W, C] -> the features of every network [B, 3 * obs_dim], each encoder
        run once per state (never per Euler step or Fisher sample); ``target``: the critic's columns from
        the target critic's encoder (next states). State tasks: ``obs`` unchanged."""
        if self.obs_shape is None:
            return obs
        nets = (self.target_critic, *self._encoded[1:]) if target else self._encoded
        with torch.no_grad() if target else contextlib.nullcontext():
            return torch.cat([net.encoder(obs) for net in nets], dim=-1)

    def _batched_obs(self, obs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(a batch of encoded states, whether ``obs`` was one state) for acting."""
        single = obs.dim() == (1 if self.obs_shape is None else 3)
        return self.encode(obs[None] if single else obs), single

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimizer moves: all but the target critic's."""
        target = {id(p) for p in self.target_critic.parameters()}
        return [p for p in self.parameters() if id(p) not in target]

    # ------------------------------------------------------------------ randomness
    def _randn(self, g: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)

    def _rand(self, g: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g, device=self.device, dtype=self.dtype)

    def sample_noise(self, batch_size: int, generator: torch.Generator | None = None) -> FlowNoise:
        """Every draw of one update, in a fixed order, from ``generator`` (default: the agent's)."""
        g = self.noise_generator if generator is None else generator
        B, d = batch_size, self.action_dim
        next_action = self._randn(g, B, d)
        flow_x0 = self._randn(g, B, d)
        flow_t = self._rand(g, B, 1)
        base = self._randn(g, B, d)
        extra = self._extra_noise(g, B)
        metric = self._randn(g, B, d)
        return self.noise_class(
            next_action=next_action, flow_x0=flow_x0, flow_t=flow_t, base=base, metric=metric, **extra
        )

    def _extra_noise(self, g: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """Agent-specific draws, made after ``base`` and before ``metric``."""
        return {}

    # ------------------------------------------------------------------ acting
    def flow_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Behaviour-flow actions euler(s, z) (no gradient); noise [B, d] or [B, K, d].

        Inside :meth:`prefetched_rollouts`, a pair of these very tensors returns the prefetched result.
        """
        for o, z, actions in self.__dict__.get("_prefetched", ()):
            if o is obs and z is noise:
                return actions
        cfg = self.config
        return flow_rollout(
            self.velocity_field,
            self.velocity_field.select_obs(obs),  # pixel tasks: the flow's own feature columns
            noise,
            cfg.flow_steps,
            self.rollout_options,
        )

    def update_rollouts(self, batch: Batch, noise: FlowNoise, *, with_metrics: bool) -> list[tuple]:
        """The (states, noise) pairs of the behaviour-flow rollouts the losses will make (the tensors they
        will pass to :meth:`flow_actions`), prefetched as one rollout; [] where there is one or none."""
        return []

    @contextlib.contextmanager
    def prefetched_rollouts(self, rollouts: list[tuple[torch.Tensor, torch.Tensor]]):
        """Run ``rollouts`` as one grouped rollout (one set of GEMMs over all their rows: an update's
        next-action, base and Fisher rollouts become one 2560-row rollout instead of three); while the
        context is open, :meth:`flow_actions` on one of these (obs, noise) tensor pairs returns its result.
        Not under torch.compile (inductor traces the rollouts itself)."""
        if len(rollouts) < 2 or torch.compiler.is_compiling():
            yield
            return
        field = self.velocity_field
        outs = flow_rollouts(
            field,
            [(field.select_obs(o), z) for o, z in rollouts],
            self.config.flow_steps,
            self.rollout_options,
        )
        self.__dict__["_prefetched"] = [(o, z, a) for (o, z), a in zip(rollouts, outs)]
        try:
            yield
        finally:
            self.__dict__.pop("_prefetched", None)

    def policy_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The agent's action for state ``obs [B, obs_dim]`` and noise ``[B, d]``, in [-1, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_actions(
        self,
        obs: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mode: str = "default",
        **kwargs,
    ) -> torch.Tensor:
        """Actions [B, d] for states [B, obs_dim] (or [d] for a single [obs_dim] state)."""
        if mode != "default":
            raise ConfigError(f"{self.name} samples actions only in mode 'default', got {mode!r}")
        obs, single = self._batched_obs(obs)
        if noise is None:
            noise = self._randn(
                generator if generator is not None else self.noise_generator, obs.shape[0], self.action_dim
            )
        actions = self.policy_actions(obs, noise)
        return actions[0] if single else actions

    # ------------------------------------------------------------------ losses
    def _check_batch(self, batch: Batch) -> int:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; an update needs {list(BATCH_KEYS)}")
        obs, actions = batch["observations"], batch["actions"]
        shape = self.obs_shape or (self.obs_dim,)
        if tuple(obs.shape[1:]) != shape:
            raise ValueError(
                f"batch['observations'] must be [B, {', '.join(map(str, shape))}], got {tuple(obs.shape)}"
            )
        if actions.shape != (obs.shape[0], self.action_dim):
            raise ValueError(f"batch['actions'] must be [B, {self.action_dim}], got {tuple(actions.shape)}")
        return obs.shape[0]

    def critic_loss(self, batch: Batch, noise: FlowNoise) -> tuple[torch.Tensor, Info]:
        """SPEC 1: ``y = r + gamma * mask * agg_k Qtarg_k(s', policy(s'))``, mean over heads and batch of (Q_k - y)^2."""
        with torch.no_grad():
            next_obs = batch["next_observations"]
            next_actions = self.policy_actions(next_obs, noise.next_action).clamp(-1.0, 1.0)
            next_qs = self.target_critic(next_obs, next_actions)
            next_q = next_qs.min(dim=0).values if self.config.q_agg == "min" else next_qs.mean(dim=0)
            target_q = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        q = self.critic(batch["observations"], batch["actions"])
        loss = (q - target_q).square().mean()
        qd = q.detach()
        return loss, {"critic_loss": loss.detach(), "q_mean": qd.mean(), "q_max": qd.max(), "q_min": qd.min()}

    def flow_matching_loss(self, batch: Batch, noise: FlowNoise) -> torch.Tensor:
        """SPEC 2: mean over batch and action dims of (v(s, x_t, t) - (a - x0))^2."""
        x_t, target = flow_matching_target(batch["actions"], noise.flow_x0, noise.flow_t)
        pred = self.velocity_field(batch["observations"], x_t, noise.flow_t)
        return (pred - target).square().mean()

    def q_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC 7: ``-mean_b mean_k Q_k(s, a)`` with the critic held constant, optionally normalised.

        Returns (q_loss, q [B]).
        """
        # obs detached: with an encoder in front, the actor's Q term must not move the critic's encoder either.
        q = self.critic(obs.detach(), actions, detach_params=True).mean(dim=0)
        loss = -q.mean()
        if self.config.normalize_q_loss:
            scale = q.detach().abs().mean()
            if self.q_norm_eps is not None:
                scale = scale.clamp(min=self.q_norm_eps)
            loss = loss / scale
        return loss, q

    def actor_loss(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        raise NotImplementedError

    def total_loss(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        """critic + actor loss, and the metrics as ``critic/...`` and ``actor/...``."""
        if (
            self.obs_shape is not None
        ):  # pixel tasks: every encoder once per state, then the losses on features
            obs = self.encode(batch["observations"])
            batch = {
                **batch,
                "observations": obs,
                "next_observations": self.encode(batch["next_observations"], target=True),
            }
        with self.prefetched_rollouts(self.update_rollouts(batch, noise, with_metrics=with_metrics)):
            critic_loss, critic_info = self.critic_loss(batch, noise)
            actor_loss, actor_info = self.actor_loss(batch, noise, with_metrics=with_metrics)
        info = {f"critic/{k}": v for k, v in critic_info.items()}
        info.update({f"actor/{k}": v for k, v in actor_info.items()})
        return critic_loss + actor_loss, info

    def forward(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        """:meth:`total_loss`, as the module's call, so ``torch.func.functional_call`` can run the loss on
        parameters held outside the agent (the stacked parameters of a multi-seed run)."""
        return self.total_loss(batch, noise, with_metrics=with_metrics)

    # ------------------------------------------------------------------ the update
    def update(self, batch: Batch, noise: FlowNoise | None = None, *, with_metrics: bool = True) -> Info:
        """One gradient step. ``noise`` (default: drawn from the agent's generator) makes it replayable.

        Returns the metrics as 0-d tensors (no device sync here); ``with_metrics=False`` skips the
        diagnostic-only work (the ``mse`` rollout, gradient statistics).
        """
        B = self._check_batch(batch)
        if noise is None:
            noise = self.sample_noise(B)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = self._loss_fn()(batch, noise, with_metrics=with_metrics)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        info.update(clip_gradients_(grads, self.config.grad_clip, with_metrics=with_metrics))
        apply_step(
            self.optimizer,
            params,
            grads,
            target=list(self.target_critic.parameters()),
            source=list(self.critic.parameters()),
            tau=self.config.tau,
        )
        self.num_updates += 1
        return {k: v.detach() for k, v in info.items()}

    def _loss_fn(self):
        """total_loss, or its torch.compile'd form (built once per agent object, never shared by a copy)."""
        if not self.config.compile:
            return self.total_loss
        owner, fn = self.__dict__.get("_compiled_loss", (None, None))
        if owner is not self:
            fn = torch.compile(self.total_loss, fullgraph=True, mode=self.config.compile_mode)
            self.__dict__["_compiled_loss"] = (self, fn)
        return fn

    # ------------------------------------------------------------------ state
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything an update depends on besides the batch: parameters, Adam state, noise RNG."""
        return {
            "agent": self.name,
            "model": self.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "noise_generator": self.noise_generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if state.get("agent") != self.name:
            raise ValueError(f"checkpoint holds a {state.get('agent')!r} agent, not {self.name!r}")
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise_generator.set_state(state["noise_generator"].cpu())
        self.num_updates = int(state["num_updates"])
