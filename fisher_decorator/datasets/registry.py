"""The datasets this package knows: OGBench's official recipes (``data_gen_scripts/commands.sh``), D4RL AntMaze and Adroit.

A recipe is data, not code: the generator reads the episode count, length, noise levels and oracle parameters from
here, so ``fidec data generate`` follows the official recipe unless a flag overrides a field (and the manifest then
says so). Datasets whose official recipe needs trained expert policies (ant, humanoid, antsoccer) are listed too,
with ``regenerable=False``: for those the loader reads the official files and says what to download.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from fisher_decorator.datasets.errors import UnknownDatasetError

OGBENCH_URL = "https://rail.eecs.berkeley.edu/datasets/ogbench"
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/ant_maze_v2"
D4RL_ADROIT_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/hand_dapg_v1"
"""D4RL's ``infos.DATASET_URLS`` for ``<env>-<human|cloned|expert>-v1`` (d4rl/infos.py, 'Adroit v1 envs' loop)."""


@dataclass(frozen=True)
class Recipe:
    """How one OGBench dataset is produced (the flags of its line in OGBench's ``commands.sh``)."""

    dataset: str
    """Dataset name, e.g. ``cube-single-play-v0``; the files are ``<dataset>.npz`` and ``<dataset>-val.npz``."""
    env_name: str
    """Goal-conditioned environment the data are collected in, e.g. ``cube-single-v0``."""
    family: str
    """``manipspace`` (cube/scene/puzzle), ``pointmaze``, ``antmaze``, ``humanoidmaze`` or ``antsoccer``."""
    dataset_type: str
    """``play``/``noisy`` (manipulation) or ``navigate``/``stitch``/``explore`` (locomotion)."""
    num_episodes: int
    """Training episodes; the validation split has ``num_episodes // 10`` more, generated after them."""
    max_episode_steps: int
    """Rows per episode in the file (the last row is the final observation; it yields no transition)."""
    ob_dim: int
    action_dim: int
    noise: float = 0.1
    """Plan-oracle noise scale (play), maximum Gaussian action noise (noisy), or action noise std (pointmaze)."""
    noise_smoothing: float = 0.5
    """Gaussian smoothing (in steps) of the plan noise (play)."""
    min_norm: float = 0.4
    """Minimum action norm of the Markov oracles (noisy)."""
    p_random_action: float = 0.0
    """Probability of replacing the oracle's action by a uniformly random one."""
    regenerable: bool = True
    """False when the official recipe needs expert policies that are not available offline."""

    @property
    def num_val_episodes(self) -> int:
        return self.num_episodes // 10

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.dataset}.npz", f"{self.dataset}-val.npz"

    @property
    def is_visual(self) -> bool:
        """Pixel observations (uint8 frames, memory-mapped on load: fisher_decorator.datasets.visual)."""
        return self.dataset.startswith("visual-")

    @property
    def has_button_states(self) -> bool:
        return self.env_name.startswith(("scene", "puzzle"))

    def parameters(self) -> dict:
        """The recipe as a JSON-able dict (for manifests and plan hashes)."""
        return dataclasses.asdict(self)


def _manip(dataset: str, env_name: str, episodes: int, ob_dim: int, p_random_noisy: float) -> Recipe:
    kind = dataset.rsplit("-", 2)[-2]
    return Recipe(
        dataset=dataset,
        env_name=env_name,
        family="manipspace",
        dataset_type=kind,
        num_episodes=episodes,
        max_episode_steps=1001,
        ob_dim=ob_dim,
        action_dim=5,
        p_random_action=p_random_noisy if kind == "noisy" else 0.0,
    )


