"""``fidec report``: a sweep's results in the paper's format, beside the paper's numbers.

Arithmetic (the paper's protocol, SPEC "Per-task settings"):

1. run score = mean of the run's ``evaluation/success`` at its ``score_steps`` (800k/900k/1M under the paper
   budget; 500k for the D4RL groups), x100, read from its ``eval.csv``; D4RL Adroit: ``evaluation/normalized_score``
   (D4RL's normalised return) instead of success (``presets.score_key``); a run missing one of those evaluations has no score (never a partial mean);
2. family score of a seed = mean over the family's tasks in the sweep of the run scores, only if every one of
   those tasks has a score for that seed (a seed with a missing task is left out and reported as incomplete);
3. table entry = mean and sample standard deviation (ddof 1) over the seeds with a family score, in %;
4. paper = the FiDec column of the paper's listing (``paper_scores.json``); ``unknown`` where the listing has no
   number, and then no difference is computed. Difference = ours - paper, in percentage points.

Offline-to-online runs (``--tasks o2o_ogbench5``; ``fidec finetune``; ``fidec train --online-steps``) are
kept out of those tables and get their own: per run, the score before fine-tuning (the evaluation at the last
offline step) and after (at the last online step), x100, as the authors' ``summarize_fql_scope.py --mode
online`` (1M -> 2M); per task and per group, mean ± sample std over seeds (a group's seed only when every task
of the group has both scores for it) and the mean change.

Works on a sweep directory (its manifest adds run states and errors) or any folder of run directories.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fisher_decorator.agents import AGENTS
from fisher_decorator.evaluation import final_score
from fisher_decorator.logger import read_csv
from fisher_decorator.presets import (
    D4RL_FAMILIES,
    VISUAL_PRESETS,
    d4rl_tasks,
    load_presets,
    ogbench_families,
    score_key,
)
from fisher_decorator.sweep.grid import family_of, online_groups
from fisher_decorator.sweep.manifest import MANIFEST

SUCCESS = "evaluation/success"
UNKNOWN = "unknown"
AGENT_LABELS = {"fidec": "FiDec", "deflow": "DeFlow", "fql": "FQL"}


@functools.cache
def load_paper_scores() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("paper_scores.json").read_text())


def paper_score(family: str, agent: str) -> float | None:
    """The paper's number for ``agent`` on ``family`` in %, or None where the listing has none."""
    entry = load_paper_scores()["families"].get(family)
    return None if entry is None else entry.get(agent)


def visual_families() -> list[str]:
    """The pixel group (the authors' ogbench_pixel): its families, after the state and D4RL ones in every table."""
    return list(load_presets()[VISUAL_PRESETS]["families"])


def family_label(family: str) -> str:
    entry = load_paper_scores()["families"].get(family)
    if entry:
        return entry["label"]
    return f"{family.removesuffix('-play')} (pixels)" if family in visual_families() else family


def tasks_in_family(family: str) -> int:
    if family in D4RL_FAMILIES:
        return len(d4rl_tasks(family))
    return load_presets()["ogbench"]["tasks_per_family"] if family in ogbench_families() else 1


