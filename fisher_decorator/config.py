"""Typed configs: dataclasses whose fields carry a one-line doc, parsing of ``key=value`` overrides.

A field is declared with :func:`option`::

    lr: float = option(3e-4, "Adam learning rate.")

``describe(cfg)`` lists the fields with their docs, ``apply_overrides(cfg, {"lr": "1e-4"})`` returns
a copy with values parsed to the field's type, and an unknown name gets an error that lists the valid
ones. ``TrainConfig`` holds everything about a run that is not the agent.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

_MISSING = dataclasses.MISSING


def option(default: Any, doc: str, *, choices: tuple | None = None) -> Any:
    """A dataclass field with a default, a one-line doc and (optionally) the allowed values."""
    return field(default=default, metadata={"doc": doc, "choices": choices})


class ConfigError(ValueError):
    """A config field that does not exist or a value that does not parse / is not allowed."""


_SEED_RANGE = re.compile(r"^(\d+)-(\d+)$")


def format_value(value: Any) -> str:
    """A config value as ``--set`` parses it back (tuples as ``a,b``, booleans lower-case)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_command(
    agent: str, task: str, flags: dict[str, Any], sets: list[tuple[str, Any]] | dict[str, Any] = ()
) -> str:
    """The ``fidec train`` command line recorded in a run's config.json (by ``fidec train`` and the sweep).
    ``flags``: option name -> value (None: not given; True: a switch); ``sets``: the ``--set`` items."""
    parts = ["fidec", "train", "--agent", agent, "--task", task]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        parts.append(f"--{name.replace('_', '-')}")
        if value is not True:
            parts.append(format_value(value))
    for key, value in sets.items() if isinstance(sets, dict) else sets:
        parts += ["--set", f"{key}={format_value(value)}"]
    return " ".join(parts)


def parse_seeds(text: str, *, what: str = "--seeds") -> list[int]:
    """``0-3`` (inclusive range), ``0,2,5``, or a mix (``0-2,7``); one number is that seed. The one parser of
    seed lists (``fidec train --seeds``, ``fidec sweep --seeds``); an error names the bad item or repeat."""
    seeds: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        m = _SEED_RANGE.match(token)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"{what}: range {token!r} is empty (end before start)")
            seeds += range(lo, hi + 1)
        elif token.isdigit():
            seeds.append(int(token))
        else:
            raise ConfigError(f"{what}: {token!r} is not a seed; use e.g. 0-3, 0,2,5 or 0-2,7")
    if not seeds:
        raise ConfigError(f"{what} is empty; use e.g. 0-3")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{what} lists seed(s) {repeated} more than once: {text!r}")
    return seeds


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cfg_or_cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg_or_cls)]