def _build_ogbench() -> dict[str, Recipe]:
    recipes: list[Recipe] = []
    # Manipulation: scripted oracles shipped in ogbench.manipspace.oracles -> regenerable offline.
    for size, episodes, ob_dim in (
        ("single", 1000, 28),
        ("double", 1000, 37),
        ("triple", 3000, 46),
        ("quadruple", 5000, 55),
    ):
        for kind in ("play", "noisy"):
            recipes.append(_manip(f"cube-{size}-{kind}-v0", f"cube-{size}-v0", episodes, ob_dim, 0.1))
    for kind in ("play", "noisy"):
        recipes.append(_manip(f"scene-{kind}-v0", "scene-v0", 1000, 40, 0.1))
    for size, episodes, ob_dim in (
        ("3x3", 1000, 55),
        ("4x4", 1000, 83),
        ("4x5", 3000, 99),
        ("4x6", 5000, 115),
    ):
        for kind in ("play", "noisy"):
            recipes.append(_manip(f"puzzle-{size}-{kind}-v0", f"puzzle-{size}-v0", episodes, ob_dim, 0.2))

    # Pixel variants (the visual-* manipulation lines of commands.sh): the same oracles and flags in the visual-*
    # environment, whose observations are rendered 64x64x3 uint8 frames (ob_dim counts their values).
    recipes += [
        dataclasses.replace(
            r, dataset=f"visual-{r.dataset}", env_name=f"visual-{r.env_name}", ob_dim=64 * 64 * 3
        )
        for r in list(recipes)
        if r.family == "manipspace"
    ]

    # Pointmaze: the "expert" is the maze's own oracle subgoal direction -> regenerable offline.
    for maze in ("medium", "large", "giant", "teleport"):
        nav_episodes, nav_steps = (500, 2001) if maze == "giant" else (1000, 1001)
        for kind, episodes, steps in (("navigate", nav_episodes, nav_steps), ("stitch", 5000, 201)):
            recipes.append(
                Recipe(
                    f"pointmaze-{maze}-{kind}-v0",
                    f"pointmaze-{maze}-v0",
                    "pointmaze",
                    kind,
                    episodes,
                    steps,
                    ob_dim=2,
                    action_dim=2,
                    noise=0.5,
                )
            )

    # Ant / humanoid / antsoccer: need OGBench's trained SAC experts -> official files only.
    def external(dataset, env_name, family, kind, episodes, steps, ob_dim, action_dim):
        return Recipe(
            dataset, env_name, family, kind, episodes, steps, ob_dim, action_dim, noise=0.2, regenerable=False
        )

    for maze in ("medium", "large", "giant", "teleport"):
        nav_episodes, nav_steps = (500, 2001) if maze == "giant" else (1000, 1001)
        recipes.append(
            external(
                f"antmaze-{maze}-navigate-v0",
                f"antmaze-{maze}-v0",
                "antmaze",
                "navigate",
                nav_episodes,
                nav_steps,
                29,
                8,
            )
        )
        recipes.append(
            external(f"antmaze-{maze}-stitch-v0", f"antmaze-{maze}-v0", "antmaze", "stitch", 5000, 201, 29, 8)
        )
        if maze != "giant":
            recipes.append(
                external(
                    f"antmaze-{maze}-explore-v0",
                    f"antmaze-{maze}-v0",
                    "antmaze",
                    "explore",
                    10000,
                    501,
                    29,
                    8,
                )
            )
    for maze in ("medium", "large", "giant"):
        nav_steps = 4001 if maze == "giant" else 2001
        recipes.append(
            external(
                f"humanoidmaze-{maze}-navigate-v0",
                f"humanoidmaze-{maze}-v0",
                "humanoidmaze",
                "navigate",
                1000,
                nav_steps,
                69,
                21,
            )
        )
        recipes.append(
            external(
                f"humanoidmaze-{maze}-stitch-v0",
                f"humanoidmaze-{maze}-v0",
                "humanoidmaze",
                "stitch",
                10000 if maze == "giant" else 5000,
                401,
                69,
                21,
            )
        )
    for arena, nav_episodes, stitch_episodes, stitch_steps in (
        ("arena", 1000, 5000, 201),
        ("medium", 4000, 8000, 501),
    ):
        env_name = f"antsoccer-{arena}-v0"
        recipes.append(
            external(
                f"antsoccer-{arena}-navigate-v0", env_name, "antsoccer", "navigate", nav_episodes, 1001, 42, 8
            )
        )
        recipes.append(
            external(
                f"antsoccer-{arena}-stitch-v0",
                env_name,
                "antsoccer",
                "stitch",
                stitch_episodes,
                stitch_steps,
                42,
                8,
            )
        )
    return {r.dataset: r for r in recipes}


OGBENCH_RECIPES: dict[str, Recipe] = _build_ogbench()

