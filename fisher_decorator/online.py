"""Online fine-tuning after the offline steps, as the authors' ``main.py`` does it (FQL's loop).

Each online step: (reset the exploration env if the last episode ended), one action from the policy's
default sample (``sample_actions(temperature=1)``: fresh N(0, I) noise), one ``env.step``, the transition
added to the replay buffer with ``terminals = done`` and ``masks = 1 - terminated`` (a time-out keeps the
bootstrap), the reward shifted by -1 on D4RL AntMaze (their rule on the task name), then one update on a
batch from the buffer, or half from the offline data and half from a separate online buffer
(``balanced_sampling``). The buffer starts as the offline data (capacity ``max(buffer_size, N + 1)``) or,
balanced, empty with capacity ``buffer_size``. When an episode ends its final ``info`` (numbers only) and
its return and length become the ``exploration/...`` metrics logged with every later training row.
Evaluation and the score are the offline run's (``evaluate_agent`` on the evaluation env); the online
score is the evaluation after the last online step, the score before it the one at the last offline step
(the authors' ``summarize_fql_scope.py --mode online``: 1M -> 2M).

Random streams, all derived from the run's seed: the exploration actions (``online-actions``), the batch
indices (``online-batches``; balanced: the dataset half, then the buffer half), and the exploration env's
reset seed of episode k (``online-env/k``), so episodes do not depend on the evaluation env or on timing.

Resume: the checkpoint holds the agent, both generators, the episode counter, the last exploration
metrics and the number of online transitions; the buffer comes back from the dataset plus the stored
chunks (:mod:`fisher_decorator.replay`). An episode in progress at the checkpoint is not continued: the
resumed run resets the env (episode k + 1). So a resumed run is bit-identical to an uninterrupted one
when every checkpoint falls on an episode boundary (the one-step toy bandit: always), and otherwise
identical up to the checkpoint and a different (equally valid) run after it: the uninterrupted run
continues the episode, the resumed one starts a new one; the transitions of the cut episode up to the
checkpoint stay in the buffer, its last one with ``terminals = 0``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fisher_decorator.agents import derive_seed
from fisher_decorator.config import ConfigError, _positive, option, to_dict
from fisher_decorator.evaluation import final_score
from fisher_decorator.replay import ReplayBuffer, ReplayStore, dataset_fields


@dataclass(frozen=True)
class OnlineConfig:
    """The online phase (the authors' ``--online_steps``, ``--balanced_sampling``, ``--buffer_size``)."""

    online_steps: int = option(0, "Online steps after the offline ones: one env step and one update each.")
    balanced_sampling: bool = option(
        False, "Half of each batch from the offline data, half from a separate online buffer."
    )
    buffer_size: int = option(2_000_000, "Replay buffer capacity (with the offline data: at least N + 1).")
    reward_shift: float | None = option(
        None, "Added to every online reward (None: the authors' rule, -1 on D4RL AntMaze, else 0)."
    )

    def check(self) -> None:
        _positive(self, "buffer_size")
        _positive(self, "online_steps", allow_zero=True)


def reward_shift_for(task: str) -> float:
    """The authors' main.py: ``reward - 1`` for D4RL AntMaze (names with antmaze and diverse/play/umaze)."""
    if "antmaze" in task and ("diverse" in task or "play" in task or "umaze" in task):
        return -1.0
    return 0.0


def env_factory(task):
    """``make()`` -> a fresh exploration env (gymnasium's reset/step): the task object's ``make_env`` (OGBench,
    D4RL: the same env as their evaluation; the toy bandit: its one-step env)."""
    make = getattr(task, "make_env", None)
    if make is None:
        raise ConfigError(f"task {task.name} has no environment to fine-tune in (no make_env)")
    return make


def normalized_return_for(task: str):
    """D4RL's ``get_normalized_score`` for a D4RL task (None for others), as the authors' EpisodeMonitor uses it."""
    from fisher_decorator.presets import parse_task

    if parse_task(task).kind != "d4rl":
        return None
    from fisher_decorator.envs.d4rl_tasks import normalized_score

    return lambda ret: normalized_score(task, ret)


def check_resumable(config: dict[str, Any], online: OnlineConfig) -> None:
    """A resumed online run keeps its online config; only ``online_steps`` may grow."""
    old = dict(config.get("online") or {})
    new = to_dict(online)
    changed = sorted(k for k in new if k != "online_steps" and old.get(k, new[k]) != new[k])
    if changed:
        raise ConfigError(f"cannot resume with changed online {changed}; only online_steps may change")


def _numbers(info: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The authors' ``flatten(info)``, numbers only (arrays such as positions are left out of the log)."""
    out = {}
    for k, v in info.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (bool, int, float, np.number)) or (isinstance(v, np.ndarray) and v.size == 1):
            out[key] = float(np.asarray(v).reshape(()))
    return out


class OnlineLoop:
    """The online steps of one :class:`~fisher_decorator.trainer.Trainer` (its agent, task, schedule)."""

    def __init__(self, trainer, cfg: OnlineConfig, *, state: dict[str, Any] | None = None):
        self.trainer, self.cfg = trainer, cfg
        tcfg = trainer.cfg
        self.env = None
        self._make_env = env_factory(trainer.task)
        self._normalized = normalized_return_for(tcfg.task)
        self.shift = cfg.reward_shift if cfg.reward_shift is not None else reward_shift_for(tcfg.task)
        device, dtype = trainer.device, trainer.dtype
        eps = tcfg.action_clip_eps or None
        train = trainer.data.train
        n = len(train["observations"])
        if cfg.balanced_sampling:
            shapes = {
                k: v.shape[1:] for k, v in dataset_fields({k: v[:1] for k, v in train.items()}, None).items()
            }
            self.buffer = ReplayBuffer(cfg.buffer_size, shapes, device=device, dtype=dtype)
            offset = 0
        else:  # the offline data is the start of the buffer
            self.buffer = ReplayBuffer.from_dataset(
                train, max(cfg.buffer_size, n + 1), device=device, dtype=dtype, action_clip_eps=eps
            )
            offset = n
        self.store = ReplayStore(trainer.run_dir / "replay", capacity=self.buffer.capacity, offset=offset)
        self.batch_gen = torch.Generator().manual_seed(derive_seed(tcfg.seed, "online-batches"))
        self.action_gen = torch.Generator(device=device).manual_seed(derive_seed(tcfg.seed, "online-actions"))
        self.episodes = 0  # episodes started
        self.obs: np.ndarray | None = None  # None: the next step resets
        self.ep_return, self.ep_length = 0.0, 0
        self.expl: dict[str, float] = {}
        self.env_steps, self.env_time, self.update_time = 0, 0.0, 0.0
        self.finished_episodes = 0
        if state is not None:
            self.load_state(state)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "transitions": self.store.count,
            "batch_generator": self.batch_gen.get_state(),
            "action_generator": self.action_gen.get_state(),
            "episodes": self.episodes,
            "finished_episodes": self.finished_episodes,
            "exploration": dict(self.expl),
            "env_steps": self.env_steps,
            "env_time": self.env_time,
            "update_time": self.update_time,
            "config": to_dict(self.cfg),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.store.restore(self.buffer, int(state["transitions"]))
        self.batch_gen.set_state(state["batch_generator"].cpu())
        self.action_gen.set_state(state["action_generator"].cpu())
        self.episodes = int(state["episodes"])
        self.finished_episodes = int(state["finished_episodes"])
        self.expl = {k: float(v) for k, v in state["exploration"].items()}
        self.env_steps = int(state["env_steps"])
        self.env_time, self.update_time = float(state["env_time"]), float(state["update_time"])

    def flush(self) -> None:
        self.store.flush()

    # ------------------------------------------------------------------ steps
    def _sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        if not self.cfg.balanced_sampling:
            return self.buffer.sample(batch_size, self.batch_gen)
        half = batch_size // 2  # the authors' batch_size // 2 from each
        data = self.trainer.sampler.sample(half, generator=self.batch_gen)
        replay = self.buffer.sample(half, self.batch_gen)
        return {k: torch.cat([data[k], replay[k]]) for k in data}

    def env_step(self) -> None:
        """One exploration step: act, step, store (and reset or finish the episode)."""
        if self.env is None:  # outside the timing: building a MuJoCo env takes ~1 s, once
            self.env = self._make_env()
        t0 = time.perf_counter()
        agent = self.trainer.agent
        if self.obs is None:
            seed = derive_seed(self.trainer.cfg.seed, f"online-env/{self.episodes}") % (2**31 - 1)
            obs, _ = self.env.reset(seed=seed)
            self.obs = np.asarray(obs, dtype=np.float32)
            self.episodes += 1
            self.ep_return, self.ep_length = 0.0, 0
        o = torch.as_tensor(self.obs, device=agent.device, dtype=agent.dtype)
        action = agent.sample_actions(o, generator=self.action_gen).cpu().numpy().astype(np.float32)
        next_obs, reward, terminated, truncated, info = self.env.step(action.copy())
        next_obs = np.asarray(next_obs, dtype=np.float32)
        done = bool(terminated or truncated)
        transition = {
            "observations": self.obs,
            "actions": action,
            "rewards": float(reward) + self.shift,
            "terminals": float(done),
            "masks": 1.0 - float(terminated),
            "next_observations": next_obs,
        }
        self.buffer.add(transition)
        self.store.append(transition)
        self.ep_return += float(reward)
        self.ep_length += 1
        self.env_steps += 1
        if done:
            episode = {"final_reward": float(reward), "return": self.ep_return, "length": self.ep_length}
            if self._normalized is not None:  # the authors' EpisodeMonitor: D4RL's normalised return x100
                episode["normalized_return"] = 100.0 * self._normalized(self.ep_return)
            flat = _numbers({**info, "episode": episode, "total": {"timesteps": self.env_steps}})
            self.expl = {f"exploration/{k}": v for k, v in flat.items()}
            self.finished_episodes += 1
            self.obs = None
        else:
            self.obs = next_obs
        self.env_time += time.perf_counter() - t0

    def run(self) -> None:
        """The online steps from the trainer's step to ``cfg.steps + online_steps``."""
        tr = self.trainer
        # fix_bc_flow_online reads agent.online; the authors' test is ``network.step > offline_steps``, their
        # offline_steps 0 in a fine-tuning run (--restore_path) and the offline steps in one run that does both
        # (so there the first online update still trains the flow).
        online_after = 0 if tr.first_step else tr.cfg.steps
        total = tr.schedule.total
        bs = tr.cfg.batch_size
        while tr.step < total:
            t0 = time.perf_counter()
            step = tr.step + 1
            self.env_step()
            t1 = time.perf_counter()
            with_metrics = tr.schedule.metrics(step)
            tr.agent.online = tr.agent.num_updates > online_after
            info = tr.agent.update(self._sample(bs), with_metrics=with_metrics)
            row = None
            if with_metrics:
                from fisher_decorator.trainer import _floats

                row = _floats(info)
                row.update(self.expl)
                row["time/env_steps_per_sec"] = self.env_steps / max(self.env_time, 1e-12)
            self.update_time += time.perf_counter() - t1
            tr.end_step(step, row, time.perf_counter() - t0)

    def summary(self) -> dict[str, Any]:
        tr = self.trainer
        before = final_score(tr.eval_history, [tr.cfg.steps])
        after = final_score(tr.eval_history, [tr.schedule.total])
        return {
            "offline_steps": tr.cfg.steps,
            "online_steps": self.cfg.online_steps,
            "score_before": before["score"],
            "score_after": after["score"],
            "score_key": after["score_key"],
            "env_steps": self.env_steps,
            "episodes": self.finished_episodes,
            "env_steps_per_sec": self.env_steps / self.env_time if self.env_time > 0 else None,
            "updates_per_sec": self.env_steps / self.update_time if self.update_time > 0 else None,
            "balanced_sampling": self.cfg.balanced_sampling,
            "buffer_capacity": self.buffer.capacity,
            "buffer_size": self.buffer.size,
            "reward_shift": self.shift,
            "exploration": dict(self.expl),
        }

    def close(self) -> None:
        if self.env is not None:
            close = getattr(self.env, "close", None)
            if close is not None:
                close()
            self.env = None


def score_text(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def online_preset() -> dict[str, Any]:
    """The ``online`` block of tasks.json: the online defaults and the authors' online groups."""
    from fisher_decorator.presets import load_presets

    return load_presets().get("online", {})


def make_online_config(base: dict[str, Any] | None = None, **explicit: Any) -> OnlineConfig:
    """OnlineConfig from ``base`` (a stored or preset dict) changed by the ``explicit`` values that are not None."""
    from fisher_decorator.config import apply_overrides

    cfg = apply_overrides(OnlineConfig(), dict(base or {}), what="online config")
    return apply_overrides(cfg, {k: v for k, v in explicit.items() if v is not None}, what="online config")


def default_finetune_dir(offline_run: str | Path) -> Path:
    """``runs/cube2-fidec`` -> ``runs/cube2-fidec-online``."""
    p = Path(offline_run)
    return p.with_name(p.name + "-online")


def finetune_trainer(
    offline_run: str | Path,
    out: str | Path | None = None,
    *,
    online: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    record: dict[str, Any] | None = None,
):
    """The :class:`~fisher_decorator.trainer.Trainer` of a fine-tuning run from ``offline_run``'s checkpoint.

    The run keeps the offline run's configs (task, agent, seed, dataset) but for explicit ``flags`` (train
    fields that may change on a resume: intervals, device, ...) and ``overrides`` (``--set``: agent fields,
    e.g. normalize_q_loss, fix_bc_flow_online); its steps continue the offline step count. ``online``: the
    OnlineConfig fields given (None values ignored). ``resume``: continue the run in ``out``.
    """
    from fisher_decorator.agents import agent_class
    from fisher_decorator.multiseed import is_multiseed_root
    from fisher_decorator.rundir import CHECKPOINT, RESUMABLE_CHANGES, load_run_config
    from fisher_decorator.trainer import Trainer, split_overrides

    offline_run = Path(offline_run)
    out = Path(out) if out is not None else default_finetune_dir(offline_run)
    if is_multiseed_root(offline_run):
        raise ConfigError(
            f"{offline_run} holds a multi-seed run; fine-tune one seed: --run {offline_run}/seed<i>"
        )
    train_cfg, agent_cfg, _ = load_run_config(offline_run)
    ckpt = offline_run / CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"{offline_run} has no {CHECKPOINT} to fine-tune from")
    step = int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)["step"])
    set_train, set_agent = split_overrides(dict(overrides or {}), agent_class(train_cfg.agent))
    explicit = {k: v for k, v in (flags or {}).items() if v is not None}
    bad = sorted(k for k in {**explicit, **set_train} if k not in RESUMABLE_CHANGES or k == "steps")
    if bad:
        raise ConfigError(
            f"a fine-tuning run keeps the offline run's {bad}; it may change only "
            f"{[k for k in RESUMABLE_CHANGES if k != 'steps']} and agent fields"
        )
    from fisher_decorator.config import apply_overrides

    train_cfg = apply_overrides(train_cfg, {**explicit, **set_train, "steps": step}, what="train config")
    agent_cfg = apply_overrides(agent_cfg, set_agent, what=f"{train_cfg.agent} agent config")
    stored = None
    if resume and (out / "config.json").is_file():
        stored = load_run_config(out)[2]
    base = (stored or {}).get("online") or online_preset().get("online", {})
    online_cfg = make_online_config(base, **(online or {}))
    if resume and stored is not None:
        train_cfg = apply_overrides(load_run_config(out)[0], {**explicit, **set_train}, what="train config")
        agent_cfg = apply_overrides(load_run_config(out)[1], set_agent, what="agent config")
    rec = {
        **(record or {}),
        "overrides": dict(overrides or {}),
        "restored_from": {"run": str(offline_run), "checkpoint": str(ckpt), "step": step},
    }
    return Trainer(
        train_cfg,
        agent_cfg,
        out,
        resume=resume,
        record=rec,
        online=online_cfg,
        init_from=ckpt,  # used unless the run resumes from its own checkpoint
    )
