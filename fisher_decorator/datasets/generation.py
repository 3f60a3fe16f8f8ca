"""Regenerate OGBench datasets offline with OGBench's own scripted oracles.

The episode loop follows OGBench's ``data_gen_scripts/generate_manipspace.py`` and ``generate_locomaze.py``
(pointmaze branch) step for step: the same environments in ``data_collection`` mode, the same oracles and
parameters, the same order of random draws, the same per-episode cube-stacking probabilities, the same health check
for ``scene``, and the same file layout. What differs is the plumbing around it:

- **Seeds.** Every episode ``i`` draws its three random streams (NumPy's global RNG, used by the oracles and the
  maze; the environment's ``np_random``; the action space's) from ``SeedSequence(seed, spawn_key=(i,))``. An
  episode's content therefore depends only on ``(seed, i)``, not on which worker ran it or how many workers there
  were; the official scripts never seed at all.
- **Shards.** Episodes are grouped in shards of ``shard_episodes`` that worker processes generate independently
  and write atomically under ``<dataset_dir>/.fidec-shards/<dataset>-<plan hash>/``. A restarted run reuses every
  finished shard whose checksum still matches.
- **Files.** Shards are merged in episode order into ``<dataset>.npz`` (the first ``train_episodes`` episodes) and
  ``<dataset>-val.npz`` (the next ``val_episodes``), byte-reproducible, written atomically, and described by
  ``<dataset>.manifest.json``. While files are being replaced the manifest says ``"complete": false``, so a run
  killed between the two renames is detected on load.
"""

# OGBench's oracles and mazes draw from NumPy's legacy global RNG; reproducing the recipe means drawing from it too.
# ruff: noqa: NPY002

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import pathlib
import platform
import queue as queue_mod
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from fisher_decorator.datasets.errors import DatasetError
from fisher_decorator.datasets.fileio import sha256_file, write_json, write_npz
from fisher_decorator.datasets.registry import Recipe, get_recipe
from fisher_decorator.datasets.validation import read_npz, validate_ogbench_arrays
from fisher_decorator.datasets.visual import RowChunks, before_rendering, open_npz, write_npz_stream

GENERATOR_VERSION = 1
"""Bump when a change to this module changes the generated data (it enters the plan hash)."""
MANIFEST_FORMAT = "fisher_decorator.datasets.manifest/1"
SEED_RULE = (
    "episode i uses np.random.SeedSequence(entropy=seed, spawn_key=(i,)).generate_state(3) = "
    "[numpy global RNG seed (oracles, maze sampling), env.np_random seed (gymnasium.utils.seeding.np_random), "
    "action_space seed]"
)
SHARD_DIR = ".fidec-shards"


def manifest_path(dataset_dir: str | os.PathLike, dataset: str) -> pathlib.Path:
    return pathlib.Path(dataset_dir) / f"{dataset}.manifest.json"


