"""Official layouts written by the tests -> shards -> read back, pixel for pixel; bad input; the CLI."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gensynth.cli.main import cli
from gensynth.config import DataConfig
from gensynth.data.convert import ConvertOptions, convert
from gensynth.data.loader import eval_batches
from gensynth.data.shards import decode_id_png, iter_tar_samples
from gensynth.errors import DataError
from gensynth_datasets.ade20k import ADE20KSpec
from gensynth_datasets.cityscapes import CityscapesSpec
from gensynth_datasets.coco_stuff import CocoStuffSpec
from gensynth_datasets.folder import FolderSpec

REAL = Path(__file__).resolve().parents[2] / "shared" / "testdata-real"
RNG = np.random.default_rng(0)


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def save_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def make_cityscapes(root: Path, split="train", n=3, h=16, w=32):
    out = {}
    for i in range(n):
        stem = f"aachen_{i:06d}_000019"
        img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = RNG.integers(0, 34, (h, w), dtype=np.uint8)
        inst = lab.astype(np.uint16).copy()
        inst[:4, :4] = 26001 + i  # car instance: id*1000+k, needs 16 bits
        save_png(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", img)
        save_png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", lab)
        save_png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_instanceIds.png", inst)
        out[stem] = (img, lab, inst)
    return out


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    samples = {}
    for tar in sorted(out.glob("*.tar")):
        with open(tar, "rb") as f:
            samples.update(dict(iter_tar_samples(f, str(tar))))
    return samples


def test_cityscapes_roundtrip_pixel_for_pixel(tmp_path):
    truth = make_cityscapes(tmp_path / "cs")
    card = convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out",
                   ConvertOptions(shard_size=2, workers=2, progress=False))
    assert card["num_samples"] == 3 and [s["count"] for s in card["shards"]] == [2, 1]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == \
        ["cityscapes-train-000000.tar", "cityscapes-train-000001.tar"]
    assert card["has_instances"] and card["resize"] is None and len(card["classes"]) == 35
    samples = read_shards(tmp_path / "out")
    for stem, (img, lab, inst) in truth.items():
        s = samples[stem]
        src = tmp_path / "cs/leftImg8bit/train/aachen" / f"{stem}_leftImg8bit.png"
        assert s["png"] == src.read_bytes()  # image bytes untouched
        assert np.array_equal(decode_id_png(s["label.png"]), lab)
        assert np.array_equal(decode_id_png(s["inst.png"]), inst)
        assert Image.open(io.BytesIO(s["inst.png"])).mode.startswith("I")
        assert json.loads(s["json"])["size"] == [16, 32]
    # the loader maps raw ids to classes (identity for Cityscapes) and keeps 16-bit instances
    cfg = DataConfig(name="cityscapes", root=str(tmp_path / "out"), size=(16, 32), num_workers=0)
    got = {k: (b.label[i], b.instance[i]) for b in eval_batches(cfg, CityscapesSpec(), batch_size=2, split="train")
           for i, k in enumerate(b.keys)}
    for stem, (_, lab, inst) in truth.items():
        assert np.array_equal(got[stem][0].numpy(), lab) and np.array_equal(got[stem][1].numpy(), inst)


def test_resize_matches_official_resampling(tmp_path):
    make_cityscapes(tmp_path / "cs", n=1, h=32, w=64)
    convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out",
            ConvertOptions(resize=(16, 32), progress=False))
    (key, s), = read_shards(tmp_path / "out").items()
    src_img = Image.open(next((tmp_path / "cs").rglob("*_leftImg8bit.png"))).convert("RGB")
    src_lab = Image.open(next((tmp_path / "cs").rglob("*_labelIds.png")))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), np.asarray(src_img.resize((32, 16), Image.BICUBIC)))
    assert np.array_equal(decode_id_png(s["label.png"]), np.asarray(src_lab.resize((32, 16), Image.NEAREST)))


def test_coco_stuff_ids_and_ade20k_jpeg(tmp_path):
    lab = RNG.integers(0, 182, (12, 20), dtype=np.uint8)
    lab[0, :5] = 255
    img = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    save_jpg(tmp_path / "coco/val2017/000000000001.jpg", img)
    save_png(tmp_path / "coco/stuffthingmaps_trainval2017/val2017/000000000001.png", lab)
    convert(CocoStuffSpec(), str(tmp_path / "coco"), "val", tmp_path / "out", ConvertOptions(progress=False))
    s = read_shards(tmp_path / "out")["000000000001"]
    assert s["jpg"] == (tmp_path / "coco/val2017/000000000001.jpg").read_bytes()
    cfg = DataConfig(name="coco-stuff", root=str(tmp_path / "out"), size=(12, 20), num_workers=0)
    b = next(eval_batches(cfg, CocoStuffSpec(), batch_size=1, split="val"))
    expected = np.where(lab == 255, 0, lab.astype(np.int64) + 1)
    assert np.array_equal(b.label[0].numpy(), expected)

    save_jpg(tmp_path / "ade/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg", img)
    save_png(tmp_path / "ade/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png",
             (lab % 151).astype(np.uint8))
    card = convert(ADE20KSpec(), str(tmp_path / "ade"), "val", tmp_path / "ade_out", ConvertOptions(progress=False))
    assert card["num_samples"] == 1 and len(card["classes"]) == 151


@pytest.mark.parametrize("problem", ["size", "value", "partner", "unreadable"])
def test_bad_input_names_the_file(tmp_path, problem):
    make_cityscapes(tmp_path / "cs", n=2)
    gt = tmp_path / "cs/gtFine/train/aachen"
    bad = gt / "aachen_000001_000019_gtFine_labelIds.png"
    if problem == "size":
        save_png(bad, np.zeros((8, 8), np.uint8))
        match = "does not match"
    elif problem == "value":
        save_png(bad, np.full((16, 32), 40, np.uint8))
        match = "label value 40 is not one of the cityscapes ids"
    elif problem == "partner":
        bad.unlink()
        bad = tmp_path / "cs/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
        match = "no partner label"
    else:
        bad = tmp_path / "cs/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
        bad.write_bytes(bad.read_bytes()[:60])
        match = "unreadable image"
    with pytest.raises(DataError, match=match) as err:
        convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out", ConvertOptions(progress=False))
    assert str(bad) in str(err.value)
    assert not list((tmp_path / "out").glob("*.card.json")) and not list((tmp_path / "out").glob("*.tar"))
    card = convert(CityscapesSpec(), str(tmp_path / "cs"), "train", tmp_path / "out",
                   ConvertOptions(progress=False, skip_bad=True))
    assert card["num_samples"] == 1 and card["skipped"] == 1
    report = json.loads((tmp_path / "out/cityscapes-train.skipped.json").read_text())
    assert str(bad) in report["skipped"][0]["problem"]


def test_folder_colour_masks_and_unknown_colour(tmp_path):
    root = tmp_path / "mine"
    classes = [{"id": 0, "name": "void", "color": [0, 0, 0]}, {"id": 1, "name": "sky", "color": [0, 0, 255]},
               {"id": 5, "name": "grass", "color": [0, 255, 0]}]
    root.mkdir()
    (root / "classes.json").write_text(json.dumps({"dontcare": 0, "classes": classes}))
    ids = RNG.choice([0, 1, 5], size=(10, 14))
    colours = np.array([[0, 0, 0], [0, 0, 255], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 255, 0]], np.uint8)
    save_png(root / "images/a.png", RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    save_png(root / "labels/a.png", colours[ids])
    spec = FolderSpec.for_root(root)
    assert [c.name for c in spec.classes] == ["void", "sky", "grass"] and spec.dontcare == 0
    cfg = DataConfig(name="folder", root=str(root), size=(10, 14), num_workers=0, cache_dir=str(tmp_path / "c"))
    b = next(eval_batches(cfg, FolderSpec(), batch_size=1, split="train"))
    assert np.array_equal(b.label[0].numpy(), np.array([0, 1, 0, 0, 0, 2])[ids])
    # converted shards carry their classes (classes.json beside them): no raw layout needed to read them
    convert(spec, str(root), "train", tmp_path / "shards", ConvertOptions(progress=False))
    for shard_root in (str(tmp_path / "shards"), str(tmp_path / "shards" / "folder-train-{000000..000000}.tar")):
        cfg = DataConfig(name="folder", root=shard_root, size=(10, 14), num_workers=0)
        b = next(eval_batches(cfg, FolderSpec(), batch_size=1, split="train"))
        assert np.array_equal(b.label[0].numpy(), np.array([0, 1, 0, 0, 0, 2])[ids])
    from gensynth.data.loader import configure_spec

    shard_spec = configure_spec(FolderSpec(), DataConfig(name="folder", root=str(tmp_path / "shards/folder-train-000000.tar")))
    assert [c.name for c in shard_spec.classes] == ["void", "sky", "grass"] and shard_spec.dontcare == 0
    bad = colours[ids].copy()
    bad[3, 7] = (9, 9, 9)
    save_png(root / "labels/a.png", bad)
    with pytest.raises(DataError, match=r"labels/a.png: colour \(9, 9, 9\) at pixel \(x=7, y=3\)"):
        convert(spec, str(root), "train", tmp_path / "o", ConvertOptions(progress=False))


def test_cli_convert_inspect_preview(tmp_path):
    make_cityscapes(tmp_path / "cs", split="val", n=2)
    runner = CliRunner()
    res = runner.invoke(cli, ["datasets", "convert", "cityscapes", "--source", str(tmp_path / "cs"), "--split", "val",
                              "--out", str(tmp_path / "sh"), "--resize", "8x16", "--shard-size", "1"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 samples in 2 shard(s)" in res.output
    res = runner.invoke(cli, ["datasets", "inspect", str(tmp_path / "sh")])
    assert res.exit_code == 0 and "match the card" in res.output, res.output
    res = runner.invoke(cli, ["datasets", "preview", "cityscapes", "--data-root", str(tmp_path / "sh"),
                              "--out", str(tmp_path / "grid.png"), "--num", "2", "--size", "8x16"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "grid.png").size == (32, 16)  # 2 rows of image | coloured labels at 8x16
    shard = tmp_path / "sh/cityscapes-val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    res = runner.invoke(cli, ["datasets", "inspect", str(tmp_path / "sh")])
    assert res.exit_code == 2 and "cityscapes-val-000001.tar" in res.output


def test_raw_layout_as_data_root_is_converted_once(tmp_path):
    make_cityscapes(tmp_path / "cs", split="val", n=2, h=16, w=32)
    cfg = DataConfig(name="cityscapes", root=str(tmp_path / "cs"), size=(8, 16), num_workers=0,
                     cache_dir=str(tmp_path / "cache"))
    keys = [k for b in eval_batches(cfg, CityscapesSpec(), batch_size=4) for k in b.keys]
    assert sorted(keys) == ["aachen_000000_000019", "aachen_000001_000019"]
    cards = list((tmp_path / "cache").rglob("*.card.json"))
    assert len(cards) == 1 and json.loads(cards[0].read_text())["resize"] == [8, 16]
    next(eval_batches(cfg, CityscapesSpec(), batch_size=4))
    assert list((tmp_path / "cache").rglob("*.card.json")) == cards


# ---------------------------------------------------------------------------------------------
# genuine samples (skipped when ../shared/testdata-real is absent)
# ---------------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason="genuine samples not available")
@pytest.mark.parametrize("spec,root,split", [
    (CocoStuffSpec(), "cocostuff", "val"),
    (ADE20KSpec(), "ade20k", "val"),
    (CityscapesSpec(), "cityscapes-mini", "val"),
])
def test_genuine_samples_roundtrip(tmp_path, spec, root, split):
    card = convert(spec, str(REAL / root), split, tmp_path / "out", ConvertOptions(progress=False, workers=2))
    items = spec.list_raw(str(REAL / root), split)
    assert card["num_samples"] == len(items) > 0
    samples = read_shards(tmp_path / "out")
    for item in items:
        s = samples[item.key]
        ext = "jpg" if item.image.endswith(".jpg") else "png"
        assert s[ext] == Path(item.image).read_bytes()
        assert np.array_equal(decode_id_png(s["label.png"]), np.asarray(Image.open(item.label)).astype(np.int64))
        if item.instance:
            assert np.array_equal(decode_id_png(s["inst.png"]), np.asarray(Image.open(item.instance)))


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "cityscapes").is_dir(), reason="genuine samples not available")
def test_genuine_cityscapes_full_resolution_resized(tmp_path):
    spec = CityscapesSpec()
    items = spec.list_raw(str(REAL / "cityscapes"), "train")[:2]
    assert all(item.instance for item in items)
    enc_dir = tmp_path / "out"
    from gensynth.data.shards import ShardWriter, encode_sample
    w = ShardWriter(enc_dir, "cityscapes", "train")
    for item in items:
        enc = encode_sample(spec, spec.load_raw(str(REAL / "cityscapes"), "train", item), (256, 512))
        w.write(enc.key, enc.files)
    w.close()
    samples = read_shards(enc_dir)
    for item in items:
        lab = np.asarray(Image.open(item.label).resize((512, 256), Image.NEAREST))
        assert np.array_equal(decode_id_png(samples[item.key]["label.png"]), lab)
        inst = decode_id_png(samples[item.key]["inst.png"])
        assert inst.shape == (256, 512) and inst.max() >= 24000  # instances id*1000+k survive
