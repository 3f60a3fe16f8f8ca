"""Run logs: CSV files (train.csv, eval.csv), TensorBoard event files and, optionally, Weights & Biases.

The CSV logger keeps one header for a file and rewrites the file when a new column appears; on
resume it drops the rows past the checkpoint's step, so a resumed run's logs read as one run.
W&B gets the authors' (FQL's) metric names, so curves overlay theirs: update metrics as
``training/critic/critic_loss``, ``training/actor/...``, and ``validation/...``, ``evaluation/...``,
``time/...`` as in the CSV files.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Any

from fisher_decorator.checkpoint import atomic_write


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def read_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a log CSV with numbers as floats (empty cells left out)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out = {}
            for k, v in row.items():
                if v in ("", None):
                    continue
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
            rows.append(out)
    return rows


class CSVLogger:
    """Appends rows ``{"step": int, name: value, ...}`` to a CSV file."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None):
        self.path = Path(path)
        self.fields: list[str] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step") and float(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_write(self.path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, row: dict[str, Any], step: int) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in row.items()}}
        new = [k for k in row if k not in self.fields]
        if new:
            old_rows = []
            if self.path.exists() and self.fields:
                with open(self.path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self.fields = self.fields + new if self.fields else list(row)
            self._rewrite(old_rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


class TensorBoardLogger:
    """Scalars to TensorBoard; events past ``purge_step`` are discarded on resume."""

    def __init__(self, log_dir: str | os.PathLike, *, purge_step: int | None = None):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the [logging] extra: one line, not a warning's two
            print(
                "TensorBoard logging off: tensorboard is not installed (pip install 'fisher-decorator[logging]')",
                file=sys.stderr,
            )
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, row: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, global_step=step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def authors_metric_name(key: str) -> str:
    """The name FQL's (and the FiDec authors') main.py logs a metric under: update metrics get ``training/``."""
    if key.startswith(("evaluation/", "validation/", "time/", "training/")):
        return key
    return f"training/{key}"


class WandbLogger:
    """One W&B run per run directory; a resumed run continues the same W&B run (its id is in config.json).

    Args:
        run_dir: the run directory (W&B's files go to ``<run_dir>/wandb``).
        run_id: the W&B run id (new runs: :func:`new_wandb_id`).
        project, entity, group, name: W&B's fields.
        config: the run's configs, shown in W&B's run table.
    """

    def __init__(
        self, run_dir, *, run_id: str, project: str, entity=None, group=None, name=None, config=None
    ):
        try:
            import wandb
        except ImportError:
            raise ImportError(
                "W&B logging (--wandb) needs the wandb package: pip install 'fisher-decorator[wandb]'"
            ) from None
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            id=run_id,
            resume="allow",
            config=config,
            dir=str(run_dir),
        )

    def log(self, row: dict[str, float], step: int) -> None:
        self.run.log(
            {authors_metric_name(k): v for k, v in row.items() if isinstance(v, (int, float))}, step=step
        )

    def close(self) -> None:
        self.run.finish()


def new_wandb_id() -> str:
    """A W&B run id (8 lowercase letters and digits, as wandb.util.generate_id makes them)."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))
