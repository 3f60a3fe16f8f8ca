"""The manifest: run states and their allowed changes, atomic writes, the one-driver lock, and what a new
invocation does with the states an earlier one left (stale running, failed, finished with fewer steps)."""

from __future__ import annotations

import json

import pytest

from fisher_decorator import atomic
from fisher_decorator.sweep.grid import RunSpec, SweepDefinition, resolve_run
from fisher_decorator.sweep.manifest import Manifest, ManifestError, SweepLock
from fisher_decorator.sweep.runner import _reconcile

A, B = RunSpec("toy-bandit", "fidec", 0), RunSpec("toy-bandit", "fql", 0)


def test_states_and_transitions(tmp_path):
    m = Manifest.open(tmp_path)
    assert m.add([A, B]) == [A.run_id, B.run_id] and m.add([A]) == []
    assert m.counts() == {"pending": 2, "running": 0, "done": 0, "failed": 0}
    m.set_state(A.run_id, "running", host="h", pid=12)
    m.set_state(A.run_id, "failed", error="RuntimeError: boom", traceback="Traceback ...")
    assert m[A.run_id]["attempts"] == 1 and m[A.run_id]["error"] == "RuntimeError: boom"
    with pytest.raises(ManifestError, match="cannot go from 'failed' to 'done'"):
        m.set_state(A.run_id, "done")
    with pytest.raises(ManifestError, match="unknown run state"):
        m.set_state(A.run_id, "paused")
    m.set_state(A.run_id, "pending", note="retried")
    m.set_state(A.run_id, "running", pid=13)
    m.set_state(A.run_id, "done", score=0.5)
    entry = Manifest.open(tmp_path)[A.run_id]  # what is on disk
    assert entry["state"] == "done" and entry["attempts"] == 2 and entry["score"] == 0.5
    assert entry["error"] is None and entry["traceback"] is None  # cleared once the run got past it
    assert [h["state"] for h in entry["history"]] == ["running", "failed", "pending", "running", "done"]
    assert entry["history"][1]["note"] == "RuntimeError: boom"
    (tmp_path / "manifest.json").write_text(json.dumps({**m.data, "runs": {"x": {"state": "lost"}}}))
    with pytest.raises(ManifestError, match="state 'lost'"):
        Manifest.open(tmp_path)


def test_writes_are_atomic_and_synced(tmp_path, monkeypatch):
    m = Manifest.open(tmp_path)
    m.add([A])
    before = (tmp_path / "manifest.json").read_text()
    synced = []
    real_fsync = atomic.os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))

    def half_written(obj, f, **kw):
        f.write('{"format": 1, "runs": {')
        raise OSError("disk full")

    monkeypatch.setattr(atomic.json, "dump", half_written)
    with pytest.raises(OSError, match="disk full"):
        m.set_state(A.run_id, "running")
    assert (tmp_path / "manifest.json").read_text() == before  # the previous manifest, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary left
    monkeypatch.undo()
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    m.set_state(A.run_id, "running")
    assert synced  # the file (and its directory) reach the disk before the rename counts
    assert Manifest.open(tmp_path)[A.run_id]["state"] == "running"


def test_one_driver_per_sweep_directory(tmp_path):
    with SweepLock(tmp_path):
        with pytest.raises(ManifestError, match=r"another `fidec sweep` is running on .*\(pid \d+ on "):
            with SweepLock(tmp_path):
                pass
    with SweepLock(tmp_path):  # released on exit
        pass


def test_a_new_invocation_reconciles_old_states(tmp_path):
    definition = SweepDefinition(agents=("fidec", "fql"), tasks=("toy-bandit",), seeds=(0, 1), steps=100)
    specs = definition.runs()
    resolved = {s.run_id: resolve_run(definition, s, sweep_dir=tmp_path, dataset_dir=tmp_path) for s in specs}
    m = Manifest.open(tmp_path)
    m.add(specs)
    stale, failed, short, finished = (s.run_id for s in specs)
    for rid in (stale, failed, short, finished):
        m.set_state(rid, "running")
    m.set_state(failed, "failed", error="ValueError: x")
    for rid, steps in ((short, 50), (finished, 100)):
        m.set_state(rid, "done")
        run_dir = tmp_path / m[rid]["run_dir"]
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"steps": steps}))
    _reconcile(m, resolved, tmp_path)
    assert {rid: e["state"] for rid, e in m.runs.items()} == {
        stale: "pending",
        failed: "pending",
        short: "pending",
        finished: "done",
    }
    assert "was running when the previous sweep stopped" in m[stale]["note"]
    assert "previous error: ValueError: x" in m[failed]["note"]
    assert m[short]["note"] == "finished at step 50; continues to 100"