def unknown_field_error(name: str, valid: list[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {what} field {name!r}.{hint} Valid fields: {', '.join(sorted(valid))}")


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _strip_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
    return tp, False


def parse_value(text: Any, tp) -> Any:
    """``text`` (a string from the command line, or an already typed JSON value) as type ``tp``."""
    base, optional = _strip_optional(tp)
    if isinstance(text, str) and optional and text.strip().lower() in ("none", "null"):
        return None
    if text is None:
        if optional:
            return None
        raise ValueError("None is not allowed here")
    origin = typing.get_origin(base)
    if base is bool:
        return text if isinstance(text, bool) else _parse_bool(str(text))
    if base is int:
        if isinstance(text, bool):
            raise ValueError(f"expected an integer, got {text!r}")
        if isinstance(text, int):
            return text
        try:  # "1e6" and "1_000_000" are integers too
            value = float(text) if isinstance(text, float) else float(str(text).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if base is float:
        if isinstance(text, bool):
            raise ValueError(f"expected a number, got {text!r}")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if base is str:
        return str(text)
    if origin is tuple:
        args = typing.get_args(base)
        item_tp = args[0] if args else str
        if isinstance(text, str):
            s = text.strip()
            if s.startswith("["):
                items = json.loads(s)
            elif s.startswith("("):
                items = [p for p in s.strip("()").split(",") if p.strip()]
            else:
                items = [p for p in s.split(",") if p.strip()]
        else:
            items = list(text)
        return tuple(parse_value(i if not isinstance(i, str) else i.strip(), item_tp) for i in items)
    raise TypeError(f"cannot parse a value of type {tp}")


def _check_choices(cfg) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {list(choices)}, got {value!r}")


def apply_overrides(cfg, overrides: dict[str, Any], *, what: str = "config"):
    """A copy of dataclass ``cfg`` with ``overrides`` (strings or typed values) parsed and checked."""
    if not overrides:
        return cfg
    types_ = _field_types(type(cfg))
    valid = field_names(cfg)
    changes = {}
    for key, raw in overrides.items():
        if key not in valid:
            raise unknown_field_error(key, valid, what)
        try:
            changes[key] = parse_value(raw, types_[key])
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{what} field {key}={raw!r}: {exc} (type {types_[key]})") from None
    return dataclasses.replace(cfg, **changes)


def describe(cfg_or_cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, value or default, doc) for every field."""
    types_ = _field_types(cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls))
    rows = []
    for f in dataclasses.fields(cfg_or_cls):
        value = getattr(cfg_or_cls, f.name) if not isinstance(cfg_or_cls, type) else f.default
        tp = types_[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc += f" Choices: {', '.join(map(str, f.metadata['choices']))}."
        rows.append((f.name, tname, value, doc))
    return rows


def to_dict(cfg) -> dict[str, Any]:
    """JSON-friendly dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def validate(cfg) -> None:
    """Choices, then the class's own ``check()`` if it has one."""
    _check_choices(cfg)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()


def _positive(cfg, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            continue
        bad = v < 0 if allow_zero else v <= 0
        if bad or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{n} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


EVAL_SAMPLING = ("default", "best_of_n", "iterative")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run that is not the agent (the agent has its own config)."""

    task: str = option(
        "toy-bandit", "Task: an OGBench single-task name or 'toy-bandit' (see `fidec train --list-tasks`)."
    )
    agent: str = option("fidec", "Agent: fidec, deflow or fql.")
    seed: int = option(0, "Seed of every random stream of the run (init, batches, update noise, evaluation).")
    steps: int = option(1_000_000, "Number of gradient updates.")
    batch_size: int = option(256, "Transitions per update.")
    log_interval: int = option(
        5000, "Steps between rows of train.csv / TensorBoard (metrics are computed only then)."
    )
    eval_interval: int = option(
        100_000, "Steps between evaluations; the last step is evaluated too (0: no evaluation at all)."
    )
    eval_episodes: int = option(50, "Episodes per evaluation.")
    eval_at_start: bool = option(True, "Also evaluate after the first update, as the authors' main.py does.")
    eval_sampling: str = option(
        "default",
        "How evaluation picks actions: the policy's sample, best-of-n base actions by Q then refine, or "
        "iterative refinement (the last two: fidec and deflow only).",
        choices=EVAL_SAMPLING,
    )
    eval_num_samples: int = option(10, "Best-of-n: candidate base actions per state.")
    frame_stack: int | None = option(
        None,
        "Pixel tasks: frames per observation, stacked within an episode (training data and evaluation env).",
    )
    p_aug: float | None = option(
        None,
        "Pixel tasks: probability that a batch is randomly cropped (3-pixel edge padding, as the authors'; None: never).",
    )
    eval_refine_steps: int = option(5, "Iterative refinement: refinement steps.")
    video_episodes: int = option(
        0, "Extra rendered episodes per evaluation, saved as GIF (needs MUJOCO_GL=egl)."
    )
    video_frame_skip: int = option(3, "Keep every n-th frame of a video.")
    score_steps: tuple[int, ...] = option(
        (800_000, 900_000, 1_000_000),
        "Steps whose evaluations are averaged into the final score (the paper's protocol).",
    )
    save_interval: int = option(100_000, "Steps between checkpoints (always one at the end).")
    dataset_dir: str | None = option(
        None, "Directory of the OGBench dataset files (None: the datasets default)."
    )
    action_clip_eps: float = option(
        1e-5, "Dataset actions are clipped to [-1 + eps, 1 - eps] (FQL's convention)."
    )
    validation: bool = option(
        True, "At log steps, also log the losses on a validation batch when there is a split."
    )
    device: str = option("auto", "Torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    threads: int = option(
        0, "torch.set_num_threads (0: the CPUs this process may use: its affinity mask and cgroup CPU quota)."
    )
    prefetch: int = option(2, "Batches drawn ahead in a background thread while an update runs (0: none).")
    dtype: str = option("float32", "Parameter dtype.", choices=("float32", "float64"))
    tensorboard: bool = option(True, "Write TensorBoard event files next to the CSV logs.")
    wandb: bool = option(
        False,
        "Log to Weights & Biases with the authors' metric names (pip install 'fisher-decorator[wandb]'; "
        "WANDB_MODE=offline works without a network). Also on when wandb_project is set.",
    )
    wandb_project: str | None = option(
        None, "W&B project (None: 'fisher-decorator'); setting it turns W&B on."
    )
    wandb_entity: str | None = option(None, "W&B entity (team or user; None: W&B's default).")
    wandb_group: str | None = option(
        None, "W&B group (None: the task), so the seeds of a task group together."
    )
    progress: bool = option(True, "Show a tqdm progress bar.")

    def check(self) -> None:
        _positive(self, "steps", "batch_size", "log_interval", "eval_episodes", "save_interval")
        _positive(self, "eval_interval", "video_episodes", "threads", allow_zero=True)
        _positive(self, "eval_num_samples", "eval_refine_steps", "video_frame_skip")
        _positive(self, "frame_stack")
        if self.p_aug is not None and not 0.0 <= self.p_aug <= 1.0:
            raise ConfigError(f"p_aug must be in [0, 1], got {self.p_aug}")
        if not 0 <= self.action_clip_eps < 1:
            raise ConfigError(f"action_clip_eps must be in [0, 1), got {self.action_clip_eps}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(
                    f"device {self.device!r}: not a torch device; use auto, cpu, cuda or cuda:N"
                ) from None
