"""Shards streamed from a Google Cloud Storage API: a local gcp-storage-emulator server on 127.0.0.1, read
through gcsfs (the loader's gs:// opener)."""
from __future__ import annotations

import os
import socket

import pytest

from test_data_remote import assert_remote_matches_local, shard_dir  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def gcs_bucket(shard_dir):  # noqa: F811
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="shards")
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    # gcsfs' experimental zonal-bucket probe speaks gRPC over TLS, which the emulator does not
    mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import fsspec

    fs = fsspec.filesystem("gcs", token="anon", skip_instance_cache=True)
    for directory in shard_dir:
        for f in directory.iterdir():
            if not f.name.startswith("."):
                fs.put(str(f), f"shards/demo/{f.name}")
    yield "gs://shards/demo"
    mp.undo()
    server.stop()


def test_gcs_eval_and_train_through_the_loader(shard_dir, gcs_bucket):  # noqa: F811
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    assert_remote_matches_local(gcs_bucket, shard_dir, "gs://shards/absent")
