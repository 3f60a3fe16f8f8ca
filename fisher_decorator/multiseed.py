"""Multi-seed training in one process: S agents of one config, trained as one stacked agent.

A FiDec update at a small batch leaves a GPU mostly idle (it is launch-bound at B=256), so a seed
sweep run as S processes pays S times the launches for S times too little work. Here the S agents'
parameters are stacked along a leading seed dimension and one update moves all of them: the loss
is the agents' own :meth:`~fisher_decorator.agents.base.FlowAgent.total_loss`, run by
``torch.func.functional_call`` on one template agent and vectorised over the seeds with
``torch.func.vmap(torch.func.grad(...))``; each GEMM of a step then serves S seeds at once.

What stays per seed, exactly as in a single run of that seed: the initial parameters (each seed's
agent is built as a single run builds it), every random draw (each seed's own noise generator and
batch-index stream, drawn outside the vmapped loss, whose vmap forbids random ops), the global-norm
gradient clip (the norm of that seed's gradients only), Adam (elementwise, so one Adam over the
stacked tensors is S Adams) and the Polyak target. Seed i of a stacked run therefore reproduces a
single run of seed i up to floating-point rounding: the batched GEMMs and the stacked rollout
round differently from the single agent's fused kernels (tests/test_multiseed.py states the
tolerance).

Which paths run stacked (:func:`stacked_config`): the networks' GELU is ATen's (the fused GELU
kernel is an autograd.Function without a batching rule), the Fisher penalty is the reference
(its fused kernels have no batching rule; it is a few d x d products per state, small beside the
rollouts), and every Euler rollout goes through ``fisher_decorator.ops.stacked_euler_rollout``, the fused
rollout of ``fisher_decorator.ops`` (state part of the first layer once per rollout, K samples of a state
in one GEMM, in-place bias + GELU kernel, reused buffers, bf16/tf32 GEMMs) with batched GEMMs over
the seeds, reached through a custom op whose vmap rule receives the whole stack. With
``rollout_backend="reference"`` the plain rollout loop is vmapped instead. Evaluation, validation
losses and checkpoints use each seed's own agent with the run's config unchanged.

A run writes ``<root>/seed<i>/`` for each seed, each a run directory exactly like a single run's
(config.json, which also records the stacked training, train.csv, eval.csv, tensorboard/,
checkpoint.pt, summary.json): ``fidec eval --run``, ``fidec plot`` and a single-seed
``fidec train --resume`` read them as they read any run. ``<root>/multiseed.json`` lists the seeds
and is the commit record of the checkpoints: every seed's checkpoint of a step is written first as
a pending file, then the step is committed in multiseed.json, then the files are renamed, so a run
killed at any moment resumes with all seeds at one step (a kill between commit and renames is
rolled forward on resume, one before the commit rolled back).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from fisher_decorator.agents.base import BATCH_KEYS, Batch, FlowAgent, Info
from fisher_decorator.agents.step import apply_step, clip_gradients_
from fisher_decorator.checkpoint import fsync_dir, load_checkpoint, save_checkpoint, write_json
from fisher_decorator.config import ConfigError, TrainConfig, to_dict, validate
from fisher_decorator.networks import MLP
from fisher_decorator.ops import stacked_euler_rollout
from fisher_decorator.trainer import CHECKPOINT, Trainer, _floats

MULTISEED = "multiseed.json"
_PENDING = re.compile(r"^\.checkpoint-(\d+)\.pt\.pending$")


# ------------------------------------------------------------------------------ stacked rollout
@torch.library.custom_op("fidec_multiseed::euler_rollout", mutates_args=())
def _rollout_op(
    params: list[torch.Tensor], s: torch.Tensor, noise: torch.Tensor, steps: int, rollout_dtype: str
) -> torch.Tensor:
    """One agent's rollout (the S = 1 stack); params = [w1, b1, w2, b2, ...]."""
    out = stacked_euler_rollout(
        [w[None] for w in params[0::2]],
        [b[None] for b in params[1::2]],
        s[None],
        noise[None],
        steps,
        rollout_dtype=rollout_dtype,
    )
    return out[0]


@_rollout_op.register_fake
def _rollout_fake(params, s, noise, steps, rollout_dtype):
    return torch.empty_like(noise)


