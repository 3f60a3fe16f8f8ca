"""End to end on an OGBench task: a tiny dataset made by ``fidec data generate`` (OGBench's own
oracle, no internet), loaded through ``fisher_decorator.datasets.load_task_datasets``, a few FiDec
updates, evaluation in OGBench's single-task env, ``fidec eval`` with a rendered video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fisher_decorator.agents import derive_seed
from fisher_decorator.cli import main
from fisher_decorator.datasets import load_task_datasets
from fisher_decorator.logger import read_csv
from fisher_decorator.sampler import TransitionSampler
from fisher_decorator.trainer import load_agent
from tests.sweep_helpers import HANG_GUARD

pytest.importorskip("ogbench")
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*DISPLAY environment variable"),
]
ROOT = Path(__file__).resolve().parent.parent
TASK = "cube-single-play-singletask-task2-v0"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ogbench-data")
    code = main(
        ["data", "generate", "cube-single-play-v0", "--episodes", "2", "--val-episodes", "1"]
        + ["--max-episode-steps", "101", "--workers", "1", "--dataset-dir", str(d), "--quiet"]
    )
    assert code in (0, None)
    return d


def test_train_and_eval_on_ogbench(tmp_path, dataset_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--agent", "fidec", "--task", TASK, "--dataset-dir", str(dataset_dir), "--steps", "3"]
    args += [
        "--eval-episodes",
        "1",
        "--eval-interval",
        "3",
        "--log-interval",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    args += ["--set", "actor_hidden_dims=32,32", "--set", "value_hidden_dims=32,32", "--set", "batch_size=16"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["obs_dim"] == 28 and cfg["action_dim"] == 5  # cube-single
    assert cfg["dataset"]["name"] == "cube-single-play-v0" and cfg["dataset"]["transitions"] == 200
    assert cfg["dataset"]["manifest"]["dataset"] == "cube-single-play-v0"  # the generator's manifest
    assert cfg["agent"]["num_fisher_samples"] == 8 and cfg["agent"]["target_divergence"] == 0.001  # preset
    agent, _, step = load_agent(out)
    assert step == 3
    evals = read_csv(out / "eval.csv")
    assert [r["step"] for r in evals] == [1, 3]  # after the first update (as the authors) and at the end
    # the step-3 evaluation replayed here on OGBench's env directly: the checkpoint's agent (step 3), its
    # actions from the evaluation's action seed, the episode from the evaluation's env seed. (A 3-update agent
    # fails every episode, so success and return barely depend on the draws; the validation row below does.)
    expected = ogbench_episode(agent, seed=0, step=3)
    assert {k: evals[-1][f"evaluation/{k}"] for k in expected} == expected
    assert expected["episode.length"] == 200
    # the step-3 validation row: the checkpoint's agent (step 3, the last update) on the task's validation
    # transitions, batch and noise drawn from the validation streams of step 3, no update
    row = read_csv(out / "train.csv")[-1]
    assert row["step"] == 3
    val = TransitionSampler(load_task_datasets(TASK, dataset_dir).val, seed=0)
    batch = val.sample(16, generator=torch.Generator().manual_seed(derive_seed(0, "validation/3")))
    noise_g = torch.Generator().manual_seed(derive_seed(0, "validation-noise/3"))
    with torch.no_grad():
        _, info = agent.total_loss(batch, agent.sample_noise(16, generator=noise_g))
    assert {k: row[f"validation/{k}"] for k in info} == {k: float(v) for k, v in info.items()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score"] is None and summary["missing_score_steps"] == [800_000, 900_000, 1_000_000]

    # MuJoCo renders offscreen through EGL (Mesa's software EGL on a machine without a GPU): a failure here
    # is a broken install, reported, never skipped. MUJOCO_GL=osmesa in the environment selects OSMesa.
    gl = os.environ.get("MUJOCO_GL", "egl")
    env = {**os.environ, "MUJOCO_GL": gl, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fisher_decorator", "eval", "--run", str(out), "--episodes", "1"]
    cmd += ["--video-episodes", "1", "--video-frame-skip", "50"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, (
        f"fidec eval with a video failed under MUJOCO_GL={gl}; offscreen rendering needs libEGL with Mesa "
        f"(apt-get install libegl1 libegl-mesa0) or MUJOCO_GL=osmesa with libosmesa6:\n{proc.stderr[-3000:]}"
    )
    result = json.loads((out / "eval_step3_default.json").read_text())
    # the same checkpoint, seed and step as the trainer's last evaluation: the same episode
    assert {k: result[f"evaluation/{k}"] for k in expected} == expected
    (gif,) = result["videos"]
    # 200 steps, every 50th frame kept (the last one always): 4 frames of 200 x 200 pixels, with a picture
    from PIL import Image, ImageSequence

    with Image.open(gif) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 4 and all(f.shape == (200, 200, 3) for f in frames)
    assert all(f.std() > 10 for f in frames)  # a rendered scene, not a blank or one-colour image


def ogbench_episode(agent, *, seed: int, step: int) -> dict[str, float]:
    """One evaluation episode as the authors' evaluate: OGBench's env reset with the first draw of the
    evaluation's env stream, actions sampled with the evaluation's action stream, success the last step's
    flag, return the sum of rewards."""
    import ogbench

    env = ogbench.make_env_and_datasets(TASK, env_only=True, disable_env_checker=True)
    env_seed = int(
        np.random.default_rng(derive_seed(seed, f"eval-env/{step}") % (2**31 - 1)).integers(2**31 - 1)
    )
    g = torch.Generator().manual_seed(derive_seed(seed, f"eval-actions/{step}"))
    obs, _ = env.reset(seed=env_seed)
    done, ret, length = False, 0.0, 0
    while not done:
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32)[None])
        action = agent.sample_actions(o, generator=g)[0].clamp(-1, 1).numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        ret += float(reward)
        length += 1
    env.close()
    return {"success": float(info["success"]), "episode.return": ret, "episode.length": float(length)}
