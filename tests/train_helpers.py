"""Small, fast run configs on the built-in toy task for the trainer and CLI tests."""

from __future__ import annotations

import torch

from fisher_decorator.trainer import Trainer, resolve_configs

TINY = {
    "actor_hidden_dims": "16,16",
    "value_hidden_dims": "16,16",
    "flow_steps": "3",
}
FIDEC_TINY = {"num_fisher_samples": "2"}


def tiny_configs(agent="fidec", task="toy-bandit", **train):
    flags = {
        "steps": 20,
        "log_interval": 5,
        "eval_interval": 10,
        "eval_episodes": 64,
        "save_interval": 10,
        "progress": False,
        "batch_size": 16,
        **train,
    }
    overrides = {**TINY, **(FIDEC_TINY if agent == "fidec" else {})}
    return resolve_configs(task, agent, flags=flags, overrides=overrides)


def run_tiny(run_dir, agent="fidec", *, resume=False, callback=None, **train):
    train_cfg, agent_cfg, record = tiny_configs(agent, **train)
    trainer = Trainer(train_cfg, agent_cfg, run_dir, resume=resume, record=record, callback=callback)
    return trainer, trainer.run()


def full_state(trainer) -> dict:
    """Everything that must agree between a straight and a resumed run."""
    state = trainer.checkpoint_state()
    return {
        "model": state["agent"]["model"],
        "optimizer": state["agent"]["optimizer"]["state"],
        "noise_generator": state["agent"]["noise_generator"],
        "sampler": state["sampler"],
        "num_updates": state["agent"]["num_updates"],
        "step": state["step"],
    }


def assert_states_equal(a: dict, b: dict, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    else:
        assert a == b, f"{path}: {a} != {b}"
