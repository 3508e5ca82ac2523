"""Importing official CC-FPSE checkpoints: state dicts in the official key layout, built here from the facts sheet
(wave2-models-and-demos.md §1.3-1.6: module names, spectral-norm weight_orig/u/v, BatchNorm buffers), with random
values, converted by ``gensynth models import-official cc-fpse`` and loaded strictly."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from gensynth.errors import CheckpointError
from gensynth.interfaces import Condition, one_hot
from gensynth_ccfpse.importer import convert_official


def sn(prefix, cout, cin, k):
    return {f"{prefix}.weight_orig": (cout, cin, k, k), f"{prefix}.weight_u": (cout,), f"{prefix}.weight_v": (cin * k * k,)}


def bn(prefix, c, affine=True):
    keys = {f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}
    if affine:
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)})
    return keys


def conv(prefix, cout, cin, k):
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def official_generator_keys(s: int, nf: int, hidden: int, mode: str, vae: bool, z_dim: int = 256,
                            start: tuple[int, int] = (8, 8)) -> dict[str, tuple]:
    """Key -> shape of the official CondConvGenerator's state dict."""
    keys: dict[str, tuple] = {}
    if vae:
        keys.update({"fc.weight": (16 * nf * start[0] * start[1], z_dim), "fc.bias": (16 * nf * start[0] * start[1],)})
    else:
        keys.update(conv("fc", 16 * nf, s, 3))
    levels = 7 if mode == "more" else 6
    for i in range(1, levels + 1):
        keys.update(sn(f"labelenc{i}.0.0", nf, s if i == 1 else nf, 3))
        keys.update(bn(f"labelenc{i}.0.1", nf))
    for i in range(1, levels):
        keys.update(sn(f"labellat{i}.0.0", nf, nf, 1))
        keys.update(bn(f"labellat{i}.0.1", nf))
        keys.update(sn(f"labeldec{i}.0.0", nf, nf, 3))
        keys.update(bn(f"labeldec{i}.0.1", nf))
    c = s + nf
    widths = [16 * nf] * 4 + [8 * nf, 4 * nf, 2 * nf, nf]
    names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
    for name, fin, fout in zip(names, widths[:-1], widths[1:]):
        fmid = min(fin, fout)
        for head, out in (("gen_weights1", fin * 9), ("gen_weights2", fout * 9), ("gen_se_weights1", fmid),
                          ("gen_se_weights2", fout)):
            keys.update(conv(f"{name}.{head}.0", hidden, c, 3))
            keys.update(conv(f"{name}.{head}.2", out, hidden, 3))
        keys.update(bn(f"{name}.conv_0.norm_layer", fin))
        keys.update(bn(f"{name}.norm_0", fmid))
        keys.update(conv(f"{name}.conv_1", fmid, fin, 1))
        keys.update(bn(f"{name}.norm_1", fin))
        keys.update(bn(f"{name}.conv_2.norm_layer", fmid))
        keys.update(bn(f"{name}.norm_2", fmid))
        keys.update(conv(f"{name}.conv_3", fout, fmid, 1))
        if fin != fout:
            keys.update(sn(f"{name}.conv_s", fout, fin, 1))
            keys.update(bn(f"{name}.norm_s.param_free_norm", fin, affine=False))
            keys.update(conv(f"{name}.norm_s.mlp_shared.0", hidden, c, 3))
            keys.update(conv(f"{name}.norm_s.mlp_gamma", fin, hidden, 3))
            keys.update(conv(f"{name}.norm_s.mlp_beta", fin, hidden, 3))
    keys.update(conv("conv_img", 3, nf, 3))
    return keys


def official_encoder_keys(nf: int, z_dim: int = 256) -> dict[str, tuple]:
    """SPADE's ConvEncoder at crop 256: layer1..layer6 (spectral + instance norm), fc_mu, fc_var."""
    keys: dict[str, tuple] = {}
    widths = [3] + [nf * min(2 ** i, 8) for i in range(6)]
    for i in range(1, 7):
        keys.update(sn(f"layer{i}.0", widths[i], widths[i - 1], 3))
    for head in ("fc_mu", "fc_var"):
        keys.update({f"{head}.weight": (z_dim, widths[-1] * 16), f"{head}.bias": (z_dim,)})
    return keys


