"""Training fidelity: whole runs of ours (`fidec train`) beside the authors' JAX `main.py`, same data and settings.

    python -m benchmarks.fidelity --task cube-single-play-singletask-task2-v0 --dataset-dir D \\
        --agents fidec --seeds 0-2 --steps 20000 --jax-python /work/jaxvenv/bin/python \\
        --authors-repo /work/authors --out /work/fid/runs [--set actor_hidden_dims=128,128,128,128 ...]
    python -m benchmarks.fidelity ... --dry-run     # print the translated settings and both commands, run nothing
    python -m benchmarks.fidelity ... --tiny        # a few hundred steps, 2x32 networks: checks the pipeline
    python -m benchmarks.fidelity ... --report-only # rebuild rows, figure and table from finished runs
    python -m benchmarks.fidelity ... --init-seeds 100  # also compare both sides' untrained agents over 100 seeds

Both sides get the task's preset (ours: fisher_decorator/presets/tasks.json; theirs: the same values passed
as --agent.* flags), the same --set overrides, and read the same OGBench-format files (theirs through
OGBENCH_DATA_DIR). Every agent field that also exists in the authors' get_config() is passed to their
main.py when it differs from their default, and their flags.json is read back and checked against ours.
Fields of ours that change the update but have no counterpart there must be at the authors' behaviour
(else the comparison is refused). Seeds run alternately (seed 0: ours then theirs, seed 1: theirs then
ours, ...), so drift of a shared machine hits both sides alike. A run with a `done.json` is not run again:
rerun the same command after an interruption and only the missing runs are trained.

The authors' repository has no FQL agent: `--agents fql` trains ours only (no comparison).

Outputs: results/fidelity_<task>_<machine>.json (every logged metric of every run, wall-clock, the
translation), results/fidelity_<task>_<agent>_<machine>.png (mean and spread over seeds against steps,
ours and theirs, every metric both log) and the table between the fidelity markers of
benchmarks/README.md. A metric at a checkpoint is, per seed, the mean of its log rows in the window
(checkpoint - window, checkpoint] (evaluation metrics: the evaluation at the checkpoint); the difference of
the two sides' means is "within spread" when Welch's two-sided t-test at 5% does not reject equality
(|diff| <= t_0.975(df) * sqrt(s_o^2/n_o + s_t^2/n_t)).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

from fisher_decorator.config import parse_seeds

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
README = pathlib.Path(__file__).resolve().parent / "README.md"
ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"
SIDES = ("ours", "theirs")
THEIR_AGENTS = {"fidec": "agents/fidec.py", "deflow": "agents/deflow.py"}  # their repo has no FQL
# Train-config fields and the main.py flag each one becomes.
TRAIN_FLAGS = {
    "steps": "offline_steps",
    "log_interval": "log_interval",
    "eval_interval": "eval_interval",
    "eval_episodes": "eval_episodes",
}
# Fields of ours with no counterpart in their code that change what is computed: the value that is
# their behaviour (hard-coded there). Anything else would make the comparison meaningless.
MUST_MATCH = {
    "num_critics": 2,
    "adam_eps": 1e-8,
    "fisher_score": "velocity",
    "fisher_estimator": "score",
    "action_clip_eps": 1e-5,
    "eval_sampling": "default",
    "eval_at_start": True,
    "validation": True,
    "dtype": "float32",
}
# Implementation choices of ours (same mathematics, different kernels or bookkeeping).
OURS_IMPL = {"fused_gelu", "fused_adam", "compile", "compile_mode", "rollout_backend", "rollout_dtype",
             "penalty_backend", "device", "threads", "prefetch", "tensorboard", "progress", "save_interval",
             "dataset_dir", "video_episodes", "video_frame_skip", "score_steps", "eval_num_samples",
             "eval_refine_steps", "task", "agent", "seed", "batch_size"}  # fmt: skip
TINY = {"actor_hidden_dims": "32,32", "value_hidden_dims": "32,32", "log_interval": "50",
        "eval_interval": "100", "eval_episodes": "2"}  # fmt: skip
TINY_STEPS = 200
THEIR_CONFIG = (
    "import json, sys; sys.path.insert(0, sys.argv[1]);"
    "import importlib; m = importlib.import_module(sys.argv[2]);"
    "print(json.dumps(m.get_config().to_dict(), default=str))"
)
# Their agents at initialization: the metrics of total_loss on one batch for seeds 0..n-1.
THEIR_INIT = """
import json, sys, importlib, numpy as np
sys.path.insert(0, sys.argv[1])
m = importlib.import_module(sys.argv[2])
Agent = getattr(m, sys.argv[3])
cfg = m.get_config()
for k, v in json.loads(sys.argv[4]).items():
    cfg[k] = tuple(v) if isinstance(v, list) else v
