"""Runs the authors' ``main.py`` unchanged, with Weights & Biases disabled; used by benchmarks/fidelity.py.

    JAXPY -m benchmarks.authors_main --authors-repo DIR -- --env_name=... --agent=DIR/agents/fidec.py ...

Their ``setup_wandb`` hard-codes ``mode='online'`` (which would try the network) and a ``wandb.Settings``
argument that current wandb rejects; this wrapper replaces it by ``wandb.init(mode='disabled')`` and hands the remaining arguments to their absl ``main``. Their
CsvLogger still writes ``train.csv`` / ``eval.csv`` under ``--save_dir``. Runs in a Python with jax, flax,
optax, distrax, ml_collections, ogbench and wandb; nothing of theirs is copied here.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    argv = sys.argv[1:]
    if "--authors-repo" not in argv or "--" not in argv:
        raise SystemExit("usage: -m benchmarks.authors_main --authors-repo DIR -- <their main.py flags>")
    repo = argv[argv.index("--authors-repo") + 1]
    their_argv = argv[argv.index("--") + 1 :]
    repo = os.path.abspath(repo)
    sys.path.insert(0, repo)
    os.chdir(repo)  # their default --agent path (agents/deflow.py) is relative to the checkout

    import utils.log_utils as log_utils
    import wandb
    from absl import app

    def setup_wandb(entity=None, project="project", group=None, name=None, mode="online"):
        # Theirs passes wandb.Settings(start_method=...), which current wandb rejects; nothing is logged anyway.
        return wandb.init(entity=entity, project=project, group=group, name=name, mode="disabled")

    log_utils.setup_wandb = setup_wandb  # before main.py's `from utils.log_utils import setup_wandb`
    import main as authors

    app.run(authors.main, argv=[os.path.join(repo, "main.py"), *their_argv])


if __name__ == "__main__":
    main()
