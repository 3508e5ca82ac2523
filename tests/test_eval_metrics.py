"""Metrics on maintained libraries, on constructed inputs with known answers, and against gensynth's former
hand-written implementations (tests/eval_reference) on the same inputs and weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eval_reference import colour_texture as ref_ct
from eval_reference import diversity as ref_div
from eval_reference import precision_recall as ref_pr
from eval_reference.frechet import frechet_distance as ref_frechet
from eval_reference.inception import FIDInceptionV3 as RefInception

from gensynth.errors import CheckpointError, ConfigError, MissingWeightsError
from gensynth.eval.colour_texture import ClassHistograms, chi_squared, compare, emd_1d, lbp_codes, rgb_to_lab
from gensynth.eval.deps import optional_import
from gensynth.eval.diversity import (MS_SSIM_WEIGHTS, K1, load_lpips, lpips_model, mean_pairwise, ms_ssim,
                                     ms_ssim_scales)
from gensynth.eval.fid import (FID_WEIGHTS_NAME, FID_WEIGHTS_URL, FeatureStats, StatsCache, StatsKey, find_weights,
                               frechet_distance, load_fid_inception, network_hash)
from gensynth.eval.kid import kernel_inception_distance, kid_subset_size
from gensynth.eval.miou import IGNORE, ConfusionMatrix, apply_mapping, eval_id_mapping
from gensynth.eval.precision_recall import precision_recall


# ------------------------------------------------------------------------------------------ FID
def _reference_fd(mu1, s1, mu2, s2):
    """Independent computation: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2) via symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_identical_sets_is_zero_and_matches_numpy_and_former_implementation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    stats = FeatureStats()
    for chunk in np.array_split(x, 7):
        stats.update(torch.from_numpy(chunk))
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-10)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), atol=1e-10)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6
    y = rng.normal(loc=0.3, scale=1.5, size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5
    mu2, cov2 = y.mean(0), np.cov(y, rowvar=False)
    fd = frechet_distance(mu, cov, mu2, cov2)
    assert fd == pytest.approx(_reference_fd(mu, cov, mu2, cov2), rel=1e-6)
    assert fd == pytest.approx(ref_frechet(mu, cov, mu2, cov2), rel=1e-9)  # scipy.linalg.sqrtm (pytorch-fid's way)
    assert fd > 1.0


def test_frechet_rank_deficient_covariances_match_former_implementation():
    """Fewer samples than dimensions (a small evaluation): singular covariances, as in a 2048-d FID of 100 images."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 64)), rng.normal(loc=0.2, size=(40, 64)) * 1.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert np.linalg.matrix_rank(sa) < 64
    assert frechet_distance(a.mean(0), sa, b.mean(0), sb) == pytest.approx(
        ref_frechet(a.mean(0), sa, b.mean(0), sb), rel=1e-3)


def test_frechet_shifted_gaussians_known_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8))
    d = np.arange(8) * 0.25
    a, b = FeatureStats(), FeatureStats()
    a.update(x)
    b.update(x + d)  # same covariance, shifted mean: FD = |d|^2
    assert frechet_distance(*a.mean_cov(), *b.mean_cov()) == pytest.approx(float((d ** 2).sum()), rel=1e-6)
    # diagonal Gaussians: FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 1.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.zeros(3), s1, np.array([1.0, 0, 0]), s2) == pytest.approx(expected, rel=1e-9)
    # singular covariances (the near-constant images of an untrained generator): finite, by the closed form
    # (torch-fidelity takes Tr sqrt(S1 S2) from eigenvalues: no matrix square root that can refuse)
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), s2) == pytest.approx(3.0 + 9.0, rel=1e-9)
    # statistics of non-finite images (an untrained CC-FPSE generator in eval mode): NaN, not an exception
    assert np.isnan(frechet_distance(np.full(3, np.nan), s1, np.zeros(3), s2))
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.fixture(scope="module")
def random_fid_weights(tmp_path_factory):
    """A randomly initialised FID InceptionV3 (the former gensynth network) with non-trivial BN statistics, saved
    to a pt_inception file: stands in for the official weights, which cannot be downloaded here."""
    torch.manual_seed(0)
    net = RefInception().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            # PyTorch's default conv init shrinks activations ~sqrt(6)x per layer; these BN statistics undo that,
            # so that pool3 features are O(0.1-1) and differ between images (with var ~1 they are ~1e-8)
            m.running_mean.uniform_(-0.01, 0.01)
            m.running_var.uniform_(0.15, 0.18)
    path = tmp_path_factory.mktemp("fidw") / FID_WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return net, path


def test_library_fid_equals_former_implementation_on_the_same_weights(random_fid_weights):
    """pytorch-fid's InceptionV3 + torch-fidelity's distance vs gensynth's former network + scipy sqrtm: same
    images, same weights file -> the same FID within 1e-3 relative (the acceptance criterion of issue 21)."""
    ref_net, path = random_fid_weights
    lib_net = load_fid_inception(path)
    assert type(lib_net.inception).__module__ == "pytorch_fid.inception"
    g = torch.Generator().manual_seed(1)
    real = torch.rand(6, 3, 32, 48, generator=g) * 2 - 1
    fake = (real.flip(0) * 0.6 + (torch.rand(6, 3, 32, 48, generator=g) * 2 - 1) * 0.4).clamp(-1, 1)
    with torch.no_grad():
        f_ref = {k: ref_net(v).double().numpy() for k, v in (("real", real), ("fake", fake))}
        f_lib = {k: lib_net(v).double().numpy() for k, v in (("real", real), ("fake", fake))}
    assert f_lib["real"].shape == (6, 2048)
    assert f_ref["real"].std(0).mean() > 0.01 * np.abs(f_ref["real"]).mean()  # features that tell images apart
    np.testing.assert_allclose(f_lib["real"], f_ref["real"], rtol=1e-4, atol=1e-6)
    stats = {k: (v.mean(0), np.cov(v, rowvar=False)) for k, v in f_ref.items()}
    old = ref_frechet(*stats["fake"], *stats["real"])
    lib = {k: FeatureStats() for k in f_lib}
    for k, v in f_lib.items():
        lib[k].update(v)
    new = frechet_distance(*lib["fake"].mean_cov(), *lib["real"].mean_cov())
    assert old > 0 and new == pytest.approx(old, rel=1e-3)


def test_missing_fid_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as err:
        load_fid_inception(None)
    msg = str(err.value)
    assert FID_WEIGHTS_NAME in msg and FID_WEIGHTS_URL in msg
    assert str(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME) in msg
    assert "eval.fid_weights" in msg and "does not download" in msg
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nowhere.pth")):
        load_fid_inception(tmp_path / "nowhere.pth")


def test_wrong_fid_weights_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / FID_WEIGHTS_NAME
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="is not the pytorch-fid InceptionV3"):
        load_fid_inception(bad)
    assert find_weights(FID_WEIGHTS_NAME, tmp_path, FID_WEIGHTS_URL, "x") == bad  # a directory works too
    pickled = tmp_path / "pickled" / FID_WEIGHTS_NAME
    pickled.parent.mkdir()
    torch.save({"x": object()}, pickled)  # not loadable with weights_only=True
    with pytest.raises(CheckpointError, match="cannot read FID weights"):
        load_fid_inception(pickled)


def test_stats_cache_roundtrip_and_key(tmp_path):
    cache = StatsCache(tmp_path)
    key = StatsKey("demo", "val", (64, 64), "abc", None)
    assert cache.load(key) is None
    cache.save(key, mu=np.arange(3.0), sigma=np.eye(3))
    got = cache.load(key)
    np.testing.assert_array_equal(got["mu"], np.arange(3.0))
    assert cache.load(StatsKey("demo", "val", (32, 32), "abc")) is None  # resolution is part of the key
    net1, net2 = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
    assert network_hash(net1) == network_hash(net1) and network_hash(net1) != network_hash(net2)


def test_missing_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lpips(name, *args, **kwargs):
        if name == "lpips" or name.startswith("lpips."):
            raise ImportError("No module named 'lpips'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "lpips", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_lpips)
    with pytest.raises(ConfigError, match=r"metric 'lpips' needs the Python package lpips .*pip install \"gensynth\[eval\]\""):
        optional_import("lpips", "lpips")


# ------------------------------------------------------------------------------------------ KID
def test_kid_known_answer_and_subset_clipping():
    # one subset holding every sample; k(x, y) = (x y / 1 + 1)^3 in 1-D:
    # K_XX off-diagonal (0, 1): 1 -> mean 1; K_YY (2, 3): 343 -> mean 343; K_XY: 1, 1, 27, 64 -> mean 93/4
    real, fake = np.array([[2.0], [3.0]]), np.array([[0.0], [1.0]])
    out = kernel_inception_distance(real, fake, subsets=5)
    assert out["kid"] == pytest.approx(1 + 343 - 2 * 93 / 4)
    assert out["kid_std"] == pytest.approx(0.0)  # every subset is the whole set
    assert kid_subset_size(5000, 2000) == 1000 and kid_subset_size(300, 120) == 120
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same = kernel_inception_distance(a, b, subsets=10, subset_size=100)  # two draws of one distribution
    far = kernel_inception_distance(a, b + 1.0, subsets=10, subset_size=100)
    assert abs(same["kid"]) < 0.05 * far["kid"] and same["kid_std"] > 0
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(a[:1], a, subsets=2)


# ------------------------------------------------------------------------------------------ precision / recall
def test_precision_recall_known_answers():
    real = np.arange(10, dtype=float)[:, None]  # radii (k=3): 3 at the ends, 2 inside
    fake = np.array([0.5, 1.5, 100.0, 200.0, 300.0])[:, None]
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == pytest.approx(2 / 5)
    assert pr["recall"] == pytest.approx(1.0)  # fake radius at 0.5 is 199.5: covers every real point
    same = precision_recall(real, real.copy(), k=3)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 1000, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(real[:3], real[:3], k=3)


def test_precision_recall_equals_former_implementation():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(80, 16))
    fake = rng.normal(loc=0.4, scale=1.2, size=(70, 16))
    assert precision_recall(real, fake, k=3) == pytest.approx(ref_pr.precision_recall(real, fake, k=3), abs=1e-6)


# ------------------------------------------------------------------------------------------ MS-SSIM
def test_ms_ssim_known_answers():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    assert ms_ssim_scales(64, 64) == 3 and ms_ssim_scales(256, 256) == 5
    # constant images: every contrast-structure term is 1, so MS-SSIM = luminance ** (last renormalised weight)
    a, b = 0.2, 0.7
    ca = torch.full((1, 3, 64, 64), a * 2 - 1)
    cb = torch.full((1, 3, 64, 64), b * 2 - 1)
    lum = (2 * a * b + K1 ** 2) / (a * a + b * b + K1 ** 2)
    w_last = MS_SSIM_WEIGHTS[2] / sum(MS_SSIM_WEIGHTS[:3])
    assert float(ms_ssim(ca, cb)) == pytest.approx(lum ** w_last, rel=1e-5)
    noise = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(ms_ssim(x[:1], noise)) < 0.2
    with pytest.raises(ValueError, match="at least 11x11"):
        ms_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("size,library,tolerance", [(64, "torchmetrics", 0.05), (256, "pytorch-msssim", 0.003)])
def test_ms_ssim_close_to_former_implementation(size, library, tolerance):
    """At the paper's sizes pytorch-msssim (window-valid statistics like the former code; it takes the product per
    colour channel, the former code after averaging the channels): within 0.003. Below 161 px torchmetrics, which
    averages the coarsest scale's SSIM over a reflect-padded map: up to 0.045 at 64 px (3 scales)."""
    from gensynth.eval.diversity import ms_ssim_library

    assert ms_ssim_library(size, size) == library
    g = torch.Generator().manual_seed(size)
    base = torch.nn.functional.interpolate(torch.rand(4, 3, size // 8, size // 8, generator=g), size=(size, size),
                                           mode="bilinear") * 2 - 1
    other = (base.roll(1, 0) * 0.5 + base * 0.5 + 0.1 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    new, old = ms_ssim(base, other), ref_div.ms_ssim(base, other)
    assert (new - old).abs().max() < tolerance
    assert 0.3 < float(new.mean()) < 0.95


def test_mean_pairwise_over_all_pairs():
    s = torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1)
    assert mean_pairwise(s, lambda a, b: (a - b).abs().flatten(1).sum(1)) == pytest.approx((1 + 3 + 2) / 3)


# ------------------------------------------------------------------------------------------ LPIPS
def _torchvision_alexnet_file(tmp_path, seed=0):
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_lpips_from_local_backbone_equals_former_implementation(tmp_path):
    tv, path = _torchvision_alexnet_file(tmp_path)
    lp = load_lpips("alex", tmp_path)  # a directory holding the file
    assert type(lp.model).__module__ == "lpips.lpips"
    assert torch.equal(lp.model.net.slice1[0].weight, tv.features[0].weight)
    ref = ref_div.LPIPS("alex")
    ref.features.load_state_dict(tv.features[:12].state_dict())
    for i, conv in enumerate(ref.lins):  # the linear layers the lpips package ships
        conv.weight.data.copy_(lp.model.state_dict()[f"lin{i}.model.1.weight"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(lp(x, x), torch.zeros(3), atol=1e-7)
        d = lp(x, y)
        assert (d > 0).all() and torch.allclose(d, lp(y, x), atol=1e-6)
        torch.testing.assert_close(d, ref(x, y), rtol=1e-5, atol=1e-7)


def test_lpips_missing_and_wrong_backbone(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load_lpips("vgg", tmp_path)
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert "eval.lpips_weights" in msg
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(CheckpointError, match="features.0.weight has shape"):
        load_lpips("alex", tmp_path)
    with pytest.raises(ConfigError, match="lpips_net = 'squeeze'"):
        lpips_model("squeeze")


# ------------------------------------------------------------------------------------------ colour / texture
def _srgb_L(v: float) -> float:
    lin = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    f = lin ** (1 / 3) if lin > (6 / 29) ** 3 else lin / (3 * (6 / 29) ** 2) + 4 / 29
    return 116 * f - 16


def test_lab_conversion_of_greys_primaries_and_former_implementation():
    greys = torch.tensor([0.0, 0.25, 0.5, 1.0])
    img = (greys.view(1, 1, 1, 4).expand(1, 3, 1, 4)) * 2 - 1
    lab = rgb_to_lab(img)
    for i, g in enumerate(greys.tolist()):
        assert float(lab[0, 0, 0, i]) == pytest.approx(_srgb_L(g), abs=1e-3)
    # a = b = 0 for grey up to skimage's rounded D65 white point (binning rounds them to 0.01)
    assert torch.allclose(lab[0, 1:], torch.zeros(2, 1, 4, dtype=torch.float64), atol=0.006)
    red = rgb_to_lab(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
    assert float(red[0, 1]) > 60 and float(red[0, 2]) > 40  # red: strongly positive a and b
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (rgb_to_lab(x) - ref_ct.rgb_to_lab(x)).abs().max() < 0.01  # D65 white point rounded differently


def test_emd_equals_former_cdf_formula():
    rng = np.random.default_rng(0)
    for bins, width in ((50, 2.0), (64, 4.0)):
        p, q = rng.integers(0, 50, bins).astype(float), rng.integers(0, 50, bins).astype(float)
        assert emd_1d(p, q, width) == pytest.approx(ref_ct.emd_1d(p, q, width), rel=1e-9)
    assert emd_1d(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), 2.0) == pytest.approx(4.0)


def test_colour_emd_between_constant_greys():
    labels = torch.ones(2, 16, 16, dtype=torch.long)
    real, fake = ClassHistograms(3, ignore=0), ClassHistograms(3, ignore=0)
    g1, g2 = 0.3, 0.8
    real.update(torch.full((2, 3, 16, 16), g1 * 2 - 1), labels)
    fake.update(torch.full((2, 3, 16, 16), g2 * 2 - 1), labels)
    bins = abs(int(_srgb_L(g2) / 2) - int(_srgb_L(g1) / 2))  # L: 50 bins of width 2; a = b = 0 in both
    out = compare(real, fake)
    assert out["color_emd"] == pytest.approx(bins * 2 / 3)
    assert out["texture_chi2"] == 0.0  # flat images (edge-padded): every LBP code is 255
    assert out["color_texture_classes"] == 1.0
    assert compare(real, real)["color_emd"] == 0.0


def test_colour_distance_equals_former_implementation_on_random_images():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (3, 24, 24), generator=g)
    a = torch.rand(3, 3, 24, 24, generator=g) * 2 - 1
    b = (a * 0.7 + 0.2).clamp(-1, 1)
    new_r, new_f, old_r, old_f = (ClassHistograms(4, ignore=0), ClassHistograms(4, ignore=0),
                                  ref_ct.ClassHistograms(4, ignore=0), ref_ct.ClassHistograms(4, ignore=0))
    new_r.update(a, labels), new_f.update(b, labels), old_r.update(a, labels), old_f.update(b, labels)
    assert compare(new_r, new_f)["color_emd"] == pytest.approx(ref_ct.compare(old_r, old_f)["color_emd"], rel=1e-2)


def test_lbp_checkerboard_vs_flat_chi_squared():
    h = w = 8
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((yy + xx) % 2).float().view(1, 1, h, w).expand(1, 3, h, w) * 2 - 1
    codes = lbp_codes(board)[0]
    inner = codes[1:-1, 1:-1]
    high = ((yy + xx) % 2 == 1)[1:-1, 1:-1]
    # a bright pixel: its 4 axis neighbours are dark, and the interpolated diagonal samples are 0.59 of it: code 0;
    # a dark pixel: every neighbour is >= it: code 255
    assert (inner[high] == 0).all() and (inner[~high] == 255).all()
    # border pixels see their edge-replicated selves outside the image (equal: bit set), not zeros
    assert codes[0, 0] == 255 and int(codes[0, 1]) != 0
    labels = torch.full((1, h, w), 2)
    labels[0, 1:-1, 1:-1] = 1  # class 1 = interior pixels only
    a, b = ClassHistograms(3), ClassHistograms(3)
    a.update(torch.zeros(1, 3, h, w), labels)
    b.update(board, labels)
    # p = all mass at 255; q = half at 255, half at 0: 0.5 * (0.25 / 1.5 + 0.25 / 0.5) = 1/3
    assert chi_squared(a.lbp[1].astype(float), b.lbp[1].astype(float)) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------ mIoU
def test_confusion_matrix_iou_known_values():
    gt = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 1]]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    iou = cm.iou()
    # class 0: TP 1, FP 1 (a 2 predicted as 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 2, FN 1 -> 2/3;
    # class 3: absent from ground truth and prediction -> NaN, left out of the mean
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 2 / 3])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 4 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_miou_convention_against_torchmetrics_jaccard():
    """Same per-class IoU and macro mean as torchmetrics' JaccardIndex (ignore_index=255) on valid predictions;
    where torchmetrics reports an absent class as 0, gensynth reports NaN (the Cityscapes/mmseg convention)."""
    from torchmetrics.functional.classification import multiclass_jaccard_index

    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (2, 16, 16), generator=g)
    gt[0, :4] = IGNORE
    pred = torch.where(torch.rand(gt.shape, generator=g) < 0.7, gt.clamp(max=4), torch.randint(0, 5, gt.shape, generator=g))
    pred[pred == 4] = 3  # class 4 never predicted; gt has no class 5 at all
    cm = ConfusionMatrix(6)
    cm.update(pred, gt)
    tm_per = multiclass_jaccard_index(pred, gt, num_classes=6, ignore_index=IGNORE, average="none").double().numpy()
    ours = cm.iou()
    np.testing.assert_allclose(ours[:5], tm_per[:5], rtol=1e-6)
    assert np.isnan(ours[5]) and tm_per[5] == 0.0
    tm_macro = float(multiclass_jaccard_index(pred, gt, num_classes=6, ignore_index=IGNORE, average="macro"))
    assert cm.miou() == pytest.approx(tm_macro, rel=1e-6)


