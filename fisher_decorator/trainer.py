"""The training loop: data, agent, logging, evaluation and the schedule; the files are a
:class:`~fisher_decorator.rundir.RunDirectory`'s (layout there), the online phase an
:class:`~fisher_decorator.online.OnlineLoop`'s.

Random streams (all derived from the run's seed): network init, update noise, batch indices,
validation batches (per log step), evaluation (per evaluation step). A killed run resumed from
its checkpoint continues exactly as an uninterrupted run would have (online: see fisher_decorator.online).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fisher_decorator.agents import AGENTS, agent_class, derive_seed, make_agent
from fisher_decorator.agents.base import AgentConfig
from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    field_names,
    to_dict,
    unknown_field_error,
    validate,
)
from fisher_decorator.envs import make_task
from fisher_decorator.evaluation import evaluate_agent, final_score, save_videos
from fisher_decorator.logger import CSVLogger, TensorBoardLogger, WandbLogger, new_wandb_id
from fisher_decorator.presets import parse_task, score_key, task_preset
from fisher_decorator.rundir import (  # noqa: F401 - the names' old home, still imported from here
    CHECKPOINT,
    CHECKPOINT_VERSION,
    CONFIG,
    RESUMABLE_CHANGES,
    RUN_OUTPUTS,
    SUMMARY,
    RunDirectory,
    clear_partial_run,
    load_run_config,
)
from fisher_decorator.sampler import BatchPrefetcher, sampler_for


def split_overrides(overrides: dict[str, Any], agent_cls) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items to (train, agent) overrides; ``train.x`` / ``agent.x`` force the side."""
    train_fields, agent_fields = field_names(TrainConfig), field_names(agent_cls.config_class)
    train, agent = {}, {}
    for key, value in overrides.items():
        side, _, name = key.rpartition(".")
        if side == "train" or (not side and name in train_fields):
            if name not in train_fields:
                raise unknown_field_error(name, train_fields, "train config")
            train[name] = value
        elif side == "agent" or (not side and name in agent_fields):
            if name not in agent_fields:
                raise unknown_field_error(name, agent_fields, f"{agent_cls.name} agent config")
            agent[name] = value
        elif side:
            raise ConfigError(f"override {key!r}: prefix must be 'train.' or 'agent.', got {side!r}")
        else:
            raise unknown_field_error(
                name, train_fields + agent_fields, f"train or {agent_cls.name} agent config"
            )
    return train, agent


def resolve_configs(
    task: str, agent: str, *, flags: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, AgentConfig, dict[str, Any]]:
    """Defaults < the task's preset < explicit flags < ``--set`` overrides. Returns the configs and a record."""
    cls = agent_class(agent)
    parse_task(task)
    train_preset, agent_preset = task_preset(task, agent)
    set_train, set_agent = split_overrides(dict(overrides or {}), cls)
    train_cfg = apply_overrides(TrainConfig(task=task, agent=agent), train_preset, what="train config")
    train_cfg = apply_overrides(
        train_cfg, {k: v for k, v in (flags or {}).items() if v is not None}, what="train config"
    )
    train_cfg = apply_overrides(train_cfg, set_train, what="train config")
    if train_cfg.task != task or train_cfg.agent != agent:
        raise ConfigError("set the task and the agent with --task / --agent, not --set")
    agent_cfg = apply_overrides(cls.config_class(), agent_preset, what=f"{agent} agent config")
    agent_cfg = apply_overrides(agent_cfg, set_agent, what=f"{agent} agent config")
    validate(train_cfg)
    validate(agent_cfg)
    record = {"train_preset": train_preset, "agent_preset": agent_preset, "overrides": dict(overrides or {})}
    return train_cfg, agent_cfg, record


