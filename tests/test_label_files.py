"""One label format everywhere (issue 20): training, generation and `datasets labels` read and write label files
through the dataset's own reader; folders are searched by the dataset's naming rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gensynth.errors import DataError
from gensynth.plugins import get_host

REAL = Path(__file__).resolve().parents[2] / "shared" / "testdata-real"


def _spec(name: str, root=None):
    spec = get_host().registry("datasets").get(name)
    return spec.for_root(root) if root is not None else spec


def _folder_dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.json").write_text(json.dumps({"dontcare": 0, "classes": [
        {"id": 0, "name": "void", "color": [0, 0, 0]}, {"id": 7, "name": "road", "color": [128, 64, 128]},
        {"id": 9, "name": "sky", "color": [70, 130, 180]}]}))
    return root


def test_folder_training_and_generation_read_a_colour_mask_identically(tmp_path):
    from gensynth.generate.labels import read_label_map

    root = _folder_dataset(tmp_path / "ds")
    spec = _spec("folder", root)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (70, 130, 180)
    rgb[8:, 4:] = (128, 64, 128)
    Image.fromarray(rgb).save(root / "labels" / "a.png")
    raw = spec.read_label(str(root / "labels" / "a.png"))  # what conversion for training reads
    expected = np.zeros((16, 16), np.int64)
    expected[:8], expected[8:, 4:] = 9, 7
    assert np.array_equal(raw, expected)
    model_ids = read_label_map(root / "labels" / "a.png", spec, (16, 16))  # what generate reads
    assert torch.equal(model_ids, torch.from_numpy(spec.raw_to_class[expected]))
    assert sorted(torch.unique(model_ids).tolist()) == [0, 1, 2]
    # an id PNG of the same map reads to the same ids
    Image.fromarray(expected.astype(np.uint8)).save(root / "labels" / "b.png")
    assert torch.equal(read_label_map(root / "labels" / "b.png", spec, (16, 16)), model_ids)
    # a colour that is no class's: named with the file and the pixel
    rgb[3, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "labels" / "c.png")
    with pytest.raises(DataError, match=r"c\.png: colour \(1, 2, 3\) at pixel \(x=5, y=3\) is not a class colour of "
                                        r"dataset 'folder'"):
        read_label_map(root / "labels" / "c.png", spec, (16, 16))


def test_grey_rgb_png_still_reads_as_ids_and_a_dataset_without_colours_refuses_colour():
    from gensynth.data.label_files import read_label_png

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        grey = np.stack([np.full((8, 8), 3, np.uint8)] * 3, -1)
        Image.fromarray(grey).save(Path(d) / "g.png")
        assert (read_label_png(Path(d) / "g.png") == 3).all()
        colour = grey.copy()
        colour[..., 1] = 9
        Image.fromarray(colour).save(Path(d) / "c.png")
        with pytest.raises(DataError, match="is a colour \\(RGB\\) image, and this dataset defines no class colours"):
            read_label_png(Path(d) / "c.png")


def test_cityscapes_folder_yields_only_label_ids_files(tmp_path):
    from gensynth.generate.labels import list_label_files, read_label_map

    spec = _spec("cityscapes")
    city = tmp_path / "gtFine" / "val" / "frankfurt"
    city.mkdir(parents=True)
    ids = np.full((32, 64), 7, np.uint8)
    ids[:10] = 23
    Image.fromarray(ids).save(city / "frankfurt_000000_000294_gtFine_labelIds.png")
    Image.fromarray(np.full((32, 64), 26001, np.uint16)).save(city / "frankfurt_000000_000294_gtFine_instanceIds.png")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8) + 50).save(city / "frankfurt_000000_000294_gtFine_color.png")
    files = list_label_files(tmp_path / "gtFine" / "val", spec)  # sub-folders searched by the naming rule
    assert [f.name for f in files] == ["frankfurt_000000_000294_gtFine_labelIds.png"]
    got = read_label_map(files[0], spec, (32, 64))
    assert torch.equal(got, torch.from_numpy(ids.astype(np.int64)))
    with pytest.raises(DataError, match=r"holds no label maps named \*_gtFine_labelIds\.png"):
        list_label_files(_empty(tmp_path), spec)


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "nothing"
    p.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p / "x_gtFine_color.png")
    return p


def test_cityscapes_colour_mask_reads_through_the_official_colours(tmp_path):
    from gensynth.generate.labels import read_label_map

    spec = _spec("cityscapes")
    colours = {c.name: c.color for c in spec.classes}
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:8] = colours["sky"]
    rgb[8:] = colours["road"]
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    got = read_label_map(tmp_path / "mask.png", spec, (16, 32))
    names = [c.name for c in spec.classes]
    assert (got[:8] == names.index("sky")).all() and (got[8:] == names.index("road")).all()


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "cityscapes" / "gtFine").is_dir(), reason="../shared/testdata-real absent")
def test_real_cityscapes_gtfine_folder_reads_label_ids_only():
    from gensynth.generate.labels import list_label_files, read_label_map

    spec = _spec("cityscapes")
    folder = REAL / "cityscapes" / "gtFine" / "train"
    files = list_label_files(folder, spec)
    assert files and all(f.name.endswith("_gtFine_labelIds.png") for f in files)
    assert len(files) == len(list(folder.rglob("*_gtFine_instanceIds.png")))
    ids = read_label_map(files[0], spec, (256, 512), multiple=16, fit="keep")
    assert read_label_map(files[0], spec, (256, 512)).shape == (256, 512)  # the default: the training size
    assert ids.shape == (1024, 2048) and 0 <= int(ids.min()) and int(ids.max()) <= 33


def test_datasets_labels_writes_maps_that_generate_reads(tiny_run, tmp_path):
    from gensynth.cli.main import cli
    from gensynth.generate.api import Synthesizer

    runner = CliRunner()
    ids_dir, colour_dir = tmp_path / "ids", tmp_path / "colour"
    res = runner.invoke(cli, ["datasets", "labels", "demo", "--out", str(ids_dir), "--num", "3", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 label maps (raw ids) of demo val" in res.output
    res = runner.invoke(cli, ["datasets", "labels", "demo", "--out", str(colour_dir), "--num", "3", "--size", "32",
                              "--colour"])
    assert res.exit_code == 0, res.output
    files = sorted(ids_dir.glob("*.png"))
    assert [f.name for f in files] == [f.name for f in sorted(colour_dir.glob("*.png"))]
    assert Image.open(files[0]).mode == "L" and Image.open(colour_dir / files[0].name).mode == "RGB"
    syn = Synthesizer.from_checkpoint(tiny_run.run_dir, device="cpu")
    a, b = syn.read_labels(ids_dir), syn.read_labels(colour_dir)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and len(torch.unique(a)) > 2
    out = tmp_path / "out"
    res = runner.invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(colour_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*_00.png"))) == 3
