"""D4RL's evaluation environments without d4rl: numbers pinned against D4RL's source (Farama-Foundation/D4RL,
commit 89141a6; file:line in the comments), and gymnasium-robotics' Adroit envs against D4RL's formulas."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

from fisher_decorator.datasets.d4rl import read_d4rl_states  # noqa: E402
from fisher_decorator.datasets.registry import D4RL_DATASETS  # noqa: E402
from fisher_decorator.envs import d4rl_antmaze as am  # noqa: E402
from fisher_decorator.envs.d4rl_tasks import make_d4rl_env, normalized_score  # noqa: E402

# d4rl/locomotion/maze_env.py:56-79 (U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST), written out as text:
# '#' wall (1), '.' free (0), 'r' reset, 'g' goal.
D4RL_MAPS = {
    "umaze": ["#####", "#r..#", "###.#", "#g..#", "#####"],
    "medium": [
        "########",
        "#r.##..#",
        "#..#...#",
        "##...###",
        "#..#...#",
        "#.#..#.#",
        "#...#.g#",
        "########",
    ],
    "large": [
        "############",
        "#r...#.....#",
        "#.##.#.#.#.#",
        "#......#...#",
        "#.####.###.#",
        "#..#.#.....#",
        "##.#.#.#.###",
        "#..#...#.g.#",
        "############",
    ],
}
SCALING, HEIGHT = (
    4.0,
    0.5,
)  # maze_size_scaling (locomotion/__init__.py:334 ...), maze_height (maze_env.py:140)


def _d4rl_walls(rows: list[str]) -> list[tuple[str, tuple, tuple]]:
    """maze_env.py:173-196: block (i, j) at (j*s - torso_x, i*s - torso_y, h/2*s), size (s/2, s/2, h/2*s),
    torso = the 'r' cell's (j*s, i*s) (maze_env.py:270-277)."""
    ri, rj = next((i, r.index("r")) for i, r in enumerate(rows) if "r" in r)
    tx, ty = rj * SCALING, ri * SCALING
    return [
        (f"block_{i}_{j}", (j * SCALING - tx, i * SCALING - ty, HEIGHT / 2 * SCALING), (2.0, 2.0, 1.0))
        for i, r in enumerate(rows)
        for j, c in enumerate(r)
        if c == "#"
    ]


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_antmaze_walls_start_and_goal_are_d4rls(maze):
    rows = D4RL_MAPS[maze]
    assert [[{1: "#", 0: ".", "r": "r", "g": "g"}[c] for c in row] for row in am.MAZES[maze]] == [
        list(r) for r in rows
    ]
    expected = _d4rl_walls(rows)
    assert am.wall_boxes(maze) == expected
    assert len(expected) == {"umaze": 18, "medium": 38, "large": 62}[maze]
    # The compiled model holds exactly these boxes.
    env = am.D4RLAntMazeEnv(maze)
    import mujoco

    for name, pos, size in expected:
        g = env.model.geom(name)
        assert g.type[0] == mujoco.mjtGeom.mjGEOM_BOX
        np.testing.assert_array_equal(g.pos, pos)
        np.testing.assert_array_equal(g.size, size)
    # Goal cell centre: the 'g' cell in D4RL's frame; the well-known D4RL goals (0.75, 8.75), (20.75, 20.75),
    # (32.75, 24.75) are these plus the mean goal noise 0.5 + 0.25.
    assert am.goal_cell_xy(maze) == {"umaze": (0.0, 8.0), "medium": (20.0, 20.0), "large": (32.0, 24.0)}[maze]
    assert am.MAX_EPISODE_STEPS[maze] == {"umaze": 700, "medium": 1000, "large": 1000}[maze]
    # Reset (ant.py:120-134): qpos0 + U(-0.1, 0.1), so the ant starts within 0.1 of the origin at height 0.75.
    # Goal (maze_env.py:227-258): the cell centre + U(0, 1) + U(0, 0.5) per axis.
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        assert np.all(np.abs(obs[:2]) <= 0.1) and abs(obs[2] - 0.75) <= 0.1
        offset = info["goal"] - np.array(am.goal_cell_xy(maze))
        assert np.all(offset >= 0.0) and np.all(offset < 1.5)