batch = dict(np.load(sys.argv[5]))
out = []
for s in range(int(sys.argv[6])):
    agent = Agent.create(s, batch["observations"][:1], batch["actions"][:1], cfg)
    _, info = agent.total_loss(batch, grad_params=None)
    out.append({k: float(v) for k, v in info.items()})
print(json.dumps(out))
"""
THEIR_CLASSES = {"fidec": "FiDecAgent", "deflow": "DeFlowAgent"}


# ---------------------------------------------------------------------- statistics (pure, tested)
def t_cdf(x: float, df: float) -> float:
    """Student t CDF by Simpson integration of the density from 0 (df > 0; exact to ~1e-10 here)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    n = 2000
    h = x / n
    f = lambda u: math.exp(logc - (df + 1) / 2 * math.log1p(u * u / df))  # noqa: E731
    s = f(0.0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf` for p in (0.5, 1), by bisection."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def compare(ours: list[float], theirs: list[float]) -> dict:
    """Both sides' mean and seed std, their difference and whether it is within seed spread (Welch, 5%)."""
    mo, so = mean_std(ours)
    mt, st = mean_std(theirs)
    no, nt = len(ours), len(theirs)
    diff = mo - mt
    vo, vt = so * so / no, st * st / nt
    se = math.sqrt(vo + vt)
    if se > 0 and no > 1 and nt > 1:
        df = (vo + vt) ** 2 / (vo * vo / (no - 1) + vt * vt / (nt - 1))
        tcrit = t_quantile(0.975, df)
    else:
        df, tcrit = float("nan"), float("nan")
    within = abs(diff) <= tcrit * se if se > 0 else diff == 0.0
    return {"ours_mean": mo, "ours_std": so, "ours_n": no, "theirs_mean": mt, "theirs_std": st,
            "theirs_n": nt, "diff": diff, "se": se, "df": df, "t_crit": tcrit, "within": bool(within)}  # fmt: skip


def value_at(series: list[list[float]], step: int, window: int) -> float | None:
    """Mean of the values logged at steps in (step - window, step]; window 0: the value at ``step``."""
    if window <= 0:
        vals = [v for s, v in series if s == step]
    else:
        vals = [v for s, v in series if step - window < s <= step]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def checkpoint_table(runs: list[dict], agent: str, checkpoints: list[int], window: int) -> list[dict]:
    """One entry per (metric both sides log, checkpoint): :func:`compare` of the per-seed values.

    ``runs``: rows with case {agent, side, seed} and "train"/"eval" dicts of metric -> [[step, value]].
    Evaluation metrics are taken at the checkpoint itself, training metrics over ``window``.
    """
    mine = [r for r in runs if r["case"]["agent"] == agent]
    out = []
    for kind in ("train", "eval"):
        per_side = {s: [r[kind] for r in mine if r["case"]["side"] == s] for s in SIDES}
        if not per_side["ours"] or not per_side["theirs"]:
            continue
        keys = set.intersection(*(set(m) for s in SIDES for m in per_side[s]))
        for metric in sorted(keys):
            for step in checkpoints:
                w = 0 if kind == "eval" else window
                vals = {s: [value_at(m[metric], step, w) for m in per_side[s]] for s in SIDES}
                vals = {s: [v for v in vs if v is not None] for s, vs in vals.items()}
                if not vals["ours"] or not vals["theirs"]:
                    continue
                out.append({"metric": metric, "step": step, **compare(vals["ours"], vals["theirs"])})
    return out


def fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


# The metrics of the README table (the list); the JSON has every shared metric.
KEY_METRICS = (
    "evaluation/success",
    "evaluation/episode.return",
    "critic/critic_loss",
    "critic/q_mean",
    "actor/q",
    "actor/bc_flow_loss",
    "actor/distill_loss",
    "actor/alpha_value",
    "actor/fisher_quad_mean",
    "actor/mse",
    "validation/critic/critic_loss",
    "validation/actor/bc_flow_loss",
    "validation/actor/distill_loss",
    "validation/actor/fisher_quad_mean",
)


INIT_EXTRA = ("actor/refinement_mse", "critic/q_min", "critic/q_max")


def outside_summary(table: list[dict]) -> str:
    """How many (metric, checkpoint) pairs are within spread, and which are not."""
    out = [f"`{r['metric']}`@{r['step']}" for r in table if not r["within"]]
    metrics = len({r["metric"] for r in table})
    head = f"{len(table) - len(out)} of {len(table)} (metric, checkpoint) pairs of the {metrics} shared metrics are within spread"
    return head + (f"; outside: {', '.join(out)}." if out else ".")


def markdown_table(table: list[dict]) -> str:
    lines = [
        "| metric | step | ours mean ± std | theirs mean ± std | diff | t·SE | within spread |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in table:
        bound = r["t_crit"] * r["se"] if r["se"] > 0 else 0.0
        lines.append(
            f"| {r['metric']} | {r['step']} | {fmt(r['ours_mean'])} ± {fmt(r['ours_std'])} (n={r['ours_n']}) | "
            f"{fmt(r['theirs_mean'])} ± {fmt(r['theirs_std'])} (n={r['theirs_n']}) | {fmt(r['diff'])} | "
            f"{fmt(bound)} | {'yes' if r['within'] else '**no**'} |"
        )
    return "\n".join(lines)


def wall_table(runs: list[dict]) -> str:
    lines = ["| agent | side | seed | wall s | steps | load avg (1 min) before → after |",
             "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["case"]["agent"], r["case"]["side"], r["case"]["seed"])):
        c = r["case"]
        la = f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f}"
        lines.append(
            f"| {c['agent']} | {c['side']} | {c['seed']} | {r['wall_s']:.0f} | {r['steps_done']} | {la} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- logs
def read_csv(path: pathlib.Path) -> dict[str, list[list[float]]]:
    """metric -> [[step, value], ...] of a train.csv / eval.csv (ours or theirs; 'training/' prefix dropped)."""
    series: dict[str, list[list[float]]] = {}
    if not path.is_file():
        return series
    with path.open() as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for k, v in row.items():
                if k == "step" or k is None or v in ("", None):
                    continue
                try:
                    x = float(v)
                except ValueError:
                    continue
                series.setdefault(k.removeprefix("training/"), []).append([step, x])
    return series


def find_logs(side: str, run_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    if side == "ours":
        return run_dir / "train.csv", run_dir / "eval.csv"
    found = sorted(run_dir.rglob("train.csv"))  # <save_dir>/<project>/<group>/<exp name>/train.csv
    if not found:
        return run_dir / "train.csv", run_dir / "eval.csv"
    return found[-1], found[-1].parent / "eval.csv"


SKIP_METRICS = ("time/",)


def load_run(side: str, run_dir: pathlib.Path) -> dict:
    train_csv, eval_csv = find_logs(side, run_dir)
    train = {k: v for k, v in read_csv(train_csv).items() if not k.startswith(SKIP_METRICS)}
    evals = {k: v for k, v in read_csv(eval_csv).items() if not k.startswith(SKIP_METRICS)}
    return {"train": train, "eval": evals}


# ---------------------------------------------------------------------- translation
def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def their_config(jax_python: str, repo: str, agent: str) -> dict:
    module = THEIR_AGENTS[agent].removesuffix(".py").replace("/", ".")
    proc = subprocess.run([jax_python, "-c", THEIR_CONFIG, repo, module], capture_output=True, text=True,
                          check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"reading the authors' get_config failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flag_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def translate(train: dict, agent_cfg: dict, theirs: dict) -> tuple[list[str], dict]:
    """Their main.py flags for our resolved configs, and a record of what maps to what.

    ``train``/``agent_cfg``: our resolved configs as dicts; ``theirs``: their get_config() as a dict.
    """
    bad = {k: (v, MUST_MATCH[k]) for k, v in {**train, **agent_cfg}.items() if k in MUST_MATCH and not same(v, MUST_MATCH[k])}  # fmt: skip
    if bad:
        raise SystemExit(f"no counterpart in the authors' code for these settings (ours, theirs): {bad}")
    flags = [f"--{TRAIN_FLAGS[k]}={train[k]}" for k in TRAIN_FLAGS]
    flags.append(f"--save_interval={train['steps'] + 1}")  # their checkpoints are not needed
    shared, passed = {}, {}
    values = {**agent_cfg, "batch_size": train["batch_size"]}
    for k, v in values.items():
        if k in theirs:
            shared[k] = v
            if not same(v, theirs[k]):
                passed[k] = v
                flags.append(f"--agent.{k}={flag_value(v)}")
    record = {
        "shared_fields": shared,
        "passed_as_flags": passed,
        "ours_only": {k: v for k, v in {**train, **agent_cfg}.items() if k not in theirs and k not in TRAIN_FLAGS},
        "theirs_only": {k: v for k, v in theirs.items() if k not in values},
        "train_flags": {TRAIN_FLAGS[k]: train[k] for k in TRAIN_FLAGS},
    }  # fmt: skip
    return flags, record


def check_their_flags(run_dir: pathlib.Path, shared: dict) -> dict:
    """Fields of their flags.json (what main.py ran with) that differ from ours: must be empty."""
    found = sorted(run_dir.rglob("flags.json"))
    if not found:
        return {"missing": "flags.json"}
    agent = json.loads(found[-1].read_text())["agent"]
    return {k: (v, agent.get(k)) for k, v in shared.items() if not same(v, agent.get(k))}


# ---------------------------------------------------------------------- runs
def our_command(args, agent: str, seed: int, run_dir: pathlib.Path, sets: dict) -> list[str]:
    cmd = [sys.executable, "-m", "fisher_decorator", "train", "--agent", agent, "--task", args.task,
           "--seed", str(seed), "--steps", str(args.steps), "--dataset-dir", args.dataset_dir,
           "--out", str(run_dir), "--no-progress", "--save-interval", str(args.steps)]  # fmt: skip
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + ["--set", "tensorboard=false"]


def their_command(args, agent: str, seed: int, run_dir: pathlib.Path, flags: list[str]) -> list[str]:
    repo = os.path.abspath(args.authors_repo)
    return [args.jax_python, "-m", "benchmarks.authors_main", "--authors-repo", repo, "--",
            f"--env_name={args.task}", f"--agent={os.path.join(repo, THEIR_AGENTS[agent])}",
            f"--seed={seed}", f"--save_dir={run_dir}", "--run_group=fidelity", *flags]  # fmt: skip


def run_one(cmd: list[str], run_dir: pathlib.Path, env: dict, label: str) -> dict:
    """Run ``cmd`` unless ``run_dir/done.json`` exists; a partial run directory is started afresh."""
    done = run_dir / "done.json"
    if done.is_file():
        print(f"[skip] {label}: done", flush=True)
        return json.loads(done.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    print(f"[run ] {label}: {' '.join(cmd)}", flush=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with (run_dir / "stdout.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (run_dir / "stdout.log").read_text()[-3000:]
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")
    info = {"wall_s": wall, "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg()),
            "command": cmd, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    done.write_text(json.dumps(info, indent=1))
    print(f"[done] {label}: {wall:.0f} s", flush=True)
    return info


def last_step(run: dict) -> int:
    return max((int(s) for series in run["train"].values() for s, _ in series), default=0)


def init_check(args, agent: str, agent_cfg, passed: dict, n: int, workdir: pathlib.Path) -> list[dict]:
    """Both sides' untrained agents, seeds 0..n-1, on one batch of the training data: compare() per metric.

    Separates a difference of initialisation (weights, their scale) from one of training dynamics.
    """
    import numpy as np
    import torch

    from fisher_decorator.agents import make_agent
    from fisher_decorator.envs import make_task

    train = make_task(args.task, dataset_dir=args.dataset_dir).load_data().train
    idx = np.random.default_rng(12345).integers(0, len(train["observations"]), 256)
    keys = ("observations", "actions", "rewards", "masks", "next_observations")
    batch = {k: np.asarray(train[k])[idx].astype(np.float32) for k in keys}
    batch["actions"] = np.clip(batch["actions"], -1 + 1e-5, 1 - 1e-5)  # both sides' action_clip_eps
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / "init_batch.npz", **batch)
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    ours = []
    for seed in range(n):
        a = make_agent(
            agent,
            batch["observations"].shape[1],
            batch["actions"].shape[1],
            agent_cfg,
            seed=seed,
            device="cpu",
        )
        noise = a.sample_noise(256, generator=torch.Generator().manual_seed(10**6 + seed))
        with torch.no_grad():
            _, info = a.total_loss(tb, noise, with_metrics=True)
        ours.append({k: float(v) for k, v in info.items()})
    module = THEIR_AGENTS[agent].removesuffix(".py").replace("/", ".")
    cmd = [args.jax_python, "-c", THEIR_INIT, os.path.abspath(args.authors_repo), module, THEIR_CLASSES[agent],
           json.dumps(passed, default=list), str(workdir / "init_batch.npz"), str(n)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the authors' init check failed:\n{proc.stderr[-2000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    shared = sorted(set(ours[0]) & set(theirs[0]))
    return [{"metric": k, "step": 0, **compare([o[k] for o in ours], [t[k] for t in theirs])} for k in shared]


# ---------------------------------------------------------------------- figure and README
def plot(runs: list[dict], agent: str, title: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = [r for r in runs if r["case"]["agent"] == agent]
    metrics = []
    for kind in ("eval", "train"):
        sides = [[r[kind] for r in mine if r["case"]["side"] == s] for s in SIDES]
        if all(sides):
            keys = set.intersection(*(set(m) for ms in sides for m in ms))
            metrics += [(kind, k) for k in sorted(keys)]
    cols = 5
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    colors = {"ours": "tab:blue", "theirs": "tab:orange"}
    for ax, (kind, metric) in zip(axes.flat, metrics):
        for side in SIDES:
            series = [r[kind][metric] for r in mine if r["case"]["side"] == side]
            steps = sorted(set.intersection(*(set(int(s) for s, _ in ser) for ser in series)))
            if not steps:
                continue
            vals = np.array([[dict((int(s), v) for s, v in ser)[st] for st in steps] for ser in series])
            m = vals.mean(0)
            sd = vals.std(0, ddof=1) if len(series) > 1 else np.zeros_like(m)
            ax.plot(steps, m, color=colors[side], lw=1.2, label=f"{side} (n={len(series)})")
            ax.fill_between(steps, m - sd, m + sd, color=colors[side], alpha=0.25, lw=0)
        ax.set_title(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        if kind == "train" and metric.split("/")[-1] in ("critic_loss", "bc_flow_loss", "distill_loss", "fisher_quad_mean", "mse", "refinement_mse"):  # fmt: skip
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / rows / 2.5))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def replace_section(text: str, body: str) -> str:
    """``text`` with what lies between the fidelity markers replaced by ``body`` (appended if absent)."""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cube-single-play-singletask-task2-v0")
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--agents", default="fidec")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--steps", type=int, default=None, help="updates per run (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="on both sides")
    p.add_argument(
        "--jax-python", help="a Python with jax, flax, optax, distrax, ml_collections, ogbench, wandb"
    )
    p.add_argument("--authors-repo", help="checkout of github.com/ARC0127/Fisher-Decorator")
    p.add_argument("--out", default="runs/fidelity", help="run directories (heavy: keep out of the repo)")
    p.add_argument("--checkpoints", default=None, help="steps of the table (default: the last 3 evaluations)")
    p.add_argument(
        "--window", type=int, default=None, help="steps averaged per checkpoint (default: 1 eval interval)"
    )
    p.add_argument("--budget-note", default="", help="what was reduced, for the README section")
    p.add_argument("--tiny", action="store_true", help=f"{TINY_STEPS} steps, 2x32 networks: pipeline check")
    p.add_argument("--dry-run", action="store_true", help="print the translation and commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="no training: rows, figure, table from --out")
    p.add_argument("--no-readme", action="store_true", help="do not touch benchmarks/README.md")
    p.add_argument("--init-seeds", type=int, default=0, help="also compare the untrained agents over N seeds")
    p.add_argument("--tag", default="", help="suffix of the result file names (a second budget of one task)")
    args = p.parse_args(argv)

    from benchmarks.common import machine, machine_slug
    from fisher_decorator.config import to_dict
    from fisher_decorator.trainer import resolve_configs

    sets = {**(TINY if args.tiny else {}), **parse_sets(args.set)}
    if args.tiny and args.steps is None:
        args.steps = TINY_STEPS
    agents = args.agents.split(",")
    seeds = parse_seeds(args.seeds)
    out = pathlib.Path(args.out).resolve()
    compared = [a for a in agents if a in THEIR_AGENTS]
    if compared and not (args.jax_python and args.authors_repo) and not args.report_only:
        p.error("--jax-python and --authors-repo are needed to run the authors' side")

    plans = {}
    for agent in agents:
        flags = {"steps": args.steps, "dataset_dir": args.dataset_dir}
        train_cfg, agent_cfg, _ = resolve_configs(args.task, agent, flags=flags, overrides=sets)
        args.steps = train_cfg.steps
        train, acfg = to_dict(train_cfg), to_dict(agent_cfg)
        plan = {"train": train, "agent": acfg, "flags": None, "translation": None}
        if agent in THEIR_AGENTS and args.jax_python and args.authors_repo:
            plan["flags"], plan["translation"] = translate(train, acfg, their_config(args.jax_python, args.authors_repo, agent))  # fmt: skip
        plans[agent] = plan
    env_theirs = {**os.environ, "OGBENCH_DATA_DIR": os.path.abspath(args.dataset_dir), "WANDB_MODE": "disabled",
                  "WANDB_SILENT": "true", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}  # fmt: skip
    env_ours = dict(os.environ)

    jobs = []
    for i, seed in enumerate(seeds):
        for agent in agents:
            sides = SIDES if agent in THEIR_AGENTS else ("ours",)
            for side in sides if i % 2 == 0 else tuple(reversed(sides)):
                run_dir = out / args.task / agent / side / f"seed{seed}"
                if side == "ours":
                    cmd, env = our_command(args, agent, seed, run_dir, sets), env_ours
                else:
                    cmd, env = (
                        their_command(args, agent, seed, run_dir, plans[agent]["flags"] or []),
                        env_theirs,
                    )
                jobs.append((agent, side, seed, run_dir, cmd, env))

    if args.dry_run:
        for agent, plan in plans.items():
            print(f"== {agent}: translation\n{json.dumps(plan['translation'], indent=1, default=str)}")
        for agent, side, seed, _, cmd, _ in jobs:
            print(f"{agent} {side} seed {seed}: {' '.join(cmd)}")
        return 0
    if not args.report_only:
        for agent, side, seed, run_dir, cmd, env in jobs:
            run_one(cmd, run_dir, env, f"{agent} {side} seed {seed}")

    rows = []
    for agent, side, seed, run_dir, _cmd, _ in jobs:
        done = run_dir / "done.json"
        if not done.is_file():
            print(f"[miss] {agent} {side} seed {seed}: not finished, left out", flush=True)
            continue
        info = json.loads(done.read_text())
        run = load_run(side, run_dir)
        row = {"case": {"task": args.task, "agent": agent, "side": side, "seed": seed}, **info,
               "steps_done": last_step(run), **run}  # fmt: skip
        if side == "theirs" and plans[agent]["translation"] is not None:
            row["their_flags_mismatch"] = check_their_flags(
                run_dir, plans[agent]["translation"]["shared_fields"]
            )
            if row["their_flags_mismatch"]:
                raise SystemExit(f"their main.py ran with other settings: {row['their_flags_mismatch']}")
        rows.append(row)

    env = machine("cpu")
    slug = machine_slug(env)
    eval_every = plans[agents[0]]["train"]["eval_interval"]
    if args.checkpoints:
        checkpoints = [int(c) for c in args.checkpoints.split(",")]
    else:
        evals = [s for s in range(eval_every, args.steps + 1, eval_every)] if eval_every else [args.steps]
        checkpoints = evals[-3:]
    window = args.window if args.window is not None else (eval_every or args.steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tables = {a: checkpoint_table(rows, a, checkpoints, window) for a in compared}
    inits = {}
    if args.init_seeds and args.jax_python and args.authors_repo:
        for a in compared:
            train_cfg, agent_cfg, _ = resolve_configs(
                args.task, a, flags={"steps": args.steps}, overrides=sets
            )
            inits[a] = init_check(
                args,
                a,
                agent_cfg,
                plans[a]["translation"]["passed_as_flags"],
                args.init_seeds,
                out / "init" / a,
            )
    result = {
        "machine": env,
        "task": args.task,
        "dataset_dir": os.path.abspath(args.dataset_dir),
        "steps": args.steps,
        "seeds": seeds,
        "sets": sets,
        "checkpoints": checkpoints,
        "window": window,
        "plans": plans,
        "command": " ".join(["python -m benchmarks.fidelity", *sys.argv[1:]]) if argv is None else None,
        "table": tables,
        "init_check": inits,
        "rows": rows,
    }
    name = f"{args.task}_{args.tag}" if args.tag else args.task
    path = RESULTS / f"fidelity_{name}_{slug}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"rows written to {path}")
    figs = {}
    for agent in compared:
        if any(r["case"]["agent"] == agent for r in rows):
            fig = RESULTS / f"fidelity_{name}_{agent}_{slug}.png"
            plot(
                rows, agent, f"{agent} on {args.task}: ours vs the authors' JAX (mean ± std over seeds)", fig
            )
            figs[agent] = fig
            print(f"figure written to {fig}")
    body = [
        f"Task `{args.task}`, {args.steps} steps, seeds {args.seeds}, on {env['device_name']} "
        f"({os.cpu_count()} cores), report made at commit {env['commit']}, {env['date']}.",
        f"Overrides on both sides: `{' '.join(f'{k}={v}' for k, v in sets.items()) or 'none'}`. {args.budget_note}",
        f"Rows: `results/{path.name}`. Checkpoint values: per seed, the mean of the log rows in the last "
        f"{window} steps before the checkpoint (evaluation metrics: the evaluation at the checkpoint); "
        "within spread = Welch's two-sided t-test at 5% does not reject equal means.",
    ]
    for agent in compared:
        if agent in figs:
            body += ["", f"#### {agent}", "", f"![{agent} fidelity](results/{figs[agent].name})", ""]
            key = sorted((r for r in tables[agent] if r["metric"] in KEY_METRICS),
                         key=lambda r: (KEY_METRICS.index(r["metric"]), r["step"]))  # fmt: skip
            body += [markdown_table(key), "", outside_summary(tables[agent])]
            if agent in inits:
                body += ["", f"Untrained agents (step 0: `total_loss` metrics on one fixed batch of the training data, "
                         f"seeds 0-{args.init_seeds - 1} per side; weights drawn by each side's own initialisers):", "",
                         markdown_table([r for r in inits[agent] if r["metric"] in KEY_METRICS or r["metric"] in INIT_EXTRA]),
                         "", outside_summary(inits[agent])]  # fmt: skip
    body += ["", "Wall-clock per run (each side's whole `main.py` / `fidec train`, JIT/compile and evaluations "
             "included):", "", wall_table(rows)]  # fmt: skip
    text = "\n".join(body)
    if args.no_readme:
        print(text)
    else:
        README.write_text(replace_section(README.read_text(), text))
        print(f"table written to {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
