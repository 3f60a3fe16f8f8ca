"""D4RL's ``antmaze-*-v2`` evaluation environment on the ``mujoco`` bindings and gymnasium (no d4rl, gym or mujoco-py).

Everything below is D4RL's, read from Farama-Foundation/D4RL (commit 89141a6); file:line citations are to it.

- Mazes: ``U_MAZE_TEST``, ``BIG_MAZE_TEST``, ``HARDEST_MAZE_TEST`` (d4rl/locomotion/maze_env.py:56-79), the maps
  ``antmaze-{umaze,medium,large}-*-v2`` evaluate on (d4rl/locomotion/__init__.py:324-430). Their walls are those
  of the data-collection maps (``U_MAZE``, ``BIG_MAZE``, ``HARDEST_MAZE``); only the ``r``/``g`` cells differ.
- Frame: cell ``(i, j)`` is centred at ``(j * 4 - x_r, i * 4 - y_r)`` with ``(x_r, y_r)`` the ``r`` cell's
  ``(j * 4, i * 4)``, so the ant starts at the origin (maze_env.py:173-196, 229-230, 270-277); scaling 4
  (``maze_size_scaling``, __init__.py), wall height 0.5 * 4 (maze_env.py:140, 187-190).
- Each wall cell is a box geom of half-size (2, 2, 1) at z = 1 (maze_env.py:182-196).
- Ant: d4rl/locomotion/assets/ant.xml (timestep 0.02, RK4, 8 motors with ``ctrlrange`` [-30, 30], gear 1),
  frame skip 5 (ant.py:53), actions in [-1, 1] mapped linearly to the control range and clipped
  (``NormalizedBoxEnv``, wrappers.py:155-160).
- Observation: ``qpos[:15]`` then ``qvel[:14]`` (``expose_all_qpos=True``, ant.py:92-96, 169); with ``eval=True``
  no goal is appended (goal_reaching_env.py:28-35): 29 numbers.
- Reset (ant.py:120-134, ``non_zero_reset=False``): ``qpos = init_qpos + U(-0.1, 0.1)`` on all 15 entries,
  ``qvel = init_qvel + 0.1 * N(0, 1)``; ``init_qpos`` is the model's ``qpos0`` (torso at z 0.75, identity
  quaternion, joints 0), as gym's ``MujocoEnv`` reads it.
- Goal (v2: a new goal every episode, ant.py:186-202): the ``g`` cell's centre plus ``U(0, 1)`` per axis
  (``_rowcol_to_xy(add_random_noise=True)``, maze_env.py:227-234) plus ``U(0, 0.5) * 0.25 * 4`` per axis, then
  ``max(., 0)`` (maze_env.py:236-258).
- Reward: sparse, 1 when ``||xy - goal|| <= 0.5`` else 0; the episode terminates then (``eval=True``,
  goal_reaching_env.py:37-50). Episode limit 700 (umaze) or 1000 (medium, large) steps (__init__.py).

What differs: the physics is MuJoCo >= 3 through the ``mujoco`` bindings, where D4RL ran MuJoCo 2.0/2.1 through
mujoco-py. Same model, integrator, timestep and frame skip, but MuJoCo's constraint solver and contact model changed
between those versions, so the same actions give trajectories that drift apart over an episode: success rates are
comparable as statistics over episodes, not episode by episode. D4RL draws the goal from numpy's global generator
and the reset noise from the env's; here both come from the env's own generator (``reset(seed=...)``), so a seeded
evaluation is reproducible.
"""

from __future__ import annotations

import numpy as np

MAZE_SCALING = 4.0
"""``maze_size_scaling`` of every antmaze v2 env (d4rl/locomotion/__init__.py)."""
MAZE_HEIGHT = 0.5
"""``maze_height`` default (maze_env.py:140)."""
FRAME_SKIP = 5
GOAL_RADIUS = 0.5
OBS_DIM = 29
ACTION_DIM = 8

R, G = "r", "g"
# maze_env.py:56-79, the evaluation maps of antmaze-*-v2.
MAZES: dict[str, list[list]] = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, R, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, G, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
MAX_EPISODE_STEPS = {"umaze": 700, "medium": 1000, "large": 1000}
"""``max_episode_steps`` of the antmaze-*-v2 registrations (d4rl/locomotion/__init__.py:324-430)."""