@_rollout_op.register_vmap
def _rollout_vmap(info, in_dims, params, s, noise, steps, rollout_dtype):
    """The whole stack in one :func:`stacked_euler_rollout` (an input without a seed dim is shared)."""
    param_dims, s_dim, noise_dim = in_dims[0], in_dims[1], in_dims[2]
    S = info.batch_size

    def seed_first(t: torch.Tensor, dim: int | None) -> torch.Tensor:
        return t.movedim(dim, 0) if dim is not None else t.expand(S, *t.shape)

    stacked = [seed_first(p, dim) for p, dim in zip(params, param_dims)]
    out = stacked_euler_rollout(
        stacked[0::2],
        stacked[1::2],
        seed_first(s, s_dim),
        seed_first(noise, noise_dim),
        steps,
        rollout_dtype=rollout_dtype,
    )
    return out, 0


# ------------------------------------------------------------------------------ the template agent
@functools.cache
def _template_class(cls: type[FlowAgent]) -> type[FlowAgent]:
    """``cls`` with its Euler rollouts routed through the stacked-rollout op (which vmap hands the
    whole seed stack), unless the run asked for the reference rollouts."""

    @torch.no_grad()
    def flow_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        field = self.velocity_field
        if not self.stacked_rollouts or not isinstance(field, MLP) or field.layer_norm:
            return cls.flow_actions(self, obs, noise)
        params = [t.detach() for lin in field.linears for t in (lin.weight, lin.bias)]
        obs = field.select_obs(obs)  # pixel tasks: the flow's own encoder columns
        return _rollout_op(params, obs, noise, self.config.flow_steps, self.config.rollout_dtype)

    return type(
        f"Stacked{cls.__name__}",
        (cls,),
        {
            "flow_actions": flow_actions,
            # the stacked op already batches each rollout over the seeds; no grouped prefetch under vmap
            "update_rollouts": lambda self, batch, noise, *, with_metrics: [],
            "__doc__": f"{cls.__name__} as the template of a stacked update.",
        },
    )


