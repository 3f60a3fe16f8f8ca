"""``fidec export``: a trained policy as one file that runs with plain PyTorch (no compiled extension).

fidec export --run runs/cube2-fidec --out cube2-fidec.safetensors
fidec export --run runs/cube2-fidec --format torchscript --out cube2-fidec.pt

The file holds the acting part of the agent (behaviour flow and residual, or FQL's one-step policy; for
pixel runs also their image encoders, taking uint8 frames [N, H, W, 3 * frame_stack]) and the config it needs. Load it with ``fisher_decorator/exported_policy.py`` (a standalone file:
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


def _copy_encoder(dst, src) -> None:
    """An agent's ImpalaEncoder (``stacks[i].conv / blocks[j][0..1]``, ``dense``) into the exported one."""
    for d, s in zip(dst.stacks, src.stacks, strict=True):
        d.conv.load_state_dict(s.conv.state_dict())
        for db, (conv_a, conv_b) in zip(d.blocks, s.blocks, strict=True):
            db.conv_a.load_state_dict(conv_a.state_dict())
            db.conv_b.load_state_dict(conv_b.state_dict())
    for d, s in zip(dst.dense, src.dense, strict=True):
        d.load_state_dict(s.state_dict())


def _encoder_config(agent, frame_stack: int | None) -> dict[str, Any]:
    """What the standalone loader needs to rebuild a pixel agent's encoders (it cannot import ours)."""
    enc = agent.velocity_field.encoder  # every network's encoder has the same architecture
    return {
        "obs_shape": list(agent.obs_shape),
        "frame_stack": int(frame_stack or 1),
        "encoder": {
            "name": agent.config.encoder,
            "stack_sizes": [s.conv.out_channels for s in enc.stacks],
            "num_blocks": len(enc.stacks[0].blocks),
            "mlp_dims": [lin.out_features for lin in enc.dense],
            "dtype": agent.config.encoder_dtype,
        },
    }


def policy_from_agent(agent, extra: dict[str, Any] | None = None, *, frame_stack: int | None = None):
    """The agent's acting part as an :class:`~fisher_decorator.exported_policy.ExportedPolicy` (its
    default ``sample_actions`` for given noise, through the plain PyTorch reference path). Pixel agents:
    with the flow's and the actor's encoders (``frame_stack``: the run's, recorded for the caller)."""
    from fisher_decorator.exported_policy import FORMAT, FORMAT_VERSION, PIXEL_FORMAT_VERSION, ExportedPolicy

    cfg = agent.config
    pixels = agent.obs_shape is not None
    config = {
        "format": FORMAT,
        "format_version": PIXEL_FORMAT_VERSION if pixels else FORMAT_VERSION,
        "agent": agent.name,
        "obs_dim": agent.obs_dim,
        "action_dim": agent.action_dim,
        "flow_steps": cfg.flow_steps,
        "actor_hidden_dims": list(cfg.actor_hidden_dims),
        "actor_layer_norm": bool(cfg.actor_layer_norm),
        **(_encoder_config(agent, frame_stack) if pixels else {}),
        **(extra or {}),
    }
    policy = ExportedPolicy(config).to(dtype=agent.dtype)
    actor = agent.onestep_policy if agent.name == "fql" else agent.residual
    if agent.name == "fql":
        _copy_mlp(policy.policy, actor)
    else:
        _copy_mlp(policy.velocity_field, agent.velocity_field)
        _copy_mlp(policy.residual, actor)
        if pixels:
            _copy_encoder(policy.flow_encoder, agent.velocity_field.encoder)
    if pixels:
        _copy_encoder(policy.actor_encoder, actor.encoder)
    return policy.eval()


def export_run(run: str | Path, out: str | Path, fmt: str = "safetensors", checkpoint=None) -> dict[str, Any]:
    """Write the policy of the run in ``run`` to ``out`` (atomically); returns the config stored with it."""
    from fisher_decorator.trainer import load_agent

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    agent, train_cfg, step = load_agent(run, checkpoint=checkpoint, device="cpu")
    extra = {"task": train_cfg.task, "seed": train_cfg.seed, "step": step, "run": str(run)}
    policy = policy_from_agent(agent, extra, frame_stack=train_cfg.frame_stack)
    return write_policy(policy, out, fmt)


def write_policy(policy, out: str | Path, fmt: str = "safetensors") -> dict[str, Any]:
    """``policy`` (from :func:`policy_from_agent`) to ``out`` in ``fmt``, atomically; returns its config."""
    import torch

    from fisher_decorator.checkpoint import atomic_write
    from fisher_decorator.exported_policy import METADATA_KEY

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
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
    obs = (
        f"frames {'x'.join(map(str, config['obs_shape']))} uint8 (frame_stack {config['frame_stack']})"
        if config.get("encoder")
        else f"obs_dim {config['obs_dim']}"
    )
    print(
        f"{config['agent']} policy of {args.run} (step {config['step']}, {obs}, "
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