# d4rl/locomotion/assets/ant.xml, as MJCF (``coordinate="local"`` dropped: MuJoCo >= 2.3.3 only has local
# coordinates and rejects the attribute). Physics attributes are unchanged; {walls} receives the maze.
_ANT_XML = """<mujoco model="d4rl_antmaze">
  <compiler inertiafromgeom="true" angle="degree"/>
  <option timestep="0.02" integrator="RK4"/>
  <default>
    <joint limited="true" armature="1" damping="1"/>
    <geom condim="3" conaffinity="0" margin="0.01" friction="1 0.5 0.5" solref=".02 1" solimp=".8 .8 .01"
          rgba="0.8 0.6 0.4 1" density="5.0"/>
  </default>
  <asset>
    <texture type="skybox" builtin="gradient" width="100" height="100" rgb1="1 1 1" rgb2="0 0 0"/>
    <texture name="texplane" type="2d" builtin="checker" rgb1="0.2 0.3 0.4" rgb2="0.1 0.2 0.3" width="100"
             height="100"/>
    <material name="MatPlane" texture="texplane" shininess="1" texrepeat="60 60" specular="1" reflectance="0.0"/>
  </asset>
  <visual><global offwidth="{render_size}" offheight="{render_size}"/></visual>
  <worldbody>
    <light directional="true" cutoff="100" exponent="1" diffuse="1 1 1" specular=".1 .1 .1" pos="0 0 1.3"
           dir="-0 0 -1.3"/>
    <geom name="floor" pos="0 0 0" size="40 40 40" type="plane" conaffinity="1" rgba="0.8 0.9 0.8 1" condim="3"
          material="MatPlane"/>
    <body name="torso" pos="0 0 0.75">
      <camera name="track" mode="trackcom" pos="0 -12 12" xyaxes="1 0 0 0 0.7 0.7"/>
      <geom name="torso_geom" type="sphere" size="0.25" pos="0 0 0" rgba="0.3 0.9 0.5 1"/>
      <joint name="root" type="free" limited="false" pos="0 0 0" axis="0 0 1" margin="0.01" armature="0"
             damping="0"/>
      <body name="front_left_leg" pos="0 0 0">
        <geom name="aux_1_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.2 0.2 0.0"/>
        <body name="aux_1" pos="0.2 0.2 0">
          <joint name="hip_1" type="hinge" pos="0.0 0.0 0.0" axis="0 0 1" range="-30 30"/>
          <geom name="left_leg_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.2 0.2 0.0"/>
          <body pos="0.2 0.2 0">
            <joint name="ankle_1" type="hinge" pos="0.0 0.0 0.0" axis="-1 1 0" range="30 70"/>
            <geom name="left_ankle_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.4 0.4 0.0"/>
          </body>
        </body>
      </body>
      <body name="front_right_leg" pos="0 0 0">
        <geom name="aux_2_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.2 0.2 0.0"/>
        <body name="aux_2" pos="-0.2 0.2 0">
          <joint name="hip_2" type="hinge" pos="0.0 0.0 0.0" axis="0 0 1" range="-30 30"/>
          <geom name="right_leg_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.2 0.2 0.0"/>
          <body pos="-0.2 0.2 0">
            <joint name="ankle_2" type="hinge" pos="0.0 0.0 0.0" axis="1 1 0" range="-70 -30"/>
            <geom name="right_ankle_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.4 0.4 0.0"/>
          </body>
        </body>
      </body>
      <body name="back_leg" pos="0 0 0">
        <geom name="aux_3_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.2 -0.2 0.0"/>
        <body name="aux_3" pos="-0.2 -0.2 0">
          <joint name="hip_3" type="hinge" pos="0.0 0.0 0.0" axis="0 0 1" range="-30 30"/>
          <geom name="back_leg_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.2 -0.2 0.0"/>
          <body pos="-0.2 -0.2 0">
            <joint name="ankle_3" type="hinge" pos="0.0 0.0 0.0" axis="-1 1 0" range="-70 -30"/>
            <geom name="third_ankle_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 -0.4 -0.4 0.0"/>
          </body>
        </body>
      </body>
      <body name="right_back_leg" pos="0 0 0">
        <geom name="aux_4_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.2 -0.2 0.0"/>
        <body name="aux_4" pos="0.2 -0.2 0">
          <joint name="hip_4" type="hinge" pos="0.0 0.0 0.0" axis="0 0 1" range="-30 30"/>
          <geom name="rightback_leg_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.2 -0.2 0.0"/>
          <body pos="0.2 -0.2 0">
            <joint name="ankle_4" type="hinge" pos="0.0 0.0 0.0" axis="1 1 0" range="30 70"/>
            <geom name="fourth_ankle_geom" type="capsule" size="0.08" fromto="0.0 0.0 0.0 0.4 -0.4 0.0"/>
          </body>
        </body>
      </body>
    </body>
{walls}
  </worldbody>
  <actuator>
    <motor joint="hip_4" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="ankle_4" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="hip_1" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="ankle_1" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="hip_2" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="ankle_2" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="hip_3" ctrlrange="-30.0 30.0" ctrllimited="true"/>
    <motor joint="ankle_3" ctrlrange="-30.0 30.0" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


def maze_of(task: str) -> str:
    """``umaze``, ``medium`` or ``large`` for an ``antmaze-<maze>[-play|-diverse]-v2`` name."""
    maze = task.split("-")[1]
    if not task.startswith("antmaze-") or maze not in MAZES:
        raise ValueError(f"{task!r} is not a D4RL antmaze task (antmaze-{{umaze,medium,large}}[-...]-v2)")
    return maze


def _cell(maze: str, kind: str) -> tuple[int, int]:
    return next((i, j) for i, row in enumerate(MAZES[maze]) for j, c in enumerate(row) if c == kind)


def cell_xy(maze: str, i: int, j: int) -> tuple[float, float]:
    """Centre of cell ``(row i, column j)`` in D4RL's frame (the ``r`` cell at the origin)."""
    ri, rj = _cell(maze, R)
    return j * MAZE_SCALING - rj * MAZE_SCALING, i * MAZE_SCALING - ri * MAZE_SCALING