def stacked_config(config):
    """The config the stacked loss runs with: ``config`` with the paths that have no batching rule
    replaced by plain PyTorch ones of the same values (to rounding); see the module doc."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {"fused_gelu": False, "compile": False, "rollout_backend": "reference"}
    if "penalty_backend" in fields:
        changes["penalty_backend"] = "reference"
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in fields})


def stacked_paths(config) -> dict[str, str]:
    """What the stacked update runs, for config.json."""
    out = {
        "gelu": "aten",
        "rollouts": "reference (vmapped)"
        if config.rollout_backend == "reference"
        else f"stacked fused ({config.rollout_dtype} GEMMs)",
    }
    if hasattr(config, "penalty_backend"):
        out["penalty_backend"] = "reference"
    if config.compile:
        out["compile"] = (
            f"torch.compile(fullgraph, mode={config.compile_mode}) of the vmapped loss and gradient"
        )
    return out


def _stack(dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


class StackedAgents:
    """S agents of one class, config and shape, updated as one (see the module doc).

    The agents keep their own noise generators (every update draws each seed's noise from its
    agent) and are the per-seed view of the run: :meth:`sync_to_agents` writes the stacked
    parameters (and Adam state) into them for evaluation and checkpoints, :meth:`load_from_agents`
    reads them back (after a resume). Between those calls the agents' parameters are stale.
    """

    def __init__(self, agents: Sequence[FlowAgent]):
        agents = list(agents)
        if not agents:
            raise ValueError("StackedAgents needs at least one agent")
        a0 = agents[0]
        for a in agents[1:]:
            same = (type(a), a.config, a.obs_dim, a.action_dim, a.device, a.dtype) == (
                type(a0),
                a0.config,
                a0.obs_dim,
                a0.action_dim,
                a0.device,
                a0.dtype,
            )
            if not same:
                raise ValueError(
                    "stacked agents must share class, config, obs_dim, action_dim, device and dtype; "
                    f"seed {a.seed} differs from seed {a0.seed}"
                )
        self.agents = agents
        self.config = a0.config
        self.template = _template_class(type(a0))(
            stacked_config(a0.config),
            a0.obs_shape or a0.obs_dim,  # pixel tasks: the frame shape the encoders take
            a0.action_dim,
            seed=a0.seed,
            device=a0.device,
            dtype=a0.dtype,
        )
        self.template.stacked_rollouts = a0.config.rollout_backend != "reference"
        self.template.requires_grad_(False)
        trainable = {id(p) for p in a0.trainable_parameters()}
        named = list(a0.named_parameters())
        self.names = [n for n, p in named if id(p) in trainable]  # the agents' optimizer order
        self.frozen_names = [n for n, p in named if id(p) not in trainable]
        self.buffer_names = [n for n, _ in a0.named_buffers()]
        self.critic_names = [n for n in self.names if n.startswith("critic.")]
        self.target_names = ["target_" + n for n in self.critic_names]
        if any(n not in self.frozen_names for n in self.target_names):
            raise ValueError("the target critic's parameters must mirror the critic's")
        per_agent = [{**dict(a.named_parameters()), **dict(a.named_buffers())} for a in agents]
        self.tensors: dict[str, torch.Tensor] = {
            n: torch.stack([t[n].detach() for t in per_agent])
            for n in self.names + self.frozen_names + self.buffer_names
        }
        opt0 = a0.optimizer
        self.optimizer = type(opt0)([self.tensors[n] for n in self.names], **opt0.defaults)
        self.num_updates = 0
        self._grad_fns: dict[bool, Callable] = {}
        self.load_from_agents()

    @property
    def num_seeds(self) -> int:
        return len(self.agents)

    # ------------------------------------------------------------------ the update
    def _loss(self, params, frozen, batch, noise, with_metrics: bool):
        return functional_call(
            self.template,
            (params, frozen),
            (batch, self.template.noise_class(**noise)),
            {"with_metrics": with_metrics},
            strict=True,
        )

    def _grad_fn(self, with_metrics: bool) -> Callable:
        fn = self._grad_fns.get(with_metrics)
        if fn is None:
            loss = functools.partial(self._loss, with_metrics=with_metrics)
            fn = vmap(grad(loss, has_aux=True), randomness="error")
            if self.config.compile:  # loss, gradient and the stacked rollouts as one inductor graph
                fn = torch.compile(fn, fullgraph=True, mode=self.config.compile_mode)
            self._grad_fns[with_metrics] = fn
        return fn

    def update(self, batches: Sequence[Batch], *, with_metrics: bool = True) -> Info:
        """One gradient step of every seed, seed i on ``batches[i]`` with noise from agent i's generator.

        Returns the metrics as [S] tensors (the keys, and per seed the values, of a single agent's
        :meth:`FlowAgent.update`); :func:`unstack_info` splits them per seed.
        """
        S = self.num_seeds
        if len(batches) != S:
            raise ValueError(f"update needs one batch per seed ({S}), got {len(batches)}")
        sizes = {a._check_batch(b) for a, b in zip(self.agents, batches)}
        if len(sizes) != 1:
            raise ValueError(f"every seed's batch must have the same size, got {sorted(sizes)}")
        B = sizes.pop()
        noise = _stack([a.sample_noise(B).tensors() for a in self.agents])
        batch = {k: torch.stack([b[k] for b in batches]) for k in BATCH_KEYS}
        params = {n: self.tensors[n] for n in self.names}
        frozen = {n: self.tensors[n] for n in self.frozen_names + self.buffer_names}
        grads_by_name, info = self._grad_fn(with_metrics)(params, frozen, batch, noise)
        grads = [grads_by_name[n] for n in self.names]
        info.update(clip_gradients_(grads, self.config.grad_clip, num_seeds=S, with_metrics=with_metrics))
        apply_step(
            self.optimizer,
            [self.tensors[n] for n in self.names],
            grads,
            target=[self.tensors[n] for n in self.target_names],
            source=[self.tensors[n] for n in self.critic_names],
            tau=self.config.tau,
        )
        for n in self.names:
            self.tensors[n].grad = None
        self.num_updates += 1
        return {k: v.detach() for k, v in info.items()}

    # ------------------------------------------------------------------ per-seed state
    @torch.no_grad()
    def sync_to_agents(self, *, optimizer: bool = True) -> None:
        """Write seed i's parameters (and with ``optimizer``, its Adam state) into agent i."""
        state = self.optimizer.state_dict()["state"] if optimizer else {}
        for i, agent in enumerate(self.agents):
            for name, t in (*agent.named_parameters(), *agent.named_buffers()):
                t.copy_(self.tensors[name][i])
            agent.num_updates = self.num_updates
            if optimizer:
                per_seed = {
                    j: {k: (v.clone() if k == "step" else v[i].clone()) for k, v in st.items()}
                    for j, st in state.items()
                }
                groups = agent.optimizer.state_dict()["param_groups"]
                agent.optimizer.load_state_dict({"state": per_seed, "param_groups": groups})

    @torch.no_grad()
    def load_from_agents(self) -> None:
        """Stack the agents' parameters and Adam state (they must be at one update count)."""
        counts = {a.num_updates for a in self.agents}
        if len(counts) != 1:
            raise ValueError(f"the agents are at different update counts {sorted(counts)}; cannot stack them")
        for i, agent in enumerate(self.agents):
            for name, t in (*agent.named_parameters(), *agent.named_buffers()):
                self.tensors[name][i].copy_(t)
        states = [a.optimizer.state_dict()["state"] for a in self.agents]
        stacked: dict[int, dict[str, torch.Tensor]] = {}
        for j in states[0]:
            stacked[j] = {}
            for k in states[0][j]:
                if k == "step":
                    steps = {float(st[j][k]) for st in states}
                    if len(steps) != 1:
                        raise ValueError(f"the agents' Adam step counts differ: {sorted(steps)}")
                    stacked[j][k] = states[0][j][k].clone()
                else:
                    stacked[j][k] = torch.stack([st[j][k] for st in states])
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": stacked, "param_groups": groups})
        self.num_updates = counts.pop()


