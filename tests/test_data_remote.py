"""Shards streamed from a real S3 API (moto server on 127.0.0.1) and from a local HTTP server."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from gensynth.config import DataConfig
from gensynth.data.loader import epoch_length, eval_batches, resolve_shards, train_batches
from gensynth.errors import DataError
from gensynth_datasets.demo import DemoSpec

SPEC = DemoSpec()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Demo shards (64 train, 64 val samples at 16x16) materialised in a cache dir."""
    from gensynth.data.raw_cache import ensure_cached

    cfg = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), size=(16, 16), demo_samples=64)
    train = ensure_cached(cfg, SPEC, "train", progress=False)
    val = ensure_cached(cfg, SPEC, "val", progress=False)
    return train, val


def local_keys(directory: Path, split: str) -> list[str]:
    cfg = DataConfig(root=str(directory), size=(16, 16), num_workers=0)
    return [k for b in eval_batches(cfg, SPEC, batch_size=16, split=split) for k in b.keys]


@pytest.fixture(scope="module")
def http_root(shard_dir):
    train, _ = shard_dir
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(train))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_directory_and_brace_pattern(shard_dir, http_root):
    cfg = DataConfig(root=http_root + "/", size=(16, 16), num_workers=2)
    assert epoch_length(cfg, SPEC, "train") == 64
    keys = [k for b in eval_batches(cfg, SPEC, batch_size=8, split="train") for k in b.keys]
    assert sorted(keys) == sorted(local_keys(shard_dir[0], "train"))
    brace = DataConfig(root=http_root + "/demo-train-{000000..000001}.tar", size=(16, 16), num_workers=0)
    urls, card = resolve_shards(brace, SPEC, "train")
    assert len(urls) == 2 and card["num_samples"] == 32
    b = next(train_batches(brace, SPEC, batch_size=4, rank=0, world_size=1, seed=0))
    assert b.image.shape == (4, 3, 16, 16)
    missing = DataConfig(root=http_root + "/nothing/", size=(16, 16))
    with pytest.raises(DataError, match="nothing"):
        epoch_length(missing, SPEC, "train")


@pytest.fixture(scope="module")
def s3_bucket(shard_dir):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    mp = pytest.MonkeyPatch()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        mp.setenv(k, v)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="shards")
    for directory in shard_dir:
        for f in directory.iterdir():
            if not f.name.startswith("."):
                client.upload_file(str(f), "shards", f"demo/{f.name}")
    yield "s3://shards/demo"
    mp.undo()
    server.stop()


def assert_remote_matches_local(root: str, shard_dir, absent: str) -> None:
    """Eval mode over two ranks covers the split exactly once; training batches equal the local shards'."""
    cfg = DataConfig(root=root, size=(16, 16), num_workers=2)
    assert epoch_length(cfg, SPEC, "val") == 64
    seen = [k for r in range(2) for b in eval_batches(cfg, SPEC, batch_size=8, rank=r, world_size=2) for k in b.keys]
    assert sorted(seen) == sorted(local_keys(shard_dir[1], "val"))
    remote = [b for _, b in zip(range(3), train_batches(cfg, SPEC, batch_size=4, rank=1, world_size=2, seed=5))]
    local_cfg = DataConfig(root=str(shard_dir[0]), size=(16, 16), num_workers=2)
    local = [b for _, b in zip(range(3), train_batches(local_cfg, SPEC, batch_size=4, rank=1, world_size=2, seed=5))]
    for a, b in zip(remote, local):
        assert a.keys == b.keys and (a.image == b.image).all() and (a.label == b.label).all()
    with pytest.raises(DataError, match=absent):
        epoch_length(DataConfig(root=absent, size=(16, 16)), SPEC, "val")


def test_s3_eval_and_train_through_the_loader(shard_dir, s3_bucket):
    assert_remote_matches_local(s3_bucket, shard_dir, "s3://shards/absent")