def test_eval_id_mapping_ignores_dontcare_and_maps_eval_ids():
    table, n = eval_id_mapping(4, None, dontcare=0)
    assert n == 4 and table.tolist() == [IGNORE, 1, 2, 3]
    table, n = eval_id_mapping(4, [IGNORE, 0, 0, 1])  # e.g. labelIds -> trainIds
    assert n == 2
    ids = torch.tensor([[[0, 1, 2, 3]]])
    assert apply_mapping(ids, table).tolist() == [[[IGNORE, 0, 0, 1]]]
    cm = ConfusionMatrix(n)
    cm.update(apply_mapping(torch.tensor([[[1, 1, 0, 3]]]), table), apply_mapping(ids, table))
    # predicted don't-care on a valid pixel (gt 0) counts as a miss
    np.testing.assert_allclose(cm.iou(), [0.5, 1.0])


ADE = Path(__file__).resolve().parents[2] / "shared" / "testdata-real" / "ade20k" / "ADEChallengeData2016"


@pytest.mark.realdata
@pytest.mark.skipif(not ADE.is_dir(), reason="../shared/testdata-real/ade20k is absent")
def test_colour_and_texture_on_real_images_against_former_implementation():
    """Three ADE20K validation images vs noisy copies at 256x256: the colour distance is the former one within 1%;
    the texture distance (circular interpolated LBP vs the former 3x3 square LBP) differs, by under 2x."""
    from PIL import Image

    imgs, labs = [], []
    for i in (1, 2, 3):
        im = Image.open(ADE / "images" / "validation" / f"ADE_val_0000000{i}.jpg").convert("RGB").resize((256, 256))
        lb = Image.open(ADE / "annotations" / "validation" / f"ADE_val_0000000{i}.png").resize((256, 256),
                                                                                              Image.NEAREST)
        imgs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1)
        labs.append(torch.from_numpy(np.asarray(lb).astype(np.int64)))
    real, labels = torch.stack(imgs), torch.stack(labs)
    fake = (real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    new = [ClassHistograms(151, ignore=0) for _ in range(2)]
    old = [ref_ct.ClassHistograms(151, ignore=0) for _ in range(2)]
    for hists in (new, old):
        hists[0].update(real, labels)
        hists[1].update(fake, labels)
    a, b = compare(*new), ref_ct.compare(*old)
    assert a["color_texture_classes"] == b["color_texture_classes"] > 5
    assert a["color_emd"] == pytest.approx(b["color_emd"], rel=0.01) and a["color_emd"] > 1
    assert 0.5 < a["texture_chi2"] / b["texture_chi2"] < 2 and a["texture_chi2"] > 0.05