def official_discriminator_keys(s: int, nf: int) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    for name, cout, cin, k in (("enc1", nf, 3, 3), ("enc2", 2 * nf, nf, 3), ("enc3", 4 * nf, 2 * nf, 3),
                               ("enc4", 8 * nf, 4 * nf, 3), ("enc5", 8 * nf, 8 * nf, 3),
                               ("lat2", 4 * nf, 2 * nf, 1), ("lat3", 4 * nf, 4 * nf, 1), ("lat4", 4 * nf, 8 * nf, 1),
                               ("lat5", 4 * nf, 8 * nf, 1), ("final2", 2 * nf, 4 * nf, 3),
                               ("final3", 2 * nf, 4 * nf, 3), ("final4", 2 * nf, 4 * nf, 3)):
        keys.update(sn(f"{name}.0.0", cout, cin, k))
    keys.update(conv("tf", 1, 2 * nf, 1))
    keys.update(conv("seg", 2 * nf, 2 * nf, 1))
    keys.update(conv("embedding", 2 * nf, s, 1))
    return keys


def random_state(keys: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    for k in [k for k in out if k.endswith(".weight_orig")]:  # u, v as a trained run leaves them: converged
        w = out[k].flatten(1)
        u = out[k[:-len("orig")] + "u"]
        for _ in range(30):
            v = torch.nn.functional.normalize(w.t() @ u, dim=0)
            u = torch.nn.functional.normalize(w @ v, dim=0)
        out[k[:-len("orig")] + "u"], out[k[:-len("orig")] + "v"] = u, v
    return out


@pytest.fixture()
def demo_release(tmp_path):
    """A non-VAE release for the demo data (11 classes, no edges) as the DDP-trained official code saves it."""
    root = tmp_path / "demo_best"
    root.mkdir()
    g = random_state(official_generator_keys(11, 4, 8, "normal", vae=False), 0)
    d = random_state(official_discriminator_keys(11, 4), 1)
    torch.save({f"module.{k}": v for k, v in g.items()}, root / "latest_net_G.pth")
    torch.save(d, root / "latest_net_D.pth")
    return root, g, d


def test_cli_imports_a_release_in_the_official_layout(demo_release, tmp_path):
    from gensynth.api import load_model
    from gensynth.checkpoint import load_checkpoint
    from gensynth.cli.main import _add_plugin_commands, cli

    _add_plugin_commands()
    root, g, d = demo_release
    res = CliRunner().invoke(cli, ["models", "import-official", "cc-fpse", str(root), "--data", "demo",
                                   "--out", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    assert "imported official cc-fpse (epoch latest) for demo" in res.output
    assert "discriminator <- latest_net_D.pth" in res.output and "generator <- latest_net_G.pth" in res.output
    ck = load_checkpoint(tmp_path / "ck")
    cfg = ck.config()
    assert cfg.model.preset == "cc-fpse" and cfg.model.generator_options["ngf"] == 4
    assert cfg.model.generator_options["hidden"] == 8 and cfg.model.generator_options["use_vae"] is False
    gen = ck.state("generator")
    # identity keys, spectral-norm u/v and BatchNorm buffers included; the SPADE norm renamed
    for key in ("labelenc1.0.0.weight_orig", "labelenc1.0.0.weight_u", "labeldec5.0.1.running_var",
                "up_3.gen_weights1.2.weight", "head_0.norm_0.weight", "up_0.conv_0.norm_layer.bias",
                "up_0.conv_s.weight_v"):
        assert torch.equal(gen[key], g[key]), key
    assert torch.equal(gen["up_1.norm_s.first_norm.running_mean"], g["up_1.norm_s.param_free_norm.running_mean"])
    disc = ck.state("discriminator")
    assert torch.equal(disc["enc5.0.0.weight_orig"], d["enc5.0.0.weight_orig"]) and torch.equal(
        disc["embedding.weight"], d["embedding.weight"])
    # the imported generator runs
    model = load_model(tmp_path / "ck")
    ids = torch.randint(0, 11, (1, 64, 64))
    with torch.no_grad():
        image = model.generator(Condition(one_hot(ids, 11))).image
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    res = CliRunner().invoke(cli, ["models", "import-official", "spade", str(root), "--data", "demo",
                                   "--out", str(tmp_path / "ck2")])
    assert res.exit_code == 2 and "unknown model 'spade'; known: cc-fpse, oasis" in res.output


def test_vae_release_with_its_encoder_more_mode_and_edges(tmp_path):
    """Cityscapes layout: 35 classes + instance edges, 'more' mode (start 4x8 at 256x512), VAE + separate net_E."""
    root = tmp_path / "cs_best"
    root.mkdir()
    g = random_state(official_generator_keys(36, 4, 8, "more", vae=True, start=(4, 8)), 2)
    e = random_state(official_encoder_keys(4), 3)
    torch.save(g, root / "200_net_G.pth")
    torch.save(e, root / "200_net_E.pth")
    models, meta, release = convert_official(root, "cityscapes")
    assert release.which == "200" and set(models) == {"generator"}
    opts = meta["config"]["model"]["generator_options"]
    assert opts["num_upsampling_layers"] == "more" and opts["use_instance_edges"] is True and opts["use_vae"] is True
    assert opts["size"] == [256, 512]
    state = models["generator"]
    assert torch.equal(state["encoder.layers.0.0.weight_orig"], e["layer1.0.weight_orig"])
    assert torch.equal(state["encoder.layers.5.0.weight_u"], e["layer6.0.weight_u"])
    assert torch.equal(state["encoder.fc_var.bias"], e["fc_var.bias"])
    assert torch.equal(state["labelenc7.0.0.weight_orig"], g["labelenc7.0.0.weight_orig"])
    assert meta["imported_from"]["files"] == {"generator": "200_net_G.pth", "encoder": "200_net_E.pth"}
    (root / "200_net_E.pth").unlink()
    with pytest.raises(CheckpointError, match=r"200_net_G.pth' is a VAE generator .* 200_net_E.pth \(its encoder\) "
                                              r"is missing"):
        convert_official(root, "cityscapes")


def test_import_errors_name_the_file_and_the_keys(demo_release, tmp_path):
    root, g, d = demo_release
    with pytest.raises(CheckpointError, match=r"the generator takes 11 label channels, but the dataset has 35 "
                                              r"classes.*wrong --data\?"):
        convert_official(root, "cityscapes")
    broken = {k: v for k, v in g.items() if not k.startswith("up_2.gen_se_weights2")}
    torch.save(broken, root / "latest_net_G.pth")
    with pytest.raises(CheckpointError, match=r"latest_net_G.pth does not fit the CC-FPSE CondConvGenerator: missing "
                                              r"key\(s\) up_2.gen_se_weights2.0.bias"):
        convert_official(root, "demo")
    with pytest.raises(CheckpointError, match=r"has no 100_net_G.pth; available: latest"):
        convert_official(root, "demo", which="100")
    with pytest.raises(CheckpointError, match=r"no official CC-FPSE generator in .*<epoch>_net_G.pth"):
        convert_official(tmp_path, "demo")


def test_full_size_official_key_list_matches_the_meta_generator():
    """At full size (ADE20K: 151 channels, ngf 64, hidden 128) the facts-sheet key list is exactly the keys and
    shapes of gensynth's generator after the documented renames, so a real release loads strictly."""
    from gensynth_ccfpse.generator import build_cc_fpse_generator
    from gensynth_ccfpse.importer import map_generator

    keys = official_generator_keys(151, 64, 128, "normal", vae=True, start=(8, 8))
    enc = official_encoder_keys(64)
    with torch.device("meta"):
        gen = build_cc_fpse_generator(151, use_vae=True, size=[256, 256])
        official = {k: torch.empty(s, device="meta") for k, s in keys.items()}
        official_e = {k: torch.empty(s, device="meta") for k, s in enc.items()}
    mapped = map_generator(official, official_e)
    own = gen.state_dict()
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    params = sum(math.prod(s) for k, s in keys.items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked", "weight_u",
                                                                           "weight_v")))
    assert params == 140_704_323
