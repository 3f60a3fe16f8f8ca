"""D4RL's Adroit v1 evaluation environments (pen, door, hammer, relocate) on gymnasium-robotics.

gymnasium-robotics' ``AdroitHand*-v1`` are ports of D4RL's ``hand_dapg`` envs onto the ``mujoco`` bindings: the
same MJCF models, actuator gains, frame skip (5), action scaling, observation (pen 45, door 39, hammer 46,
relocate 39 numbers) and reset distributions. Two things differ from D4RL and are put back here, because D4RL's
normalised score is defined on D4RL's return:

- The reward. D4RL's dense rewards (d4rl/hand_manipulation_suite/{pen,door,hammer,relocate}_v0.py, ``step``) start
  with ``-0.1 * ||palm - handle/hammer/object||``; gymnasium-robotics 1.2.1+ adds it with the opposite sign (its
  own warning, Gymnasium-Robotics PR 220). :func:`d4rl_reward` computes D4RL's formula from the simulator state.
- Termination. D4RL's pen ends the episode when the pen falls (``obj_pos[2] < 0.075``, pen_v0.py ``step``);
  gymnasium-robotics never terminates. The episode limits are D4RL's (pen 100, the others 200 steps,
  hand_manipulation_suite/__init__.py ``MAX_STEPS``), not gymnasium-robotics' 200 for every env.

The physics is MuJoCo >= 3 rather than D4RL's MuJoCo 2.0 through mujoco-py (same model), so returns agree as
statistics over episodes, not step by step.
"""

from __future__ import annotations

import numpy as np

GYMNASIUM_IDS = {
    "pen": "AdroitHandPen-v1",
    "door": "AdroitHandDoor-v1",
    "hammer": "AdroitHandHammer-v1",
    "relocate": "AdroitHandRelocate-v1",
}


def adroit_env_of(task: str) -> str:
    """``pen``, ``door``, ``hammer`` or ``relocate`` for ``<env>-<human|cloned|expert>-v1``."""
    env = task.split("-")[0]
    if env not in GYMNASIUM_IDS:
        raise ValueError(f"{task!r} is not a D4RL Adroit task (<pen|door|hammer|relocate>-<dataset>-v1)")
    return env


def d4rl_reward(env: str, u) -> tuple[float, bool, bool]:
    """(reward, done, goal_achieved) of D4RL's ``<env>_v0.py`` ``step`` from the state of the unwrapped
    gymnasium-robotics env ``u`` after its simulation step (``ADD_BONUS_REWARDS = True`` as in D4RL)."""
    d = u.data
    if env == "pen":
        obj_pos = d.xpos[u.obj_body_id].ravel()
        desired_loc = d.site_xpos[u.eps_ball_site_id].ravel()
        obj_orien = (d.site_xpos[u.obj_t_site_id] - d.site_xpos[u.obj_b_site_id]) / u.pen_length
        desired_orien = (d.site_xpos[u.tar_t_site_id] - d.site_xpos[u.tar_b_site_id]) / u.tar_length
        dist = float(np.linalg.norm(obj_pos - desired_loc))
        orien = float(np.dot(obj_orien, desired_orien))
        reward = -dist + orien
        if dist < 0.075 and orien > 0.9:
            reward += 10
        if dist < 0.075 and orien > 0.95:
            reward += 50
        done = bool(obj_pos[2] < 0.075)
        if done:
            reward -= 5
        return reward, done, dist < 0.075 and orien > 0.95
    if env == "door":
        handle = d.site_xpos[u.handle_site_id].ravel()
        palm = d.site_xpos[u.grasp_site_id].ravel()
        door = float(np.asarray(d.qpos[u.door_hinge_addrs]).ravel()[0])
        reward = -0.1 * float(np.linalg.norm(palm - handle))
        reward += -0.1 * (door - 1.57) * (door - 1.57)
        reward += -1e-5 * float(np.sum(d.qvel**2))
        reward += 2 * (door > 0.2) + 8 * (door > 1.0) + 10 * (door > 1.35)
        return reward, False, door >= 1.35
    if env == "hammer":
        obj = d.xpos[u.obj_body_id].ravel()
        palm = d.site_xpos[u.S_grasp_site_id].ravel()
        tool = d.site_xpos[u.tool_site_id].ravel()
        target = d.site_xpos[u.target_obj_site_id].ravel()
        goal = d.site_xpos[u.goal_site_id].ravel()
        nail = float(np.linalg.norm(target - goal))
        reward = -0.1 * float(np.linalg.norm(palm - obj))
        reward -= float(np.linalg.norm(tool - target))
        reward -= 10 * nail
        reward -= 1e-2 * float(np.linalg.norm(d.qvel.ravel()))
        if obj[2] > 0.04 and tool[2] > 0.04:
            reward += 2
        reward += 25 * (nail < 0.020) + 75 * (nail < 0.010)
        return reward, False, nail < 0.010
    if env == "relocate":
        obj = d.xpos[u.obj_body_id].ravel()
        palm = d.site_xpos[u.S_grasp_site_id].ravel()
        target = d.site_xpos[u.target_obj_site_id].ravel()
        gap = float(np.linalg.norm(obj - target))
        reward = -0.1 * float(np.linalg.norm(palm - obj))
        if obj[2] > 0.04:
            reward += 1.0
            reward += -0.5 * float(np.linalg.norm(palm - target))
            reward += -0.5 * gap
        reward += 10.0 * (gap < 0.1) + 20.0 * (gap < 0.05)
        return reward, False, gap < 0.1
    raise ValueError(f"unknown Adroit env {env!r}")


