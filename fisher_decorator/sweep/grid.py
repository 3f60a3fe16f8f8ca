"""What a sweep runs: agents x tasks x seeds under a budget, resolved to one training config per run.

``SweepDefinition`` is the part of ``fidec sweep``'s command line that decides results (grid, budget, steps,
``--set``); it is stored in ``<sweep>/sweep.json`` so that ``fidec sweep --out <sweep>`` alone continues a sweep.
Scheduling options (backend, resources, retries) are not part of it: a sweep may move between machines.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fisher_decorator.agents import AGENTS, overrides_for
from fisher_decorator.config import ConfigError, train_command
from fisher_decorator.presets import (
    D4RL_FAMILIES,
    TOY_TASKS,
    d4rl_tasks,
    load_presets,
    ogbench_families,
    parse_task,
    visual_tasks,
)

PAPER = "paper"
#: a task token with this suffix runs offline-to-online: an offline run, then a fine-tuning run from its checkpoint
ONLINE_SUFFIX = "@o2o"


def online_groups() -> dict[str, list[str]]:
    """The authors' offline-to-online groups (tasks.json ``online.groups``): o2o_ogbench5, o2o_d4rl_antmaze6, ..."""
    return dict(load_presets().get("online", {}).get("groups", {}))


def split_online(token: str) -> tuple[str, bool]:
    """``cube-...-v0@o2o`` -> (``cube-...-v0``, True); a plain task -> (task, False)."""
    if token.endswith(ONLINE_SUFFIX):
        return token[: -len(ONLINE_SUFFIX)], True
    return token, False


VISUAL = "visual"
"""``--tasks visual``: the authors' five pixel tasks (presets' ogbench-visual block), not part of ``paper``."""


class SweepError(ConfigError):
    """A sweep argument or a stored sweep that cannot be used; the message names the problem and the choices."""


# ------------------------------------------------------------------------------------------------ the grid


@dataclass(frozen=True, order=True)
class RunSpec:
    """One run of the grid. ``run_id`` names it in the manifest; its directory is ``<sweep>/<rel_dir>``."""

    task: str
    agent: str
    seed: int
    stage: str = ""
    """"" (an offline run), or ``o2o-offline`` / ``o2o-online``: the two runs of an offline-to-online task."""

    @property
    def run_id(self) -> str:
        base = f"{self.task}/{self.agent}/seed{self.seed}"
        return f"{base}/{self.stage}" if self.stage else base

    @property
    def rel_dir(self) -> str:
        if self.stage:
            return f"runs/o2o/{self.task}/{self.agent}/seed{self.seed}/{self.stage.removeprefix('o2o-')}"
        return f"runs/{self.task}/{self.agent}/seed{self.seed}"

    @property
    def depends_on(self) -> list[str]:
        """The runs that must be done before this one starts (a fine-tuning run: its offline run)."""
        if self.stage == "o2o-online":
            return [RunSpec(self.task, self.agent, self.seed, "o2o-offline").run_id]
        return []


def family_of(task: str) -> str:
    """The paper-table row a task belongs to: its OGBench family (``cube-single-play``), ``d4rl-antmaze`` /
    ``d4rl-adroit``, or the toy's name."""
    info = parse_task(task)
    return info.family if info.kind in ("ogbench", "d4rl") else task


def paper_tasks() -> list[str]:
    """The paper's tasks: task1..task5 of every family in SPEC's per-task table (tasks.json), then the authors'
    D4RL groups (6 AntMaze, 12 Adroit datasets; their scripts/fql_scope_registry.sh)."""
    n = load_presets()["ogbench"]["tasks_per_family"]
    ogbench = [f"{f}-singletask-task{i}-v0" for f in ogbench_families() for i in range(1, n + 1)]
    return ogbench + d4rl_tasks()


