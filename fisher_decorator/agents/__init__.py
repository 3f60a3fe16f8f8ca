"""The agents: FiDec, and the two baselines it is measured against, DeFlow and FQL.

``make_agent("fidec", obs_dim, action_dim, config)`` builds one; ``AGENTS`` maps names to classes,
each with its ``config_class`` (a frozen dataclass, one doc per field).
"""

from __future__ import annotations

from typing import Any

import torch

from fisher_decorator.agents.base import AgentConfig, FlowAgent, FlowNoise, derive_seed
from fisher_decorator.agents.deflow import DeFlowAgent, DeFlowConfig
from fisher_decorator.agents.fidec import FiDecAgent, FiDecConfig, FiDecNoise
from fisher_decorator.agents.fql import FQLAgent, FQLConfig
from fisher_decorator.agents.residual import ResidualAgent, ResidualConfig

AGENTS: dict[str, type[FlowAgent]] = {"fidec": FiDecAgent, "deflow": DeFlowAgent, "fql": FQLAgent}


def agent_class(name: str) -> type[FlowAgent]:
    try:
        return AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}") from None


def overrides_for(agent: str, agents, items: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` items that apply to ``agent`` when one command runs ``agents`` (``fidec train --agent
    fidec,fql``, a sweep): train fields and its own fields; a field only another agent has is left out. A
    ``train.``/``agent.`` prefix forces the side; unknown names stay, so resolving reports them with the valid fields."""
    from fisher_decorator.config import TrainConfig, field_names

    train = set(field_names(TrainConfig))
    own = set(field_names(agent_class(agent).config_class))
    others = {n for a in agents for n in field_names(agent_class(a).config_class)}
    out = {}
    for key, value in items.items():
        side, _, name = key.rpartition(".")
        if side == "agent" and name not in own and name in others:
            continue
        if side or name in train or name in own or name not in others:
            out[key] = value
    return out


def make_agent(
    name: str,
    obs_dim: int,
    action_dim: int,
    config: AgentConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FlowAgent:
    """The agent ``name`` with ``config`` (default: its config class's defaults)."""
    cls = agent_class(name)
    return cls(
        config if config is not None else cls.config_class(),
        obs_dim,
        action_dim,
        seed=seed,
        device=device,
        dtype=dtype,
    )


__all__ = [
    "AGENTS",
    "AgentConfig",
    "DeFlowAgent",
    "DeFlowConfig",
    "FQLAgent",
    "FQLConfig",
    "FiDecAgent",
    "FiDecConfig",
    "FiDecNoise",
    "FlowAgent",
    "FlowNoise",
    "ResidualAgent",
    "ResidualConfig",
    "agent_class",
    "derive_seed",
    "make_agent",
    "overrides_for",
]