def test_antmaze_ant_model_and_action_scaling():
    """d4rl/locomotion/assets/ant.xml + ant.py:53 (frame skip 5) + wrappers.py:155-160 (NormalizedBoxEnv)."""
    env = am.D4RLAntMazeEnv("umaze")
    m = env.model
    assert m.opt.timestep == 0.02 and env.dt == pytest.approx(0.1, rel=1e-15) and am.FRAME_SKIP == 5
    import mujoco

    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert (m.nq, m.nv, m.nu) == (15, 14, 8)
    np.testing.assert_array_equal(m.actuator_ctrlrange, np.tile([-30.0, 30.0], (8, 1)))
    np.testing.assert_array_equal(m.actuator_gear[:, 0], np.ones(8))
    names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, m.actuator_trnid[i, 0]) for i in range(8)]
    assert names == ["hip_4", "ankle_4", "hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3"]
    np.testing.assert_array_equal(m.qpos0[:7], [0, 0, 0.75, 1, 0, 0, 0])
    env.reset(seed=0)
    env.step(np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, 0.25]))
    np.testing.assert_array_equal(env.data.ctrl, [-30.0, -15.0, 0.0, 15.0, 30.0, 30.0, -30.0, 7.5])


def test_antmaze_observation_success_rule_and_episode_limit():
    env = make_d4rl_env("antmaze-umaze-v2")
    obs, info = env.reset(seed=3)
    u = env.unwrapped
    # ant.py:92-96 with expose_all_qpos=True; goal_reaching_env.py:28-35 eval=True: no goal in the observation.
    assert obs.shape == (29,)
    np.testing.assert_array_equal(obs, np.concatenate([u.data.qpos[:15], u.data.qvel[:14]]))
    goal = info["goal"]
    # goal_reaching_env.py:37-50: reward 1 and the episode ends within 0.5 of the goal, else reward 0.
    for offset, reached in ((0.0, True), (0.4, True), (0.6, False), (5.0, False)):
        env.reset(seed=3)
        qpos = u.data.qpos.copy()
        qpos[:2] = goal + np.array([offset, 0.0])
        u.set_state(qpos, np.zeros(14))
        obs, reward, terminated, truncated, info = env.step(np.zeros(8))
        dist = np.linalg.norm(obs[:2] - goal)
        assert (dist <= 0.5) == reached and abs(dist - offset) < 0.05  # one step barely moves it
        assert reward == float(reached) and terminated == reached and not truncated
        assert info["success"] == float(reached)
    # The episode limit (locomotion/__init__.py: 700 for umaze) truncates a policy that never arrives.
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(np.zeros(8))
        steps += 1
        done = terminated or truncated
    assert steps == 700 and truncated and not terminated and reward == 0.0
    for task, limit in (("antmaze-medium-diverse-v2", 1000), ("antmaze-large-play-v2", 1000)):
        assert make_d4rl_env(task)._max_episode_steps == limit == D4RL_DATASETS[task].max_episode_steps


def test_antmaze_seeded_reset_is_reproducible():
    a, b = make_d4rl_env("antmaze-large-diverse-v2"), make_d4rl_env("antmaze-large-diverse-v2")
    oa, ia = a.reset(seed=11)
    ob, ib = b.reset(seed=11)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["goal"], ib["goal"])
    assert not np.array_equal(a.reset(seed=12)[1]["goal"], ia["goal"])


# ------------------------------------------------------------------------------------------------- Adroit