# The datasets of the paper's table plus pointmaze (issue 6): what the tests and the benchmark cover.
PAPER_REGENERABLE = (
    "cube-single-play-v0",
    "cube-double-play-v0",
    "scene-play-v0",
    "puzzle-3x3-play-v0",
    "puzzle-4x4-play-v0",
    "pointmaze-medium-navigate-v0",
)


@dataclass(frozen=True)
class D4RLAntMaze:
    """A D4RL AntMaze v2 dataset: read from its official HDF5 file (no ``d4rl`` package needed)."""

    name: str
    official_file: str
    """Basename of the file at ``D4RL_URL`` (``d4rl/infos.py``); ``<name>.hdf5`` is accepted too."""
    max_episode_steps: int
    """Only used for files without a ``timeouts`` key (D4RL's fallback episode counter)."""
    ob_dim: int = 29
    action_dim: int = 8
    family: str = "d4rl-antmaze"
    ref_min_score: float = 0.0
    """D4RL's ``REF_MIN_SCORE`` / ``REF_MAX_SCORE`` (d4rl/infos.py): 0 and 1, i.e. the score is the success rate."""
    ref_max_score: float = 1.0

    @property
    def candidate_files(self) -> tuple[str, ...]:
        return f"{self.name}.hdf5", self.official_file

    @property
    def url(self) -> str:
        return f"{D4RL_URL}/{self.official_file}"


@dataclass(frozen=True)
class D4RLAdroit:
    """A D4RL Adroit v1 dataset (``hand_dapg_v1``): read from its official HDF5 file (no ``d4rl`` package)."""

    name: str
    """``<env>-<human|cloned|expert>-v1``; the official file is ``<name>.hdf5``."""
    env: str
    """``pen``, ``door``, ``hammer`` or ``relocate``."""
    max_episode_steps: int
    """D4RL's ``MAX_STEPS`` (d4rl/hand_manipulation_suite/__init__.py): pen 100, the others 200."""
    ob_dim: int
    action_dim: int
    ref_min_score: float
    """D4RL's ``REF_MIN_SCORE`` (a random policy's return) and ``REF_MAX_SCORE`` (an expert's), d4rl/infos.py."""
    ref_max_score: float
    family: str = "d4rl-adroit"

    @property
    def official_file(self) -> str:
        return f"{self.name}.hdf5"

    @property
    def candidate_files(self) -> tuple[str, ...]:
        return (self.official_file,)

    @property
    def url(self) -> str:
        return f"{D4RL_ADROIT_URL}/{self.official_file}"


def _build_d4rl() -> dict[str, D4RLAntMaze]:
    mazes = {
        "umaze": ("u-maze", 700, (("", "False_multigoal_False"), ("-diverse", "True_multigoal_True"))),
        "medium": (
            "big-maze",
            1000,
            (("-play", "True_multigoal_False"), ("-diverse", "True_multigoal_True")),
        ),
        "large": (
            "hardest-maze",
            1000,
            (("-play", "True_multigoal_False"), ("-diverse", "True_multigoal_True")),
        ),
    }
    out = {}
    for maze, (file_maze, steps, variants) in mazes.items():
        for suffix, flags in variants:
            name = f"antmaze-{maze}{suffix}-v2"
            out[name] = D4RLAntMaze(
                name, f"Ant_maze_{file_maze}_noisy_multistart_{flags}_sparse_fixed.hdf5", steps
            )
    return out


# D4RL's Adroit v1 settings: episode limits from hand_manipulation_suite/__init__.py (MAX_STEPS), observation and
# action sizes of the env classes (pen_v0.py ... relocate_v0.py: get_obs and the Adroit actuators), reference returns
# from infos.py (REF_MIN_SCORE / REF_MAX_SCORE of '<env>-human-v0', which the v1 datasets reuse).
ADROIT_ENVS: dict[str, tuple[int, int, int, float, float]] = {
    # env: (max_episode_steps, ob_dim, action_dim, ref_min_score, ref_max_score)
    "pen": (100, 45, 24, 96.262799, 3076.8331017826877),
    "door": (200, 39, 28, -56.512833, 2880.5693087298737),
    "hammer": (200, 46, 26, -274.856578, 12794.134825156867),
    "relocate": (200, 39, 30, -6.425911, 4233.877797728884),
}


