"""Evaluation speed: gensynth's former hand-written metrics against the maintained libraries it now uses, in one
process, on the same images and the same (random, saved-to-file) weights.

    OMP_NUM_THREADS=1 python benchmarks/eval_metrics.py --images 200 --size 256 --threads 1

For ``--images`` generated/real image pairs at ``--size`` x ``--size`` (smooth random images with random label
maps; no dataset or download needed) it times each stage of an evaluation both ways and checks that the values
agree:

* FID features: the former gensynth InceptionV3 vs pytorch-fid's ``InceptionV3`` (batched, ``--batch``);
* Fréchet distance on the 2048-d statistics: scipy ``sqrtm`` (the former code and pytorch-fid) vs torch-fidelity;
* precision/recall (k=3) and KID on the features (KID is new: no former figure);
* colour/texture histograms: the former torch LAB/LBP vs scikit-image ``rgb2lab``/``local_binary_pattern``;
* MS-SSIM (``--pairs`` pairs): the former code vs torchmetrics; LPIPS (AlexNet): the former module vs ``lpips``.

The former implementations are imported from tests/eval_reference (kept there as the tests' references).
Prints a table and writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from eval_reference import colour_texture as old_ct  # noqa: E402
from eval_reference import diversity as old_div  # noqa: E402
from eval_reference import precision_recall as old_pr  # noqa: E402
from eval_reference.frechet import frechet_distance as old_frechet  # noqa: E402
from eval_reference.inception import FIDInceptionV3  # noqa: E402

from gensynth.eval import colour_texture as new_ct  # noqa: E402
from gensynth.eval.diversity import LPIPSDistance, load_backbone, lpips_model, ms_ssim  # noqa: E402
from gensynth.eval.fid import FID_WEIGHTS_NAME, FeatureStats, frechet_distance, load_fid_inception  # noqa: E402
from gensynth.eval.kid import kernel_inception_distance  # noqa: E402
from gensynth.eval.precision_recall import precision_recall  # noqa: E402


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 16), max(2, size // 16), generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1) * 2 - 1


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def features(net, images: torch.Tensor, batch: int) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(images[i:i + batch]) for i in range(0, len(images), batch)]).double().numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="generated and real images each (issue: 2,000)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--pairs", type=int, default=40, help="image pairs for MS-SSIM and LPIPS")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_metrics.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, s = args.images, args.size
    real = smooth_images(n, s, 0)
    fake = (0.7 * real + 0.3 * smooth_images(n, s, 1)).clamp(-1, 1)  # correlated, as samples of one label map are
    labels = torch.randint(0, 8, (n, s // 32, s // 32), generator=torch.Generator().manual_seed(2))
    labels = F.interpolate(labels[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
    rows = []

    def row(stage, old_s, new_s, agree, note=""):
        rows.append({"stage": stage, "former_s": old_s, "library_s": new_s,
                     "speed_up": (old_s / new_s) if old_s and new_s else None, "agreement": agree, "note": note})

    # FID features: same random weights (non-trivial BN statistics) through both networks
    torch.manual_seed(0)
    old_net = FIDInceptionV3().eval()
    for m in old_net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            # PyTorch's default conv init shrinks activations ~sqrt(6)x per layer; these BN statistics undo that,
            # so that pool3 features are O(0.1-1) and differ between images (with var ~1 they are ~1e-8)
            m.running_mean.uniform_(-0.01, 0.01)
            m.running_var.uniform_(0.15, 0.18)
    wdir = Path(args.out).parent / "tmp-eval-weights"
    wdir.mkdir(parents=True, exist_ok=True)
    torch.save(old_net.state_dict(), wdir / FID_WEIGHTS_NAME)
    new_net = load_fid_inception(wdir / FID_WEIGHTS_NAME)
    (wdir / FID_WEIGHTS_NAME).unlink()
    wdir.rmdir()
    f_old = {}
    f_new = {}
    t_old = t_new = 0.0
    for name, images in (("real", real), ("fake", fake)):
        f_old[name], t = timed(features, old_net, images, args.batch)
        t_old += t
        f_new[name], t = timed(features, new_net, images, args.batch)
        t_new += t
    diff = max(float(np.abs(f_old[k] - f_new[k]).max()) for k in f_old)
    row(f"FID features ({2 * n} images, batch {args.batch})", t_old, t_new, f"max |feature diff| {diff:.2e}",
        f"{2 * n / t_new:.1f} images/s (library)")

    stats = {}
    for k, v in f_new.items():
        st = FeatureStats()
        st.update(v)
        stats[k] = st.mean_cov()
    fid_old, t_o = timed(old_frechet, *stats["fake"], *stats["real"])
    fid_new, t_n = timed(frechet_distance, *stats["fake"], *stats["real"])
    row("Fréchet distance (2048-d)", t_o, t_n, f"FID {fid_old:.6g} vs {fid_new:.6g} "
        f"(rel {abs(fid_new - fid_old) / abs(fid_old):.1e})")

    pr_old, t_o = timed(old_pr.precision_recall, f_new["real"], f_new["fake"], 3)
    pr_new, t_n = timed(precision_recall, f_new["real"], f_new["fake"], 3)
    row("precision/recall k=3", t_o, t_n, f"{pr_old} vs {pr_new}")
    kid, t_n = timed(kernel_inception_distance, f_new["real"], f_new["fake"])
    row("KID (100 subsets)", None, t_n, f"kid {kid['kid']:.4g} +- {kid['kid_std']:.2g}", "new metric")

    def hist(mod):
        r, f = mod.ClassHistograms(8, ignore=0), mod.ClassHistograms(8, ignore=0)
        for i in range(0, n, args.batch):
            r.update(real[i:i + args.batch], labels[i:i + args.batch])
            f.update(fake[i:i + args.batch], labels[i:i + args.batch])
        return mod.compare(r, f)

    warm = (real[:1, :, :32, :32], labels[:1, :32, :32])  # first calls import and set up: not timed
    for mod in (old_ct, new_ct):
        mod.ClassHistograms(8).update(*warm)
    ms_ssim(real[:1], fake[:1]), old_div.ms_ssim(real[:1], fake[:1])
    ct_old, t_o = timed(hist, old_ct)
    ct_new, t_n = timed(hist, new_ct)
    row(f"colour/texture ({2 * n} images)", t_o, t_n,
        f"colour EMD {ct_old['color_emd']:.4g} vs {ct_new['color_emd']:.4g}; texture chi2 "
        f"{ct_old['texture_chi2']:.4g} vs {ct_new['texture_chi2']:.4g} (different LBP sampling)")

    a, b = real[:args.pairs], fake[:args.pairs]
    ms_old, t_o = timed(old_div.ms_ssim, a, b)
    ms_new, t_n = timed(ms_ssim, a, b)
    row(f"MS-SSIM ({args.pairs} pairs)", t_o, t_n, f"max |diff| {float((ms_old - ms_new).abs().max()):.2e}")

    torch.manual_seed(0)
    lp_new = LPIPSDistance(lpips_model("alex"), "alex").eval()
    tv = {re.sub(r"^net\.slice\d+\.", "features.", k): v
          for k, v in lp_new.model.state_dict().items() if k.startswith("net.")}
    lp_old = old_div.LPIPS("alex")
    lp_old.features.load_state_dict({k[len("features."):]: v for k, v in tv.items()}, strict=False)
    for i, conv in enumerate(lp_old.lins):
        conv.weight.data.copy_(lp_new.model.state_dict()[f"lin{i}.model.1.weight"])
    load_backbone(lp_new.model, tv, "benchmark")
    with torch.no_grad():
        lp_old(a[:1], b[:1]), lp_new(a[:1], b[:1])
        d_old, t_o = timed(lp_old, a, b)
        d_new, t_n = timed(lp_new, a, b)
    row(f"LPIPS alex ({args.pairs} pairs)", t_o, t_n, f"max |diff| {float((d_old - d_new).abs().max()):.2e}")

    total_old = sum(r["former_s"] for r in rows if r["former_s"])
    total_new = sum(r["library_s"] for r in rows if r["former_s"])
    doc = {"images": n, "size": s, "batch": args.batch, "pairs": args.pairs, "threads": args.threads,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows,
           "total_former_s": total_old, "total_library_s": total_new, "speed_up_total": total_old / total_new}
    print(f"{'stage':40s} {'former s':>9s} {'library s':>9s} {'speed-up':>8s}  agreement")
    for r in rows:
        fo = f"{r['former_s']:.2f}" if r["former_s"] else "-"
        su = f"{r['speed_up']:.2f}x" if r["speed_up"] else "-"
        print(f"{r['stage']:40s} {fo:>9s} {r['library_s']:9.2f} {su:>8s}  {r['agreement']} {r['note']}")
    print(f"{'total (stages with both)':40s} {total_old:9.2f} {total_new:9.2f} {total_old / total_new:7.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