@dataclass
class RunResult:
    """One run as the report sees it."""

    task: str
    agent: str
    seed: int
    run_dir: Path
    state: str
    score: float | None = None
    """Success rate in % (step 1 of the arithmetic), None without every score evaluation."""
    score_steps: list[int] = field(default_factory=list)
    missing_score_steps: list[int] = field(default_factory=list)
    error: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, success in %) of every evaluation."""
    stage: str = ""
    """"" (offline), ``o2o-offline`` or ``o2o-online`` (a fine-tuning run; see score_before / score)."""
    score_before: float | None = None
    """A fine-tuning run: the score (%) at the last offline step; its ``score`` is the one after."""

    @property
    def family(self) -> str:
        return family_of(self.task)


def _load_run(
    run_dir: Path, task: str, agent: str, seed: int, state: str, error: str | None, stage: str = ""
) -> RunResult:
    result = RunResult(task, agent, seed, run_dir, state, error=error, stage=stage)
    config = run_dir / "config.json"
    if not config.is_file():
        return result
    record = json.loads(config.read_text())
    train = record["train"]
    if stage == "o2o-online":
        return _load_online(result, record)
    rows = read_csv(run_dir / "eval.csv") if (run_dir / "eval.csv").is_file() else []
    try:
        key = score_key(task)
    except ValueError:  # a task name this version does not know: its success, as before
        key = SUCCESS
    history = [r for r in rows if key in r]
    scored = final_score(history, train.get("score_steps") or [], key=key)
    result.score = None if scored["score"] is None else 100.0 * scored["score"]
    result.score_steps = scored["score_steps"]
    result.missing_score_steps = scored["missing_score_steps"]
    result.curve = [(int(r["step"]), 100.0 * float(r[key])) for r in history]
    return result


def _score_at(rows: list[dict], key: str, step: int) -> float | None:
    values = [float(r[key]) for r in rows if int(r["step"]) == step and key in r]
    return 100.0 * values[-1] if values else None


def _load_online(result: RunResult, record: dict[str, Any]) -> RunResult:
    """A fine-tuning run: score after = its evaluation at its last online step; before = the evaluation at its
    last offline step (its own eval.csv after ``train --online-steps``, the offline run's after ``finetune``)."""
    offline_steps = int(record["train"]["steps"])
    end = offline_steps + int(record["online"]["online_steps"])
    try:
        key = score_key(result.task)
    except ValueError:
        key = SUCCESS
    path = result.run_dir / "eval.csv"
    rows = read_csv(path) if path.is_file() else []
    result.score = _score_at(rows, key, end)
    result.score_steps = [end]
    result.missing_score_steps = [] if result.score is not None else [end]
    result.curve = [(int(r["step"]), 100.0 * float(r[key])) for r in rows if key in r]
    result.score_before = _score_at(rows, key, offline_steps)
    source = record.get("restored_from", {}).get("run")
    if result.score_before is None and source:
        before = Path(source) / "eval.csv"
        if not before.is_absolute() and not before.is_file():
            before = result.run_dir / before
        if before.is_file():
            result.score_before = _score_at(read_csv(before), key, offline_steps)
    return result


def collect_runs(path: str | Path) -> list[RunResult]:
    """Every run of the sweep in ``path`` (from its manifest), else every run directory below ``path``."""
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        runs = json.loads(manifest.read_text())["runs"]
        return [
            _load_run(
                path / e["run_dir"],
                e["task"],
                e["agent"],
                int(e["seed"]),
                e["state"],
                e.get("error"),
                e.get("stage", ""),
            )
            for e in runs.values()
        ]
    configs = sorted(path.rglob("config.json"))
    if not configs:
        raise FileNotFoundError(
            f"{path}: no manifest.json and no run directories (with config.json) below it"
        )
    out = []
    for cfg in configs:
        record = json.loads(cfg.read_text())
        train = record["train"]
        done = (cfg.parent / "summary.json").is_file()
        stage = "o2o-online" if (record.get("online") or {}).get("online_steps") else ""
        state = "done" if done else "?"
        out.append(
            _load_run(cfg.parent, train["task"], train["agent"], int(train["seed"]), state, None, stage)
        )
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _ordered(items, order) -> list:
    rank = {x: i for i, x in enumerate(order)}
    return sorted(set(items), key=lambda x: (rank.get(x, len(rank)), x))


def family_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (family, agent) with steps 2-4 of the arithmetic."""
    rows = []
    families = _ordered(
        [r.family for r in results], [*ogbench_families(), *D4RL_FAMILIES, *visual_families()]
    )
    agents = _ordered([r.agent for r in results], list(AGENTS))
    for family in families:
        members = [r for r in results if r.family == family]
        tasks = _ordered([r.task for r in members], [])
        for agent in agents:
            mine = [r for r in members if r.agent == agent]
            if not mine:
                continue
            scores = {(r.task, r.seed): r.score for r in mine}
            seeds = sorted({r.seed for r in mine})
            per_seed = {}
            incomplete = []
            for seed in seeds:
                vals = [scores.get((t, seed)) for t in tasks]
                if all(v is not None for v in vals):
                    per_seed[seed] = sum(vals) / len(vals)
                else:
                    incomplete.append(seed)
            mean, std = _mean_std(list(per_seed.values()))
            paper = paper_score(family, agent)
            rows.append(
                {
                    "family": family,
                    "label": family_label(family),
                    "agent": agent,
                    "tasks": len(tasks),
                    "tasks_in_family": tasks_in_family(family),
                    "seeds": len(per_seed),
                    "mean": mean,
                    "std": std,
                    "paper": paper,
                    "difference": None if paper is None or mean is None else mean - paper,
                    "seed_scores": per_seed,
                    "incomplete_seeds": incomplete,
                }
            )
    return rows


def task_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each (task, agent)'s run score."""
    rows = []
    agents = _ordered([r.agent for r in results], list(AGENTS))
    for task in _ordered([r.task for r in results], []):
        for agent in agents:
            mine = [r for r in results if r.task == task and r.agent == agent]
            if not mine:
                continue
            scored = {r.seed: r.score for r in mine if r.score is not None}
            mean, std = _mean_std(list(scored.values()))
            rows.append(
                {
                    "task": task,
                    "family": family_of(task),
                    "agent": agent,
                    "seeds": len(scored),
                    "runs": len(mine),
                    "mean": mean,
                    "std": std,
                    "seed_scores": scored,
                }
            )
    return rows


def online_group_of(task: str) -> str:
    """The authors' offline-to-online group of ``task`` (``o2o_ogbench5``, ...), else ``o2o``."""
    for group, tasks in online_groups().items():
        if task in tasks:
            return group
    return "o2o"


def _online_row(group: str, task: str | None, agent: str, pairs: dict[int, tuple[float, float]], runs: int):
    before, before_std = _mean_std([b for b, _ in pairs.values()])
    after, after_std = _mean_std([a for _, a in pairs.values()])
    change, change_std = _mean_std([a - b for b, a in pairs.values()])
    return {
        "group": group,
        "task": task,
        "agent": agent,
        "seeds": len(pairs),
        "runs": runs,
        "before": before,
        "before_std": before_std,
        "after": after,
        "after_std": after_std,
        "change": change,
        "change_std": change_std,
        "seed_scores": pairs,
    }


def online_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per (group, task, agent), then per (group, agent) (task None): score before and after fine-tuning and
    the change, mean and sample std over the seeds that have both (a group's seed: for every task of it)."""
    runs = [r for r in results if r.stage == "o2o-online"]
    groups = online_groups()
    rows = []
    agents = _ordered([r.agent for r in runs], list(AGENTS))
    for group in _ordered([online_group_of(r.task) for r in runs], list(groups)):
        members = [r for r in runs if online_group_of(r.task) == group]
        tasks = _ordered([r.task for r in members], groups.get(group, []))
        for agent in agents:
            mine = [r for r in members if r.agent == agent]
            if not mine:
                continue
            both = {
                (r.task, r.seed): (r.score_before, r.score)
                for r in mine
                if r.score is not None and r.score_before is not None
            }
            for task in tasks:
                pairs = {seed: v for (t, seed), v in both.items() if t == task}
                rows.append(_online_row(group, task, agent, pairs, sum(r.task == task for r in mine)))
            per_seed = {}
            for seed in sorted({r.seed for r in mine}):
                pairs = [both.get((t, seed)) for t in tasks]
                if all(p is not None for p in pairs):
                    per_seed[seed] = tuple(sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
            rows.append(_online_row(group, None, agent, per_seed, len(mine)))
    return rows


def _pm(mean: float | None, std: float | None, sign: bool = False) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return text + (f" ± {std:.1f}" if std is not None else "")


def online_markdown(results: list[RunResult]) -> list[str]:
    rows = online_rows(results)
    if not rows:
        return []
    lines = [
        "## Offline to online",
        "",
        "Score (%) at the last offline step (before) and at the last online step (after) of each fine-tuning "
        "run (the authors' online summary, 1M -> 2M); mean ± sample std over seeds; Δ = after − before. A group "
        "row averages its tasks per seed (seeds with every task).",
        "",
        "| group | task | agent | seeds | before | after | Δ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        task = "**all tasks**" if r["task"] is None else r["task"]
        cells = [r["group"], task, AGENT_LABELS.get(r["agent"], r["agent"]), str(r["seeds"])]
        cells += [_pm(r["before"], r["before_std"]), _pm(r["after"], r["after_std"])]
        cells.append(_pm(r["change"], r["change_std"], sign=True))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _cell(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "n/a"
    s = _fmt(row["mean"])
    if row["std"] is not None:
        s += f" ± {_fmt(row['std'])}"
    n = row["seeds"]
    return f"{s} ({n} seed{'s' if n != 1 else ''})"


def _csv_num(x: float | None, unknown: str = "") -> str:
    return unknown if x is None else repr(round(float(x), 6))


def markdown(results: list[RunResult], sweep: dict[str, Any] | None, curves: dict[str, str]) -> str:
    everything, results = results, [r for r in results if not r.stage]  # offline tables: offline runs only
    frows, trows = family_rows(results), task_rows(results)
    agents = _ordered([r.agent for r in results], list(AGENTS))
    states: dict[str, int] = {}
    for r in everything:
        states[r.state] = states.get(r.state, 0) + 1
    source = load_paper_scores()["source"]
    lines = ["# Sweep results", ""]
    if sweep:
        d = sweep["definition"]
        lines.append(
            f"Budget **{d['budget']}**"
            + (
                f" with --steps {d['steps']} (replaces the budget's steps and schedule)"
                if d.get("steps")
                else ""
            )
            + f"; agents {', '.join(d['agents'])}; {len(d['tasks'])} task(s); seeds {', '.join(map(str, d['seeds']))}."
        )
        from fisher_decorator.sweep.grid import get_budget

        lines.append(f"_{get_budget(d['budget']).description}_")
        if d.get("overrides"):
            lines.append("Overrides (`--set`): " + ", ".join(f"`{k}={v}`" for k, v in d["overrides"].items()))
        lines.append("")
    lines.append("Runs: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")
    score_steps = sorted({tuple(r.score_steps) for r in results if r.score_steps})
    steps_txt = " or ".join("/".join(map(str, s)) for s in score_steps) or "n/a"
    lines += [
        "",
        f"Score: success rate (%) of a run = mean of its evaluations at steps {steps_txt} (D4RL Adroit: D4RL's "
        "normalised return x100 instead of success); a family's entry is the "
        "mean over its tasks in this sweep, then mean ± sample std (ddof 1) over seeds (the number of seeds in "
        f"brackets). Paper: {source}; `{UNKNOWN}` where the listing gives no number. Δ = ours − paper "
        "(percentage points).",
        "",
        "## Per task family",
        "",
    ]
    header = ["task family", "tasks"]
    for a in agents:
        label = AGENT_LABELS.get(a, a)
        header += [f"{label} (ours)", f"{label} (paper)", f"Δ {label}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_family: dict[str, dict[str, dict]] = {}
    for row in frows:
        by_family.setdefault(row["family"], {})[row["agent"]] = row
    for per_agent in by_family.values():
        any_row = next(iter(per_agent.values()))
        cells = [any_row["label"], f"{any_row['tasks']} of {any_row['tasks_in_family']}"]
        for a in agents:
            row = per_agent.get(a)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            cells += [
                _cell(row),
                UNKNOWN if row["paper"] is None else f"{row['paper']:g}",
                UNKNOWN
                if row["paper"] is None
                else ("n/a" if row["difference"] is None else f"{row['difference']:+.1f}"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    partial = [r for r in frows if r["tasks"] < r["tasks_in_family"]]
    if partial:
        lines += [
            "",
            "A family with fewer tasks than the paper's is averaged over the tasks this sweep ran: compare with "
            "the paper's number with that in mind.",
        ]
    incomplete = [r for r in frows if r["incomplete_seeds"]]
    if incomplete:
        lines.append("")
    for r in incomplete:
        lines.append(
            f"- {r['label']} / {r['agent']}: seed(s) {', '.join(map(str, r['incomplete_seeds']))} left out "
            "(a task of the family has no score for them yet)"
        )
    lines += ["", *online_markdown(everything)]
    lines += [
        "## Per task",
        "",
        "| task | " + " | ".join(AGENT_LABELS.get(a, a) for a in agents) + " | curves |",
    ]
    lines.append("|" + "---|" * (len(agents) + 2))
    by_task: dict[str, dict[str, dict]] = {}
    for row in trows:
        by_task.setdefault(row["task"], {})[row["agent"]] = row
    for task, per_agent in by_task.items():
        cells = [task] + [_cell(per_agent[a]) if a in per_agent else "-" for a in agents]
        cells.append(f"[png]({curves[task]})" if task in curves else "")
        lines.append("| " + " | ".join(cells) + " |")
    problems = [r for r in results if r.score is None]
    if problems:
        lines += ["", "## Runs without a score", ""]
        for r in sorted(problems, key=lambda r: (r.task, r.agent, r.seed)):
            if r.error:
                why = r.error
            elif r.missing_score_steps:
                why = f"not evaluated at step(s) {', '.join(map(str, r.missing_score_steps))} yet"
            else:
                why = "no evaluation yet"
            lines.append(f"- `{r.task}/{r.agent}/seed{r.seed}` ({r.state}): {why}")
    return "\n".join(lines) + "\n"


def write_csvs(results: list[RunResult], out_dir: Path) -> dict[str, Path]:
    paths = {}
    if any(r.stage == "o2o-online" for r in results):
        paths["online"] = out_dir / "online.csv"
        with open(paths["online"], "w", newline="") as f:
            w = csv.writer(f)
            keys = ["before", "before_std", "after", "after_std", "change", "change_std"]
            w.writerow(["group", "task", "agent", "seeds", "runs", *keys, "seed_scores"])
            for r in online_rows(results):
                pairs = ";".join(f"{s}:{_csv_num(b)}>{_csv_num(a)}" for s, (b, a) in r["seed_scores"].items())
                w.writerow(
                    [r["group"], r["task"] or "all", r["agent"], r["seeds"], r["runs"]]
                    + [_csv_num(r[k]) for k in keys]
                    + [pairs]
                )
    results = [r for r in results if not r.stage]
    paths |= {
        "families": out_dir / "results.csv",
        "tasks": out_dir / "tasks.csv",
        "runs": out_dir / "runs.csv",
    }
    with open(paths["families"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["family", "label", "agent", "tasks", "tasks_in_family", "seeds", "mean", "std", "paper",
             "difference", "seed_scores", "incomplete_seeds"]
        )  # fmt: skip
        for r in family_rows(results):
            w.writerow(
                [r["family"], r["label"], r["agent"], r["tasks"], r["tasks_in_family"], r["seeds"],
                 _csv_num(r["mean"]), _csv_num(r["std"]), _csv_num(r["paper"], UNKNOWN),
                 _csv_num(r["difference"], UNKNOWN if r["paper"] is None else ""),
                 ";".join(f"{s}:{_csv_num(v)}" for s, v in r["seed_scores"].items()),
                 ";".join(map(str, r["incomplete_seeds"]))]
            )  # fmt: skip
    with open(paths["tasks"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "family", "agent", "seeds", "runs", "mean", "std", "seed_scores"])
        for r in task_rows(results):
            w.writerow(
                [r["task"], r["family"], r["agent"], r["seeds"], r["runs"], _csv_num(r["mean"]), _csv_num(r["std"]),
                 ";".join(f"{s}:{_csv_num(v)}" for s, v in r["seed_scores"].items())]
            )  # fmt: skip
    with open(paths["runs"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "family", "agent", "seed", "state", "score", "score_steps", "missing_score_steps",
                    "error", "run_dir"])  # fmt: skip
        for r in sorted(results, key=lambda r: (r.task, r.agent, r.seed)):
            w.writerow(
                [r.task, r.family, r.agent, r.seed, r.state, _csv_num(r.score),
                 ";".join(map(str, r.score_steps)), ";".join(map(str, r.missing_score_steps)), r.error or "",
                 str(r.run_dir)]
            )  # fmt: skip
    return paths


def write_report(
    path: str | Path, out_dir: str | Path | None = None, *, plots: bool = True
) -> dict[str, Path]:
    """results.md, results.csv (families), tasks.csv, runs.csv and curves/<task>.png in ``out_dir``
    (default ``<path>/report``). Returns the paths written."""
    path = Path(path)
    out = Path(out_dir) if out_dir is not None else path / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = collect_runs(path)
    sweep_file = path / "sweep.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.is_file() else None
    written: dict[str, Path] = {}
    curves: dict[str, str] = {}
    if plots:
        from fisher_decorator.sweep.plots import plot_task_curves

        for task, png in plot_task_curves([r for r in results if not r.stage], out / "curves").items():
            curves[task] = str(png.relative_to(out))
            written[f"curve:{task}"] = png
    written.update(write_csvs(results, out))
    md = out / "results.md"
    md.write_text(markdown(results, sweep, curves))
    written["markdown"] = md
    return written