def parse_agents(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise SweepError(f"--agents is empty; choose from {', '.join(AGENTS)}")
    for n in names:
        if n not in AGENTS:
            raise SweepError(f"unknown agent {n!r}; valid agents: {', '.join(AGENTS)}")
    return _unique(names, "--agents")


def parse_tasks(text: str) -> list[str]:
    """Comma list of: ``paper`` (the 50 OGBench tasks and 18 D4RL datasets), ``visual`` (the authors' 5 pixel
    tasks, task1 each), a family (its task1..task5),
    ``d4rl-antmaze`` / ``d4rl-adroit`` (its datasets), a task name, an offline-to-online group (``o2o_ogbench5``,
    ``o2o_d4rl_antmaze6``, ``o2o_d4rl_adroit4``: its tasks as ``<task>@o2o``) or ``<task>@o2o``."""
    n = load_presets()["ogbench"]["tasks_per_family"]
    families = ogbench_families()
    groups = online_groups()
    out: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token in groups:
            out += [f"{t}{ONLINE_SUFFIX}" for t in groups[token]]
        elif split_online(token)[1]:
            try:
                parse_task(split_online(token)[0])
            except ValueError as exc:
                raise SweepError(f"--tasks {token}: {exc}") from None
            out.append(token)
        elif token == PAPER:
            out += paper_tasks()
        elif token == VISUAL:
            out += visual_tasks()
        elif token in families:
            out += [f"{token}-singletask-task{i}-v0" for i in range(1, n + 1)]
        elif token in D4RL_FAMILIES:
            out += d4rl_tasks(token)
        else:
            try:
                parse_task(token)
            except ValueError as exc:
                raise SweepError(
                    f"--tasks: {exc}. A token may also be '{PAPER}' (the paper's {len(paper_tasks())} tasks), "
                    f"'{VISUAL}' (the {len(visual_tasks())} pixel tasks), a "
                    f"family (its task1..task{n}): {', '.join(families)}, {' / '.join(D4RL_FAMILIES)}, or an "
                    f"offline-to-online group: {', '.join(groups)}"
                ) from None
            out.append(token)
    if not out:
        raise SweepError(f"--tasks is empty; use '{PAPER}', a family ({', '.join(families)}), or task names")
    return list(dict.fromkeys(out))  # a task named twice (e.g. by its family and by name) runs once


def _unique(items: list, what: str) -> list:
    dup = sorted({str(x) for x in items if items.count(x) > 1})
    if dup:
        raise SweepError(f"{what} lists {', '.join(dup)} more than once")
    return items


def expand_grid(agents: list[str], tasks: list[str], seeds: list[int]) -> list[RunSpec]:
    """Every (task, agent, seed), seed-major: a sweep stopped half-way has whole seeds of the table. A ``<task>@o2o``
    gives two runs: offline, then online from its checkpoint (the online run depends on the offline one)."""
    out = []
    for s in seeds:
        for token in tasks:
            task, online = split_online(token)
            for a in agents:
                if online:
                    out += [RunSpec(task, a, s, "o2o-offline"), RunSpec(task, a, s, "o2o-online")]
                else:
                    out.append(RunSpec(task, a, s))
    return out


# ------------------------------------------------------------------------------------------------ budgets


@dataclass(frozen=True)
class Budget:
    """A named training budget (``budgets.json``)."""

    name: str
    description: str
    steps: int
    evaluations: int
    score_evaluations: int
    train: dict[str, Any]
    agents: dict[str, dict[str, Any]]
    dataset_recipe: dict[str, int] | None
    """Episode counts for tiny regenerated datasets; None: OGBench's official recipe."""
    dataset_dir: str
    """``default`` or ``sweep``."""
    families: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """Per task family (``d4rl-antmaze``): its own ``steps`` / ``evaluations`` / ``score_evaluations``."""

    def schedule(self, steps: int | None = None, task: str | None = None) -> dict[str, Any]:
        """Train fields that depend on the number of steps: evaluation, score, checkpoint and log intervals
        (of ``task``'s family where the budget gives that family its own schedule; ``steps`` replaces its steps)."""
        own = self.families.get(family_of(task), {}) if task is not None else {}
        evaluations = int(own.get("evaluations", self.evaluations))
        score_evaluations = int(own.get("score_evaluations", self.score_evaluations))
        steps = int(own.get("steps", self.steps)) if steps is None else int(steps)
        if steps <= 0 or steps % evaluations:
            raise SweepError(
                f"--steps {steps}: must be a positive multiple of {evaluations} (budget {self.name!r} "
                f"evaluates every steps/{evaluations} updates, as the paper every 100k of 1M)"
            )
        interval = steps // evaluations
        return {
            "steps": steps,
            "eval_interval": interval,
            "score_steps": [steps - i * interval for i in reversed(range(score_evaluations))],
            "save_interval": min(int(self.train["save_interval"]), interval),
            "log_interval": min(int(self.train["log_interval"]), interval),
        }

    def agent_overrides(self, agent: str) -> dict[str, Any]:
        return {**self.agents.get("all", {}), **self.agents.get(agent, {})}


@functools.cache
def load_budgets() -> dict[str, Budget]:
    data = json.loads(resources.files(__package__).joinpath("budgets.json").read_text())
    out = {}
    for name, b in data.items():
        if name.startswith("_"):
            continue
        recipe = b["datasets"]["recipe"]
        out[name] = Budget(
            name=name,
            description=b["description"],
            steps=int(b["steps"]),
            evaluations=int(b["evaluations"]),
            score_evaluations=int(b["score_evaluations"]),
            train=dict(b["train"]),
            agents={k: dict(v) for k, v in b["agents"].items()},
            dataset_recipe=None if recipe == "official" else dict(recipe),
            dataset_dir=b["datasets"]["dir"],
            families={k: dict(v) for k, v in b.get("families", {}).items()},
        )
    return out


def get_budget(name: str) -> Budget:
    budgets = load_budgets()
    if name not in budgets:
        raise SweepError(f"unknown budget {name!r}; valid budgets: {', '.join(budgets)}")
    return budgets[name]


# ------------------------------------------------------------------------------------------------ definition

# Fields a sweep sets itself: --set must not change them behind its back.
_RESERVED = {
    "task": "--tasks",
    "agent": "--agents",
    "seed": "--seeds",
    "steps": "--steps",
    "eval_interval": "--steps (the budget's schedule)",
    "score_steps": "--steps (the budget's schedule)",
    "dataset_dir": "--dataset-dir",
    "device": "--gpus-per-run",
    "threads": "--cpus-per-run",
    "progress": "(runs never draw progress bars in a sweep)",
}


@dataclass(frozen=True)
class SweepDefinition:
    """What decides a sweep's results; stored in ``sweep.json``."""

    agents: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: str = "paper"
    steps: int | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    """``--set KEY=VALUE`` items, applied to every run (an agent field only to the agents that have it)."""
    dataset_dir: str | None = None

    def __post_init__(self) -> None:
        get_budget(self.budget)
        for key, _ in self.overrides:
            name = key.rpartition(".")[2]
            if name in _RESERVED:
                raise SweepError(f"--set {key}=...: a sweep sets {name!r} itself; use {_RESERVED[name]}")
        for token in dict.fromkeys(self.tasks) or [None]:  # a bad --steps fails here, before anything runs
            task, online = split_online(token) if token else (None, False)
            self.budget_obj.schedule(self.steps, None if online else task)

    @property
    def budget_obj(self) -> Budget:
        return get_budget(self.budget)

    def runs(self) -> list[RunSpec]:
        return expand_grid(list(self.agents), list(self.tasks), list(self.seeds))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepDefinition:
        return cls(
            agents=tuple(d["agents"]),
            tasks=tuple(d["tasks"]),
            seeds=tuple(int(s) for s in d["seeds"]),
            budget=d["budget"],
            steps=d.get("steps"),
            overrides=tuple((str(k), str(v)) for k, v in d.get("overrides", {}).items()),
            dataset_dir=d.get("dataset_dir"),
        )

    def extend(self, other: SweepDefinition) -> SweepDefinition:
        """This stored sweep with ``other``'s agents, tasks and seeds added; everything else must agree."""
        diff = {
            f: (getattr(self, f), getattr(other, f))
            for f in ("budget", "steps", "overrides", "dataset_dir")
            if getattr(self, f) != getattr(other, f)
        }
        if diff:
            lines = "; ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in diff.items())
            raise SweepError(
                f"this sweep directory holds a sweep with other settings ({lines}). Continue it with the same "
                "settings (or with none: `fidec sweep --out DIR` reuses the stored ones), or use another --out"
            )

        def union(a, b):
            return tuple(dict.fromkeys([*a, *b]))

        return dataclasses.replace(
            self,
            agents=union(self.agents, other.agents),
            tasks=union(self.tasks, other.tasks),
            seeds=union(self.seeds, other.seeds),
        )


@dataclass(frozen=True)
class ResolvedRun:
    """A run with its configs, as the worker process receives them."""

    spec: RunSpec
    train: dict[str, Any]
    agent: dict[str, Any]
    record: dict[str, Any]
    online: dict[str, Any] | None = None
    """A fine-tuning run's OnlineConfig fields (None: offline)."""
    init_from: str | None = None
    """A fine-tuning run: the checkpoint it starts from, relative to the sweep directory."""

    @property
    def total_steps(self) -> int:
        """The step a finished run is at: its offline steps plus its online steps."""
        return int(self.train["steps"]) + int((self.online or {}).get("online_steps", 0))


def resolve_run(
    definition: SweepDefinition,
    spec: RunSpec,
    *,
    sweep_dir: str | Path,
    dataset_dir: str | Path,
    cpus_per_run: int = 1,
    gpus_per_run: float = 0.0,
) -> ResolvedRun:
    """Task preset < budget < ``--set``, plus the resources; validated here, before any run starts."""
    from fisher_decorator.config import to_dict
    from fisher_decorator.trainer import resolve_configs

    budget = definition.budget_obj
    train_flags = {k: v for k, v in budget.train.items()}
    online_block = load_presets().get("online", {})
    if spec.stage:
        # offline-to-online: the budget's own schedule for every task (1M under the paper budget, as the authors'
        # RESTORE_EPOCH), scored at its last step (the score before fine-tuning), then as many online steps
        schedule = budget.schedule(definition.steps, None)
        schedule["score_steps"] = [schedule["steps"]]
        train_flags.update(schedule)
    else:
        train_flags.update(budget.schedule(definition.steps, spec.task))
    train_flags.update(
        seed=spec.seed,
        dataset_dir=str(dataset_dir),
        device="cuda" if gpus_per_run > 0 else "cpu",
        threads=int(cpus_per_run),
        progress=False,
    )
    sets = overrides_for(spec.agent, definition.agents, dict(definition.overrides))
    overrides = {**budget.agent_overrides(spec.agent), **sets}
    if spec.stage:  # the authors' online grids: normalize_q_loss false (their NORMALIZE_Q default)
        agents = online_block.get("agents", {})
        overrides = {**agents.get("all", {}), **agents.get(spec.agent, {}), **overrides}
    try:
        train_cfg, agent_cfg, record = resolve_configs(
            spec.task, spec.agent, flags=train_flags, overrides=overrides
        )
    except (ConfigError, ValueError) as exc:
        raise SweepError(f"run {spec.run_id}: {exc}") from None
    train, agent = to_dict(train_cfg), to_dict(agent_cfg)
    run_dir = Path(sweep_dir) / spec.rel_dir
    sets = [
        (name, train.get(name, agent.get(name)))
        for name in dict.fromkeys(k.rpartition(".")[2] for k in {**train_flags, **overrides})
        if name != "seed"
    ]
    flags = {"seed": spec.seed, "out": str(run_dir), "no_plot": True}
    record.update(
        sweep={"dir": str(Path(sweep_dir)), "budget": definition.budget, "run_id": spec.run_id},
        command=train_command(spec.agent, spec.task, flags, sets),
    )
    if spec.stage != "o2o-online":
        return ResolvedRun(spec, train, agent, record)
    online = {**online_block.get("online", {}), "online_steps": int(train["steps"])}
    offline_dir = RunSpec(spec.task, spec.agent, spec.seed, "o2o-offline").rel_dir
    record["command"] = (
        f"fidec finetune --run {Path(sweep_dir) / offline_dir} --online-steps {online['online_steps']} --out {run_dir}"
    )
    return ResolvedRun(spec, train, agent, record, online=online, init_from=f"{offline_dir}/checkpoint.pt")


def task_list_for_datasets(runs: list[RunSpec]) -> list[str]:
    return list(dict.fromkeys(r.task for r in runs if r.task not in TOY_TASKS))
