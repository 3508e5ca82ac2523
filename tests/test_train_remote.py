"""Two real training processes (torchrun, gloo) streaming their shards from S3 (moto) and from HTTP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, tiny_overrides
from test_data_remote import http_root, s3_bucket, shard_dir  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.slow


def _train_two_processes(tmp_path, root: str, cache, **extra):
    """`torchrun --nproc-per-node 2 -m gensynth train` on shards at ``root``; returns the last checkpoint."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, cache, **{"data.root": root, "data.size": [16, 16], "trainer.steps": 2,
                                                  "trainer.checkpoint_every": 2, "trainer.sample_every": 2,
                                                  "data.num_workers": 1, **extra})
    sets = [x for k, v in overrides.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    env = {**os.environ, **CHILD_ENV}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "gensynth", "train", *sets], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    from gensynth.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    assert ck.step == 2 and ck.meta["world_size"] == 2
    assert ck.config().data.root == root
    assert len(list((run_dir / "samples").glob("*.png"))) >= 1
    return ck


def test_two_process_training_from_s3(tmp_path, tiny_cache, s3_bucket):  # noqa: F811
    _train_two_processes(tmp_path, s3_bucket, tiny_cache)


def test_two_process_training_from_http(tmp_path, tiny_cache, http_root):  # noqa: F811
    _train_two_processes(tmp_path, http_root + "/", tiny_cache)


REAL = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "testdata-real" / "cocostuff"


@pytest.mark.skipif(not REAL.is_dir(), reason="genuine samples (../shared/testdata-real) not available")
def test_two_process_training_on_genuine_coco_stuff_over_http(tmp_path, tiny_cache):
    """Genuine COCO-Stuff files in the official layout -> shards (pre-resized) -> HTTP -> two training processes."""
    import functools
    import http.server
    import threading

    from gensynth.data.convert import ConvertOptions, convert
    from gensynth.plugins import registry

    spec = registry("datasets").get("coco-stuff")
    card = convert(spec, str(REAL), "train", tmp_path / "shards", ConvertOptions(resize=(32, 32), shard_size=4,
                                                                                 progress=False))
    assert card["num_samples"] == 13 and len(card["shards"]) == 4
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "shards"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ck = _train_two_processes(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/", tiny_cache,
                                  **{"data.name": "coco-stuff", "data.size": [32, 32]})
    finally:
        server.shutdown()
    assert ck.state("discriminator")["layer_up_last.weight"].shape[0] == 184  # 183 classes + fake
