"""A run directory: its config.json, checkpoint, summary and the checks before a run starts or resumes.

The :class:`~fisher_decorator.trainer.Trainer` owns the loop; this owns the files. Layout::

    config.json        the resolved train and agent configs, preset, overrides, dataset manifest, machine
    train.csv          metrics every log_interval steps (also in tensorboard/)
    eval.csv           evaluations (success, return, length, ...)
    checkpoint.pt      the latest checkpoint (atomic): parameters, Adam state, every RNG stream
    summary.json       final score (the paper's protocol), timings
    videos/            optional evaluation videos
    replay/            online runs only: the replay buffer's online transitions (fisher_decorator.replay)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from fisher_decorator.agents import agent_class
from fisher_decorator.agents.base import AgentConfig
from fisher_decorator.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from fisher_decorator.config import ConfigError, TrainConfig, apply_overrides, to_dict

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SUMMARY = "summary.json"
CHECKPOINT_VERSION = 1
# TrainConfig fields a resumed run may change: none of them alters parameters or RNG streams.
RESUMABLE_CHANGES = (
    "steps",
    "log_interval",
    "eval_interval",
    "eval_episodes",
    "eval_at_start",
    "eval_sampling",
    "eval_num_samples",
    "eval_refine_steps",
    "video_episodes",
    "video_frame_skip",
    "score_steps",
    "save_interval",
    "dataset_dir",
    "validation",
    "device",
    "threads",
    "prefetch",
    "tensorboard",
    "progress",
    "wandb",
    "wandb_project",
    "wandb_entity",
    "wandb_group",
)
# What a run writes besides checkpoint.pt: cleared when a run died before its first checkpoint.
RUN_OUTPUTS = ("config.json", "train.csv", "eval.csv", "summary.json", "tensorboard", "videos", "replay")


def clear_partial_run(run_dir: str | Path) -> None:
    """Remove the outputs of a run that has no checkpoint (they describe steps that will be redone)."""
    for name in RUN_OUTPUTS:
        p = Path(run_dir) / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def load_run_config(run_dir: str | Path) -> tuple[TrainConfig, AgentConfig, dict[str, Any]]:
    """The configs a run directory was started with (from its config.json)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no {CONFIG}")
    try:
        data = json.loads(path.read_text())
        cls = agent_class(data["train"]["agent"])
        train_cfg = apply_overrides(TrainConfig(), data["train"], what="train config")
        agent_cfg = apply_overrides(cls.config_class(), data["agent"], what="agent config")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON, truncated or damaged ({exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a run's config.json (no {exc} entry)") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return train_cfg, agent_cfg, data


def _config_changes(old, new) -> dict[str, tuple[Any, Any]]:
    a, b = to_dict(old), to_dict(new)
    return {k: (a.get(k), b.get(k)) for k in {**a, **b} if a.get(k) != b.get(k)}


class RunDirectory:
    """The files of one run in ``path``. Nothing is written until :meth:`prepare` says what the run does."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def prepare(self, train_cfg: TrainConfig, agent_cfg: AgentConfig, *, resume: bool) -> bool:
        """Check the directory before a run starts; returns whether the run resumes.

        Clears the leftovers of a process killed mid-write; a run killed before its first checkpoint
        starts again from step 0 (its outputs removed). Resuming needs a checkpoint and the same configs
        but for :data:`RESUMABLE_CHANGES`; a fresh run refuses a directory that holds one.
        """
        for p in remove_stale_temporaries(self.path):
            print(f"removed {p}, left by a process killed while writing", file=sys.stderr)
        ckpt = self.checkpoint_path
        if not ckpt.exists() and self.config_path.exists():
            # Killed (or out of disk) before its first checkpoint: nothing to resume, nothing to keep.
            print(
                f"{self.path}: stopped before its first checkpoint; starting it again from step 0",
                file=sys.stderr,
            )
            clear_partial_run(self.path)
            return False
        if resume:
            if not ckpt.is_file():
                raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {self.path}")
            old_train, old_agent, _ = load_run_config(self.path)
            if to_dict(old_agent) != to_dict(agent_cfg):
                diff = _config_changes(old_agent, agent_cfg)
                raise ConfigError(f"cannot resume with a different agent config: {diff}")
            changed = {
                f.name
                for f in dataclasses.fields(TrainConfig)
                if getattr(old_train, f.name) != getattr(train_cfg, f.name)
                and f.name not in RESUMABLE_CHANGES
            }
            if changed:
                raise ConfigError(
                    f"cannot resume with changed {sorted(changed)}; a resumed run may change only {list(RESUMABLE_CHANGES)}"
                )
            return True
        if ckpt.exists():
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        return False

    # ------------------------------------------------------------------ config.json
    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def write_config(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, record)

    def record_resume(self, train_cfg: TrainConfig, step: int, **sections: Any) -> None:
        """config.json of a resumed run: the train config it continues with, the step it resumed at."""
        config = self.read_config()
        config["train"] = to_dict(train_cfg)
        config.update(sections)
        config.setdefault("resumed_at", []).append(step)
        write_json(self.config_path, config)

    def wandb_id(self, new_id) -> tuple[str, dict[str, Any]]:
        """The run's W&B id (made by ``new_id()`` and kept in config.json the first time) and the config."""
        config = self.read_config()
        run_id = config.get("wandb_id")
        if run_id is None:
            run_id = config["wandb_id"] = new_id()
            write_json(self.config_path, config)
        return run_id, config

    # ------------------------------------------------------------------ checkpoint, summary
    def save_checkpoint(self, state: dict[str, Any], path: str | Path | None = None) -> None:
        save_checkpoint(path or self.checkpoint_path, state)

    def load_checkpoint(self, map_location) -> dict[str, Any]:
        state = load_checkpoint(self.checkpoint_path, map_location=map_location)
        if state.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"checkpoint version {state.get('version')} != {CHECKPOINT_VERSION}")
        return state

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, summary)