def unstack_info(info: Info) -> list[Info]:
    """[S]-valued metrics to one dict of 0-d tensors per seed."""
    if not info:
        return []
    S = next(iter(info.values())).shape[0]
    return [{k: v[i] for k, v in info.items()} for i in range(S)]


# ------------------------------------------------------------------------------ the trainer
def seed_dir(root: str | Path, seed: int) -> Path:
    return Path(root) / f"seed{seed}"


def is_multiseed_root(path: str | Path) -> bool:
    return (Path(path) / MULTISEED).is_file()


def read_multiseed(root: str | Path) -> dict[str, Any]:
    """The run's multiseed.json (seeds, run directories, committed checkpoint step, summary)."""
    return json.loads((Path(root) / MULTISEED).read_text())


def _recover_checkpoints(root: Path, seeds: Sequence[int], committed: int | None) -> None:
    """Finish or undo an interrupted checkpoint: pending files of the committed step are renamed into
    place (the commit happened), others deleted (it did not)."""
    for seed in seeds:
        directory = seed_dir(root, seed)
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            m = _PENDING.match(path.name)
            if m is None:
                continue
            if committed is not None and int(m.group(1)) == committed:
                os.replace(path, directory / CHECKPOINT)
                fsync_dir(directory)
            else:
                path.unlink()


class SeedTrainer(Trainer):
    """One seed of a multi-seed run: a :class:`Trainer` whose checkpoint is written as a pending file,
    which :class:`MultiSeedTrainer` commits for all seeds at once."""

    def save(self) -> None:
        save_checkpoint(self.run_dir / f".checkpoint-{self.step}.pt.pending", self.checkpoint_state())


