"""The command line's errors: one line ``fidec <command>: error: <file or argument>: <problem>`` and exit
status 2 for every user error and bad file, a traceback only with FIDEC_DEBUG=1; files are loaded safely
(a crafted checkpoint cannot run code); the main job works without matplotlib."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fisher_decorator.checkpoint import CheckpointError, load_checkpoint
from fisher_decorator.cli import main
from tests.train_helpers import run_tiny

ROOT = Path(__file__).resolve().parent.parent
TINY_SETS = [
    *("--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16"),
    *("--set", "batch_size=16", "--set", "num_fisher_samples=2", "--set", "tensorboard=false"),
]


def error_line(capsys, command: str) -> str:
    """The one error line of a failed command (stderr may hold notices before it, never a traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("fidec")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fidec {command}: error: "), err
    assert err.rstrip().endswith(lines[0]), err  # nothing after the error line
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("errors") / "run"
    run_tiny(run, "fidec", steps=10, save_interval=10, eval_interval=0, tensorboard=False)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    from fisher_decorator import __version__

    assert capsys.readouterr().out.startswith(f"fidec {__version__} (torch ")


def test_unknown_device_is_one_line(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--steps", "1", "--device", "tpu", *TINY_SETS])
    assert code == 2
    assert "device 'tpu': not a torch device" in error_line(capsys, "train")
    assert not (tmp_path / "r").exists()


def test_int_tuple_field_says_integer(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--set", "actor_hidden_dims=abc"])
    assert code == 2
    line = error_line(capsys, "train")
    assert "actor_hidden_dims='abc': expected an integer, got 'abc'" in line and "float" not in line


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_checkpoint_with_resume_eval_and_plot(finished_run, tmp_path, capsys, damage):
    run = copy_run(finished_run, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2] if damage == "truncated" else b"")
    expected = (
        "truncated or not a torch checkpoint (no complete zip archive)"
        if damage == "truncated"
        else "empty or truncated file"
    )

    assert main(["train", "--out", str(run), "--resume", "--steps", "20", "--no-progress"]) == 2
    line = error_line(capsys, "train")
    assert f"{ckpt}: cannot read checkpoint: {expected}" in line

    assert main(["eval", "--run", str(run), "--episodes", "2"]) == 2
    assert f"{ckpt}: cannot read checkpoint" in error_line(capsys, "eval")

    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 2
    assert f"{ckpt}: cannot read checkpoint" in error_line(capsys, "plot")


def test_damaged_seed_checkpoint_in_a_stacked_resume_is_named(tmp_path, capsys):
    out = tmp_path / "ms"
    base = [
        "train",
        "--task",
        "toy-bandit",
        "--agent",
        "fql",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        "--no-plot",
    ]
    sets = ["--set", "save_interval=5", "--set", "eval_interval=0", "--set", "tensorboard=false"]
    assert main([*base, "--steps", "5", "--no-progress", *sets]) == 0
    ckpt = out / "seed1" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert main([*base, "--steps", "10", "--resume", "--no-progress"]) == 2
    line = error_line(capsys, "train")
    assert f"{ckpt}: cannot read checkpoint: truncated or not a torch checkpoint" in line


def test_truncated_config_json_is_named(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    config = run / "config.json"
    config.write_text(config.read_text()[:100])
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert f"{config}: not valid JSON" in error_line(capsys, "train")
    assert main(["eval", "--run", str(run)]) == 2
    assert f"{config}: not valid JSON" in error_line(capsys, "eval")
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 2
    assert f"{config}: not valid JSON" in error_line(capsys, "plot")


def test_traceback_only_with_fidec_debug(tmp_path, monkeypatch, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--device", "tpu"]
    assert main(argv) == 2
    error_line(capsys, "train")
    monkeypatch.setenv("FIDEC_DEBUG", "1")
    with pytest.raises(ValueError, match="not a torch device"):
        main(argv)


def test_data_command_errors_name_the_subcommand(tmp_path, capsys):
    assert main(["data", "info", "no-such-task-v0", "--dataset-dir", str(tmp_path)]) == 2
    assert "unknown task 'no-such-task-v0'" in error_line(capsys, "data info")


def test_sweep_and_report_errors_go_through_the_one_handler(tmp_path, monkeypatch, capsys):
    """Their errors are cli.main's one line, exit 2 (they used to print their own), and FIDEC_DEBUG raises."""
    cases = [
        (["sweep"], "sweep", "--out (the sweep directory) is required"),
        (["sweep", "--out", str(tmp_path / "s"), "--status"], "sweep", "no manifest"),
        (
            [
                "sweep",
                "--out",
                str(tmp_path / "s"),
                "--agents",
                "iql",
                "--tasks",
                "toy-bandit",
                "--seeds",
                "0",
            ],
            "sweep",
            "iql",
        ),
        (
            [
                "sweep",
                "--out",
                str(tmp_path / "s"),
                "--agents",
                "fql",
                "--tasks",
                "toy-bandit",
                "--seeds",
                "2-1",
            ],
            "sweep",
            "empty",
        ),
        (["report", str(tmp_path / "nothing")], "report", "no manifest.json and no run directories"),
    ]
    for argv, command, problem in cases:
        assert main(argv) == 2, argv
        assert problem in error_line(capsys, command), argv
    monkeypatch.setenv("FIDEC_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["report", str(tmp_path / "nothing")])


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious "checkpoint" would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_cannot_run_code(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    state = load_checkpoint(run / "checkpoint.pt")
    state["payload"] = _RunsACommand(marker)
    torch.save(state, run / "checkpoint.pt")

    for argv, command in (
        (["eval", "--run", str(run), "--episodes", "2"], "eval"),
        (["train", "--out", str(run), "--resume", "--steps", "20", "--no-progress"], "train"),
    ):
        assert main(argv) == 2
        line = error_line(capsys, command)
        assert "refused to load: it would call posix.system" in line
        assert not marker.exists()
    with pytest.raises(CheckpointError, match="nothing was run"):
        load_checkpoint(run / "checkpoint.pt")
    assert not marker.exists()
    # The file is what the test claims: an unsafe loader runs the command.
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_no_pickle_in_dataset_loading(tmp_path):
    """np.load never unpickles: an object array is refused and says what it is."""
    import numpy as np

    from fisher_decorator.datasets.errors import DatasetError
    from fisher_decorator.datasets.validation import read_npz

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, observations=np.array([_RunsACommand(marker)], dtype=object))
    with pytest.raises(DatasetError, match="object array"):
        read_npz(path)
    assert not marker.exists()
    with open(path, "rb") as f:  # the file really carries a pickle that runs the command
        np.load(f, allow_pickle=True)["observations"]
    assert marker.exists()


_BLOCK_MATPLOTLIB = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
import importlib.util
importlib.util.find_spec = (lambda f: lambda name, *a: None if name.split('.')[0] in ('matplotlib', 'tensorboard') else f(name, *a))(importlib.util.find_spec)
from fisher_decorator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_toy_main_job_without_matplotlib(tmp_path):
    """The README's main job on an install without the [logging] extra (no matplotlib, no tensorboard): it
    trains, says in one line each that TensorBoard logging is off and that the figure is skipped."""
    out = tmp_path / "toy"
    argv = ["train", "--task", "toy-bandit", "--out", str(out), "--steps", "10", "--eval-interval", "10"]
    argv += ["--eval-episodes", "8", "--no-progress", "--threads", "1", *TINY_SETS[:-2]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_MATPLOTLIB, *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    notice = [line for line in proc.stderr.splitlines() if "matplotlib" in line]
    assert notice == [
        "toy-bandit figure skipped: matplotlib is not installed (pip install 'fisher-decorator[logging]')"
    ]
    tensorboard = [line for line in proc.stderr.splitlines() if "TensorBoard" in line]
    assert tensorboard == 2 * [
        "TensorBoard logging off: tensorboard is not installed (pip install 'fisher-decorator[logging]')"
    ]  # one run of each agent
    assert not (out / "fidec" / "tensorboard").exists()
    assert (out / "fidec" / "summary.json").is_file() and (out / "deflow" / "summary.json").is_file()
    assert not (out / "toy_bandit.png").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch, capsys):
    from fisher_decorator import checkpoint

    run = tmp_path / "run"
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(
        fd,
    ):  # the second checkpoint's data does not fit (ext4 reports ENOSPC here on delayed allocation)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f".checkpoint.pt.tmp{os.getpid()}"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    argv = ["train", "--agent", "fidec", "--out", str(run), "--steps", "20", "--save-interval", "10"]
    argv += ["--eval-interval", "0", "--no-progress", "--no-plot", *TINY_SETS]
    assert main(argv) == 2
    line = error_line(capsys, "train")
    assert line == (
        f"fidec train: error: {run / 'checkpoint.pt'}: no space left on device "
        "(the previous checkpoint, if any, is intact)"
    )
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 10
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_file_size_limit_at_a_checkpoint_is_one_line(tmp_path):
    """A real write failure inside the process (RLIMIT_FSIZE: EFBIG), no monkeypatching: one line."""
    run = tmp_path / "run"
    argv = ["train", "--agent", "fidec", "--out", str(run), "--steps", "10", "--save-interval", "10"]
    argv += ["--eval-interval", "0", "--no-progress", "--no-plot", "--threads", "1", *TINY_SETS]
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
        "from fisher_decorator.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fidec train: error: {run / 'checkpoint.pt'}: file size limit exceeded "
        "(the previous checkpoint, if any, is intact)"
    )
    assert not (run / "checkpoint.pt").exists()
    assert [p.name for p in run.iterdir() if ".tmp" in p.name] == []


def test_pickle_module_is_not_used_to_load(monkeypatch, finished_run):
    """Loading a run never reaches pickle's unrestricted Unpickler (torch's weights_only unpickler is its own)."""

    def refuse(*args, **kwargs):
        raise AssertionError("unrestricted unpickling")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    from fisher_decorator.trainer import load_agent

    agent, _, step = load_agent(finished_run)
    assert step == 10
