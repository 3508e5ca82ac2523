"""Generation API and ``gensynth generate``: seeds, noise control, local re-sampling, interpolation, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gensynth.cli.main import cli
from gensynth.errors import DataError, IncompatibleError
from gensynth.generate.api import Synthesizer, to_model_ids
from gensynth.generate.sheet import contact_sheet, to_pil


def _scene(h=32, w=32) -> torch.Tensor:
    """(1, H, W) demo layout: sky (1) on top, water (4) below, a tree (9) block in the middle."""
    ids = torch.ones(1, h, w, dtype=torch.long)
    ids[:, h // 2:] = 4
    ids[:, h // 4:h // 2, w // 4:3 * w // 4] = 9
    return ids


@pytest.fixture(scope="module")
def syn(tiny_run):
    return Synthesizer.from_checkpoint(tiny_run.run_dir)


def _save_ids(path, ids: torch.Tensor):
    Image.fromarray(ids.numpy().astype(np.uint8)).save(path)
    return path


def test_generate_shapes_seeds_and_global_noise(syn):
    assert syn.size == (32, 32) and syn.z_dim == 4
    ids = torch.cat([_scene(), _scene().flip(1)])
    a = syn.generate(ids, samples=3, seed=5)
    assert a.shape == (2, 3, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, syn.generate(ids, samples=3, seed=5))  # same seed, same images
    assert not torch.equal(a, syn.generate(ids, samples=3, seed=6))
    assert (a[:, 0] - a[:, 1]).abs().max() > 0  # different noise per sample
    # an explicit z vector broadcast over the image equals passing the same vector spatially everywhere
    z = torch.randn(4)
    flat = syn.generate(ids[:1], z=z)
    spatial = syn.generate(ids[:1], z=z.view(1, 1, 4, 1, 1).expand(1, 1, 4, 32, 32))
    assert torch.allclose(flat, spatial, atol=1e-6)


def test_local_resampling_changes_the_region_far_more_than_the_rest(syn):
    ids = _scene()
    edit = syn.resample_region(ids, "tree", samples=4, seed=0)
    assert edit.base.shape == (1, 3, 32, 32) and edit.samples.shape == (1, 4, 3, 32, 32)
    assert torch.equal(edit.mask, ids == 9)
    diff = (edit.samples - edit.base[:, None]).abs().mean(2)[0]  # (K, H, W)
    inside = diff[:, edit.mask[0]].mean()
    outside = diff[:, ~edit.mask[0]].mean()
    assert inside > 0
    assert inside > 4 * outside, (float(inside), float(outside))
    # a mask given as an array acts the same as the class
    same = syn.resample_region(ids, (ids == 9)[0].numpy(), samples=4, seed=0)
    assert torch.equal(same.samples, edit.samples)


def test_interpolation_endpoints_are_the_two_vectors(syn):
    ids = _scene()
    z0, z1 = torch.randn(4), torch.randn(4)
    path = syn.interpolate(ids, 5, z0=z0, z1=z1)
    assert path.shape == (1, 5, 3, 32, 32)
    assert torch.allclose(path[:, 0], syn.generate(ids, z=z0)[:, 0], atol=1e-6)
    assert torch.allclose(path[:, -1], syn.generate(ids, z=z1)[:, 0], atol=1e-6)
    steps = (path[0, 1:] - path[0, :-1]).abs().mean(dim=(1, 2, 3))
    assert (steps > 0).all()


def test_bad_label_inputs_name_the_file(syn, tmp_path):
    ok = _save_ids(tmp_path / "ok.png", _scene()[0])
    assert torch.equal(syn.read_labels(ok), _scene())
    bad_ids = _scene()[0].clone()
    bad_ids[0, 0] = 200
    with pytest.raises(DataError, match=r"bad\.png contains ids 200 .*valid raw ids: 0\.\.10"):
        syn.read_labels(_save_ids(tmp_path / "bad.png", bad_ids))
    odd = _save_ids(tmp_path / "odd.png", _scene(31, 32)[0])
    with pytest.raises(DataError, match=r"odd\.png is 31x32 .*trained at 32x32 .*multiples of 2.*drop --native-size"):
        syn.read_labels(odd, fit="keep")
    resized = syn.read_labels(odd)  # the default: resized (nearest) to the training size, as training does
    assert resized.shape == (1, 32, 32)
    from gensynth.data.shards import nearest_resize

    assert torch.equal(resized[0], torch.from_numpy(nearest_resize(_scene(31, 32)[0].numpy(), (32, 32))))
    big = _save_ids(tmp_path / "big.png", _scene(64, 64)[0])
    assert syn.read_labels(big).shape == (1, 32, 32) and syn.read_labels(big, fit="keep").shape == (1, 64, 64)
    Image.fromarray(np.stack([np.zeros((32, 32), np.uint8), np.full((32, 32), 9, np.uint8),
                              np.zeros((32, 32), np.uint8)], -1)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: colour \(0, 9, 0\) at pixel \(x=0, y=0\) is not a class colour of dataset 'demo'"):
        syn.read_labels(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="outside the model's classes 0..10"):
        syn.generate(torch.full((1, 32, 32), 11))
    with pytest.raises(DataError, match="no class named 'trees'.*Did you mean 'tree'"):
        syn.resample_region(_scene(), "trees")
    with pytest.raises(DataError, match="empty"):
        syn.resample_region(_scene(), "road")


def test_dontcare_last_roll_matches_the_loader():
    from gensynth.data.loader import Batch, to_condition

    ids = torch.tensor([[[0, 1, 2, 3]]])
    rolled = to_model_ids(ids, 0, True, 4)
    assert rolled.tolist() == [[[3, 0, 1, 2]]]
    _, cond = to_condition(Batch(torch.zeros(1, 3, 1, 4), ids, None, ["k"]), 4, "cpu", dontcare_last=True, dontcare=0)
    assert torch.equal(cond.label_ids, rolled)


def test_noise_free_generator_refuses_local_resampling():
    from gensynth.api import build_model

    g, _, parts = build_model("oasis", "demo", **{
        "model.generator_options.channels": 2, "model.generator_options.num_res_blocks": 2,
        "model.generator_options.spade_hidden": 4, "model.generator_options.use_3d_noise": False,
        "model.generator_options.norm": "batch"})
    s = Synthesizer(g, parts, size=(32, 32))
    with pytest.raises(IncompatibleError, match="3D \\(spatial\\) noise"):
        s.resample_region(_scene(), 9)
    with pytest.warns(UserWarning, match="identical"):
        out = s.generate(_scene(), samples=2, seed=0)
    assert torch.equal(out[:, 0], out[:, 1])


def test_contact_sheet_layout():
    imgs = to_pil(torch.zeros(3, 3, 8, 10))
    sheet = contact_sheet([imgs, imgs[:1]], pad=2)
    assert sheet.size == (2 + 3 * 12, 2 + 2 * 10)


def test_generate_cli_writes_images_and_contact_sheet(tiny_run, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    _save_ids(labels / "a.png", _scene()[0])
    _save_ids(labels / "b.png", _scene()[0].flip(0))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(labels), "-o", str(out),
                                 "--samples", "2", "--seed", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for name in ("a_00.png", "a_01.png", "b_00.png", "b_label.png", "contact_sheet.png"):
        assert (out / name).is_file(), name
    assert Image.open(out / "a_00.png").size == (32, 32)
    assert Image.open(out / "contact_sheet.png").size == (2 + 3 * 34, 2 + 2 * 34)
    first = np.asarray(Image.open(out / "a_00.png"))
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(labels / "a.png"), "-o",
                                 str(tmp_path / "again"), "--seed", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "a_00.png")))

    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(labels / "a.png"), "-o",
                                 str(tmp_path / "edit"), "--resample-mask", str(tmp_path / "mask.png"),
                                 "--samples", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "edit" / "a_base.png").is_file() and (tmp_path / "edit" / "a_resample01.png").is_file()
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(labels / "a.png"), "-o",
                                 str(tmp_path / "interp"), "--interpolate", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "interp").glob("a_interp*.png")) == [
        "a_interp00.png", "a_interp01.png", "a_interp02.png"]


def test_generate_cli_errors_name_the_file(tiny_run, tmp_path):
    bad = _scene()[0].clone()
    bad[3, 3] = 77
    _save_ids(tmp_path / "bad.png", bad)
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(tmp_path / "bad.png"),
                                 "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2
    assert "bad.png contains ids 77" in r.output
    r = CliRunner().invoke(cli, ["generate", "-c", str(tmp_path / "no-run"), "-l", str(tmp_path / "bad.png"),
                                 "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2 and "no-run" in r.output


def test_generate_cli_reads_label_maps_from_shards(tiny_run, tmp_path):
    """--labels pointing at shards: every validation label map of the shards, generated at the model's size."""
    from pathlib import Path

    from gensynth.api import load_model
    from gensynth.data.loader import resolve_shards

    loaded = load_model(tiny_run.run_dir)
    urls, card = resolve_shards(loaded.config.data, loaded.parts.dataset, "val")
    shard_dir = str(Path(urls[0]).parent)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", shard_dir, "-o", str(out),
                                 "--seed", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    made = sorted(out.glob("*_00.png"))
    assert len(made) == card["num_samples"]
    assert Image.open(made[0]).size == (32, 32)
    assert f"for {card['num_samples']} label maps" in " ".join(r.output.split())


def test_seed_map_noise_composes_per_pixel_seeds(tiny_run):
    syn = Synthesizer.from_checkpoint(tiny_run.run_dir)
    a, b = syn.sample_z(1, seed=7)[0], syn.sample_z(1, seed=9)[0]
    torch.testing.assert_close(syn.seed_map_noise([7]), a)
    index = torch.zeros(6, 8, dtype=torch.long)
    torch.testing.assert_close(syn.seed_map_noise([7, 9], index), a)  # only seed 0 used: global noise
    torch.testing.assert_close(syn.seed_map_noise([7, 9], index + 1), b)
    index[2:4, 5:] = 1
    z = syn.seed_map_noise([7, 9], index)
    assert z.shape == (syn.z_dim, 6, 8)
    torch.testing.assert_close(z[:, 0, 0], a)
    torch.testing.assert_close(z[:, 3, 6], b)
    assert torch.equal(z[:, index == 1], b[:, None].expand(-1, 6))
    with pytest.raises(DataError, match="the noise map refers to seed index 2 but only 2 seeds were given"):
        syn.seed_map_noise([7, 9], index * 2)
