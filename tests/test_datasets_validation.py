"""Validation and error messages, the D4RL AntMaze reader, and the ``fidec data`` command line.

Fast: synthetic arrays and small files only (one tiny generated dataset for the file-level checks).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fisher_decorator.cli import main as fidec
from fisher_decorator.datasets import (
    D4RL_DATASETS,
    DatasetError,
    DatasetNotFoundError,
    UnknownDatasetError,
    default_dataset_dir,
    get_recipe,
    load_task_datasets,
    valid_task_names,
    validate_transitions,
)
from fisher_decorator.datasets.d4rl import authors_antmaze_conventions, qlearning_transitions
from fisher_decorator.datasets.fileio import atomic_path, write_npz
from fisher_decorator.datasets.registry import parse_ogbench_task
from fisher_decorator.datasets.validation import read_npz, validate_ogbench_arrays
from fisher_decorator.datasets.verify import verify_directory

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _transitions(episode_lengths=(5, 3), ob_dim=4, action_dim=2, seed=0) -> dict[str, np.ndarray]:
    """A valid transition dict: episodes of consecutive observations, terminal at each episode's end."""
    rng = np.random.default_rng(seed)
    obs, next_obs, terminals = [], [], []
    for length in episode_lengths:
        states = rng.normal(size=(length + 1, ob_dim)).astype(np.float32)
        obs.append(states[:-1])
        next_obs.append(states[1:])
        terminals.append(np.r_[np.zeros(length - 1), 1.0])
    n = sum(episode_lengths)
    return {
        "observations": np.concatenate(obs),
        "actions": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "rewards": -np.ones(n, dtype=np.float32),
        "terminals": np.concatenate(terminals).astype(np.float32),
        "masks": np.ones(n, dtype=np.float32),
        "next_observations": np.concatenate(next_obs),
    }


def _raw_ogbench(episodes=2, rows=6, ob_dim=28, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = episodes * rows
    terminals = np.zeros(n, dtype=bool)
    terminals[rows - 1 :: rows] = True
    return {
        "observations": rng.normal(size=(n, ob_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 5)).astype(np.float32),
        "terminals": terminals,
        "qpos": rng.normal(size=(n, 21)).astype(np.float32),
        "qvel": rng.normal(size=(n, 20)).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------------------------
# validate_transitions


def test_valid_transitions_pass():
    validate_transitions(_transitions(), "toy")
    validate_transitions(_transitions((4, 4)), "toy", expected_episode_length=4)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d.pop("masks"), r"toy: missing key\(s\) \['masks'\]"),
        (
            lambda d: d.update(rewards=d["rewards"].astype(np.float64)),
            "'rewards' must be float32, got float64",
        ),
        (lambda d: d.update(actions=d["actions"][:-1]), "'actions' has 7 rows but 'observations' has 8"),
        (lambda d: d.update(terminals=d["terminals"][:, None]), r"'terminals' must be 1-D"),
        (
            lambda d: d["observations"].__setitem__((2, 1), np.nan),
            "'observations' contains NaN, first at row 2",
        ),
        (lambda d: d["next_observations"].__setitem__((6, 0), np.inf), "'next_observations' contains Inf"),
        (lambda d: d["actions"].__setitem__((3, 1), 1.5), r"actions must lie in \[-1, 1\].*dimension 1"),
        (lambda d: d["terminals"].__setitem__(1, 0.5), "'terminals' must be 0/1"),
        (lambda d: d["masks"].__setitem__(0, 2.0), "'masks' must lie in"),
        (lambda d: d["terminals"].__setitem__(-1, 0.0), "last transition must be terminal"),
        (
            lambda d: d["terminals"].__setitem__(4, 0.0),
            r"terminals\[4\] = 0 but next_observations\[4\] != obs",
        ),
        (lambda d: d["terminals"].__setitem__(2, 1.0), None),  # an extra episode end is structurally fine
    ],
)
def test_validate_transitions_names_the_problem(corrupt, message):
    data = _transitions()
    corrupt(data)
    if message is None:
        validate_transitions(data, "toy")
        return
    with pytest.raises(DatasetError, match=message):
        validate_transitions(data, "toy")


def test_validate_transitions_checks_episode_lengths():
    with pytest.raises(DatasetError, match="every episode should have 5 transitions, but episode 1 has 3"):
        validate_transitions(_transitions((5, 3)), "toy", expected_episode_length=5)


def test_action_tolerance_allows_rounding_only():
    data = _transitions()
    data["actions"][0, 0] = 1.00001
    validate_transitions(data, "toy")
    data["actions"][0, 0] = 1.01
    with pytest.raises(DatasetError, match="actions must lie"):
        validate_transitions(data, "toy")


