"""Task names and the per-task presets of ``tasks.json`` (the authors' settings, as data).

``parse_task("cube-single-play-singletask-task2-v0")`` -> ``TaskName(kind="ogbench", family=
"cube-single-play", dataset="cube-single-play-v0", ...)``; ``task_preset(task, agent)`` -> the
train and agent overrides to apply before the command line's.

D4RL AntMaze (``antmaze-large-diverse-v2``) and Adroit (``pen-human-v1``) names are tasks of kind ``d4rl`` with
family ``d4rl-antmaze`` / ``d4rl-adroit`` (``D4RL_FAMILIES``), each with its own preset block in ``tasks.json``.

Any OGBench single task trains (pointmaze, cube-triple, ...: every dataset of
``fisher_decorator.datasets.registry``); a family without a paper entry gets the OGBench block's
settings without a per-family entry, i.e. FQL's defaults (``has_paper_preset`` tells which).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

TOY_TASKS = ("toy-bandit",)
D4RL_FAMILIES = ("d4rl-antmaze", "d4rl-adroit")
SUCCESS_KEY = "evaluation/success"
NORMALIZED_SCORE_KEY = "evaluation/normalized_score"
VISUAL_PRESETS = "ogbench-visual"
"""The block of tasks.json with the authors' pixel tasks (``visual_tasks()``)."""


@functools.cache
def load_presets() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("tasks.json").read_text()
    return json.loads(text)


def ogbench_families() -> list[str]:
    return list(load_presets()["ogbench"]["families"])


def ogbench_tasks(family: str | None = None) -> list[str]:
    """Every OGBench single-task name the presets cover (the default task and task1..task5)."""
    n = load_presets()["ogbench"]["tasks_per_family"]
    fams = [family] if family else ogbench_families()
    return [
        name
        for f in fams
        for name in [f"{f}-singletask-v0"] + [f"{f}-singletask-task{i}-v0" for i in range(1, n + 1)]
    ]


def d4rl_tasks(family: str | None = None) -> list[str]:
    """The D4RL datasets of ``family`` (``d4rl-antmaze``: 6, ``d4rl-adroit``: 12), or of both, in the authors' order."""
    fams = [family] if family else list(D4RL_FAMILIES)
    return [t for f in fams for t in load_presets()[f]["tasks"]]


def visual_tasks() -> list[str]:
    """The authors' pixel tasks (task1 of visual cube-single/double, scene, puzzle-3x3/4x4), in their order."""
    return list(load_presets()[VISUAL_PRESETS]["tasks"])


def list_tasks() -> list[str]:
    """toy-bandit, the paper's tasks (OGBench, then D4RL), then every other OGBench single task (FQL's defaults)."""
    others = [f for f in all_ogbench_families() if f not in ogbench_families()]
    return [*TOY_TASKS, *ogbench_tasks(), *d4rl_tasks(), *(t for f in others for t in ogbench_tasks(f))]


@dataclass(frozen=True)
class TaskName:
    name: str
    kind: str  # "ogbench", "d4rl" or "toy"
    family: str | None = None  # e.g. "cube-single-play", "d4rl-antmaze"
    dataset: str | None = None  # e.g. "cube-single-play-v0" (the OGBench dataset file stem), or the D4RL name
    task_id: int | None = None  # 1..5, None for the env's default task


_OGBENCH_RE = re.compile(r"^(?P<family>.+)-singletask(?:-task(?P<id>\d+))?-(?P<version>v\d+)$")


def all_ogbench_families() -> list[str]:
    """Every OGBench dataset family (``<family>-v0`` is a dataset): the paper's first, then the rest."""
    from fisher_decorator.datasets.registry import OGBENCH_RECIPES

    paper = ogbench_families()
    rest = sorted(d[: -len("-v0")] for d in OGBENCH_RECIPES if d.endswith("-v0"))
    return paper + [f for f in rest if f not in paper]


def has_paper_preset(task: str) -> bool:
    """Whether ``task`` has the paper's settings (toy-bandit and the paper's families) or FQL's defaults."""
    info = parse_task(task)
    return (
        info.kind in ("toy", "d4rl")
        or info.family in ogbench_families()
        or info.family in load_presets()[VISUAL_PRESETS]["families"]
    )


def score_key(task: str) -> str:
    """The eval.csv column whose mean at the score steps is a run's score: D4RL's normalised return for Adroit,
    the success rate otherwise (both fractions; reports show them x100)."""
    return NORMALIZED_SCORE_KEY if parse_task(task).family == "d4rl-adroit" else SUCCESS_KEY


def parse_task(task: str) -> TaskName:
    """The task's kind, family and dataset; an unknown name lists the valid ones."""
    if task in TOY_TASKS:
        return TaskName(task, "toy")
    for family in D4RL_FAMILIES:
        if task in load_presets()[family]["tasks"]:
            return TaskName(task, "d4rl", family, task)
    m = _OGBENCH_RE.match(task)
    families = ogbench_families()
    n = load_presets()["ogbench"]["tasks_per_family"]
    if m and m.group("family") in all_ogbench_families() and m.group("version") == "v0":
        tid = int(m.group("id")) if m.group("id") else None
        if tid is None or 1 <= tid <= n:
            return TaskName(task, "ogbench", m.group("family"), f"{m.group('family')}-v0", tid)
    raise ValueError(
        f"unknown task {task!r}. Valid tasks: {', '.join(TOY_TASKS)}, or an OGBench single task "
        f"<family>-singletask[-task1..{n}]-v0 with <family> one of the paper's: {', '.join(families)} "
        f"(e.g. cube-single-play-singletask-task2-v0), or any other OGBench dataset family "
        f"({', '.join(all_ogbench_families()[len(families) :])}; FQL's defaults, no paper preset), "
        f"or a D4RL dataset ({', '.join(d4rl_tasks())}); "
        "`fidec train --list-tasks` lists all"
    )


def task_preset(task: str, agent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train overrides, agent overrides) for ``agent`` on ``task``, as JSON values."""
    info = parse_task(task)
    presets = load_presets()
    bench = presets["toy-bandit" if info.kind == "toy" else info.family if info.kind == "d4rl" else "ogbench"]
    if info.kind == "ogbench" and info.family in presets.get(VISUAL_PRESETS, {}).get("families", {}):
        bench = presets[VISUAL_PRESETS]  # pixel tasks: their own schedule, encoder, frame stack and crop
    train = dict(bench.get("train", {}))
    agents = bench.get("agents", {})
    agent_over = {**agents.get("all", {}), **agents.get(agent, {})}
    if info.kind == "ogbench" and info.family in bench["families"]:
        fam = bench["families"][info.family]
        agent_over.update(fam.get("all", {}))
        agent_over.update(fam.get(agent, {}))
    if info.kind == "d4rl":
        per_task = bench["tasks"][task]
        agent_over.update(per_task.get("all", {}))
        agent_over.update(per_task.get(agent, {}))
    return train, agent_over
