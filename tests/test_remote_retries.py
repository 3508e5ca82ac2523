"""Transient HTTP failures (503s, a connection lost mid-shard) are retried with backoff; persistent ones fail
after a bounded number of attempts with one line naming the URL."""
from __future__ import annotations

import http.server
import threading

import numpy as np
import pytest

from gensynth.config import DataConfig
from gensynth.data import openers
from gensynth.data.loader import eval_batches
from gensynth.errors import DataError
from gensynth_datasets.demo import DemoSpec

from test_data_errors import _shards


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``root`` with Range support; ``plan[path]`` lists what the next requests get: "503", or
    "cut" (headers for the whole body, then half of it and a closed connection)."""

    root = None
    plan: dict = {}
    log: list = []

    def log_message(self, *args):
        pass

    def _serve(self, head: bool):
        path = self.root / self.path.lstrip("/")
        action = self.plan.get(self.path, []).pop(0) if self.plan.get(self.path) else None
        self.log.append((self.command, self.path, self.headers.get("Range"), action))
        if action == "503":
            self.send_error(503, "Slow Down")
            return
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if action == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)


@pytest.fixture
def flaky_server(tmp_path, monkeypatch):
    monkeypatch.setattr(openers, "FIRST_BACKOFF_S", 0.01)
    _shards(tmp_path, None)
    handler = type("Handler", (_FlakyHandler,), {"root": tmp_path, "plan": {}, "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def test_transient_failures_are_retried_and_resumed(flaky_server, tmp_path):
    base, handler = flaky_server
    handler.plan.update({"/demo-val.card.json": ["503", "503"], "/demo-val-000000.tar": ["503", "cut"],
                         "/demo-val-000001.tar": ["cut", "cut"]})
    cfg = DataConfig(name="demo", root=base, size=(16, 16), num_workers=0)
    keys = [k for b in eval_batches(cfg, DemoSpec(), batch_size=3) for k in b.keys]
    assert keys == [f"demo_{i:06d}" for i in range(8)]
    ranges = [r for (_, p, r, _) in handler.log if p == "/demo-val-000001.tar"]
    # resumed with a Range request (the second cut may fall after the end-of-archive marker, never read)
    assert ranges[0] is None and len(ranges) >= 2 and all(r and r.startswith("bytes=") for r in ranges[1:])
    # byte for byte the same as the file, across two resumptions
    handler.plan["/demo-val-000000.tar"] = ["cut", "503", "cut"]
    handler.log.clear()
    with openers.open_url(f"{base}/demo-val-000000.tar") as f:
        assert f.read() == (tmp_path / "demo-val-000000.tar").read_bytes()
    assert [a for (_, _, _, a) in handler.log] == ["cut", "503", "cut", None]


def test_persistent_failure_is_bounded_and_names_the_url(flaky_server):
    base, handler = flaky_server
    handler.plan["/demo-val-000000.tar"] = ["503"] * 50
    with pytest.raises(DataError) as err:
        openers.read_bytes(f"{base}/demo-val-000000.tar")
    assert str(err.value) == (f"cannot read {base}/demo-val-000000.tar: HTTP 503 Slow Down "
                              f"(after {openers.READ_ATTEMPTS} attempts)")
    assert len(handler.log) == openers.READ_ATTEMPTS
    handler.log.clear()
    with pytest.raises(DataError, match=r"cannot read .*/nope.tar: HTTP 404 Not Found$"):
        openers.read_bytes(f"{base}/nope.tar")
    assert len(handler.log) == 1  # not retried


def test_folder_dataset_from_a_url_without_classes_names_the_missing_file(flaky_server):
    from gensynth_datasets.folder import FolderSpec

    base, _ = flaky_server
    cfg = DataConfig(name="folder", root=base, size=(16, 16), num_workers=0)
    with pytest.raises(DataError) as err:
        next(eval_batches(cfg, FolderSpec(), batch_size=2))
    assert str(err.value) == (f"{base}/classes.json does not exist: dataset 'folder' reads its classes from the "
                              f"classes.json that `gensynth datasets convert` writes beside the shards; copy it "
                              f"there with them")
    assert "for_root" not in str(err.value)
