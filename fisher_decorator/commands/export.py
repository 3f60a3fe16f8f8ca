"""``fidec export``: a trained policy as one file that runs with plain PyTorch (no compiled extension).

fidec export --run runs/cube2-fidec --out cube2-fidec.safetensors
fidec export --run runs/cube2-fidec --format torchscript --out cube2-fidec.pt

The file holds the acting part of the agent (behaviour flow and residual, or FQL's one-step policy)
and the config it needs. Load it with ``fisher_decorator/exported_policy.py`` (a standalone file:
``load_policy(path)(obs, noise)``) or, for TorchScript, ``torch.jit.load(path)(obs, noise)``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

FORMATS = ("safetensors", "torchscript")


def _copy_mlp(dst, src) -> None:
    """Weights of an agent MLP (``linears``, ``norms``) into an exported MLP (``hidden[i]``, ``out``)."""
    *hidden, last = list(src.linears)
    if len(hidden) != len(dst.hidden):
        raise ValueError(f"MLP depth {len(hidden)} != exported {len(dst.hidden)}")
    for i, lin in enumerate(hidden):
        dst.hidden[i].linear.load_state_dict(lin.state_dict())
        if src.layer_norm:
            dst.hidden[i].norm.load_state_dict(src.norms[i].state_dict())
    dst.out.load_state_dict(last.state_dict())


def policy_from_agent(agent, extra: dict[str, Any] | None = None):
    """The agent's acting part as an :class:`~fisher_decorator.exported_policy.ExportedPolicy` (its
    default ``sample_actions`` for given noise, through the plain PyTorch reference path)."""
    from fisher_decorator.exported_policy import FORMAT, FORMAT_VERSION, ExportedPolicy

    cfg = agent.config
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "agent": agent.name,
        "obs_dim": agent.obs_dim,
        "action_dim": agent.action_dim,
        "flow_steps": cfg.flow_steps,
        "actor_hidden_dims": list(cfg.actor_hidden_dims),
        "actor_layer_norm": bool(cfg.actor_layer_norm),
        **(extra or {}),
    }
    policy = ExportedPolicy(config).to(dtype=agent.dtype)
    if agent.name == "fql":
        _copy_mlp(policy.policy, agent.onestep_policy)
    else:
        _copy_mlp(policy.velocity_field, agent.velocity_field)
        _copy_mlp(policy.residual, agent.residual)
    return policy.eval()


def export_run(run: str | Path, out: str | Path, fmt: str = "safetensors", checkpoint=None) -> dict[str, Any]:
    """Write the policy of the run in ``run`` to ``out`` (atomically); returns the config stored with it."""
    import torch

    from fisher_decorator.checkpoint import atomic_write
    from fisher_decorator.exported_policy import METADATA_KEY
    from fisher_decorator.trainer import load_agent

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    agent, train_cfg, step = load_agent(run, checkpoint=checkpoint, device="cpu")
    extra = {"task": train_cfg.task, "seed": train_cfg.seed, "step": step, "run": str(run)}
    policy = policy_from_agent(agent, extra)
    text = json.dumps(policy.config)
    if fmt == "safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise ImportError(
                "--format safetensors needs the safetensors package: pip install 'fisher-decorator[export]' "
                "(or use --format torchscript)"
            ) from None
        state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
        data = save(state, metadata={METADATA_KEY: text})
        with atomic_write(out) as f:
            f.write(data)
    else:
        with (
            warnings.catch_warnings()
        ):  # TorchScript is deprecated in favour of torch.export; still loads anywhere
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(policy)
            with atomic_write(out) as f:
                torch.jit.save(scripted, f, _extra_files={f"{METADATA_KEY}.json": text})
    return policy.config


def _run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        fmt = "torchscript" if Path(args.out).suffix in (".pt", ".ts", ".pth") else "safetensors"
    config = export_run(args.run, args.out, fmt, checkpoint=args.checkpoint)
    print(
        f"{config['agent']} policy of {args.run} (step {config['step']}, obs_dim {config['obs_dim']}, "
        f"action_dim {config['action_dim']}) -> {args.out} ({fmt})"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's policy to one file that runs with plain PyTorch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (holds config.json and checkpoint.pt)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="safetensors (weights + config; load with exported_policy.load_policy) or torchscript "
        "(torch.jit.load); default: torchscript for .pt/.ts/.pth, else safetensors",
    )
    p.add_argument("--checkpoint", help="a checkpoint file other than the run's latest")
    p.set_defaults(func=_run)