ADROIT = {  # D4RL: (obs, action) sizes of pen/door/hammer/relocate_v0.py and MAX_STEPS (hand_manipulation_suite)
    "pen": (45, 24, 100),
    "door": (39, 28, 200),
    "hammer": (46, 26, 200),
    "relocate": (39, 30, 200),
}
# d4rl/infos.py:117-126 (REF_MIN_SCORE) and 207-216 (REF_MAX_SCORE) for '<env>-human-v0', reused by the v1 datasets
# (infos.py:305-310).
REF = {
    "pen": (96.262799, 3076.8331017826877),
    "door": (-56.512833, 2880.5693087298737),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
}


def _adroit():
    pytest.importorskip("gymnasium_robotics")
    from fisher_decorator.envs import d4rl_adroit

    return d4rl_adroit


@pytest.mark.parametrize("env_name", list(ADROIT))
def test_adroit_sizes_limits_observation_and_reference_returns(env_name):
    d4rl_adroit = _adroit()
    ob_dim, action_dim, limit = ADROIT[env_name]
    for kind in ("human", "cloned", "expert"):
        spec = D4RL_DATASETS[f"{env_name}-{kind}-v1"]
        assert (spec.ob_dim, spec.action_dim, spec.max_episode_steps) == (ob_dim, action_dim, limit)
        assert (spec.ref_min_score, spec.ref_max_score) == REF[env_name]
        assert normalized_score(spec.name, REF[env_name][0]) == 0.0
        assert normalized_score(spec.name, REF[env_name][1]) == 1.0
    env = make_d4rl_env(f"{env_name}-human-v1")
    assert env.observation_space.shape == (ob_dim,) and env.action_space.shape == (action_dim,)
    assert env._max_episode_steps == limit
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, action_dim))
        # gymnasium-robotics' observation is D4RL's get_obs, computed from the same simulator state.
        np.testing.assert_array_equal(obs, d4rl_adroit.d4rl_observation(env_name, env.unwrapped))
        assert reward == d4rl_adroit.d4rl_reward(env_name, env.unwrapped)[0]


@pytest.mark.parametrize("env_name", ["door", "hammer", "relocate"])
def test_adroit_reward_is_d4rls_not_gymnasium_robotics(env_name):
    """D4RL's dense reward starts with -0.1 * ||palm - object||; gymnasium-robotics >= 1.2.1 adds +0.1 * it. The
    two differ by exactly 0.2 * that distance (fp64 sums of the same terms: rounding well below 1e-12)."""
    d4rl_adroit = _adroit()
    env = make_d4rl_env(f"{env_name}-human-v1")
    u = env.unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        action = rng.uniform(-1, 1, env.action_space.shape)
        gr_reward = u.step(action)[1]  # gymnasium-robotics' own reward for this step
        ours = d4rl_adroit.d4rl_reward(env_name, u)[0]
        palm = u.data.site_xpos[u.grasp_site_id if env_name == "door" else u.S_grasp_site_id]
        other = u.data.site_xpos[u.handle_site_id] if env_name == "door" else u.data.xpos[u.obj_body_id]
        assert gr_reward - ours == pytest.approx(0.2 * np.linalg.norm(palm - other), abs=1e-12)


def test_adroit_pen_drop_ends_the_episode_with_d4rls_penalty():
    """pen_v0.py step: obj_pos[2] < 0.075 -> reward - 5 and done (gymnasium-robotics never terminates)."""
    _adroit()
    env = make_d4rl_env("pen-human-v1")
    env.reset(seed=0)
    u = env.unwrapped
    state = u.get_env_state()
    joints = range(u.model.njnt - 6, u.model.njnt - 3)  # the pen's three slide joints
    j = max(joints, key=lambda k: abs(u.data.xaxis[k][2]))
    state["qpos"][u.model.jnt_qposadr[j]] -= 0.3 * np.sign(u.data.xaxis[j][2])
    env.unwrapped.set_env_state(state)
    assert u.data.xpos[u.obj_body_id][2] < 0.075
    _, reward, terminated, truncated, _ = env.step(np.zeros(24))
    assert terminated and not truncated and reward < -4.0