def software_versions() -> dict[str, str]:
    from importlib import metadata

    import fisher_decorator

    versions = {"fisher_decorator": fisher_decorator.__version__, "python": platform.python_version()}
    for pkg in ("ogbench", "mujoco", "gymnasium", "numpy", "scipy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "missing"
    return versions


def episode_seeds(seed: int, episode: int) -> tuple[int, int, int]:
    """The (numpy-global, env, action-space) seeds of episode ``episode``; see :data:`SEED_RULE`."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(episode,)).generate_state(3)
    return int(state[0]), int(state[1]), int(state[2])


@dataclass(frozen=True)
class GenerationPlan:
    """What one ``fidec data generate`` run produces; its hash names the shard directory."""

    recipe: Recipe
    train_episodes: int
    val_episodes: int
    max_episode_steps: int
    seed: int = 0
    shard_episodes: int = 10

    @property
    def total_episodes(self) -> int:
        return self.train_episodes + self.val_episodes

    @property
    def follows_official_recipe(self) -> bool:
        r = self.recipe
        return (self.train_episodes, self.val_episodes, self.max_episode_steps) == (
            r.num_episodes,
            r.num_val_episodes,
            r.max_episode_steps,
        )

    def shards(self) -> list[tuple[int, int, int]]:
        """``(index, first_episode, stop_episode)`` for every shard."""
        n, k = self.total_episodes, self.shard_episodes
        return [(i, s, min(s + k, n)) for i, s in enumerate(range(0, n, k))]

    def describe(self) -> dict:
        return {
            "recipe": self.recipe.parameters(),
            "train_episodes": self.train_episodes,
            "val_episodes": self.val_episodes,
            "max_episode_steps": self.max_episode_steps,
            "seed": self.seed,
            "shard_episodes": self.shard_episodes,
            "generator_version": GENERATOR_VERSION,
        }

    def plan_hash(self) -> str:
        """Hash of everything that determines the data, including the ogbench and mujoco versions (not the shard
        size: episodes are seeded individually, so the data do not depend on it)."""
        versions = software_versions()
        key = {**self.describe(), "ogbench": versions["ogbench"], "mujoco": versions["mujoco"]}
        del key["shard_episodes"]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def make_plan(
    dataset: str,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    max_episode_steps: int | None = None,
    seed: int = 0,
    shard_episodes: int = 10,
) -> GenerationPlan:
    """A plan that follows the official recipe of ``dataset`` except where an argument overrides it.

    ``episodes``: training episodes (official: 1000 for the paper's datasets); ``val_episodes`` defaults to
    ``episodes // 10`` as in OGBench (at least 1); ``max_episode_steps``: rows per episode (official: 1001).
    """
    recipe = get_recipe(dataset)
    if not recipe.regenerable:
        raise DatasetError(
            f"{dataset} cannot be regenerated offline: its official recipe rolls out OGBench's trained "
            f"{recipe.family} expert policies. Download {recipe.files[0]} and {recipe.files[1]} instead."
        )
    train = recipe.num_episodes if episodes is None else int(episodes)
    val = max(1, train // 10) if val_episodes is None else int(val_episodes)
    steps = recipe.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
    if train < 1 or val < 1:
        raise ValueError(
            f"episodes and val_episodes must be >= 1 (OGBench always reads a -val file), got {train} and {val}"
        )
    if steps < 2:
        raise ValueError(f"max_episode_steps must be >= 2 (an episode needs a next observation), got {steps}")
    if shard_episodes < 1:
        raise ValueError(f"shard_episodes must be >= 1, got {shard_episodes}")
    return GenerationPlan(recipe, train, val, steps, int(seed), int(shard_episodes))


# ------------------------------------------------------------------------------------------------------------
# Episode rollouts (run inside worker processes)


def _stack_probability(env_name: str) -> float:
    """Per-episode probability of stacking the target cube (generate_manipspace.py); uses the global RNG."""
    if "single" in env_name:
        return 0.0
    if "double" in env_name:
        return np.random.uniform(0.0, 0.25)
    if "triple" in env_name:
        return np.random.uniform(0.05, 0.35)
    if "quadruple" in env_name:
        return np.random.uniform(0.1, 0.5)
    if "octuple" in env_name:
        return np.random.uniform(0.0, 0.35)
    return 0.5


def _scene_is_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stays visible (not too far right, and left only inside the drawer)."""
    xyz = qpos[:, 14:17]
    if (xyz[:, 1] >= 0.29).any():
        return False
    too_far_left = (xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))
    return not too_far_left.any()


class EpisodeCollector:
    """One environment plus its oracles; ``collect(seeds)`` rolls out one episode.

    Returns ``(arrays, stats)``: the rows of the episode in OGBench's file layout and a few counters
    (``success_events``: times the current oracle target became achieved; ``tasks``: targets set;
    ``retries``: scene episodes redrawn by the health check).
    """

    def __init__(self, recipe: Recipe, max_episode_steps: int):
        import gymnasium
        import ogbench  # noqa: F401  (registers the environments)

        self.recipe = recipe
        self.max_episode_steps = max_episode_steps
        if recipe.is_visual:
            before_rendering()
        kwargs = dict(terminate_at_goal=False, max_episode_steps=max_episode_steps, disable_env_checker=True)
        if recipe.family == "manipspace":
            kwargs["mode"] = "data_collection"
        self.env = gymnasium.make(recipe.env_name, **kwargs)
        self.unwrapped = self.env.unwrapped
        if recipe.family == "manipspace":
            self.oracles = self._make_manipspace_oracles()
            self._rollout = self._manipspace_episode
        elif recipe.family == "pointmaze":
            self._all_cells, self._vertex_cells = self._maze_cells()
            self._rollout = self._pointmaze_episode
        else:  # pragma: no cover - make_plan refuses these
            raise DatasetError(f"{recipe.dataset}: no offline generator for family {recipe.family!r}")

    # -- seeding ---------------------------------------------------------------------------------------------

    def _seed(self, seeds: tuple[int, int, int]) -> None:
        from gymnasium.utils import seeding

        global_seed, env_seed, space_seed = seeds
        np.random.seed(global_seed)
        self.unwrapped.np_random, _ = seeding.np_random(env_seed)
        self.unwrapped.action_space.seed(space_seed)

    def collect(self, seeds: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        self._seed(seeds)
        return self._rollout()

    # -- manipulation ----------------------------------------------------------------------------------------

    def _make_manipspace_oracles(self) -> dict:
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        r, env = self.recipe, self.env
        markov = r.dataset_type == "noisy"
        if markov:
            m = dict(env=env, min_norm=r.min_norm)
            table = {
                "cube": lambda: CubeMarkovOracle(**m, **({"max_step": 100} if "scene" in r.env_name else {})),
                "button": lambda: ButtonMarkovOracle(
                    **m, **({"gripper_always_closed": True} if "puzzle" in r.env_name else {})
                ),
                "drawer": lambda: DrawerMarkovOracle(**m),
                "window": lambda: WindowMarkovOracle(**m),
            }
        else:
            p = dict(env=env, noise=r.noise, noise_smoothing=r.noise_smoothing)
            table = {
                "cube": lambda: CubePlanOracle(**p),
                "button": lambda: ButtonPlanOracle(
                    **p, **({"gripper_always_closed": True} if "puzzle" in r.env_name else {})
                ),
                "drawer": lambda: DrawerPlanOracle(**p),
                "window": lambda: WindowPlanOracle(**p),
            }
        if "cube" in r.env_name:
            kinds = ("cube",)
        elif "scene" in r.env_name:
            kinds = ("cube", "button", "drawer", "window")
        elif "puzzle" in r.env_name:
            kinds = ("button",)
        else:  # pragma: no cover
            raise DatasetError(f"{r.dataset}: unknown manipulation environment {r.env_name}")
        return {k: table[k]() for k in kinds}

    def _manipspace_episode(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        r, env, u = self.recipe, self.env, self.unwrapped
        markov = r.dataset_type == "noisy"
        has_buttons = hasattr(u, "_cur_button_states")
        retries = 0
        while True:  # scene: redraw an episode that fails the health check, as OGBench does
            ob, info = env.reset()
            p_stack = _stack_probability(r.env_name)
            xi = np.random.uniform(0, r.noise) if markov else 0.0
            noise_scale = np.array([xi, xi, xi, xi * 3, xi * 10])
            agent = self.oracles[info["privileged/target_task"]]
            agent.reset(ob, info)
            rows: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
            if has_buttons:
                rows["button_states"] = []
            success_events, tasks, was_success, done = 0, 1, False, False
            while not done:
                if np.random.rand() < r.p_random_action:
                    action = env.action_space.sample()
                else:
                    action = np.array(agent.select_action(ob, info))
                    if markov:
                        action = action + np.random.normal(0, noise_scale, action.shape)
                action = np.clip(action, -1, 1)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                success = bool(info["success"])
                success_events += success and not was_success
                was_success = success
                if agent.done:  # the oracle finished its plan: give it a new target
                    agent_ob, agent_info = u.set_new_target(p_stack=p_stack)
                    agent = self.oracles[agent_info["privileged/target_task"]]
                    agent.reset(agent_ob, agent_info)
                    tasks += 1
                    was_success = False
                rows["observations"].append(ob)
                rows["actions"].append(action)
                rows["terminals"].append(done)
                rows["qpos"].append(info["prev_qpos"])
                rows["qvel"].append(info["prev_qvel"])
                if has_buttons:
                    rows["button_states"].append(info["prev_button_states"])
                ob = next_ob
            arrays = _to_arrays(rows)
            if "scene" in r.env_name and not _scene_is_healthy(arrays["qpos"]):
                retries += 1
                continue
            return arrays, {"success_events": int(success_events), "tasks": tasks, "retries": retries}

    # -- pointmaze -------------------------------------------------------------------------------------------

    def _maze_cells(self) -> tuple[list, list]:
        """Free cells, and free cells that are not plain corridor cells (the goal candidates)."""
        maze = self.unwrapped.maze_map
        all_cells, vertex_cells = [], []
        for i in range(maze.shape[0]):
            for j in range(maze.shape[1]):
                if maze[i, j] != 0:
                    continue
                all_cells.append((i, j))
                vertical = (
                    maze[i - 1, j] == 0
                    and maze[i + 1, j] == 0
                    and maze[i, j - 1] == 1
                    and maze[i, j + 1] == 1
                )
                horizontal = (
                    maze[i, j - 1] == 0
                    and maze[i, j + 1] == 0
                    and maze[i - 1, j] == 1
                    and maze[i + 1, j] == 1
                )
                if not (vertical or horizontal):
                    vertex_cells.append((i, j))
        return all_cells, vertex_cells

    def _cells_at_distance(self, start: tuple[int, int], steps: int) -> list:
        """Free cells exactly ``steps`` moves from ``start`` (BFS), the goal candidates of 'stitch'."""
        maze = self.unwrapped.maze_map
        dist = np.full(maze.shape, -1)
        dist[start] = 0
        frontier, found = [start], []
        while frontier:
            i, j = frontier.pop(0)
            for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
                ni, nj = i + di, j + dj
                if (
                    0 <= ni < maze.shape[0]
                    and 0 <= nj < maze.shape[1]
                    and maze[ni, nj] == 0
                    and dist[ni, nj] == -1
                ):
                    dist[ni, nj] = dist[i, j] + 1
                    frontier.append((ni, nj))
                    if dist[ni, nj] == steps:
                        found.append((ni, nj))
        return found

    def _pointmaze_episode(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        r, env, u = self.recipe, self.env, self.unwrapped
        init_ij = self._all_cells[np.random.randint(len(self._all_cells))]
        if r.dataset_type == "navigate":
            goal_ij = self._vertex_cells[np.random.randint(len(self._vertex_cells))]
        elif r.dataset_type == "stitch":
            nearby = self._cells_at_distance(init_ij, 4)
            goal_ij = nearby[np.random.randint(len(nearby))] if nearby else init_ij
        else:  # pragma: no cover - the registry has no other pointmaze type
            raise DatasetError(f"{r.dataset}: unsupported pointmaze dataset type {r.dataset_type!r}")
        ob, _ = env.reset(options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij)))
        rows: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
        success_events, tasks, was_success, done = 0, 1, False, False
        while not done:
            # The point "expert" moves along the oracle subgoal direction (OGBench: actor_fn(ob) = ob[-2:]).
            xy = u.get_xy()
            subgoal_xy, _ = u.get_oracle_subgoal(xy, u.cur_goal_xy)
            direction = subgoal_xy - xy
            direction = direction / (np.linalg.norm(direction) + 1e-6)
            action = np.clip(direction + np.random.normal(0, r.noise, direction.shape), -1, 1)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            success = bool(info["success"])
            success_events += success and not was_success
            was_success = success
            if success and r.dataset_type == "navigate":  # a new goal as soon as the current one is reached
                u.set_goal(self._vertex_cells[np.random.randint(len(self._vertex_cells))])
                tasks += 1
                was_success = False
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["terminals"].append(done)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            ob = next_ob
        return _to_arrays(rows), {"success_events": int(success_events), "tasks": tasks, "retries": 0}


def _to_arrays(rows: dict[str, list]) -> dict[str, np.ndarray]:
    """Rows -> arrays with OGBench's dtypes (float32, bool terminals, int64 button states)."""
    dtypes = {"terminals": bool, "button_states": np.int64}
    if rows.get("observations") and np.asarray(rows["observations"][0]).dtype == np.uint8:
        dtypes["observations"] = np.uint8  # rendered frames stay uint8, as OGBench's script keeps them
    return {k: np.array(v, dtype=dtypes.get(k, np.float32)) for k, v in rows.items()}


# ------------------------------------------------------------------------------------------------------------
# Shards

_WORKER: dict = {}


def _init_worker(progress_queue, parent_pid: int | None = None) -> None:
    # A worker dies with the process that started it (SIGKILL of `fidec data generate` must not leave workers
    # finishing shards, nor, through them, the resource tracker): PR_SET_PDEATHSIG, and a check for a parent
    # that was already gone before the call.
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    # MuJoCo's optional GLFW import warns about a missing display in every worker; we never render.
    warnings.filterwarnings("ignore", module="glfw")
    _WORKER["queue"] = progress_queue


def _collector(recipe: Recipe, max_episode_steps: int) -> EpisodeCollector:
    key = (recipe, max_episode_steps)
    if _WORKER.get("key") != key:
        _WORKER["collector"] = EpisodeCollector(recipe, max_episode_steps)
        _WORKER["key"] = key
    return _WORKER["collector"]


def _shard_paths(shard_dir: pathlib.Path, index: int) -> tuple[pathlib.Path, pathlib.Path]:
    return shard_dir / f"shard-{index:05d}.npz", shard_dir / f"shard-{index:05d}.json"


def run_shard(
    plan: GenerationPlan,
    shard: tuple[int, int, int],
    shard_dir: str | os.PathLike,
    on_episode: Callable[[], None] | None = None,
) -> dict:
    """Generate the episodes of one shard and write them (arrays, then a JSON record with their checksum)."""
    index, first, stop = shard
    shard_dir = pathlib.Path(shard_dir)
    if on_episode is None and "queue" in _WORKER:
        q = _WORKER["queue"]
        on_episode = lambda: q.put(1)
    collector = _collector(plan.recipe, plan.max_episode_steps)
    start_time = time.perf_counter()
    parts, stats, seeds = [], [], []
    for episode in range(first, stop):
        episode_seed = episode_seeds(plan.seed, episode)
        arrays, episode_stats = collector.collect(episode_seed)
        parts.append(arrays)
        stats.append({"episode": episode, "rows": int(arrays["terminals"].shape[0]), **episode_stats})
        seeds.append(list(episode_seed))
        if on_episode is not None:
            on_episode()
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    npz_path, json_path = _shard_paths(shard_dir, index)
    write_npz(npz_path, merged, compress=False)
    record = {
        "index": index,
        "episodes": [first, stop],
        "seeds": seeds,
        "episode_stats": stats,
        "seconds": time.perf_counter() - start_time,
        "pid": os.getpid(),
        "sha256": sha256_file(npz_path),
    }
    write_json(json_path, record)
    return record


def _finished_shard(
    shard_dir: pathlib.Path, shard: tuple[int, int, int], plan: GenerationPlan
) -> dict | None:
    """The record of a shard finished by an earlier run, if its file is intact."""
    npz_path, json_path = _shard_paths(shard_dir, shard[0])
    if not (npz_path.exists() and json_path.exists()):
        return None
    try:
        record = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("episodes") != [shard[1], shard[2]] or record.get("sha256") != sha256_file(npz_path):
        return None
    return record


# ------------------------------------------------------------------------------------------------------------
# Orchestration


def _split_stats(records: list[dict], train_episodes: int) -> dict:
    stats = [s for r in records for s in r["episode_stats"]]
    out = {}
    for split, chosen in (("train", stats[:train_episodes]), ("val", stats[train_episodes:])):
        events = np.array([s["success_events"] for s in chosen], dtype=np.int64)
        out[split] = {
            "episodes": len(chosen),
            "success_events": int(events.sum()),
            "episodes_with_success": int((events > 0).sum()),
            "tasks": int(sum(s["tasks"] for s in chosen)),
            "unhealthy_retries": int(sum(s["retries"] for s in chosen)),
        }
    return out


def generate(
    dataset: str,
    dataset_dir: str | os.PathLike,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    max_episode_steps: int | None = None,
    seed: int = 0,
    workers: int = 1,
    shard_episodes: int = 10,
    force: bool = False,
    keep_shards: bool = False,
    progress: bool = True,
) -> dict:
    """Generate ``<dataset>.npz`` and ``<dataset>-val.npz`` in ``dataset_dir``; return the manifest.

    Follows the official recipe unless ``episodes``/``val_episodes``/``max_episode_steps`` override it.
    Existing files are kept (and this returns their manifest) when they were generated with the same plan;
    other existing files, e.g. official downloads, are only replaced with ``force=True``.
    """
    plan = make_plan(
        dataset,
        episodes=episodes,
        val_episodes=val_episodes,
        max_episode_steps=max_episode_steps,
        seed=seed,
        shard_episodes=shard_episodes,
    )
    if plan.recipe.is_visual:  # before any worker (forked from here) imports MuJoCo
        before_rendering()
    dataset_dir = pathlib.Path(dataset_dir).expanduser()
    dataset_dir.mkdir(parents=True, exist_ok=True)
    train_path, val_path = (dataset_dir / f for f in plan.recipe.files)
    mpath = manifest_path(dataset_dir, dataset)
    plan_hash = plan.plan_hash()

    existing = _existing_manifest(mpath)
    if (train_path.exists() or val_path.exists()) and not force:
        if existing and existing.get("complete") and existing.get("plan_hash") == plan_hash:
            if train_path.exists() and val_path.exists():
                if progress:
                    print(
                        f"{dataset}: up to date in {dataset_dir} (same plan {plan_hash[:12]}); nothing to do"
                    )
                return existing
        what = "official or externally provided" if existing is None else "generated with a different plan"
        raise DatasetError(
            f"{train_path.name} already exists in {dataset_dir} ({what}); pass --force (force=True) to replace it"
        )

    shard_dir = dataset_dir / SHARD_DIR / f"{dataset}-{plan_hash[:12]}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json(shard_dir / "plan.json", {**plan.describe(), "plan_hash": plan_hash})
    shards = plan.shards()
    records: dict[int, dict] = {}
    for shard in shards:
        record = _finished_shard(shard_dir, shard, plan)
        if record is not None:
            records[shard[0]] = record
    pending = [s for s in shards if s[0] not in records]
    done_episodes = sum(r["episodes"][1] - r["episodes"][0] for r in records.values())
    workers = max(1, min(int(workers), len(pending))) if pending else 1

    start = time.perf_counter()
    bar = tqdm(
        total=plan.total_episodes,
        initial=done_episodes,
        unit="ep",
        desc=dataset,
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    if records and progress:
        bar.write(f"{dataset}: resuming, {len(records)} of {len(shards)} shards already done in {shard_dir}")
    try:
        if workers == 1:
            for shard in pending:
                records[shard[0]] = run_shard(plan, shard, shard_dir, on_episode=lambda: bar.update(1))
        else:
            records.update(_run_pool(plan, pending, shard_dir, workers, bar))
    finally:
        bar.close()
    generation_seconds = time.perf_counter() - start
    ordered = [records[i] for i, _, _ in shards]

    manifest = _merge_and_write(
        plan,
        plan_hash,
        ordered,
        shard_dir,
        dataset_dir,
        workers,
        generation_seconds,
        new_episodes=plan.total_episodes - done_episodes,
    )
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
        try:
            (dataset_dir / SHARD_DIR).rmdir()
        except OSError:
            pass
    return manifest


def _run_pool(plan, pending, shard_dir, workers, bar) -> dict[int, dict]:
    """Run shards on ``workers`` spawned processes; episodes are reported through a queue as they finish."""
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked MuJoCo/OpenMP state
    progress_queue = ctx.Queue()
    out: dict[int, dict] = {}
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())
    )
    try:
        futures = {pool.submit(run_shard, plan, shard, shard_dir): shard for shard in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = cf.wait(remaining, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            _drain(progress_queue, bar)
            for fut in finished:
                shard = futures[fut]
                try:
                    record = fut.result()
                except Exception as exc:
                    raise RuntimeError(
                        f"{plan.recipe.dataset}: shard {shard[0]} (episodes {shard[1]}-{shard[2] - 1}) "
                        f"failed: {exc}"
                    ) from exc
                out[shard[0]] = record
        _drain(progress_queue, bar)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def _drain(progress_queue, bar) -> None:
    n = 0
    while True:
        try:
            n += progress_queue.get_nowait()
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)


def _existing_manifest(path: pathlib.Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"complete": False}


def _merge_and_write(
    plan, plan_hash, records, shard_dir, dataset_dir, workers, generation_seconds, new_episodes
):
    recipe = plan.recipe
    # Pixel datasets: the shards' frames stay memory maps, streamed into a stored (memory-mappable) .npz.
    visual = recipe.is_visual
    parts = [(open_npz if visual else read_npz)(_shard_paths(shard_dir, r["index"])[0]) for r in records]
    lengths = [s["rows"] for r in records for s in r["episode_stats"]]
    train_rows = int(sum(lengths[: plan.train_episodes]))
    merged = {
        k: RowChunks([p[k] for p in parts])
        if visual and k == "observations"
        else np.concatenate([p[k] for p in parts])
        for k in parts[0]
    }
    del parts
    splits = {
        "train": {k: v[:train_rows] for k, v in merged.items()},
        "val": {k: v[train_rows:] for k, v in merged.items()},
    }
    train_path, val_path = (dataset_dir / f for f in recipe.files)
    paths = {"train": train_path, "val": val_path}
    for split, arrays in splits.items():
        validate_ogbench_arrays(
            arrays, f"{recipe.dataset} ({split}, before writing)", recipe, episode_rows=plan.max_episode_steps
        )

    mpath = manifest_path(dataset_dir, recipe.dataset)
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "dataset": recipe.dataset,
        "source": "regenerated",
        "generator": "fisher_decorator.datasets.generation with OGBench's scripted oracles",
        "generator_version": GENERATOR_VERSION,
        "follows_official_recipe": plan.follows_official_recipe,
        "recipe": recipe.parameters(),
        "train_episodes": plan.train_episodes,
        "val_episodes": plan.val_episodes,
        "max_episode_steps": plan.max_episode_steps,
        "seed": plan.seed,
        "seed_rule": SEED_RULE,
        "shard_episodes": plan.shard_episodes,
        "plan_hash": plan_hash,
        "versions": software_versions(),
    }
    write_json(mpath, manifest)  # "complete": false while the data files are replaced
    t0 = time.perf_counter()
    files = {}
    for split in ("val", "train"):
        arrays = splits[split]
        if visual:
            write_npz_stream(paths[split], arrays)
        else:
            write_npz(paths[split], arrays, compress=True)
        rows = int(arrays["terminals"].shape[0])
        episodes = int(arrays["terminals"].sum())
        files[split] = {
            "name": paths[split].name,
            "sha256": sha256_file(paths[split]),
            "bytes": paths[split].stat().st_size,
            "rows": rows,
            "episodes": episodes,
            "transitions": rows - episodes,
        }
    write_seconds = time.perf_counter() - t0
    from fisher_decorator.info import cpu_name

    manifest.update(
        complete=True,
        files={"train": files["train"], "val": files["val"]},
        stats=_split_stats(records, plan.train_episodes),
        shards=[
            {
                "index": r["index"],
                "episodes": r["episodes"],
                "sha256": r["sha256"],
                "seconds": round(r["seconds"], 3),
                "seeds": r["seeds"],
            }
            for r in records
        ],
        generation={
            "workers": workers,
            "new_episodes": new_episodes,
            "wall_seconds": round(generation_seconds, 3),
            "write_seconds": round(write_seconds, 3),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        },
    )
    write_json(mpath, manifest)
    return manifest
