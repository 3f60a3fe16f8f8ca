"""Online fine-tuning on the toy bandit (its reward as a one-step environment): the CLI, balanced vs plain
sampling, fix_bc_flow_online, and resume of a crashed or killed online run (bit-identical here: every
checkpoint falls on an episode boundary)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.cli import main
from fisher_decorator.envs.toy_bandit import reward
from fisher_decorator.logger import read_csv
from fisher_decorator.online import OnlineConfig, finetune_trainer
from fisher_decorator.trainer import Trainer
from tests.sweep_helpers import HANG_GUARD, wait_for
from tests.train_helpers import assert_states_equal, full_state, tiny_configs

ROOT = Path(__file__).resolve().parent.parent
TINY_SETS = [
    *("--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=3"),
    *("--set", "batch_size=16", "--set", "num_fisher_samples=2", "--set", "tensorboard=false"),
]
SCHEDULE = ["--log-interval", "2", "--eval-interval", "5", "--save-interval", "5", "--eval-episodes", "32"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--agent", "fidec", "--out", str(out), "--no-progress", "--no-plot", *extra])


def _chunks(run: Path) -> dict[str, np.ndarray]:
    index = json.loads((run / "replay" / "index.json").read_text())
    parts = [np.load(run / "replay" / c["file"]) for c in index["chunks"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("online") / "offline"
    assert _train(out, "--steps", "10", *SCHEDULE, *TINY_SETS) == 0
    return out


ONLINE_ARGS = ["--steps", "10", "--online-steps", "12", "--buffer-size", "30000", *SCHEDULE, *TINY_SETS]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory) -> tuple[Path, str]:
    """10 offline then 12 online steps, straight through (``fidec train --online-steps``), and its output."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("online") / "straight"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert _train(out, *ONLINE_ARGS) == 0
    return out, text.getvalue()


def test_train_with_online_steps_through_the_cli(online_run):
    out, text = online_run
    assert "online: 12 steps, evaluation/success before " in text
    summary = json.loads((out / "summary.json").read_text())
    online = summary["online"]
    assert (summary["steps"], online["env_steps"], online["episodes"]) == (22, 12, 12)  # one-step episodes
    assert online["buffer_capacity"] == 30_000 and online["buffer_size"] == 20_012  # the data + 12 online
    evals = read_csv(out / "eval.csv")
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 22]  # the online phase's intervals count from 10
    assert online["score_before"] == evals[1]["evaluation/success"]
    assert online["score_after"] == evals[-1]["evaluation/success"]
    rows = {r["step"]: r for r in read_csv(out / "train.csv")}
    assert "exploration/episode.return" not in rows[10]  # offline rows: no exploration yet
    assert rows[12]["exploration/episode.length"] == 1.0 and rows[22]["exploration/total.timesteps"] == 12.0
    stored = _chunks(out)
    assert len(stored["actions"]) == 12
    # the authors' conventions: terminals = done, masks = 1 - terminated (the bandit terminates every step)
    assert (stored["terminals"] == 1).all() and (stored["masks"] == 0).all()
    assert np.array_equal(stored["rewards"], reward(stored["actions"]).astype(np.float32))  # no shift here
    assert np.array_equal(stored["next_observations"], stored["observations"])
    assert rows[22]["exploration/episode.return"] == pytest.approx(float(reward(stored["actions"][-1:])[0]))


def test_finetune_from_an_offline_run_and_fix_bc_flow_online(offline_run, tmp_path, capsys):
    frozen, free = tmp_path / "frozen", tmp_path / "free"
    base = ["finetune", "--run", str(offline_run), "--online-steps", "6", "--no-progress", *SCHEDULE[:6]]
    assert main([*base, "--out", str(frozen), "--set", "fix_bc_flow_online=true"]) == 0
    assert "online steps after 10 offline" in capsys.readouterr().out
    assert main([*base, "--out", str(free)]) == 0
    start = load_checkpoint(offline_run / "checkpoint.pt")["agent"]["model"]
    for run, flow_moves in ((frozen, False), (free, True)):
        state = load_checkpoint(run / "checkpoint.pt")
        assert state["step"] == 16 and state["agent"]["num_updates"] == 16
        model = state["agent"]["model"]
        flow = [k for k in model if k.startswith("velocity_field.")]
        others = [k for k in model if k.startswith(("residual.", "critic."))]
        assert flow and others
        assert any(not torch.equal(model[k], start[k]) for k in others), run
        assert any(not torch.equal(model[k], start[k]) for k in flow) == flow_moves, run
        if not flow_moves:  # frozen: bit for bit, and the logged flow loss is the authors' 0
            assert all(torch.equal(model[k], start[k]) for k in flow)
            assert {r["actor/bc_flow_loss"] for r in read_csv(run / "train.csv")} == {0.0}
    config = json.loads((frozen / "config.json").read_text())
    assert config["restored_from"]["step"] == 10 and config["online"]["online_steps"] == 6
    summary = json.loads((frozen / "summary.json").read_text())
    offline_eval = read_csv(offline_run / "eval.csv")[-1]
    assert summary["online"]["score_before"] == offline_eval["evaluation/success"]
    assert [r["step"] for r in read_csv(frozen / "eval.csv")] == [15, 16]  # its own rows only


