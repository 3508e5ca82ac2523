"""Official OASIS checkpoints: state dicts in the official key layout (built here from the reference key list),
imported, loaded into gensynth's modules and compared with an independent functional re-computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from gensynth.errors import CheckpointError
from gensynth.interfaces import one_hot
from gensynth_oasis.importer import export_official, find_official_files, import_official

DATA = "demo"  # 11 classes, class 0 = don't-care
N = 11
Z = 64
CH_G = 2  # official channels_G (widths 32, 32, 32, 16, 8, 4, 2)
HIDDEN = 128


# ---------------------------------------------------------------------------------------------
# official-layout state dicts, from the key list of the reference (no gensynth code involved)
# ---------------------------------------------------------------------------------------------
def _sn(sd, prefix, out_c, in_c, k, gen, bias=True):
    w = torch.randn(out_c, in_c, k, k, generator=gen) / math.sqrt(in_c * k * k)
    mat = w.reshape(out_c, -1)
    v = F.normalize(torch.randn(mat.shape[1], generator=gen), dim=0)
    for _ in range(8):  # what the official training leaves in u, v: power-iteration estimates
        u = F.normalize(mat @ v, dim=0)
        v = F.normalize(mat.t() @ u, dim=0)
    sd[prefix + "weight_orig"], sd[prefix + "weight_u"], sd[prefix + "weight_v"] = w, u, v
    if bias:
        sd[prefix + "bias"] = 0.1 * torch.randn(out_c, generator=gen)


def _conv(sd, prefix, out_c, in_c, k, gen, scale=1.0):
    sd[prefix + "weight"] = scale * torch.randn(out_c, in_c, k, k, generator=gen) / math.sqrt(in_c * k * k)
    sd[prefix + "bias"] = 0.1 * torch.randn(out_c, generator=gen)


def official_g_state(seed=0, ch=CH_G, n=N):
    gen = torch.Generator().manual_seed(seed)
    widths = [16 * ch, 16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    sd = {}
    _conv(sd, "fc.", widths[0], Z + n, 3, gen)
    for i in range(6):
        fin, fout = widths[i], widths[i + 1]
        fmid = min(fin, fout)
        p = f"body.{i}."
        _sn(sd, p + "conv_0.", fmid, fin, 3, gen)
        _sn(sd, p + "conv_1.", fout, fmid, 3, gen)
        norms = [("norm_0", fin), ("norm_1", fmid)]
        if fin != fout:
            _sn(sd, p + "conv_s.", fout, fin, 1, gen, bias=False)
            norms.append(("norm_s", fin))
        for name, c in norms:
            q = f"{p}{name}."
            sd[q + "first_norm.running_mean"] = 0.2 * torch.randn(c, generator=gen)
            sd[q + "first_norm.running_var"] = 0.5 + torch.rand(c, generator=gen)
            sd[q + "first_norm.num_batches_tracked"] = torch.tensor(0)  # SyncBN never counts
            _conv(sd, q + "mlp_shared.0.", HIDDEN, Z + n, 3, gen)
            _conv(sd, q + "mlp_gamma.", c, HIDDEN, 3, gen, scale=0.3)
            _conv(sd, q + "mlp_beta.", c, HIDDEN, 3, gen, scale=0.3)
    _conv(sd, "conv_img.", 3, ch, 3, gen)
    return sd


D_CH = [3, 128, 128, 256, 256, 512, 512]


def official_d_state(seed=1, n=N):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(6):
        fin, fout = D_CH[i], D_CH[i + 1]
        p = f"body_down.{i}."
        _sn(sd, p + ("conv1.0." if i == 0 else "conv1.1."), fout, fin, 3, gen)
        _sn(sd, p + "conv2.1.", fout, fout, 3, gen)
        if fin != fout:
            _sn(sd, p + "conv_s.", fout, fin, 1, gen)
    ups = [(512, 512), (1024, 256), (512, 256), (512, 128), (256, 128), (256, 64)]
    for i, (fin, fout) in enumerate(ups):
        p = f"body_up.{i}."
        _sn(sd, p + "conv1.2.", fout, fin, 3, gen)
        _sn(sd, p + "conv2.1.", fout, fout, 3, gen)
        if fin != fout:
            _sn(sd, p + "conv_s.", fout, fin, 1, gen)
    _conv(sd, "layer_up_last.", n + 1, 64, 1, gen)
    return sd


# ---------------------------------------------------------------------------------------------
# independent functional re-computation of the official forward (eval mode)
# ---------------------------------------------------------------------------------------------
def sn_w(sd, p):
    w = sd[p + "weight_orig"]
    sigma = torch.dot(sd[p + "weight_u"], w.reshape(w.shape[0], -1) @ sd[p + "weight_v"])
    return w / sigma


def f_spade(x, seg, sd, p):
    seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
    mean, var = sd[p + "first_norm.running_mean"], sd[p + "first_norm.running_var"]
    normed = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
    a = F.relu(F.conv2d(seg, sd[p + "mlp_shared.0.weight"], sd[p + "mlp_shared.0.bias"], padding=1))
    gamma = F.conv2d(a, sd[p + "mlp_gamma.weight"], sd[p + "mlp_gamma.bias"], padding=1)
    beta = F.conv2d(a, sd[p + "mlp_beta.weight"], sd[p + "mlp_beta.bias"], padding=1)
    return normed * (1 + gamma) + beta


def f_g_block(x, seg, sd, p):
    if p + "conv_s.weight_orig" in sd:
        xs = F.conv2d(f_spade(x, seg, sd, p + "norm_s."), sn_w(sd, p + "conv_s."))
    else:
        xs = x
    dx = F.conv2d(F.leaky_relu(f_spade(x, seg, sd, p + "norm_0."), 0.2), sn_w(sd, p + "conv_0."),
                  sd[p + "conv_0.bias"], padding=1)
    dx = F.conv2d(F.leaky_relu(f_spade(dx, seg, sd, p + "norm_1."), 0.2), sn_w(sd, p + "conv_1."),
                  sd[p + "conv_1.bias"], padding=1)
    return xs + dx


def official_generator_forward(sd, labels, z):
    b, _, h, w = labels.shape
    seg = torch.cat([z.view(b, Z, 1, 1).expand(b, Z, h, w), labels], dim=1)
    x = F.interpolate(seg, size=(h // 32, w // 32))
    x = F.conv2d(x, sd["fc.weight"], sd["fc.bias"], padding=1)
    for i in range(6):
        x = f_g_block(x, seg, sd, f"body.{i}.")
        if i < 5:
            x = F.interpolate(x, scale_factor=2)
    return torch.tanh(F.conv2d(F.leaky_relu(x, 0.2), sd["conv_img.weight"], sd["conv_img.bias"], padding=1))


def f_d_block(x, sd, p, up, first):
    key = "conv1.0." if first else ("conv1.2." if up else "conv1.1.")
    dx = x if first else F.leaky_relu(x, 0.2)
    if up:
        dx = F.interpolate(dx, scale_factor=2)
    dx = F.conv2d(dx, sn_w(sd, p + key), sd[p + key + "bias"], padding=1)
    dx = F.conv2d(F.leaky_relu(dx, 0.2), sn_w(sd, p + "conv2.1."), sd[p + "conv2.1.bias"], padding=1)
    if not up:
        dx = F.avg_pool2d(dx, 2)
    learned = p + "conv_s.weight_orig" in sd
    cs = (lambda t: F.conv2d(t, sn_w(sd, p + "conv_s."), sd[p + "conv_s.bias"])) if learned else (lambda t: t)
    if first:
        s = cs(F.avg_pool2d(x, 2))
    elif up:
        s = cs(F.interpolate(x, scale_factor=2))
    else:
        s = F.avg_pool2d(cs(x), 2)
    return s + dx


def official_discriminator_forward(sd, image):
    feats, x = [], image
    for i in range(6):
        x = f_d_block(x, sd, f"body_down.{i}.", up=False, first=(i == 0))
        feats.append(x)
    x = f_d_block(x, sd, "body_up.0.", up=True, first=False)
    for i in range(1, 6):
        x = f_d_block(torch.cat([feats[-i - 1], x], 1), sd, f"body_up.{i}.", up=True, first=False)
    return F.conv2d(x, sd["layer_up_last.weight"], sd["layer_up_last.bias"])


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("oasis_demo_pretrained")
    (root / "models").mkdir()
    g, ema, d = official_g_state(0), official_g_state(7), official_d_state(1)
    torch.save(g, root / "models" / "best_G.pth")
    torch.save(ema, root / "models" / "best_EMA.pth")
    torch.save(d, root / "models" / "best_D.pth")
    (root / "models" / "best_iter.txt").write_text("12345\n")
    torch.save(official_g_state(3), root / "models" / "20000_G.pth")
    return root, {"generator": g, "generator_ema": ema, "discriminator": d}


def test_official_key_list_has_the_reference_sizes():
    assert len(official_g_state()) == 208 and len(official_d_state()) == 130


def test_find_official_files_prefers_best_and_reads_the_iteration(release):
    root, _ = release
    found = find_official_files(root)
    assert found.which == "best" and found.step == 12345
    assert {r: p.name for r, p in found.files.items()} == {
        "generator": "best_G.pth", "generator_ema": "best_EMA.pth", "discriminator": "best_D.pth"}
    it = find_official_files(root / "models", "20000")
    assert it.step == 20000 and set(it.files) == {"generator"}
    with pytest.raises(CheckpointError, match="no latest_G.pth.*available: 20000, best"):
        find_official_files(root, "latest")
    with pytest.raises(CheckpointError, match="does not exist"):
        find_official_files(root / "nope")


def test_imported_generator_and_discriminator_match_the_official_computation(release, tmp_path):
    from gensynth.api import load_model

    root, states = release
    out = import_official(root, DATA, tmp_path / "ckpt")
    loaded = load_model(out, ema=True, with_discriminator=True)
    g, d = loaded.generator, loaded.discriminator
    assert loaded.checkpoint.step == 12345 and loaded.checkpoint.meta["imported_from"]["which"] == "best"
    assert not g.training and g.widths == [32, 32, 32, 16, 8, 4, 2]
    gen = torch.Generator().manual_seed(5)
    labels = one_hot(torch.randint(0, N, (2, 32, 64), generator=gen), N)
    z = torch.randn(2, Z, generator=gen)
    with torch.no_grad():
        ours = g(labels, z).image
        ref = official_generator_forward(states["generator_ema"], labels, z)
    assert ours.shape == (2, 3, 32, 64)
    assert ref.std() > 0.05 and (ref.abs() > 0.999).float().mean() < 0.5  # a meaningful, unsaturated image
    assert (ours - ref).abs().max() < 1e-5
    # the raw generator differs from the EMA one and matches its own official weights
    g_raw = load_model(out, ema=False).generator
    with torch.no_grad():
        raw = g_raw(labels, z).image
        assert (raw - official_generator_forward(states["generator"], labels, z)).abs().max() < 1e-5
    assert (raw - ours).abs().max() > 1e-3
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        ours_d = d(image).logits
        ref_d = official_discriminator_forward(states["discriminator"], image)
    assert ours_d.shape == (1, N + 1, 64, 64) and ref_d.std() > 1e-3
    assert (ours_d - ref_d).abs().max() < 1e-5 * max(1.0, ref_d.abs().max().item())


def test_round_trip_of_our_model_through_the_official_layout(tmp_path):
    from gensynth.api import load_model
    from gensynth_oasis.generator import build_oasis_generator

    torch.manual_seed(0)
    g = build_oasis_generator(N, channels=1, num_res_blocks=6)
    labels = one_hot(torch.randint(0, N, (2, 32, 32)), N)
    with torch.no_grad():
        for _ in range(3):  # moves BN statistics, SN u/v and num_batches_tracked away from their init
            g(labels)
    g.eval()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    export_official({"generator": state}, tmp_path / "export", which="latest", step=7)
    out = import_official(tmp_path / "export", DATA, tmp_path / "ckpt")
    back = load_model(out)
    assert back.checkpoint.step == 7
    for k, v in back.generator.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    z = torch.randn(2, Z)
    with torch.no_grad():
        torch.testing.assert_close(back.generator(labels, z).image, g(labels, z).image, rtol=0, atol=0)


def test_parametrization_keys_are_mapped_to_the_hook_layout(tmp_path):
    from gensynth_oasis.importer import read_official_state

    sd = official_g_state()
    renamed = {}
    for k, v in sd.items():
        k = k.replace(".weight_orig", ".parametrizations.weight.original")
        k = k.replace(".weight_u", ".parametrizations.weight.0._u").replace(".weight_v", ".parametrizations.weight.0._v")
        renamed["module." + k] = v
    torch.save(renamed, tmp_path / "x.pth")
    assert set(read_official_state(tmp_path / "x.pth")) == set(sd)


def test_bad_files_are_reported_with_file_and_key(tmp_path):
    models = tmp_path / "rel" / "models"
    models.mkdir(parents=True)
    sd = official_g_state()
    del sd["body.3.conv_s.weight_u"]
    torch.save(sd, models / "best_G.pth")
    with pytest.raises(CheckpointError, match=r"best_G\.pth.*missing key\(s\) body\.3\.conv_s\.weight_u"):
        import_official(tmp_path / "rel", DATA, tmp_path / "o1")
    sd = official_g_state()
    sd["body.0.conv_0.bias"] = torch.zeros(5)
    torch.save(sd, models / "best_G.pth")
    with pytest.raises(CheckpointError, match=r"key body\.0\.conv_0\.bias has shape \(5,\), expected \(32,\)"):
        import_official(tmp_path / "rel", DATA, tmp_path / "o2")
    sd = official_g_state()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, models / "best_G.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) extra\.weight"):
        import_official(tmp_path / "rel", DATA, tmp_path / "o3")
    torch.save(official_d_state(n=34), models / "best_D.pth")  # a Cityscapes D with --data demo
    torch.save(official_g_state(), models / "best_G.pth")
    with pytest.raises(CheckpointError, match=r"best_D\.pth.*35 channels.*11 classes"):
        import_official(tmp_path / "rel", DATA, tmp_path / "o4")
    (models / "best_G.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"cannot read .*best_G\.pth"):
        import_official(tmp_path / "rel", DATA, tmp_path / "o5")


def test_unsafe_pickles_are_refused(tmp_path):
    models = tmp_path / "rel" / "models"
    models.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "evil": object.__new__(_Evil)}, models / "best_G.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_official(tmp_path / "rel", DATA, tmp_path / "out")


class _Evil:
    pass


def test_cli_import_official(release, tmp_path):
    from gensynth.checkpoint import load_checkpoint
    from gensynth.cli.main import _add_plugin_commands, cli

    _add_plugin_commands()
    root, _ = release
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "import-official", "oasis", str(root), "--data", DATA,
                              "--out", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    assert "best" in res.output and "step 12345" in res.output
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.has("generator") and ck.has("generator_ema") and ck.has("discriminator")
    assert ck.config().model.preset == "oasis" and ck.config().data.name == DATA
    res = runner.invoke(cli, ["models", "import-official", "spade", str(root), "--data", DATA,
                              "--out", str(tmp_path / "ck2")])
    assert res.exit_code == 2 and "unknown model 'spade'; known: cc-fpse, oasis" in res.output


def test_fine_tuning_an_imported_checkpoint_on_another_class_count(release, tmp_path):
    """--init-from with an imported official checkpoint and 5 instead of 11 classes: only the class-dependent
    layers (G's fc and SPADE mlp_shared input convs, D's last layer) keep their fresh init."""
    from gensynth.checkpoint import load_checkpoint
    from gensynth.train.init_from import InitReport, load_matching
    from gensynth_oasis.discriminator import build_oasis_discriminator
    from gensynth_oasis.generator import build_oasis_generator

    root, _ = release
    ck = load_checkpoint(import_official(root, DATA, tmp_path / "ckpt"))
    g_opts = ck.config().model.generator_options
    g = build_oasis_generator(5, **g_opts)
    d = build_oasis_discriminator(5, **ck.config().model.discriminator_options)
    report = InitReport()
    load_matching(g, ck.state("generator_ema"), "generator", report)
    load_matching(d, ck.state("discriminator"), "discriminator", report)
    fresh_g = {k.split(" ")[0] for k in report.reinitialised["generator"]}
    expected = {"fc.weight"} | {k for k in g.state_dict() if k.endswith("mlp_shared.0.weight")}
    assert fresh_g == expected
    assert {k.split(" ")[0] for k in report.reinitialised["discriminator"]} == {"layer_up_last.weight",
                                                                                  "layer_up_last.bias"}
    src = ck.state("generator_ema")
    for k, v in g.state_dict().items():
        if k not in expected:
            assert torch.equal(v, src[k]), k
    assert "kept their fresh init" in report.summary()