# ---------------------------------------------------------------------------------------------------------------
# Raw OGBench files


def test_raw_ogbench_checks():
    recipe = get_recipe("cube-single-play-v0")
    lengths = validate_ogbench_arrays(_raw_ogbench(), "f.npz", recipe, episode_rows=6)
    assert lengths.tolist() == [6, 6]
    cases = [
        (lambda a: a.pop("qpos"), r"f.npz: missing array\(s\) \['qpos'\]"),
        (lambda a: a.update(terminals=a["terminals"][:-6]), "'terminals' has shape"),
        (lambda a: a["terminals"].__setitem__(-1, False), "ends in the middle of an episode"),
        (lambda a: a.update(observations=a["observations"][:, :20]), "ob_dim 28 .* the file has 20"),
        (lambda a: a["qvel"].__setitem__((0, 0), np.nan), "'qvel' contains NaN"),
        (lambda a: a["actions"].__setitem__((0, 0), -3.0), "actions must lie"),
    ]
    for corrupt, message in cases:
        arrays = _raw_ogbench()
        corrupt(arrays)
        with pytest.raises(DatasetError, match=message):
            validate_ogbench_arrays(arrays, "f.npz", recipe, episode_rows=6)
    with pytest.raises(DatasetError, match="every episode should have 1001 rows"):
        validate_ogbench_arrays(_raw_ogbench(), "f.npz", recipe)  # the official recipe's length
    with pytest.raises(DatasetError, match=r"missing array\(s\) \['button_states'\]"):
        validate_ogbench_arrays(_raw_ogbench(ob_dim=40), "f.npz", get_recipe("scene-play-v0"), episode_rows=6)


def test_truncated_npz_is_reported_with_its_name(tmp_path):
    path = tmp_path / "cube-single-play-v0.npz"
    write_npz(path, _raw_ogbench())
    assert read_npz(path)["observations"].shape == (12, 28)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        DatasetError, match=r"cube-single-play-v0.npz: cannot be read as an .npz.*truncated or corrupt"
    ):
        read_npz(path)


def test_npz_writes_are_reproducible_and_atomic(tmp_path):
    arrays = _raw_ogbench()
    write_npz(tmp_path / "a.npz", arrays)
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as f:  # numpy's own reader, as OGBench uses it
        np.testing.assert_array_equal(f["observations"], arrays["observations"])
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "c.npz") as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no c.npz, no temp file


# ---------------------------------------------------------------------------------------------------------------
# Names and missing files


def test_task_names_parse_like_ogbench():
    t = parse_ogbench_task("cube-single-play-singletask-task2-v0")
    assert (t.dataset, t.env_name, t.task_id) == ("cube-single-play-v0", "cube-single-singletask-task2-v0", 2)
    t = parse_ogbench_task("puzzle-4x4-play-singletask-v0")
    assert (t.dataset, t.env_name, t.task_id) == ("puzzle-4x4-play-v0", "puzzle-4x4-singletask-v0", None)
    t = parse_ogbench_task("antmaze-large-navigate-singletask-task1-v0")
    assert t.env_name == "antmaze-large-singletask-task1-v0" and not t.recipe.regenerable
    names = valid_task_names()
    assert "scene-play-singletask-task2-v0" in names and "antmaze-large-diverse-v2" in names


@pytest.mark.parametrize(
    "task", ["cube-single-play-v0", "cube-sextuple-play-singletask-v0", "antmaze-huge-v2", "x"]
)
def test_unknown_names_list_the_choices(task, tmp_path):
    with pytest.raises(
        UnknownDatasetError,
        match=r"unknown task .*Valid choices.*cube-single-play-v0.*antmaze-large-diverse-v2",
    ):
        load_task_datasets(task, tmp_path)
    with pytest.raises(ValueError):  # also a ValueError (DatasetError) for callers that catch that
        load_task_datasets(task, tmp_path)


def test_missing_regenerable_dataset_names_the_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_task_datasets("cube-single-play-singletask-task2-v0", tmp_path)
    msg = str(info.value)
    assert "cube-single-play-v0.npz, cube-single-play-v0-val.npz not found in" in msg
    assert str(tmp_path) in msg
    assert f"fidec data generate cube-single-play-v0 --dataset-dir {tmp_path}" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_expert_dataset_names_the_official_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_task_datasets("humanoidmaze-medium-navigate-singletask-task1-v0", tmp_path)
    msg = str(info.value)
    assert "cannot be regenerated offline" in msg and "fidec data generate" not in msg
    assert "https://rail.eecs.berkeley.edu/datasets/ogbench/humanoidmaze-medium-navigate-v0-val.npz" in msg
    assert (
        f"humanoidmaze-medium-navigate-v0.npz and humanoidmaze-medium-navigate-v0-val.npz in {tmp_path}"
        in msg
    )


