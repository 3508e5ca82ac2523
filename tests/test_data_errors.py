"""Bad shard data is one line naming the shard file and the sample key, also from DataLoader worker processes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gensynth.config import DataConfig
from gensynth.data.loader import eval_batches, train_batches
from gensynth.data.shards import ShardWriter, encode_id_png, make_card, write_json_atomic
from gensynth.errors import DataError
from gensynth_datasets.demo import DemoSpec

from conftest import CHILD_ENV


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _shards(out, bad: str | None, n=8, shard_size=4):
    """demo shards (16x16) whose sample ``demo_000005`` is bad: ``value`` (unknown label id) or ``size``."""
    spec = DemoSpec()
    writer = ShardWriter(out, "demo", "val", shard_size)
    rng = np.random.default_rng(0)
    for i in range(n):
        key = f"demo_{i:06d}"
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        label = rng.integers(1, 5, (16, 16), dtype=np.uint8)
        if i == 5 and bad == "value":
            label[2, 3] = 200
        if i == 5 and bad == "size":
            label = label[:8]
        writer.write(key, {"png": _png(image), "label.png": encode_id_png(label)})
    shards = writer.close()
    card = make_card(spec, "val", shards, np.zeros(1, np.int64), source="test", resize=None, has_instances=False)
    write_json_atomic(out / "demo-val.card.json", card)
    return out / "demo-val-000001.tar"


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_label_value_names_shard_and_key_in_one_line(tmp_path, workers):
    shard = _shards(tmp_path, "value")
    cfg = DataConfig(name="demo", root=str(tmp_path), size=(16, 16), num_workers=workers, split="val")
    with pytest.raises(DataError) as err:
        for _ in eval_batches(cfg, DemoSpec(), batch_size=2):
            pass
    assert type(err.value) is DataError
    assert str(err.value) == f"{shard}: sample 'demo_000005' has label value 200, not one of the demo ids"
    with pytest.raises(DataError, match=rf"^{shard}: sample 'demo_000005' has label value 200"):
        it = train_batches(cfg, DemoSpec(), batch_size=2, rank=0, world_size=1, seed=0)
        for _ in range(8):
            next(it)


def test_image_and_label_of_different_sizes_is_an_error(tmp_path):
    shard = _shards(tmp_path, "size")
    cfg = DataConfig(name="demo", root=str(tmp_path), size=(16, 16), num_workers=0)
    with pytest.raises(DataError) as err:
        list(eval_batches(cfg, DemoSpec(), batch_size=2))
    assert str(err.value) == (f"{shard}: sample 'demo_000005': label.png is 16x8 (WxH) but its image is 16x16; "
                              f"image and maps must have one size")


def test_cli_prints_the_workers_message_not_a_traceback_wall(tmp_path):
    shard = _shards(tmp_path / "shards", "value", n=16)
    (tmp_path / "shards" / "demo-val.card.json").rename(tmp_path / "shards" / "demo-train.card.json")
    for tar in sorted((tmp_path / "shards").glob("demo-val-*.tar")):
        tar.rename(tar.with_name(tar.name.replace("-val-", "-train-")))
    card = json.loads((tmp_path / "shards" / "demo-train.card.json").read_text())
    for s in card["shards"]:
        s["name"] = s["name"].replace("-val-", "-train-")
    card["split"] = "train"
    (tmp_path / "shards" / "demo-train.card.json").write_text(json.dumps(card))
    shard = shard.with_name(shard.name.replace("-val-", "-train-"))
    env = {**os.environ, **CHILD_ENV}
    r = subprocess.run([sys.executable, "-m", "gensynth", "train", "--data", "demo", "--data-root",
                        str(tmp_path / "shards"), "--run-dir", str(tmp_path / "run"), "--steps", "20",
                        "--batch-size", "4", "--set", "data.size=[16,16]", "--set", "data.num_workers=2",
                        "--set", "data.shuffle_buffer=0",
                        "--set", "model.generator_options.channels=4", "--set", "model.generator_options.z_dim=4",
                        "--set", "model.generator_options.num_res_blocks=2",
                        "--set", "model.generator_options.spade_hidden=8",
                        "--set", "model.discriminator_options.num_res_blocks=2",
                        "--set", "model.discriminator_options.width=0.0625"],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Caught" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {shard}: sample 'demo_000005' has label value 200, not one of the demo ids"], r.stderr


def test_cardless_shard_cut_at_a_sample_boundary_is_an_error(tmp_path):
    import tarfile

    shard = _shards(tmp_path, None)
    (tmp_path / "demo-val.card.json").unlink()
    with tarfile.open(shard) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name.startswith("demo_000006."))
    shard.write_bytes(shard.read_bytes()[:cut])  # whole samples demo_000004 and demo_000005, then nothing
    cfg = DataConfig(name="demo", root=str(tmp_path), size=(16, 16), num_workers=0)
    with pytest.warns(UserWarning, match="no dataset card"), pytest.raises(DataError) as err:
        list(eval_batches(cfg, DemoSpec(), batch_size=2))
    assert str(err.value) == (f"{shard}: the shard stops after sample 'demo_000005' without the tar end-of-archive "
                              f"marker (cut short?); re-create it, or publish a dataset card with its sample counts")


def test_cardless_complete_shards_are_read(tmp_path):
    _shards(tmp_path, None)
    (tmp_path / "demo-val.card.json").unlink()
    cfg = DataConfig(name="demo", root=str(tmp_path), size=(16, 16), num_workers=0)
    with pytest.warns(UserWarning, match="no dataset card"):
        assert sum(len(b) for b in eval_batches(cfg, DemoSpec(), batch_size=3)) == 8


def test_failed_reconversion_keeps_the_previous_card_and_shards(tmp_path):
    from test_data_convert import make_cityscapes, save_png

    from gensynth.data.convert import ConvertOptions, convert
    from gensynth_datasets.cityscapes import CityscapesSpec

    make_cityscapes(tmp_path / "cs", n=3)
    card = convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out",
                   ConvertOptions(progress=False, shard_size=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    save_png(tmp_path / "cs/gtFine/train/aachen/aachen_000002_000019_gtFine_labelIds.png",
             np.full((16, 32), 40, np.uint8))
    with pytest.raises(DataError, match="label value 40"):
        convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out",
                ConvertOptions(progress=False, shard_size=1))
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before  # the good card and its shards, untouched; no staging directory left
    assert json.loads(after["cityscapes-train.card.json"])["num_samples"] == card["num_samples"] == 3