def _adroit_file(path, env_name: str, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A D4RL-layout Adroit file (observations, actions, rewards, terminals, timeouts, infos/<state keys>) from
    a short random rollout of the env itself."""
    env = make_d4rl_env(f"{env_name}-human-v1")
    u = env.unwrapped
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {
        "observations": [],
        "actions": [],
        "rewards": [],
        "terminals": [],
        "timeouts": [],
    }
    infos: dict[str, list] = {}
    for t in range(steps):
        for k, v in u.get_env_state().items():
            infos.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        nxt, reward, terminated, _, _ = env.step(action)
        rows["observations"].append(obs)
        rows["actions"].append(action)
        rows["rewards"].append(reward)
        rows["terminals"].append(terminated)
        rows["timeouts"].append(t == steps - 1)
        obs = nxt
    out = {k: np.asarray(v) for k, v in rows.items()}
    with h5py.File(path, "w") as f:
        for k, v in out.items():
            f.create_dataset(k, data=v)
        for k, v in infos.items():
            f.create_dataset(f"infos/{k}", data=np.stack(v))
    return out


@pytest.mark.parametrize("env_name", list(ADROIT))
def test_adroit_state_from_a_d4rl_file_sets_and_steps(tmp_path, env_name):
    d4rl_adroit = _adroit()
    path = tmp_path / f"{env_name}-human-v1.hdf5"
    data = _adroit_file(path, env_name, steps=6)
    states = read_d4rl_states(path)
    env = make_d4rl_env(f"{env_name}-human-v1")
    env.reset(seed=123)  # another episode: the file's state must replace it
    joints = {"pen": 24, "door": 29, "hammer": 27, "relocate": 30}[env_name]  # leading qpos-only entries
    for row in (0, 3, 5):
        state = d4rl_adroit.state_from_file(env, states, row)
        obs = d4rl_adroit.set_state(env, state)
        if row == 0:  # the reset observation: computed from the state, as set_state computes it (the pen's
            # target orientation goes through a quaternion again: fp64 rounding, a few ulp of numbers <= 2)
            np.testing.assert_allclose(
                obs, data["observations"][row], rtol=0, atol=16 * np.finfo(np.float64).eps
            )
        else:  # after a step MuJoCo's positions (xpos, site_xpos) lag qpos by one substep: compare the joints
            np.testing.assert_array_equal(obs[:joints], data["observations"][row][:joints])
        nxt, reward, *_ = env.step(data["actions"][row])
        assert nxt.shape == data["observations"][row].shape and np.isfinite(nxt).all() and np.isfinite(reward)
    with pytest.raises(KeyError, match="infos/"):
        d4rl_adroit.state_from_file(env, {"qpos": states["qpos"]}, 0)


@pytest.mark.slow
@pytest.mark.parametrize("env_name", list(ADROIT))
def test_adroit_random_policy_scores_d4rls_random_reference(env_name):
    """D4RL's REF_MIN_SCORE is a uniform-random policy's mean return; 30 seeded random episodes here land within
    4 standard errors of it (measured: pen 86.9 ± 40.2 vs 96.26, door -56.73 ± 0.12 vs -56.51, hammer
    -275.3 ± 0.9 vs -274.86, relocate -5.80 ± 0.64 vs -6.43). With gymnasium-robotics' reward sign the door
    return alone would be far above it. ~20 s for the four."""
    _adroit()
    env = make_d4rl_env(f"{env_name}-human-v1")
    rng = np.random.default_rng(0)
    returns = []
    for episode in range(30):
        env.reset(seed=episode)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            total += reward
            done = terminated or truncated
        returns.append(total)
    sem = np.std(returns, ddof=1) / np.sqrt(len(returns))
    assert abs(np.mean(returns) - REF[env_name][0]) < 4 * sem