@pytest.mark.parametrize("balanced", [False, True])
def test_balanced_sampling_takes_half_of_each_batch_from_the_online_buffer(offline_run, tmp_path, balanced):
    seen = {}

    def inspect(step, trainer):
        loop = trainer.online_loop
        if step == 15:
            saved = loop.batch_gen.get_state()
            seen["batch"] = loop._sample(64)
            loop.batch_gen.set_state(saved)
            seen["size"], seen["capacity"] = loop.buffer.size, loop.buffer.capacity
            seen["online"] = set(map(tuple, _chunks_live(loop)))

    trainer = finetune_trainer(
        offline_run,
        tmp_path / "run",
        online={"online_steps": 5, "balanced_sampling": balanced, "buffer_size": 50 if balanced else 30_000},
        flags={"progress": False, "eval_interval": 0},
    )
    trainer.callback = inspect
    trainer.run()
    actions = [tuple(a) for a in seen["batch"]["actions"].tolist()]
    from_online = [a in seen["online"] for a in actions]
    assert len(seen["online"]) == 5
    if balanced:  # a separate buffer of the online transitions; the first half from the offline data
        assert (seen["size"], seen["capacity"]) == (5, 50)
        assert from_online == [False] * 32 + [True] * 32
    else:  # the offline data is the start of one buffer (capacity max(buffer_size, N + 1))
        assert (seen["size"], seen["capacity"]) == (20_005, 30_000)
        assert sum(from_online) < 32


def _chunks_live(loop) -> list[list[float]]:
    """The online actions added so far (the buffer's rows past the offline data, or all rows when balanced)."""
    start = loop.store.offset
    return loop.buffer.tensors["actions"][start : start + loop.store.count].tolist()


class Crash(RuntimeError):
    pass


def _online_state(trainer) -> dict:
    loop = trainer.online_loop
    return {
        **full_state(trainer),
        "buffer": {k: v[: loop.buffer.size] for k, v in loop.buffer.tensors.items()},
        "online": {k: v for k, v in loop.state().items() if k not in ("env_time", "update_time")},
    }


def test_a_crashed_online_run_resumes_bit_identically(tmp_path):
    train_cfg, agent_cfg, record = tiny_configs("deflow", steps=10, save_interval=5, log_interval=2)
    online = OnlineConfig(online_steps=12, balanced_sampling=True, buffer_size=64)

    def crash(step, trainer):
        if step == 18:  # after the online checkpoint at 15, three updates and transitions past it
            raise Crash

    straight = Trainer(train_cfg, agent_cfg, tmp_path / "straight", record=record, online=online)
    straight.run()
    with pytest.raises(Crash):
        Trainer(
            train_cfg, agent_cfg, tmp_path / "crashed", record=record, online=online, callback=crash
        ).run()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["online"]["transitions"] == 5
    resumed = Trainer(train_cfg, agent_cfg, tmp_path / "crashed", resume=True, record=record, online=online)
    resumed.run()
    assert_states_equal(_online_state(straight), _online_state(resumed))
    for name in ("train.csv", "eval.csv"):
        a, b = (read_csv(tmp_path / d / name) for d in ("straight", "crashed"))
        strip = [[{k: v for k, v in r.items() if not k.startswith("time/")} for r in x] for x in (a, b)]
        assert strip[0] == strip[1], name


_BLOCK_AFTER = """
import sys, threading
from pathlib import Path
from fisher_decorator.trainer import Trainer
from fisher_decorator.cli import main
real = Trainer.end_step
def end_step(self, step, row, dt):
    real(self, step, row, dt)
    if step == 18:  # 3 online steps past the checkpoint at 15: announce it, then hang until killed
        Path(sys.argv[1]).write_text("at 18")
        threading.Event().wait()
Trainer.end_step = end_step
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_online_run_resumes_through_the_cli(tmp_path, online_run):
    straight, args = online_run[0], ONLINE_ARGS
    out, marker = tmp_path / "killed", tmp_path / "marker"
    cmd = [sys.executable, "-c", _BLOCK_AFTER, str(marker), "train", "--agent", "fidec", "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--no-progress", "--no-plot", *args], cwd=ROOT)
    try:
        wait_for(marker.exists, "the run to reach online step 8", timeout=HANG_GUARD, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 15 and state["online"]["transitions"] == 5
    assert _train(out, "--resume") == 0
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (straight, out))
    assert_states_equal(a["agent"]["model"], b["agent"]["model"])
    assert_states_equal(a["online"]["batch_generator"], b["online"]["batch_generator"])
    assert np.array_equal(_chunks(straight)["actions"], _chunks(out)["actions"])
    assert json.loads((out / "config.json").read_text())["resumed_at"] == [15]