def d4rl_observation(env: str, u) -> np.ndarray:
    """D4RL's ``get_obs`` (``<env>_v0.py``) computed from the simulator state: what the datasets hold."""
    from gymnasium_robotics.utils.rotations import quat2euler

    d = u.data
    qp = d.qpos.ravel()
    if env == "pen":
        obj_pos = d.xpos[u.obj_body_id].ravel()
        obj_orien = (d.site_xpos[u.obj_t_site_id] - d.site_xpos[u.obj_b_site_id]) / u.pen_length
        desired_orien = (d.site_xpos[u.tar_t_site_id] - d.site_xpos[u.tar_b_site_id]) / u.tar_length
        desired_pos = d.site_xpos[u.eps_ball_site_id].ravel()
        return np.concatenate(
            [
                qp[:-6],
                obj_pos,
                d.qvel[-6:],
                obj_orien,
                desired_orien,
                obj_pos - desired_pos,
                obj_orien - desired_orien,
            ]
        )
    if env == "door":
        handle = d.site_xpos[u.handle_site_id].ravel()
        palm = d.site_xpos[u.grasp_site_id].ravel()
        door = np.asarray(d.qpos[u.door_hinge_addrs]).ravel()[:1]
        door_open = 1.0 if door[0] > 1.0 else -1.0
        return np.concatenate([qp[1:-2], [qp[-1]], door, palm, handle, palm - handle, [door_open]])
    if env == "hammer":
        qv = np.clip(d.qvel.ravel(), -1.0, 1.0)
        impact = np.clip(d.sensordata[u.model.sensor("S_nail").id], -1.0, 1.0)
        return np.concatenate(
            [
                qp[:-6],
                qv[-6:],
                d.site_xpos[u.S_grasp_site_id].ravel(),
                d.xpos[u.obj_body_id].ravel(),
                quat2euler(d.xquat[u.obj_body_id].ravel()).ravel(),
                d.site_xpos[u.target_obj_site_id].ravel(),
                [impact],
            ]
        )
    obj = d.xpos[u.obj_body_id].ravel()
    palm = d.site_xpos[u.S_grasp_site_id].ravel()
    target = d.site_xpos[u.target_obj_site_id].ravel()
    return np.concatenate([qp[:-6], palm - obj, palm - target, obj - target])


def state_from_file(env, states: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    """The state dict ``set_env_state`` takes, from row ``row`` of a D4RL file's ``infos/`` arrays
    (``fisher_decorator.datasets.d4rl.read_d4rl_states``): exactly the keys the env's state space has."""
    keys = list(env.unwrapped._state_space.spaces)
    missing = [k for k in keys if k not in states]
    if missing:
        raise KeyError(f"infos/{missing} not in the file; the env's state needs {keys}")
    return {k: np.asarray(states[k][row], dtype=np.float64) for k in keys}


def set_state(env, state: dict[str, np.ndarray]) -> np.ndarray:
    """Set ``env`` (any wrapping of an Adroit env) to a D4RL state (``qpos``, ``qvel`` and the env's object keys,
    as :func:`state_from_file` gives them: gymnasium-robotics' ``set_env_state``); returns the observation there."""
    env.unwrapped.set_env_state(state)
    return env.unwrapped._get_obs()


def _wrapper_base():
    import gymnasium

    return gymnasium.Wrapper


class D4RLAdroitEnv(_wrapper_base()):
    """gymnasium-robotics' Adroit env with D4RL's reward and termination; ``info["success"]`` is D4RL's
    ``goal_achieved`` of the step."""

    def __init__(self, env: str, render_mode: str | None = None, width: int = 200, height: int = 200):
        import gymnasium
        import gymnasium_robotics

        gymnasium.register_envs(gymnasium_robotics)
        kwargs = {"render_mode": render_mode, "width": width, "height": height} if render_mode else {}
        base = gymnasium.make(GYMNASIUM_IDS[env], disable_env_checker=True, **kwargs).unwrapped
        super().__init__(base)
        self.adroit_env = env

    def step(self, action):
        obs, _, _, truncated, info = self.env.step(action)
        reward, done, achieved = d4rl_reward(self.adroit_env, self.env.unwrapped)
        info = {**info, "goal_achieved": bool(achieved), "success": float(achieved)}
        return obs, float(reward), bool(done), truncated, info
