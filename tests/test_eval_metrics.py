"""Metrics on constructed inputs with known answers (FID, precision/recall, MS-SSIM, LPIPS, colour/texture, mIoU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gensynth.errors import CheckpointError, MissingWeightsError
from gensynth.eval.colour_texture import ClassHistograms, chi_squared, compare, emd_1d, lbp_codes, rgb_to_lab
from gensynth.eval.diversity import LPIPS, MS_SSIM_WEIGHTS, K1, mean_pairwise, ms_ssim, ms_ssim_scales
from gensynth.eval.fid import (FeatureStats, StatsCache, StatsKey, find_weights, frechet_distance, load_fid_inception,
                               network_hash)
from gensynth.eval.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, FIDInceptionV3
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


def test_frechet_identical_sets_is_zero_and_matches_numpy_reference():
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
    assert fd > 1.0


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


def test_frechet_retries_with_an_offset_when_scipy_refuses_the_square_root(monkeypatch):
    """scipy 1.17's sqrtm raises LinAlgError (-102) on some near-singular products where older versions returned
    NaN (met with the near-constant images of an untrained generator): the offset retry must take over."""
    from scipy import linalg

    real_sqrtm, calls = linalg.sqrtm, []

    def refusing_once(m, *args, **kwargs):
        calls.append(m.copy())
        if len(calls) == 1:
            raise linalg.LinAlgError("Internal error in scipy.linalg.sqrtm: -102")
        return real_sqrtm(m, *args, **kwargs)

    monkeypatch.setattr(linalg, "sqrtm", refusing_once)
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 1.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.zeros(3), s1, np.array([1.0, 0, 0]), s2) == pytest.approx(expected, rel=1e-5)
    assert len(calls) == 2 and np.allclose(calls[1], (s1 + 1e-6 * np.eye(3)) @ (s2 + 1e-6 * np.eye(3)))
    # scipy refusing both: the symmetric-form trace gives the same value
    monkeypatch.setattr(linalg, "sqrtm", lambda m, *a, **k: (_ for _ in ()).throw(linalg.LinAlgError("-102")))
    assert frechet_distance(np.zeros(3), s1, np.array([1.0, 0, 0]), s2) == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4))
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    monkeypatch.setattr(linalg, "sqrtm", real_sqrtm)
    reference = frechet_distance(np.zeros(4), c1, np.ones(4), c2)
    monkeypatch.setattr(linalg, "sqrtm", lambda m, *a, **k: (_ for _ in ()).throw(linalg.LinAlgError("-102")))
    assert frechet_distance(np.zeros(4), c1, np.ones(4), c2) == pytest.approx(reference, rel=1e-8)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_inception_matches_pytorch_fid_layout_on_meta():
    """Same state-dict keys and shapes as torchvision's Inception3 with 1008 classes and no aux head, which is
    what pytorch-fid loads pt_inception-2015-12-05-6726825d.pth into."""
    import torchvision

    with torch.device("meta"):
        ours = FIDInceptionV3()
        ref = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert 23_000_000 < n < 24_500_000
    assert ours.fc.out_features == 1008


def test_fid_inception_pooling_and_output_shape():
    net = FIDInceptionV3().eval()
    with torch.no_grad():
        f = net(torch.rand(2, 3, 40, 48) * 2 - 1)  # any size: resized to 299 inside
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 after ReLU
    # the last block's pool branch is a max pool, the first's an average pool excluding the padding
    assert net.Mixed_7c.pool == "max" and net.Mixed_7b.pool == "avg"


def test_missing_fid_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as err:
        load_fid_inception(None)
    msg = str(err.value)
    assert FID_WEIGHTS_NAME in msg and FID_WEIGHTS_URL in msg
    assert str(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME) in msg
    assert "eval.fid_weights" in msg
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nowhere.pth")):
        load_fid_inception(tmp_path / "nowhere.pth")


def test_wrong_fid_weights_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / FID_WEIGHTS_NAME
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="is not the pytorch-fid InceptionV3"):
        load_fid_inception(bad)
    assert find_weights(FID_WEIGHTS_NAME, tmp_path, FID_WEIGHTS_URL, "x") == bad  # a directory works too


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


# ------------------------------------------------------------------------------------------ diversity
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


def test_mean_pairwise_over_all_pairs():
    s = torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1)
    assert mean_pairwise(s, lambda a, b: (a - b).abs().flatten(1).sum(1)) == pytest.approx((1 + 3 + 2) / 3)


def _save_lpips_files(net: LPIPS, tmp_path):
    bb = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    bb["classifier.1.weight"] = torch.zeros(1)  # torchvision files hold the classifier too
    lin = {f"lin{i}.model.1.weight": c.weight.detach().abs() for i, c in enumerate(net.lins)}
    torch.save(bb, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(lin, tmp_path / "lpips_v0.1_alex.pth")
    return lin


def test_lpips_loads_local_files_and_has_known_answers(tmp_path):
    torch.manual_seed(0)
    src = LPIPS("alex")
    lin = _save_lpips_files(src, tmp_path)
    net = LPIPS.pretrained("alex", tmp_path)
    assert torch.equal(net.lins[2].weight, lin["lin2.model.1.weight"])
    assert torch.equal(net.features[0].weight, src.features[0].weight)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x, x), torch.zeros(3), atol=1e-7)
        d = net(x, y)
        assert (d > 0).all()  # non-negative linear weights: strictly positive for different images
        assert torch.allclose(d, net(y, x), atol=1e-6)


def test_lpips_missing_weights_message(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        LPIPS.pretrained("vgg", tmp_path)
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="lpips_v0.1_vgg.pth"):
        LPIPS.pretrained("vgg", tmp_path)


# ------------------------------------------------------------------------------------------ colour / texture
def _srgb_L(v: float) -> float:
    lin = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    f = lin ** (1 / 3) if lin > (6 / 29) ** 3 else lin / (3 * (6 / 29) ** 2) + 4 / 29
    return 116 * f - 16


def test_lab_conversion_of_greys_and_primaries():
    greys = torch.tensor([0.0, 0.25, 0.5, 1.0])
    img = (greys.view(1, 1, 1, 4).expand(1, 3, 1, 4)) * 2 - 1
    lab = rgb_to_lab(img)
    for i, g in enumerate(greys.tolist()):
        assert float(lab[0, 0, 0, i]) == pytest.approx(_srgb_L(g), abs=1e-3)
    assert torch.allclose(lab[0, 1:], torch.zeros(2, 1, 4, dtype=torch.float64), atol=1e-3)  # a = b = 0 for grey
    red = rgb_to_lab(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
    assert float(red[0, 1]) > 60 and float(red[0, 2]) > 40  # red: strongly positive a and b


def test_colour_emd_between_constant_greys():
    labels = torch.ones(2, 16, 16, dtype=torch.long)
    real, fake = ClassHistograms(3, ignore=0), ClassHistograms(3, ignore=0)
    g1, g2 = 0.3, 0.8
    real.update(torch.full((2, 3, 16, 16), g1 * 2 - 1), labels)
    fake.update(torch.full((2, 3, 16, 16), g2 * 2 - 1), labels)
    bins = abs(int(_srgb_L(g2) / 2) - int(_srgb_L(g1) / 2))  # L: 50 bins of width 2; a = b = 0 in both
    out = compare(real, fake)
    assert out["color_emd"] == pytest.approx(bins * 2 / 3)
    assert out["texture_chi2"] == 0.0  # flat images: every LBP code is 255
    assert out["color_texture_classes"] == 1.0
    assert compare(real, real)["color_emd"] == 0.0


def test_lbp_checkerboard_vs_flat_chi_squared():
    h = w = 8
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((yy + xx) % 2).float().view(1, 1, h, w).expand(1, 3, h, w) * 2 - 1
    codes = lbp_codes(board)[0]
    inner = codes[1:-1, 1:-1]
    high = ((yy + xx) % 2 == 1)[1:-1, 1:-1]
    assert (inner[high] == 1 + 4 + 16 + 64).all()  # only the (equal) diagonal neighbours are >= centre
    assert (inner[~high] == 255).all()
    labels = torch.full((1, h, w), 2)
    labels[0, 1:-1, 1:-1] = 1  # class 1 = interior pixels only
    a, b = ClassHistograms(3), ClassHistograms(3)
    a.update(torch.zeros(1, 3, h, w), labels)
    b.update(board, labels)
    # p = all mass at 255; q = half at 255, half at 85: 0.5 * (0.25 / 1.5 + 0.25 / 0.5) = 1/3
    assert chi_squared(a.lbp[1].astype(float), b.lbp[1].astype(float)) == pytest.approx(1 / 3)
    assert emd_1d(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), 2.0) == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------ mIoU
def test_confusion_matrix_iou_known_values():
    gt = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 1]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    iou = cm.iou()
    # class 0: TP 1, FP 1 (a 2 predicted as 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 2, FN 1 -> 2/3
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 2 / 3])
    assert cm.miou() == pytest.approx((1 / 3 + 4 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


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
