"""Figures: learning curves of runs (seeds shaded) and the toy-bandit picture.

Both read only run directories (config.json, train.csv, eval.csv, checkpoint.pt), so they work on
finished, running and resumed runs alike. matplotlib is in the ``[logging]`` extra.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from fisher_decorator.logger import read_csv

DEFAULT_EVAL_METRICS = ("evaluation/success", "evaluation/episode.return")
DEFAULT_TRAIN_METRICS = ("critic/critic_loss", "actor/q", "actor/distill_loss", "actor/alpha_value")


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install 'fisher-decorator[logging]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_train_config(run: str | Path) -> dict:
    """The ``train`` block of a run's config.json; a damaged file is named in the error."""
    path = Path(run) / "config.json"
    try:
        return json.loads(path.read_text())["train"]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON, truncated or damaged ({exc})") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a run's config.json (no 'train' entry)") from None


def find_runs(paths) -> list[Path]:
    """Run directories among ``paths`` and below them (a run directory holds config.json)."""
    runs = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            runs.append(p)
        elif p.is_dir():
            runs.extend(sorted(q.parent for q in p.rglob("config.json")))
    if not runs:
        raise FileNotFoundError(f"no run directories (with config.json) in {', '.join(map(str, paths))}")
    return runs


def _series(rows: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[metric]) for r in rows if metric in r and "step" in r]
    if not pts:
        return np.array([]), np.array([])
    s, v = zip(*pts)
    return np.asarray(s), np.asarray(v, dtype=float)


MARKER_MAX_POINTS = 40  # curves with at most this many logged points draw a marker at each