def _build_adroit() -> dict[str, D4RLAdroit]:
    return {
        f"{env}-{kind}-v1": D4RLAdroit(f"{env}-{kind}-v1", env, *ADROIT_ENVS[env])
        for env in ADROIT_ENVS
        for kind in ("human", "cloned", "expert")
    }


D4RLDataset = D4RLAntMaze | D4RLAdroit
D4RL_ANTMAZE: dict[str, D4RLAntMaze] = _build_d4rl()
D4RL_ADROIT: dict[str, D4RLAdroit] = _build_adroit()
D4RL_DATASETS: dict[str, D4RLDataset] = {**D4RL_ANTMAZE, **D4RL_ADROIT}
"""Every D4RL dataset: the six AntMaze v2 datasets, then the twelve Adroit v1 datasets."""


def get_recipe(dataset: str) -> Recipe:
    """The official recipe of an OGBench dataset (``cube-single-play-v0``); unknown names list the choices."""
    try:
        return OGBENCH_RECIPES[dataset]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown OGBench dataset {dataset!r}; known datasets: {', '.join(sorted(OGBENCH_RECIPES))}"
        ) from None


def regenerable_datasets() -> list[str]:
    return sorted(name for name, r in OGBENCH_RECIPES.items() if r.regenerable)


_TASK_RE = re.compile(r"^(?P<dataset_base>.+)-singletask(?:-task(?P<task>\d+))?-(?P<version>v\d+)$")


@dataclass(frozen=True)
class OGBenchTask:
    """A parsed single-task name such as ``cube-single-play-singletask-task2-v0``."""

    task: str
    dataset: str
    """``cube-single-play-v0``: the files' name."""
    env_name: str
    """``cube-single-singletask-task2-v0``: the environment that computes this task's rewards."""
    task_id: int | None
    """1-5, or None for OGBench's default task (``...-singletask-v0``)."""
    recipe: Recipe


def parse_ogbench_task(task: str) -> OGBenchTask:
    """Split an OGBench single-task name into its dataset and its environment, as ``ogbench`` does."""
    m = _TASK_RE.match(task)
    if m is None:
        raise UnknownDatasetError(_unknown_task_message(task))
    base, version = m["dataset_base"], m["version"]
    dataset = f"{base}-{version}"
    if dataset not in OGBENCH_RECIPES:
        raise UnknownDatasetError(_unknown_task_message(task))
    recipe = OGBENCH_RECIPES[dataset]
    # ogbench drops the dataset-type word (the one before 'singletask') to get the environment name.
    env_base = base.rsplit("-", 1)[0]
    task_part = f"-task{m['task']}" if m["task"] else ""
    env_name = f"{env_base}-singletask{task_part}-{version}"
    task_id = int(m["task"]) if m["task"] else None
    if task_id is not None and not 1 <= task_id <= 5:
        raise UnknownDatasetError(
            f"{task!r}: OGBench single-task environments have tasks 1-5, got task{task_id}"
        )
    return OGBenchTask(task, dataset, env_name, task_id, recipe)


def _unknown_task_message(task: str) -> str:
    if task in OGBENCH_RECIPES:
        base, version = task.rsplit("-", 1)
        return (
            f"unknown task {task!r}: that is a dataset name; its tasks are '{base}-singletask-{version}' (OGBench's "
            f"default task) and '{base}-singletask-task1-{version}' ... 'task5'. Valid choices: "
            + ", ".join(sorted(OGBENCH_RECIPES))
            + " as single tasks, or a D4RL dataset: "
            + ", ".join(sorted(D4RL_DATASETS))
        )
    return (
        f"unknown task {task!r}. Valid choices: an OGBench single-task name "
        f"'<dataset minus -v0>-singletask[-task1..5]-v0' for one of the datasets "
        f"[{', '.join(sorted(OGBENCH_RECIPES))}] (e.g. 'cube-single-play-singletask-task2-v0'), "
        f"or a D4RL dataset [{', '.join(D4RL_DATASETS)}]"
    )


def valid_task_names() -> list[str]:
    """Every task name ``load_task_datasets`` accepts."""
    names = []
    for dataset in sorted(OGBENCH_RECIPES):
        base, version = dataset.rsplit("-", 1)
        names.append(f"{base}-singletask-{version}")
        names.extend(f"{base}-singletask-task{i}-{version}" for i in range(1, 6))
    return names + sorted(D4RL_DATASETS)
