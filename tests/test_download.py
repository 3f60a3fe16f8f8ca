"""``fidec data download`` against a local HTTP server on 127.0.0.1 (no internet): complete files, resumed
after a dropped connection, restarted when the server ignores Range, never a partial or unverified file
under the final name; offered by ``fidec data list`` and the missing-file error."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

from fisher_decorator.cli import main
from fisher_decorator.datasets.download import part_path, resolve_names

DATASET = "pointmaze-medium-navigate-v0"
FILES = (f"{DATASET}.npz", f"{DATASET}-val.npz")


class Server:
    """Serves a directory with HTTP Range support, and faults on demand: ``cut_after`` (bytes sent before
    the connection drops, once), ``ignore_range`` (answer 200 with the whole file), ``garbage`` (file names
    served as bytes that are no dataset). ``requests`` records (path, Range header)."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        self.cut_after: int | None = None
        self.ignore_range = False
        self.garbage: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = b"<html>not a dataset</html>" * 100 if name in server.garbage else path.read_bytes()
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m[1])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A small dataset in OGBench's format and episode length (2 + 1 episodes of the official 1001 steps)."""
    pytest.importorskip("ogbench")
    from fisher_decorator.datasets.generation import generate

    root = tmp_path_factory.mktemp("official")
    generate(DATASET, root, episodes=2, val_episodes=1, progress=False)
    for p in root.iterdir():  # serve the data files only, as the official server does
        if p.name not in FILES:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return root


@pytest.fixture
def server(official):
    s = Server(official)
    yield s
    s.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(server, directory: Path, *extra: str) -> int:
    argv = ["data", "download", DATASET, "--dataset-dir", str(directory), "--mirror", server.url, *extra]
    return main(argv)


def test_download_verifies_and_names_the_files(server, official, tmp_path, capsys):
    assert _download(server, tmp_path) == 0
    out, err = capsys.readouterr()
    for name in FILES:
        assert _sha(tmp_path / name) == _sha(official / name)
        assert f"{DATASET}: {tmp_path / name} (" in out and "verified, " in out
    assert "100%" in err  # the progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert [r for _, r in server.requests] == [None, None]
    # the files load and verify as a dataset
    assert main(["data", "verify", str(tmp_path)]) == 0
    # run again: nothing is fetched
    assert _download(server, tmp_path, "--quiet") == 0
    assert "already in" in capsys.readouterr().out and len(server.requests) == 2


def test_a_dropped_connection_resumes_from_the_partial_file(server, official, tmp_path, capsys):
    server.cut_after = 20_000
    assert _download(server, tmp_path, "--quiet") == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        f"fidec data download: error: {server.url}/{FILES[0]}: download interrupted after "
    )
    assert "run the same command to resume" in line and "Traceback" not in err
    part = part_path(tmp_path / FILES[0])
    assert part.stat().st_size == 20_000 and not (tmp_path / FILES[0]).exists()

    assert _download(server, tmp_path, "--quiet") == 0
    assert server.requests[1] == (FILES[0], "bytes=20000-")  # resumed, not restarted
    for name in FILES:
        assert _sha(tmp_path / name) == _sha(official / name)
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_cleanly(server, official, tmp_path, capsys):
    server.cut_after = 10_000
    assert _download(server, tmp_path, "--quiet") == 2
    server.ignore_range = True
    assert _download(server, tmp_path, "--quiet") == 0
    assert "does not resume downloads; starting it again" in capsys.readouterr().out
    assert _sha(tmp_path / FILES[0]) == _sha(official / FILES[0])


def test_a_file_that_is_not_the_dataset_never_gets_its_name(server, tmp_path, capsys):
    server.garbage = {FILES[1]}
    assert _download(server, tmp_path, "--quiet") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"fidec data download: error: {server.url}/{FILES[1]}: the downloaded file is not "
    )
    assert "was deleted" in line
    assert (tmp_path / FILES[0]).exists()  # the good file is complete and verified
    assert not (tmp_path / FILES[1]).exists() and not part_path(tmp_path / FILES[1]).exists()


def test_unreachable_server_is_one_line(tmp_path, capsys):
    s = Server(tmp_path)
    url = s.url
    s.close()  # nothing listens there any more
    argv = ["data", "download", DATASET, "--dataset-dir", str(tmp_path / "d"), "--mirror", url, "--quiet"]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"fidec data download: error: {url}/{FILES[0]}: cannot connect")


def test_names_and_where_download_is_offered(tmp_path, capsys):
    assert resolve_names(["antmaze-large-navigate", "paper", "antmaze-large-diverse-v2"])[:2] == [
        "antmaze-large-navigate-v0",
        "antmaze-giant-navigate-v0",
    ]
    assert len(resolve_names(["paper"])) == 10 and len(resolve_names(["d4rl"])) == 18
    assert len(resolve_names(["d4rl-antmaze"])) == 6 and len(resolve_names(["d4rl-adroit"])) == 12
    assert main(["data", "download", "hopper-medium-v2", "--dataset-dir", str(tmp_path)]) == 2
    assert "unknown dataset 'hopper-medium-v2'" in capsys.readouterr().err
    assert main(["data", "list", "--dataset-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fidec data download antmaze-large-navigate-v0" in out
    assert "fidec data download antmaze-large-diverse-v2" in out
    task = "antmaze-large-navigate-singletask-task1-v0"
    assert main(["train", "--task", task, "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"fidec data download antmaze-large-navigate-v0 --dataset-dir {tmp_path}" in err
