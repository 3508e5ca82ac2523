"""Shards streamed from a Google Cloud Storage API: a local gcp-storage-emulator server on 127.0.0.1, read
through gcsfs (the loader's gs:// opener)."""
from __future__ import annotations

import os
import socket

import pytest

from gensynth.config import DataConfig
from gensynth.data.loader import epoch_length, eval_batches, train_batches
from gensynth.errors import DataError
from test_data_remote import SPEC, local_keys, shard_dir  # noqa: F401  (module fixture)


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
    cfg = DataConfig(root=gcs_bucket, size=(16, 16), num_workers=2)
    assert epoch_length(cfg, SPEC, "val") == 64
    seen = [k for r in range(2) for b in eval_batches(cfg, SPEC, batch_size=8, rank=r, world_size=2) for k in b.keys]
    assert sorted(seen) == sorted(local_keys(shard_dir[1], "val"))
    remote = [b for _, b in zip(range(3), train_batches(cfg, SPEC, batch_size=4, rank=0, world_size=2, seed=5))]
    local_cfg = DataConfig(root=str(shard_dir[0]), size=(16, 16), num_workers=2)
    local = [b for _, b in zip(range(3), train_batches(local_cfg, SPEC, batch_size=4, rank=0, world_size=2, seed=5))]
    for a, b in zip(remote, local):
        assert a.keys == b.keys and (a.image == b.image).all() and (a.label == b.label).all()
    with pytest.raises(DataError, match="gs://shards/absent"):
        epoch_length(DataConfig(root="gs://shards/absent", size=(16, 16)), SPEC, "val")