def wall_boxes(maze: str) -> list[tuple[str, tuple[float, float, float], tuple[float, float, float]]]:
    """``(name, centre, half-size)`` of every wall box, in map order (maze_env.py:177-196)."""
    half = 0.5 * MAZE_SCALING
    zh = MAZE_HEIGHT / 2 * MAZE_SCALING
    out = []
    for i, row in enumerate(MAZES[maze]):
        for j, c in enumerate(row):
            if c == 1:
                x, y = cell_xy(maze, i, j)
                out.append((f"block_{i}_{j}", (x, y, zh), (half, half, zh)))
    return out


def goal_cell_xy(maze: str) -> tuple[float, float]:
    """Centre of the maze's ``g`` cell; the evaluation goal is this plus noise in [0, 1.5) per axis."""
    return cell_xy(maze, *_cell(maze, G))


def model_xml(maze: str, render_size: int = 480) -> str:
    walls = "\n".join(
        f'    <geom name="{name}" type="box" pos="{p[0]:f} {p[1]:f} {p[2]:f}" size="{s[0]:f} {s[1]:f} {s[2]:f}" '
        'contype="1" conaffinity="1" rgba="0.7 0.5 0.3 1.0"/>'
        for name, p, s in wall_boxes(maze)
    )
    return _ANT_XML.replace("{walls}", walls).replace("{render_size}", str(int(render_size)))


def _env_base():
    import gymnasium

    return gymnasium.Env


class D4RLAntMazeEnv(_env_base()):
    """One antmaze-*-v2 evaluation episode at a time: ``reset(seed=)`` -> (obs [29], info),
    ``step(action [8] in [-1, 1])`` -> (obs, reward, terminated, truncated, info) with ``info["success"]``.

    The episode limit is not in the env: :func:`fisher_decorator.envs.d4rl_tasks.make_d4rl_env` wraps it in
    gymnasium's ``TimeLimit`` with D4RL's ``max_episode_steps``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, maze: str, render_mode: str | None = None, width: int = 200, height: int = 200):
        import mujoco
        from gymnasium import spaces

        if maze not in MAZES:
            raise ValueError(f"unknown maze {maze!r}; D4RL's antmaze mazes are {', '.join(MAZES)}")
        self.maze = maze
        self.model = mujoco.MjModel.from_xml_string(model_xml(maze, max(width, height)))
        self.data = mujoco.MjData(self.model)
        self._mujoco = mujoco
        self.init_qpos = self.model.qpos0.copy()
        self.init_qvel = np.zeros(self.model.nv)
        self.ctrl_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = self.model.actuator_ctrlrange[:, 1].copy()
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        self.goal_cell_xy = np.array(goal_cell_xy(maze))
        self.target_goal = self.goal_cell_xy.copy()
        self.render_mode = render_mode
        self._size = (height, width)
        self._renderer = None

    @property
    def dt(self) -> float:
        return float(self.model.opt.timestep) * FRAME_SKIP

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:15], self.data.qvel[:14]]).astype(np.float64)

    def xy(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    def sample_goal(self) -> np.ndarray:
        """maze_env.py:236-258 for a map with one ``g`` cell."""
        rng = self.np_random
        xy = self.goal_cell_xy + rng.uniform(0.0, MAZE_SCALING * 0.25, size=2)
        xy = xy + rng.uniform(0.0, 0.5, size=2) * 0.25 * MAZE_SCALING
        return np.maximum(xy, 0.0)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self._mujoco.mj_forward(self.model, self.data)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.target_goal = self.sample_goal()  # v2: the goal first, then the ant (ant.py:186-202)
        self._mujoco.mj_resetData(self.model, self.data)
        rng = self.np_random
        qpos = self.init_qpos + rng.uniform(-0.1, 0.1, size=self.model.nq)
        qvel = self.init_qvel + rng.standard_normal(self.model.nv) * 0.1
        self.set_state(qpos, qvel)
        return self._obs(), {"goal": self.target_goal.copy(), "success": 0.0}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        ctrl = self.ctrl_low + (a + 1.0) * 0.5 * (self.ctrl_high - self.ctrl_low)
        self.data.ctrl[:] = np.clip(ctrl, self.ctrl_low, self.ctrl_high)
        self._mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        reached = bool(np.linalg.norm(self.xy() - self.target_goal) <= GOAL_RADIUS)
        info = {"goal": self.target_goal.copy(), "success": float(reached)}
        return self._obs(), 1.0 if reached else 0.0, reached, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = self._mujoco.Renderer(self.model, *self._size)
        self._renderer.update_scene(self.data, camera="track")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