def test_default_dataset_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FIDEC_DATASET_DIR", str(tmp_path))
    assert default_dataset_dir() == tmp_path
    monkeypatch.delenv("FIDEC_DATASET_DIR")
    assert str(default_dataset_dir()).endswith(".ogbench/data")


# ---------------------------------------------------------------------------------------------------------------
# D4RL AntMaze


def _d4rl_reference(raw: dict, max_episode_steps: int | None = None) -> dict:
    """d4rl.qlearning_dataset(terminate_on_end=False) and the authors' get_dataset, as literal loops."""
    n = raw["rewards"].shape[0]
    obs_, next_obs_, act_, rew_, done_ = [], [], [], [], []
    episode_step = 0
    for i in range(n - 1):
        done_bool = bool(raw["terminals"][i])
        if "timeouts" in raw:
            final_timestep = raw["timeouts"][i]
        else:
            final_timestep = episode_step == max_episode_steps - 1
        if final_timestep:
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(raw["observations"][i])
        next_obs_.append(raw["observations"][i + 1])
        act_.append(raw["actions"][i])
        rew_.append(raw["rewards"][i])
        done_.append(done_bool)
        episode_step += 1
    q = {k: np.array(v) for k, v in zip(("o", "no", "a", "r", "d"), (obs_, next_obs_, act_, rew_, done_))}
    m = len(obs_)
    terminals, masks = np.zeros(m), np.zeros(m)
    for i in range(m - 1):
        terminals[i] = float(np.linalg.norm(q["o"][i + 1] - q["no"][i]) > 1e-6)
        masks[i] = 1 - q["d"][i]
    masks[-1] = 1 - q["d"][-1]
    terminals[-1] = 1
    return {
        "observations": q["o"].astype(np.float32),
        "actions": q["a"].astype(np.float32),
        "next_observations": q["no"].astype(np.float32),
        "terminals": terminals.astype(np.float32),
        "rewards": (q["r"] - 1.0).astype(np.float32),
        "masks": masks.astype(np.float32),
    }


def _antmaze_raw(seed=0, timeouts=True) -> dict[str, np.ndarray]:
    """Three episodes of 7, 5 and 6 rows (the last row of each a timeout); a goal reached mid-episode 2."""
    rng = np.random.default_rng(seed)
    lengths = (7, 5, 6)
    n = sum(lengths)
    obs = np.cumsum(rng.normal(size=(n, 29)), axis=0)  # episodes start elsewhere: jumps at the boundaries
    rewards = np.zeros(n)
    terminals = np.zeros(n)
    rewards[9:11] = 1.0  # at the goal for two steps
    terminals[9:11] = 1.0
    out = {
        "observations": obs.astype(np.float32),
        "actions": rng.uniform(-1.2, 1.2, size=(n, 8)).astype(
            np.float32
        ),  # D4RL antmaze actions exceed [-1, 1]
        "rewards": rewards.astype(np.float32)[:, None],  # [N, 1] as in some D4RL files
        "terminals": terminals.astype(bool),
    }
    if timeouts:
        out["timeouts"] = np.zeros(n, dtype=bool)
        out["timeouts"][np.cumsum(lengths) - 1] = True
    return out


def _write_hdf5(path, raw):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for k, v in raw.items():
            f.create_dataset(k, data=v)
        f.create_dataset("infos/goal", data=np.zeros((raw["observations"].shape[0], 2)))


def test_d4rl_antmaze_matches_the_authors_conventions(tmp_path):
    raw = _antmaze_raw()
    _write_hdf5(tmp_path / "antmaze-large-diverse-v2.hdf5", raw)
    # Unclipped (validation would reject the out-of-range actions, so it is off here): the authors' arrays exactly.
    data = load_task_datasets("antmaze-large-diverse-v2", tmp_path, action_clip_eps=None, validate=False)
    expected = _d4rl_reference({**raw, "rewards": raw["rewards"][:, 0]})
    assert data.val is None and data.source == "official"
    assert data.train["observations"].shape == (
        15,
        29,
    )  # 18 rows - 3 timeouts (the last row has no successor)
    for key, value in expected.items():
        np.testing.assert_array_equal(data.train[key], value, err_msg=key)
    assert data.train["terminals"].sum() == 3 and data.train["masks"].tolist().count(0.0) == 2
    assert set(np.unique(data.train["rewards"])) == {-1.0, 0.0}

    with pytest.raises(DatasetError, match="actions must lie in"):
        load_task_datasets("antmaze-large-diverse-v2", tmp_path, action_clip_eps=None)
    # Default: FQL's action clip (then everything validates), and the official D4RL file name is found too.
    (tmp_path / "antmaze-large-diverse-v2.hdf5").rename(
        tmp_path / D4RL_DATASETS["antmaze-large-diverse-v2"].official_file
    )
    clipped = load_task_datasets("antmaze-large-diverse-v2", tmp_path)
    assert np.abs(clipped.train["actions"]).max() == np.float32(1 - 1e-5)
    assert (
        clipped.files[0].name
        == "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"
    )
    assert len(clipped.manifest["files"]["train"]["sha256"]) == 64


