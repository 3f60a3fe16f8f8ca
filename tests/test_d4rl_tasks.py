"""D4RL AntMaze and Adroit as tasks: the Adroit reader against the authors' get_dataset, the errors a bad or missing
file gets, presets, sweep groups, the report, and ``fidec train`` end to end on small synthetic D4RL files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from fisher_decorator.cli import main
from fisher_decorator.datasets import load_task_datasets
from fisher_decorator.datasets.d4rl import authors_adroit_conventions, qlearning_transitions
from fisher_decorator.datasets.errors import DatasetError, DatasetNotFoundError
from fisher_decorator.datasets.registry import D4RL_DATASETS
from fisher_decorator.logger import read_csv
from fisher_decorator.presets import parse_task, score_key, task_preset
from fisher_decorator.sweep.grid import get_budget, parse_tasks

TINY = ["--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=3"]
TINY += ["--set", "batch_size=8", "--no-progress", "--no-plot"]


def _write(path, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def _raw(n: int, ob_dim: int, action_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-layout arrays with two episodes cut by a timeout, a terminal inside the second and an observation
    jump (a discontinuity without a flag), as D4RL's human/cloned files have."""
    rng = np.random.default_rng(seed)
    obs = np.cumsum(rng.normal(size=(n, ob_dim)), axis=0).astype(np.float32)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[n // 3] = True
    terminals[n // 2] = True
    obs[2 * n // 3 :] += 10.0  # the row after 2n/3 - 1 does not continue it
    return {
        "observations": obs,
        "actions": rng.uniform(-1.2, 1.2, size=(n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def _authors_adroit(raw: dict) -> dict:
    """d4rl.qlearning_dataset(terminate_on_end=False) and the authors' envs/d4rl_utils.get_dataset (the
    non-antmaze branch), as the literal loops they are."""
    o, a, r, d, t = (raw[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts"))
    q = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for i in range(len(r) - 1):
        if t[i]:
            continue
        q["observations"].append(o[i])
        q["next_observations"].append(o[i + 1])
        q["actions"].append(a[i])
        q["rewards"].append(r[i])
        q["terminals"].append(bool(d[i]))
    q = {k: np.array(v) for k, v in q.items()}
    m = len(q["rewards"])
    terminals, masks = np.zeros(m), np.zeros(m)
    for i in range(m - 1):
        jump = np.linalg.norm(q["observations"][i + 1] - q["next_observations"][i]) > 1e-6
        terminals[i] = 1 if (jump or q["terminals"][i] == 1.0) else 0
        masks[i] = 1 - q["terminals"][i]
    masks[-1] = 1 - q["terminals"][-1]
    terminals[-1] = 1
    return {
        "observations": q["observations"].astype(np.float32),
        "actions": q["actions"].astype(np.float32),
        "next_observations": q["next_observations"].astype(np.float32),
        "terminals": terminals.astype(np.float32),
        "rewards": q["rewards"].astype(np.float32),
        "masks": masks.astype(np.float32),
    }


def test_adroit_reader_matches_the_authors_get_dataset(tmp_path):
    raw = _raw(60, 39, 28)
    expected = _authors_adroit(raw)
    ours = authors_adroit_conventions(qlearning_transitions(raw))
    for key, value in expected.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    # The flagged terminal, the jump and the end are episode ends; rewards are not shifted (unlike AntMaze).
    assert ours["terminals"].sum() == 3 and ours["masks"].sum() == len(ours["masks"]) - 1
    _write(tmp_path / "door-human-v1.hdf5", raw)
    data = load_task_datasets("door-human-v1", tmp_path)
    assert data.val is None and data.train["observations"].shape == (58, 39)
    np.testing.assert_array_equal(data.train["rewards"], expected["rewards"])
    np.testing.assert_array_equal(data.train["actions"], np.clip(expected["actions"], -1 + 1e-5, 1 - 1e-5))
    assert "Adroit" in data.manifest["conventions"]


def test_wrong_size_and_missing_files_name_what_and_where(tmp_path, capsys):
    _write(tmp_path / "pen-human-v1.hdf5", _raw(20, 39, 24))  # a door-sized observation in pen's file
    with pytest.raises(DatasetError, match=r"pen-human-v1 has observations \[N, 45\].*\(20, 39\)"):
        load_task_datasets("pen-human-v1", tmp_path)
    url = "http://rail.eecs.berkeley.edu/datasets/offline_rl/hand_dapg_v1/relocate-expert-v1.hdf5"
    with pytest.raises(DatasetNotFoundError, match=r"relocate-expert-v1\.hdf5 not found in .*" + url):
        load_task_datasets("relocate-expert-v1", tmp_path)
    assert main(["data", "list", "--dataset-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, spec in D4RL_DATASETS.items():  # every file's official URL (d4rl/infos.py)
        assert f"fidec data download {name} ({spec.url})" in out
    assert D4RL_DATASETS["hammer-cloned-v1"].url.endswith("offline_rl/hand_dapg_v1/hammer-cloned-v1.hdf5")


def test_presets_and_sweep_groups():
    # The authors' registry: 500k updates, score at 500k, target_divergence 0.001; Adroit q_agg min.
    train, agent = task_preset("antmaze-large-diverse-v2", "fidec")
    assert train["steps"] == 500_000 and train["score_steps"] == [500_000]
    assert agent["target_divergence"] == 0.001 and agent.get("q_agg", "mean") == "mean"
    train, agent = task_preset("pen-human-v1", "deflow")
    assert train["steps"] == 500_000 and agent["q_agg"] == "min" and agent["target_divergence"] == 0.001
    # FQL's README: alpha per dataset.
    assert task_preset("antmaze-large-play-v2", "fql")[1]["alpha"] == 3
    assert task_preset("door-human-v1", "fql")[1] == {
        "normalize_q_loss": False,
        "q_agg": "min",
        "alpha": 30000,
    }
    assert parse_task("hammer-expert-v1").family == "d4rl-adroit"
    assert score_key("relocate-cloned-v1") == "evaluation/normalized_score"
    assert score_key("antmaze-umaze-v2") == "evaluation/success"
    with pytest.raises(ValueError, match="pen-human-v1"):
        parse_task("pen-random-v1")
    assert len(parse_tasks("d4rl-antmaze")) == 6 and len(parse_tasks("d4rl-adroit")) == 12
    assert set(parse_tasks("d4rl-antmaze,d4rl-adroit")) <= set(parse_tasks("paper"))
    schedule = get_budget("paper").schedule(None, "door-cloned-v1")
    assert schedule["steps"] == 500_000 and schedule["score_steps"] == [500_000]
    assert schedule["eval_interval"] == 100_000


def _antmaze_file(path, episodes: int = 2, steps: int = 15) -> None:
    from fisher_decorator.envs.d4rl_tasks import make_d4rl_env

    env = make_d4rl_env("antmaze-large-diverse-v2")
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        for t in range(steps):
            action = rng.uniform(-1, 1, 8).astype(np.float32)
            nxt, reward, terminated, _, _ = env.step(action)
            for k, v in zip(rows, (obs, action, reward, terminated, t == steps - 1)):
                rows[k].append(v)
            obs = nxt
    _write(path, {k: np.asarray(v) for k, v in rows.items()})


def _train(tmp_path, task: str, agent: str = "fidec"):
    out = tmp_path / f"run-{task}"
    argv = ["train", "--agent", agent, "--task", task, "--dataset-dir", str(tmp_path), "--out", str(out)]
    argv += ["--steps", "4", "--eval-interval", "4", "--eval-episodes", "2", "--log-interval", "2"]
    argv += ["--set", "score_steps=4", "--set", "eval_at_start=false", *TINY]
    assert main(argv) == 0
    return out


def test_train_and_evaluate_antmaze_end_to_end(tmp_path):
    pytest.importorskip("mujoco")
    _antmaze_file(tmp_path / D4RL_DATASETS["antmaze-large-diverse-v2"].official_file)
    out = _train(tmp_path, "antmaze-large-diverse-v2")
    config = json.loads((out / "config.json").read_text())
    assert config["obs_dim"] == 29 and config["action_dim"] == 8
    assert config["agent"]["target_divergence"] == 0.001 and config["train"]["eval_episodes"] == 2
    rows = read_csv(out / "eval.csv")
    assert [r["step"] for r in rows] == [4]
    # An untrained policy does not cross the large maze: every episode runs to D4RL's 1000-step limit.
    assert rows[0]["evaluation/episode.length"] == 1000.0 and rows[0]["evaluation/success"] == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_key"] == "evaluation/success" and summary["score"] == 0.0


def test_train_and_evaluate_adroit_end_to_end(tmp_path):
    pytest.importorskip("gymnasium_robotics")
    from tests.test_d4rl_envs import _adroit_file

    _adroit_file(tmp_path / "pen-human-v1.hdf5", "pen", steps=30)
    out = _train(tmp_path, "pen-human-v1", agent="fql")
    config = json.loads((out / "config.json").read_text())
    assert config["obs_dim"] == 45 and config["action_dim"] == 24 and config["agent"]["alpha"] == 10000
    row = read_csv(out / "eval.csv")[0]
    # The score is D4RL's normalised return of the episodes (d4rl/infos.py reference returns for pen).
    lo, hi = 96.262799, 3076.8331017826877
    assert row["evaluation/episode.length"] <= 100
    assert row["evaluation/normalized_score"] == pytest.approx(
        (row["evaluation/episode.return"] - lo) / (hi - lo), rel=1e-12
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_key"] == "evaluation/normalized_score"
    assert summary["score"] == row["evaluation/normalized_score"]


def test_report_shows_the_d4rl_groups(tmp_path):
    """A folder of D4RL runs: AntMaze beside the paper's 87, Adroit 'unknown'; Adroit scored by normalised return."""
    from fisher_decorator.sweep.report import collect_runs, family_rows, markdown

    def run(task, value_key, value):
        d = tmp_path / task
        d.mkdir()
        (d / "config.json").write_text(
            json.dumps({"train": {"task": task, "agent": "fidec", "seed": 0, "score_steps": [500000]}})
        )
        (d / "eval.csv").write_text(f"step,evaluation/success,{value_key}\n500000,0.25,{value}\n")
        (d / "summary.json").write_text("{}")

    run("antmaze-umaze-v2", "evaluation/normalized_score", 0.25)
    run("pen-human-v1", "evaluation/normalized_score", 0.6)
    results = collect_runs(tmp_path)
    rows = {r["family"]: r for r in family_rows(results)}
    assert rows["d4rl-antmaze"]["mean"] == 25.0 and rows["d4rl-antmaze"]["paper"] == 87
    assert rows["d4rl-antmaze"]["tasks_in_family"] == 6 and rows["d4rl-adroit"]["tasks_in_family"] == 12
    assert rows["d4rl-adroit"]["mean"] == 60.0 and rows["d4rl-adroit"]["paper"] is None
    md = markdown(results, None, {})
    assert "| D4RL AntMaze | 1 of 6 | 25.0 (1 seed) | 87 |" in md
    assert "| D4RL Adroit | 1 of 12 | 60.0 (1 seed) | unknown |" in md


def test_sweep_checks_d4rl_files_before_any_run(tmp_path):
    from fisher_decorator.sweep.datasets import prepare_datasets

    with pytest.raises(DatasetNotFoundError, match=r"door-human-v1: .*hand_dapg_v1/door-human-v1\.hdf5"):
        prepare_datasets(["antmaze-umaze-v2", "door-human-v1"], tmp_path, None, progress=False)
    _write(tmp_path / "door-human-v1.hdf5", _raw(10, 39, 28))
    _write(tmp_path / D4RL_DATASETS["antmaze-umaze-v2"].official_file, _raw(10, 29, 8))
    out = prepare_datasets(["antmaze-umaze-v2", "door-human-v1"], tmp_path, None, progress=False)
    assert out["door-human-v1"] == {"source": "official", "dir": str(tmp_path), "file": "door-human-v1.hdf5"}
    assert out["antmaze-umaze-v2"]["file"] == D4RL_DATASETS["antmaze-umaze-v2"].official_file