class MultiSeedTrainer:
    """One run of one agent on one task for each of ``seeds``, trained stacked in this process.

    Args:
        train_cfg, agent_cfg: the resolved configs (``train_cfg.seed`` is replaced by each seed).
        seeds: distinct integers.
        root: the run's directory; seed i runs in ``root/seed<i>/``.
        resume: continue the run in ``root`` (its multiseed.json names the seeds).
        record: extra entries for every seed's config.json.
        callback: ``callback(step, multiseed_trainer)`` after every step (tests inject crashes with it).
    """

    def __init__(
        self,
        train_cfg: TrainConfig,
        agent_cfg,
        seeds: Sequence[int],
        root: str | Path,
        *,
        resume: bool = False,
        record: dict[str, Any] | None = None,
        callback: Callable[[int, MultiSeedTrainer], None] | None = None,
    ):
        validate(train_cfg)
        validate(agent_cfg)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ConfigError("a multi-seed run needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        self.cfg = train_cfg
        self.agent_cfg = agent_cfg
        self.root = Path(root)
        self.resume = resume
        self.callback = callback
        self.step = 0
        meta = self.root / MULTISEED
        if resume:
            if not meta.is_file():
                raise FileNotFoundError(f"cannot resume: no {MULTISEED} in {self.root}")
            old = read_multiseed(self.root)
            if list(old["seeds"]) != self.seeds:
                raise ConfigError(
                    f"cannot resume with seeds {self.seeds}: the run in {self.root} has {old['seeds']}"
                )
            _recover_checkpoints(self.root, self.seeds, old.get("checkpoint_step"))
            steps = {}
            for seed in self.seeds:  # memory-mapped: only the step is read here
                path = seed_dir(self.root, seed) / CHECKPOINT
                if path.is_file():
                    steps[seed] = int(load_checkpoint(path, mmap=True)["step"])
            if len(set(steps.values())) > 1:
                raise ConfigError(
                    f"cannot resume {self.root} stacked: its seeds' checkpoints are at different steps {steps} "
                    "(a seed was continued on its own); continue the seeds one by one with --seed"
                )
        elif meta.exists():
            raise FileExistsError(
                f"{self.root} already holds a multi-seed run; pass --resume to continue it or choose another --out"
            )
        stacked = {"seeds": self.seeds, "root": str(self.root), "stacked_update": stacked_paths(agent_cfg)}
        self.trainers = [
            SeedTrainer(
                dataclasses.replace(train_cfg, seed=seed),
                agent_cfg,
                seed_dir(self.root, seed),
                resume=resume,
                record={**(record or {}), "multiseed": {**stacked, "index": i}},
            )
            for i, seed in enumerate(self.seeds)
        ]
        self.record = dict(record or {})

    def _write_meta(self, **extra: Any) -> None:
        path = self.root / MULTISEED
        meta = json.loads(path.read_text()) if path.is_file() else {}
        meta.update(
            {
                "seeds": self.seeds,
                "task": self.cfg.task,
                "agent": self.cfg.agent,
                "runs": {str(s): seed_dir(self.root, s).name for s in self.seeds},
                "train": to_dict(self.cfg),
                "stacked_update": stacked_paths(self.agent_cfg),
                **{k: v for k, v in self.record.items() if k == "command"},
            }
        )
        meta.setdefault("checkpoint_step", None)
        meta.update(extra)
        write_json(path, meta)

    def _commit(self, step: int) -> None:
        self._write_meta(checkpoint_step=step)
        _recover_checkpoints(self.root, self.seeds, step)

    def run(self) -> dict[str, Any]:
        """Train every seed to ``steps``; returns {"seeds": ..., "summaries": [per-seed summary], ...}."""
        from tqdm import tqdm

        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        first, *others = self.trainers
        bar = None
        try:
            first.start(progress=False)
            for t in others:
                t.start(shared=first, progress=False)
            steps = {t.step for t in self.trainers}
            if len(steps) != 1:
                raise RuntimeError(f"the seeds' checkpoints are at different steps {sorted(steps)}")
            self.step = steps.pop()
            self.stacked = StackedAgents([t.agent for t in self.trainers])
            schedule = first.schedule  # every seed's run shares the step config
            if not self.resume:
                self._write_meta()
            bar = tqdm(
                total=cfg.steps,
                initial=self.step,
                disable=not cfg.progress,
                dynamic_ncols=True,
                smoothing=0.05,
                unit="step",
                desc=f"{cfg.agent} {cfg.task} seeds {','.join(map(str, self.seeds))}",
            )
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                step = self.step + 1
                with_metrics = schedule.metrics(step)
                batches = [t.batches.next() for t in self.trainers]
                info = self.stacked.update(batches, with_metrics=with_metrics)
                rows: list[dict[str, float] | None] = [None] * len(self.seeds)
                if with_metrics:
                    rows = [_floats(i) for i in unstack_info(info)]
                dt = time.perf_counter() - t0
                save = schedule.save(step)
                if save or schedule.evaluate(step) or (with_metrics and first.val_sampler is not None):
                    self.stacked.sync_to_agents(optimizer=save)
                self.step = step
                for t, row in zip(self.trainers, rows):
                    t.end_step(step, row, dt)
                if save:
                    self._commit(step)
                if with_metrics:
                    bar.set_postfix(critic=f"{rows[0]['critic/critic_loss']:.3g}", refresh=False)
                bar.update(1)
                if self.callback is not None:
                    self.callback(step, self)
        finally:
            if bar is not None:
                bar.close()
            for t in [*others, first]:  # the first owns the shared task: closed last
                t.close()
        summaries = [t.finish() for t in self.trainers]
        train_time = max(s["train_time_s"] for s in summaries)
        scores = [s["score"] for s in summaries]
        result = {
            "seeds": self.seeds,
            "steps": self.step,
            "scores": dict(zip(map(str, self.seeds), scores)),
            "score_mean": None if None in scores else sum(scores) / len(scores),
            "train_time_s": train_time,
            "updates_per_sec_per_seed": self.step / train_time if train_time > 0 else None,
            "updates_per_sec_total": len(self.seeds) * self.step / train_time if train_time > 0 else None,
        }
        self._write_meta(summary=result)
        return {**result, "summaries": summaries, "root": str(self.root)}