def test_d4rl_without_timeouts_uses_the_episode_counter():
    raw = _antmaze_raw(timeouts=False)
    raw["rewards"] = raw["rewards"][:, 0]
    ours = authors_antmaze_conventions(qlearning_transitions(raw, max_episode_steps=4))
    expected = _d4rl_reference(raw, max_episode_steps=4)
    for key, value in expected.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_d4rl_missing_and_broken_files(tmp_path):
    with pytest.raises(
        DatasetNotFoundError,
        match=r"Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed\.hdf5",
    ):
        load_task_datasets("antmaze-medium-play-v2", tmp_path)
    raw = _antmaze_raw()
    raw["observations"] = raw["observations"][:, :27]
    _write_hdf5(tmp_path / "antmaze-medium-play-v2.hdf5", raw)
    with pytest.raises(
        DatasetError, match=r"antmaze-medium-play-v2.hdf5: antmaze-medium-play-v2 has observations \[N, 29\]"
    ):
        load_task_datasets("antmaze-medium-play-v2", tmp_path)
    (tmp_path / "antmaze-medium-play-v2.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="cannot be read as HDF5"):
        load_task_datasets("antmaze-medium-play-v2", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# fidec data ...


def test_cli_generate_verify_info_list(tmp_path, capsys):
    pytest.importorskip("ogbench")
    d = str(tmp_path)
    args = [
        "data",
        "generate",
        "puzzle-3x3-play-v0",
        "--dataset-dir",
        d,
        "--episodes",
        "1",
        "--val-episodes",
        "1",
    ]
    assert fidec([*args, "--max-episode-steps", "40", "--workers", "1", "--quiet"]) == 0
    assert "puzzle-3x3-play-v0: wrote" in capsys.readouterr().out

    assert fidec(["data", "verify", d]) == 0
    assert "OK  puzzle-3x3-play-v0" in capsys.readouterr().out

    assert fidec(["data", "info", "puzzle-3x3-play-singletask-task4-v0", "--dataset-dir", d, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["transitions"] == 39 and len(info["train"]["actions"]["std"]) == 5
    assert info["provenance"]["source"] == "regenerated"

    assert fidec(["data", "list", "--dataset-dir", d, "--json"]) == 0
    listed = {row["dataset"]: row for row in json.loads(capsys.readouterr().out)["datasets"]}
    assert listed["puzzle-3x3-play-v0"]["regenerated"] and not listed["cube-single-play-v0"]["present"]

    # A damaged file makes verify fail and name it; an unknown dataset is a clean error.
    val = tmp_path / "puzzle-3x3-play-v0-val.npz"
    val.write_bytes(val.read_bytes()[:200])
    assert fidec(["data", "verify", d]) == 1
    out = capsys.readouterr().out
    assert "BAD puzzle-3x3-play-v0" in out and "does not match the manifest" in out
    assert fidec(["data", "generate", "antmaze-large-navigate-v0", "--dataset-dir", d]) == 2
    assert "cannot be regenerated offline" in capsys.readouterr().err


def test_verify_reports_official_files_and_leftovers(tmp_path):
    write_npz(tmp_path / "cube-single-play-v0.npz", _raw_ogbench(rows=1001, episodes=1))
    write_npz(tmp_path / "cube-single-play-v0-val.npz", _raw_ogbench(rows=1001, episodes=1))
    (tmp_path / ".cube-double-play-v0.npz.abc.tmp").write_bytes(b"")
    results = {r.name: r for r in verify_directory(tmp_path)}
    assert results["cube-single-play-v0"].ok and results["cube-single-play-v0"].source == "official"
    assert "1000 transitions" in results["cube-single-play-v0"].detail
    assert not results[".cube-double-play-v0.npz.abc.tmp"].ok
