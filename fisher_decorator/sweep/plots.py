"""Learning curves of a sweep, one PNG per task: success (%) against updates, one line per agent (mean over
seeds), the seeds' range shaded, the score evaluations marked. Needs matplotlib (the ``[logging]`` extra)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from fisher_decorator.plotting import _pyplot

AGENT_COLORS = {"fidec": "tab:red", "deflow": "tab:blue", "fql": "tab:green"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_task_curves(results, out_dir: str | Path) -> dict[str, Path]:
    """``{task: png}`` for every task with at least one evaluation. ``results``: report.RunResult list."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.curve:
            by_task[r.task][r.agent].append(r)
    written = {}
    for task, per_agent in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        score_steps: set[int] = set()
        for agent, runs in sorted(per_agent.items()):
            series: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                score_steps.update(r.score_steps)
                for step, value in r.curve:
                    series[step].append(value)
            steps = np.array(sorted(series))
            vals = [series[s] for s in steps]
            mean = np.array([np.mean(v) for v in vals])
            color = AGENT_COLORS.get(agent)
            n = len(runs)
            (line,) = ax.plot(
                steps, mean, marker="o", ms=3, color=color, label=f"{agent} ({n} seed{'s' * (n > 1)})"
            )
            if n > 1:
                lo = np.array([min(v) for v in vals])
                hi = np.array([max(v) for v in vals])
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        for s in sorted(score_steps):
            ax.axvline(s, color="0.6", ls=":", lw=0.8)
        ax.set_title(f"{task}\nmean over seeds, shaded: min-max over seeds; dotted: score steps", fontsize=9)
        ax.set_xlabel("updates")
        ax.set_ylabel("success (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        path = out_dir / f"{_safe(task)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[task] = path
    return written