def resume_configs(
    run_dir: str | Path,
    *,
    task: str | None = None,
    agent: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[TrainConfig, AgentConfig, dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The configs to continue the run in ``run_dir`` with: its own (config.json), changed only by what
    the user passed explicitly (``flags`` that are not None, ``--set`` overrides; never the preset).

    Returns (train config, agent config, record, changes {field: (old, new)}).
    """
    old_train, old_agent, data = load_run_config(run_dir)
    for what, given, old in (("--task", task, old_train.task), ("--agent", agent, old_train.agent)):
        if given is not None and given != old:
            raise ConfigError(f"{what} {given}: the run in {run_dir} is {old!r}; a resumed run keeps it")
    set_train, set_agent = split_overrides(dict(overrides or {}), agent_class(old_train.agent))
    explicit = {k: v for k, v in (flags or {}).items() if v is not None}
    train_cfg = apply_overrides(old_train, {**explicit, **set_train}, what="train config")
    agent_cfg = apply_overrides(old_agent, set_agent, what=f"{old_train.agent} agent config")
    if train_cfg.task != old_train.task or train_cfg.agent != old_train.agent:
        raise ConfigError("set the task and the agent with --task / --agent, not --set")
    validate(train_cfg)
    validate(agent_cfg)
    changes = {}
    for old, new in ((old_train, train_cfg), (old_agent, agent_cfg)):
        a, b = to_dict(old), to_dict(new)
        changes.update({k: (a[k], b[k]) for k in a if a[k] != b[k]})
    record = {k: data[k] for k in ("train_preset", "agent_preset", "overrides", "command") if k in data}
    return train_cfg, agent_cfg, record, changes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available")
    return device


def code_revision() -> dict[str, Any]:
    """The git commit of the code that runs (None outside a git checkout) and whether it has local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"git_commit": None, "git_dirty": None, "source": str(root)}
    try:
        git = ["git", "-C", str(root)]
        top = subprocess.run(
            [*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=20
        )
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return out  # installed outside a checkout (or inside another repository)
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0:
        out["git_commit"] = commit.stdout.strip()
        out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def _floats(info: dict[str, torch.Tensor]) -> dict[str, float]:
    if not info:
        return {}
    keys = list(info)
    values = torch.stack([info[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))


@dataclass(frozen=True)
class Schedule:
    """The steps (1-based, after the update) at which a run logs metrics, evaluates and saves, from its
    TrainConfig's intervals; the last step does all three (evaluation only if eval_interval > 0).

    With ``online_steps``, steps ``cfg.steps + j`` (j = 1..online_steps) are online and follow the same
    intervals counted from the start of the online phase (the authors' fine-tuning run counts its steps
    from 1 and evaluates after its first update); the last offline step still logs, evaluates and saves
    (the score before fine-tuning)."""

    cfg: TrainConfig
    online_steps: int = 0

    @property
    def total(self) -> int:
        return self.cfg.steps + self.online_steps

    def _relative(self, step: int) -> tuple[int, int]:
        """(step within its phase, the phase's last step)."""
        if step > self.cfg.steps:
            return step - self.cfg.steps, self.total
        return step, self.cfg.steps

    def metrics(self, step: int) -> bool:
        j, last = self._relative(step)
        return j % self.cfg.log_interval == 0 or step == last

    def evaluate(self, step: int) -> bool:
        cfg = self.cfg
        if cfg.eval_interval <= 0:
            return False
        j, last = self._relative(step)
        return j % cfg.eval_interval == 0 or step == last or (cfg.eval_at_start and j == 1)

    def save(self, step: int) -> bool:
        j, last = self._relative(step)
        return j % self.cfg.save_interval == 0 or step == last


class Trainer:
    """One run of one agent on one task. ``Trainer(...).run()`` returns the summary dict.

    Args:
        train_cfg, agent_cfg: the resolved configs (see :func:`resolve_configs`).
        run_dir: the run directory (created; must not hold a run unless ``resume``).
        resume: continue the run in ``run_dir`` from its checkpoint.
        record: extra entries for config.json (preset, overrides, command line).
        callback: ``callback(step, trainer)`` after every step (tests inject crashes with it).
        online: an :class:`~fisher_decorator.online.OnlineConfig`; its ``online_steps`` online steps
            follow the ``train_cfg.steps`` offline ones (see :mod:`fisher_decorator.online`).
        init_from: a checkpoint file to start from (agent, step and evaluation history), the authors'
            ``--restore_path``: ``fidec finetune`` sets ``train_cfg.steps`` to its step, so the run is online only.
    """

    def __init__(
        self,
        train_cfg: TrainConfig,
        agent_cfg: AgentConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        record: dict[str, Any] | None = None,
        callback: Callable[[int, Trainer], None] | None = None,
        online=None,
        init_from: str | Path | None = None,
    ):
        validate(train_cfg)
        validate(agent_cfg)
        if train_cfg.agent not in AGENTS:
            raise ConfigError(f"unknown agent {train_cfg.agent!r}; choose one of {', '.join(AGENTS)}")
        if not isinstance(agent_cfg, AGENTS[train_cfg.agent].config_class):
            raise ConfigError(
                f"agent config {type(agent_cfg).__name__} does not belong to agent {train_cfg.agent!r}"
            )
        if online is not None:
            validate(online)
        self.cfg = train_cfg
        self.agent_cfg = agent_cfg
        self.online_cfg = online
        self.init_from = Path(init_from) if init_from is not None else None
        self.rundir = RunDirectory(run_dir)
        self.run_dir = self.rundir.path
        self.record = dict(record or {})
        self.callback = callback
        self.step = 0
        self.first_step = 0  # the step this run's own updates start after (a fine-tuning run's offline step)
        self.batches: BatchPrefetcher | None = None
        self.online_loop = None
        self.eval_history: list[dict[str, float]] = []
        self.resume = self.rundir.prepare(train_cfg, agent_cfg, resume=resume)
        if self.resume and agent_cfg.gemm_path == "auto":
            from fisher_decorator import gemm_path

            # continue on the GEMMs the run started with (a new probe may choose otherwise: not bit-identical)
            gemm_path.pin(self.rundir.read_config().get("environment", {}).get("gemm_path"))
        if self.resume and online is not None:
            from fisher_decorator.online import check_resumable

            check_resumable(self.rundir.read_config(), online)

    # ------------------------------------------------------------------ setup
    def _setup(self, shared: Trainer | None = None) -> None:
        """Device, task, data, agent and samplers. ``shared``: a trainer of the same task (another seed
        of a multi-seed run) whose task, data and device-resident dataset this one reuses."""
        cfg = self.cfg
        from fisher_decorator.threads import configure_threads

        configure_threads(cfg.threads)  # 0: the CPUs this process may use (affinity mask, cgroup quota)
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self._owns_task = shared is None
        if shared is None:
            self.task = make_task(
                cfg.task,
                dataset_dir=cfg.dataset_dir,
                seed=cfg.seed,
                frame_stack=cfg.frame_stack,
                p_aug=cfg.p_aug,
            )
            self.data = self.task.load_data()
        else:
            self.task, self.data = shared.task, shared.data
        train = self.data.train
        obs_shape = train["observations"].shape[1:]  # pixel tasks: (H, W, C), the agent's encoders' input
        self.obs_dim = int(obs_shape[0]) if len(obs_shape) == 1 else tuple(int(s) for s in obs_shape)
        self.action_dim = int(train["actions"].shape[-1])
        self.agent = make_agent(
            cfg.agent,
            self.obs_dim,
            self.action_dim,
            self.agent_cfg,
            seed=cfg.seed,
            device=self.device,
            dtype=self.dtype,
        )
        sampler_kw = dict(device=self.device, dtype=self.dtype, action_clip_eps=cfg.action_clip_eps or None)
        batches_seed = derive_seed(cfg.seed, "batches")
        if shared is None:
            self.sampler = sampler_for(train)(train, seed=batches_seed, **sampler_kw)
        else:  # the same tensors (one copy of the dataset on the device), this run's own index stream
            self.sampler = copy.copy(shared.sampler)
            self.sampler.generator = torch.Generator().manual_seed(batches_seed)
        self.val_sampler = None
        if cfg.validation and self.data.val is not None and len(self.data.val.get("observations", ())) > 0:
            self.val_sampler = (
                sampler_for(self.data.val)(self.data.val, seed=0, **sampler_kw)
                if shared is None
                else shared.val_sampler
            )

    def _config_record(self) -> dict[str, Any]:
        from fisher_decorator.info import environment

        data = self.data
        online = {}
        if self.online_cfg is not None:
            online["online"] = to_dict(self.online_cfg)
        if self.init_from is not None:  # where the agent came from (fidec report reads the score before)
            online["restored_from"] = {
                "run": str(self.init_from.parent),
                "checkpoint": str(self.init_from),
                "step": self.first_step,
            }
        return {
            "train": to_dict(self.cfg),
            "agent": to_dict(self.agent_cfg),
            **online,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "dataset": {
                "name": data.dataset_name,
                "files": [str(p) for p in (data.files or [])],
                "transitions": int(len(data.train["observations"])),
                "val_transitions": int(len(data.val["observations"])) if data.val is not None else 0,
                "manifest": data.manifest,
            },
            **self.record,
            "code": code_revision(),
            "environment": environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "agent": self.agent.checkpoint_state(),
            "sampler": self.batches.state() if self.batches is not None else self.sampler.state(),
            "eval_history": self.eval_history,
            "train_time": self.train_time,
            "train_config": to_dict(self.cfg),
            "agent_config": to_dict(self.agent_cfg),
        }
        if self.online_loop is not None:
            state["online"] = self.online_loop.state()
        return state

    def save(self) -> None:
        if self.online_loop is not None:
            self.online_loop.flush()  # the replay chunk before the checkpoint that counts it
        self.rundir.save_checkpoint(self.checkpoint_state())

    def _restore(self) -> dict[str, Any]:
        state = self.rundir.load_checkpoint(self.device)
        self.agent.load_checkpoint_state(state["agent"])
        self.sampler.load_state(state["sampler"])
        self.step = int(state["step"])
        self.eval_history = list(state["eval_history"])
        self.train_time = float(state.get("train_time", 0.0))
        return state

    def _init_from_checkpoint(self) -> None:
        """The authors' --restore_path: the agent (parameters, Adam, noise stream), step and evaluations."""
        state = load_checkpoint(self.init_from, map_location=self.device)
        self.agent.load_checkpoint_state(state["agent"])
        self.step = int(state["step"])
        self.eval_history = list(state.get("eval_history", []))
        self.first_step = self.step
        if self.step != self.cfg.steps:
            raise ConfigError(
                f"{self.init_from} is at step {self.step}, the run's offline steps are {self.cfg.steps}"
            )

    # ------------------------------------------------------------------ loop pieces
    def _validation_metrics(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, f"validation/{self.step}"))
        batch = self.val_sampler.sample(self.cfg.batch_size, generator=g)
        noise_gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.cfg.seed, f"validation-noise/{self.step}")
        )
        noise = self.agent.sample_noise(self.cfg.batch_size, generator=noise_gen)
        with torch.no_grad():
            _, info = self.agent.total_loss(batch, noise, with_metrics=True)
        return {f"validation/{k}": v for k, v in _floats(info).items()}

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        stats, videos = evaluate_agent(
            self.agent,
            self.task,
            episodes=cfg.eval_episodes,
            seed=cfg.seed,
            step=self.step,
            mode=cfg.eval_sampling,
            num_samples=cfg.eval_num_samples,
            refine_steps=cfg.eval_refine_steps,
            video_episodes=cfg.video_episodes,
            video_frame_skip=cfg.video_frame_skip,
        )
        row = {f"evaluation/{k}": float(v) for k, v in stats.items()}
        row["time/eval_time"] = time.perf_counter() - t0
        if videos:
            save_videos(videos, self.run_dir / "videos", self.step)
        return row

    @property
    def online_steps(self) -> int:
        return self.online_cfg.online_steps if self.online_cfg is not None else 0

    @property
    def schedule(self) -> Schedule:
        """Which steps log, evaluate and save (what a multi-seed driver follows too)."""
        return Schedule(self.cfg, self.online_steps)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        self.start()
        try:
            while self.step < self.cfg.steps:
                t0 = time.perf_counter()
                step = self.step + 1
                with_metrics = self.schedule.metrics(step)
                batch = self.batches.next()
                info = self.agent.update(batch, with_metrics=with_metrics)
                row = _floats(info) if with_metrics else None
                self.end_step(step, row, time.perf_counter() - t0)
            if self.online_loop is not None:
                self.online_loop.run()
        finally:
            self.close()
        return self.finish()

    def start(self, *, shared: Trainer | None = None, progress: bool | None = None) -> None:
        """Everything before the first update: setup, restore or config.json, logs, progress bar, batches.

        ``shared``: see :meth:`_setup`. ``progress``: show the bar (default: the config's ``progress``).
        """
        cfg = self.cfg
        self._setup(shared)
        self.train_time = 0.0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = None
        if self.resume:
            state = self._restore()
            extra = {"online": to_dict(self.online_cfg)} if self.online_cfg is not None else {}
            self.rundir.record_resume(cfg, self.step, **extra)
            if "restored_from" in self.rundir.read_config():
                self.first_step = cfg.steps
        else:
            if self.init_from is not None:
                self._init_from_checkpoint()
            self.rundir.write_config(self._config_record())
        if self.online_cfg is not None:
            from fisher_decorator.online import OnlineLoop

            self.online_loop = OnlineLoop(self, self.online_cfg, state=(state or {}).get("online"))
        resume_step = self.step if (self.resume or self.init_from is not None) else None
        self.train_log = CSVLogger(self.run_dir / "train.csv", resume_step=resume_step)
        self.eval_log = CSVLogger(self.run_dir / "eval.csv", resume_step=resume_step)
        self.tb = None
        if cfg.tensorboard:
            self.tb = TensorBoardLogger(
                self.run_dir / "tensorboard", purge_step=self.step + 1 if resume_step is not None else None
            )
        self.wandb = self._start_wandb() if cfg.wandb or cfg.wandb_project else None

        from tqdm import tqdm

        self.bar = tqdm(
            total=self.schedule.total,
            initial=self.step,
            disable=not (cfg.progress if progress is None else progress),
            dynamic_ncols=True,
            smoothing=0.05,
            unit="step",
            desc=f"{cfg.agent} {cfg.task} s{cfg.seed}",
            file=sys.stderr,
        )
        self._wall0 = time.perf_counter()
        self._window_t, self._window_steps = 0.0, 0
        self._postfix: dict[str, str] = {}
        if self.step < cfg.steps:
            self.batches = BatchPrefetcher(self.sampler, cfg.batch_size, cfg.prefetch)

    def _start_wandb(self) -> WandbLogger:
        """The run's W&B logger; its id is kept in config.json, so a resumed run continues the same W&B run."""
        cfg = self.cfg
        run_id, config = self.rundir.wandb_id(new_wandb_id)
        return WandbLogger(
            self.run_dir,
            run_id=run_id,
            project=cfg.wandb_project or "fisher-decorator",
            entity=cfg.wandb_entity,
            group=cfg.wandb_group or cfg.task,
            name=f"{cfg.agent}-{cfg.task}-s{cfg.seed}",
            config={k: config[k] for k in ("train", "agent", "online", "dataset", "code") if k in config},
        )

    def end_step(self, step: int, row: dict[str, float] | None, dt: float) -> None:
        """After update ``step`` (which took ``dt`` s): log ``row`` (the update's metrics, None when
        not a log step), evaluate, checkpoint, as due."""
        tb = self.tb
        self.step = step
        self.train_time += dt
        self._window_t += dt
        self._window_steps += 1
        if row is not None:
            row["time/updates_per_sec"] = self._window_steps / max(self._window_t, 1e-12)
            row["time/train_time"] = self.train_time
            row["time/total_time"] = time.perf_counter() - self._wall0
            self._window_t, self._window_steps = 0.0, 0
            if self.val_sampler is not None:
                row.update(self._validation_metrics())
            self.train_log.log(row, step)
            if tb:
                tb.log(row, step)
            if self.wandb is not None:
                self.wandb.log(row, step)
            self._postfix.update(critic=f"{row['critic/critic_loss']:.3g}", q=f"{row['actor/q']:.3g}")
            self.bar.set_postfix(self._postfix, refresh=False)
        if self.schedule.evaluate(step):
            erow = self.evaluate()
            self.eval_history.append({"step": step, **erow})
            self.eval_log.log(erow, step)
            if tb:
                tb.log(erow, step)
            if self.wandb is not None:
                self.wandb.log(erow, step)
            self.bar.set_postfix(success=f"{erow.get('evaluation/success', float('nan')):.3f}", refresh=False)
        if self.schedule.save(step):
            self.save()
            if tb:
                tb.flush()
        self.bar.update(1)
        if self.callback is not None:
            self.callback(step, self)

    def close(self) -> None:
        """Stop the prefetch thread, close the bar, the TensorBoard writer and (when it owns it) the task."""
        if self.batches is not None:
            self.batches.close()
        if self.online_loop is not None:
            self.online_loop.close()
        if getattr(self, "bar", None) is not None:
            self.bar.close()
        if getattr(self, "tb", None):
            self.tb.close()
        if getattr(self, "wandb", None) is not None:
            self.wandb.close()
        if getattr(self, "task", None) is not None and self._owns_task:
            self.task.close()

    def finish(self) -> dict[str, Any]:
        """The summary dict, also written to summary.json."""
        cfg = self.cfg
        offline_history = [r for r in self.eval_history if int(r["step"]) <= cfg.steps]
        summary = {
            "task": cfg.task,
            "agent": cfg.agent,
            "seed": cfg.seed,
            "steps": self.step,
            **final_score(offline_history, cfg.score_steps, key=score_key(cfg.task)),
            "last_evaluation": self.eval_history[-1] if self.eval_history else None,
            "train_time_s": self.train_time,
            "updates_per_sec": (self.step - self.first_step) / self.train_time
            if self.train_time > 0
            else None,
            "run_dir": str(self.run_dir),
        }
        if self.online_loop is not None:
            summary["online"] = self.online_loop.summary()
        self.rundir.write_summary(summary)
        return summary


def load_agent(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu"):
    """(agent restored from the run's checkpoint, train config, checkpoint step)."""
    run_dir = Path(run_dir)
    train_cfg, agent_cfg, data = load_run_config(run_dir)
    dev = resolve_device(device)
    agent = make_agent(
        train_cfg.agent,
        data["obs_dim"] if isinstance(data["obs_dim"], int) else tuple(data["obs_dim"]),
        int(data["action_dim"]),
        agent_cfg,
        seed=train_cfg.seed,
        device=dev,
        dtype=getattr(torch, train_cfg.dtype),
    )
    state = load_checkpoint(checkpoint or run_dir / CHECKPOINT, map_location=dev)
    agent.load_checkpoint_state(state["agent"])
    return agent, train_cfg, int(state["step"])