def smooth_curve(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` logged points (fewer at the start); 1: unchanged."""
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    i = np.arange(1, values.size + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def plot_learning_curves(
    paths, out: str | Path, *, metrics: list[str] | None = None, smooth: int = 1
) -> Path:
    """One panel per metric, one line per (task, agent): mean over seeds, min-max shaded.

    Every logged point gets a marker when a curve has few of them (a run with one row shows a point);
    ``smooth > 1`` draws the trailing moving average over that many points, the raw mean faint behind it.
    """
    if int(smooth) < 1:
        raise ValueError(f"--smooth {smooth}: the window must be >= 1 logged points")
    plt = _pyplot()
    runs = find_runs(paths)
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for run in runs:
        cfg = run_train_config(run)
        groups[(cfg["task"], cfg["agent"])].append(run)
    if metrics is None:
        metrics = [*DEFAULT_EVAL_METRICS, *DEFAULT_TRAIN_METRICS]
    tables = {}
    for run in runs:
        rows = []
        for name in ("eval.csv", "train.csv"):
            if (run / name).is_file():
                rows.append(read_csv(run / name))
        tables[run] = rows
    present = [m for m in metrics if any(_series(r, m)[0].size for rows in tables.values() for r in rows)]
    if not present:
        raise ValueError(f"none of the metrics {metrics} appear in the logs of {len(runs)} run(s)")
    ncol = min(3, len(present))
    nrow = -(-len(present) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.4 * nrow), squeeze=False)
    for ax, metric in zip(axes.flat, present):
        for (task, agent), members in sorted(groups.items()):
            curves = []
            for run in members:
                for rows in tables[run]:
                    s, v = _series(rows, metric)
                    if s.size:
                        curves.append((s, v))
            if not curves:
                continue
            common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
            if not common:
                continue
            vals = np.stack([v[np.searchsorted(s, common)] for s, v in curves])
            label = f"{agent} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            if len(groups) > 1 and len({t for t, _ in groups}) > 1:
                label = f"{task}: {label}"
            mean = vals.mean(0)
            marker = "o" if len(common) <= MARKER_MAX_POINTS else None
            if smooth > 1:
                (raw,) = ax.plot(common, mean, alpha=0.25, lw=0.8, marker=marker, ms=2.5)
                (line,) = ax.plot(common, smooth_curve(mean, smooth), label=label, color=raw.get_color())
            else:
                (line,) = ax.plot(common, mean, label=label, marker=marker, ms=3)
            if len(curves) > 1:
                ax.fill_between(common, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def toy_samples(agent, n: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Base actions euler(s, z) and refined actions clip(a_b + r(s, a_b)) of a toy-bandit agent."""
    import torch

    from fisher_decorator.envs import toy_bandit

    g = torch.Generator(device=agent.device).manual_seed(seed)
    obs = torch.as_tensor(toy_bandit.observation(n), device=agent.device, dtype=agent.dtype)
    noise = torch.randn(n, agent.action_dim, generator=g, device=agent.device, dtype=agent.dtype)
    with torch.no_grad():
        base = agent.flow_actions(obs, noise)
        refined = agent.policy_actions(obs, noise)
    return {"base": base.cpu().numpy(), "refined": refined.cpu().numpy()}


def _evaluation_at(run: str | Path, step: int) -> dict | None:
    """The row of the run's eval.csv at ``step`` with the toy task's return and support, if any."""
    path = Path(run) / "eval.csv"
    if not path.is_file():
        return None
    for row in read_csv(path):
        if row.get("step") == step and {"evaluation/episode.return", "evaluation/in_support"} <= set(row):
            return row
    return None


def plot_toy_bandit(run_dirs: dict[str, str | Path], out: str | Path, *, n: int = 1000) -> Path:
    """Behaviour data, each agent's flow samples and refined actions, the support and the reward direction."""
    plt = _pyplot()
    from matplotlib.patches import Ellipse

    from fisher_decorator.envs import toy_bandit as tb
    from fisher_decorator.trainer import load_agent

    data = tb.make_dataset(n, seed=12345)["actions"]
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(5.2 * len(run_dirs), 5), squeeze=False)
    for ax, (name, run) in zip(axes.flat, run_dirs.items()):
        agent, _, step = load_agent(run)
        evaluation = _evaluation_at(run, step)
        s = toy_samples(agent, n)
        st = tb.action_stats(s["refined"])
        move = (s["refined"] - s["base"]).mean(0) / tb.BEHAVIOUR_STD
        ax.scatter(data[:, 0], data[:, 1], s=4, c="0.6", alpha=0.5, label="behaviour data")
        ax.scatter(s["base"][:, 0], s["base"][:, 1], s=4, c="tab:blue", alpha=0.5, label="flow samples a_b")
        ax.scatter(
            s["refined"][:, 0], s["refined"][:, 1], s=4, c="tab:red", alpha=0.6, label=f"{name}: a_b + r"
        )
        for i in range(0, n, max(1, n // 40)):
            ax.annotate(
                "",
                s["refined"][i],
                s["base"][i],
                arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.5, alpha=0.6),
            )
        w, h = 2 * tb.SUPPORT_RADIUS * tb.BEHAVIOUR_STD
        ax.add_patch(
            Ellipse(tb.BEHAVIOUR_MEAN, w, h, fill=False, ls="--", color="k", label="data support (3 std)")
        )
        ax.annotate(
            "reward 1 + a_0 + a_1", (0.62, -0.2), (0.47, -0.35), arrowprops=dict(arrowstyle="->", color="k"), fontsize=8,
            ha="center", va="top",
        )  # fmt: skip
        ax.set_xlim(-1, 1)
        ax.set_ylim(-0.4, 0.4)
        ax.set_xlabel("a_0 (wide axis)")
        ax.set_ylabel("a_1 (narrow axis)")
        title = (
            f"{name}, step {step}\nr moves {move[0]:+.2f} std (wide axis), {move[1]:+.2f} std (narrow axis)\n"
            f"refined actions inside the data: {st['in_support']:.0%}, mean reward {st['return']:.3f}"
        )
        if evaluation is not None:  # the run's own number for this step, as eval.csv has it
            title += (
                f"\neval.csv, step {step}: mean reward {evaluation['evaluation/episode.return']:.3f}, "
                f"inside the data {evaluation['evaluation/in_support']:.0%}"
            )
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
