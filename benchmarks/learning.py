"""Evidence that it learns: OASIS vs SPADE+ (and CC-FPSE with ``--models``) on the demo data, at CPU scale (issue 9).

Trains, with the real trainer (``run_training``), the same seed and the same number of steps:

* ``oasis``: the OASIS preset (N+1 segmentation discriminator, LabelMix, 3D noise), no perceptual loss;
* ``spade+``: SPADE+ as the OASIS paper defines it, WITHOUT its VGG perceptual loss;
* ``cc-fpse``: the CC-FPSE preset's demo entry with FPSE at ndf 8 (on request: ``--models oasis,spade+,cc-fpse``);
* ``spade+vgg``: SPADE+ with the VGG19 perceptual loss (weight 10), only when a VGG19 weights file is given
  (``--vgg-weights PATH``, or torchvision's cache location); skipped otherwise, and the report says so;
* ``dp-sims`` / ``dp-sims-nodiv`` (only when asked with ``--models``): the DP-SIMS-style preset at its demo entry
  (a random, fine-tuned tiny timm backbone; focal N+1, LabelMix, PatchNCE), with and without the diversity term.

Both presets run at the widths of their demo entries, made comparable: generators of 1.48M parameters each;
SPADE+'s PatchGAN at ``ndf=8`` (92k parameters) next to OASIS' U-Net D (82k). SPADE+ also gets the OASIS demo's
short-run optimiser values (``optim.lr_g=2e-4``, ``trainer.ema_decay=0.999``; SPADE+ is defined as SPADE with
OASIS' optimiser settings), so the comparison is about the losses and the discriminator, not the tuning.

Every model is measured at initialisation (same seed, same build order as the trainer) and at every checkpoint
(its BN-refreshed EMA generator) on the demo's held-out validation split:

* ``seg_miou``: mIoU of GENERATED images (fixed noise) as segmented by a segmenter trained once on REAL demo
  training images (:class:`~gensynth.eval.segmenters.SmallSegNet`, cached under ``<out>/cache``), against the
  label maps they were generated from, don't-care ignored. Two references: ``ceiling`` = the segmenter's mIoU on
  the real validation images; ``chance`` = its mIoU on real validation images scored against the label map of
  ANOTHER validation image (what a realistic generator that ignores its labels would get);
* ``seg_fd``: Fréchet distance between the segmenter's penultimate features (globally average-pooled) of real
  validation images and of the generated ones (FID-style; small sets, so compare within this table only);
* ``color_emd`` / ``texture_chi2``: the paper's per-class colour (LAB histogram EMD) and texture (LBP
  chi-squared) distances, :mod:`gensynth.eval.colour_texture`; ``colour_err``: per-class mean-RGB error (0..255);
* ``d_miou``: the discriminator as a segmenter of REAL validation images (only discriminators that segment);
* ``ms_ssim``: mean pairwise MS-SSIM between several samples of one label map (lower = more diverse; scales
  reduced to what the resolution holds, :func:`gensynth.eval.diversity.ms_ssim_scales`);
* ``loss/*``: mean logged losses since the previous checkpoint.

    OMP_NUM_THREADS=1 python benchmarks/learning.py                         # the full run (~23 min on one core)
    OMP_NUM_THREADS=1 python benchmarks/learning.py --vgg-weights vgg19-dcbb9e9d.pth   # also SPADE+ with VGG
    OMP_NUM_THREADS=1 python benchmarks/learning.py --tiny --steps 400 --models oasis  # the CI configuration
    OMP_NUM_THREADS=1 python benchmarks/learning.py --models oasis --precision bf16 --out /tmp/bf16
    OMP_NUM_THREADS=1 python benchmarks/learning.py --probe-d --models oasis   # D alone as a supervised segmenter

Writes ``learning.json``, ``learning.md``, ``curves.png`` and ``samples_<model>.png`` to ``--out``
(default ``benchmarks/results/learning``). ``tests/test_learning_evidence.py`` runs the tiny configuration.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from gensynth.build import Parts, build_discriminator, build_generator, count_parameters, resolve_parts
from gensynth.config import RunConfig, parse_set, resolve
from gensynth.eval.colour_texture import ClassHistograms, compare
from gensynth.eval.diversity import mean_pairwise, ms_ssim, ms_ssim_scales
from gensynth.eval.fid import FeatureStats, frechet_distance
from gensynth.eval.miou import IGNORE, ConfusionMatrix, apply_mapping, eval_id_mapping
from gensynth.interfaces import Condition, DOutputKind
from gensynth.train.state import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_rates import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "learning"
MODELS = ("oasis", "spade+", "spade+vgg", "dp-sims", "dp-sims-nodiv", "cc-fpse")

# ---------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------
#: shared by every model (dotted config keys); the OASIS demo's short-run optimiser values for all
COMMON = {
    "data.name": "demo", "data.num_workers": 0,
    "trainer.batch_size": 8, "trainer.log_every": 10, "trainer.bn_refresh_batches": 10,
    "trainer.ema_decay": 0.999, "optim.lr_g": 2e-4, "optim.lr_d": 4e-4, "trainer.keep_last": 1000,
}
#: per model, on top of its preset's demo entry
VARIANTS = {
    "oasis": {"model.preset": "oasis"},
    "spade+": {"model.preset": "spade+", "model.discriminator_options.ndf": 8, "model.losses.vgg": 0},
    "spade+vgg": {"model.preset": "spade+", "model.discriminator_options.ndf": 8, "model.losses.vgg": 10.0},
    # DP-SIMS-style at its demo entry (random fine-tuned test_convnext backbone, no download), with (the preset's
    # weight) and without the diversity term
    "dp-sims": {"model.preset": "dp-sims"},
    "dp-sims-nodiv": {"model.preset": "dp-sims", "model.losses.diversity": 0},
    # CC-FPSE's demo entry (G 1.93M: ngf 8, predictors 16, xavier gain 1.0; no VAE, no VGG) with FPSE at ndf 8
    # (82k parameters, next to OASIS' 82k U-Net); not in the default set: --models oasis,spade+,cc-fpse
    "cc-fpse": {"model.preset": "cc-fpse", "model.discriminator_options.ndf": 8},
}
#: the CI configuration (tests/test_learning_evidence.py): 32x32, tiny widths (OASIS G 0.04M / D 0.04M,
#: SPADE+ G 0.06M / D 0.01M parameters), batch 4, a faster D
TINY = {
    "data.size": [32, 32], "data.demo_samples": 128, "trainer.batch_size": 4, "trainer.log_every": 10,
    "trainer.bn_refresh_batches": 4, "optim.lr_d": 2e-3,
}
TINY_VARIANTS = {
    "oasis": {"model.generator_options.channels": 8, "model.generator_options.num_res_blocks": 2,
              "model.generator_options.spade_hidden": 8, "model.generator_options.z_dim": 4,
              "model.discriminator_options.num_res_blocks": 3, "model.discriminator_options.width": 0.125},
    "spade+": {"model.generator_options.ngf": 1, "model.generator_options.spade_hidden": 8,
               "model.discriminator_options.ndf": 4, "model.discriminator_options.n_layers": 3},
}
TINY_VARIANTS["spade+vgg"] = TINY_VARIANTS["spade+"]
TINY_VARIANTS["dp-sims"] = {
    "model.generator_options.dp-sims.channels": 4, "model.generator_options.dp-sims.num_res_blocks": 2,
    "model.generator_options.dp-sims.encoder_channels": 4, "model.generator_options.dp-sims.encoder_max_channels": 8,
    "model.generator_options.dp-sims.token_dim": 8, "model.generator_options.dp-sims.noise_tokens": 4,
    "model.generator_options.dp-sims.spade_hidden": 8, "model.generator_options.dp-sims.z_dim": 4,
    "model.discriminator_options.dp-sims.decoder_channels": [8, 8, 8, 8],
    "model.discriminator_options.dp-sims.head_channels": 8}
TINY_VARIANTS["dp-sims-nodiv"] = TINY_VARIANTS["dp-sims"]


@dataclass
class Settings:
    """One benchmark run: what to train, for how long, and where to write."""

    models: tuple[str, ...] = ("oasis", "spade+", "spade+vgg")
    steps: int = 800
    every: int = 100  # checkpoint (= measurement) interval in steps
    seed: int = 0
    precision: str = "fp32"
    tiny: bool = False
    vgg_weights: str | None = None
    val_samples: int = 64  # held-out label maps measured (the demo's val split has 64)
    diversity_maps: int = 8
    diversity_samples: int = 6
    segmenter_steps: int = 400
    segmenter_width: int = 16
    out: Path = RESULTS
    work_dir: Path | None = None  # run directories (checkpoints); default a temporary directory
    cache_dir: Path | None = None  # segmenter and demo shards; default <out>/cache
    extra: dict[str, Any] = field(default_factory=dict)  # more dotted config keys for every model
    probe_d: bool = False  # run probe_discriminator instead of the benchmark

    def data_cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"


def run_overrides(model: str, settings: Settings, run_dir: Path) -> dict[str, Any]:
    """Dotted configuration keys of one model's training run (see COMMON, VARIANTS, TINY)."""
    if model not in VARIANTS:
        raise ValueError(f"unknown model {model!r}; allowed: {', '.join(MODELS)}")
    keys = {**COMMON, **VARIANTS[model]}
    if settings.tiny:
        if model not in TINY_VARIANTS:
            raise ValueError(f"model {model!r} has no --tiny configuration (32x32: the FPSE discriminator needs "
                             f"64x64 or more); run it at the demo scale")
        keys.update({**TINY, **TINY_VARIANTS[model]})
    if model == "spade+vgg":
        keys["model.loss_options.vgg.weights_path"] = str(settings.vgg_weights)
    keys.update({"trainer.steps": settings.steps, "trainer.checkpoint_every": settings.every,
                 "trainer.sample_every": settings.every, "trainer.seed": settings.seed,
                 "trainer.precision": settings.precision, "trainer.run_dir": str(run_dir),
                 "data.cache_dir": str(settings.data_cache() / "data")})
    keys.update(settings.extra)
    return keys


def find_vgg_weights(explicit: str | None) -> Path | None:
    """The VGG19 weights file to use: ``explicit`` (must exist), else torchvision's cache location if present."""
    from gensynth.nn.vgg import default_weights_path

    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--vgg-weights {p}: no such file (torchvision's vgg19 state dict, "
                                    f"see gensynth/nn/vgg.py for how to obtain it)")
        return p
    p = default_weights_path()
    return p if p.is_file() else None


# ---------------------------------------------------------------------------------------------
# held-out data
# ---------------------------------------------------------------------------------------------
@dataclass
class ValBatch:
    """One batch of held-out data: real (B, 3, H, W) in [-1, 1]; cond as the model sees it (one-hot in its
    channel order); ids (B, H, W) dataset class ids (the segmenter's and the histograms' ground truth)."""

    real: Tensor
    cond: Condition
    ids: Tensor


def val_batches(cfg: RunConfig, parts: Parts, limit: int, batch_size: int = 16) -> list[ValBatch]:
    """The first ``limit`` samples of the validation split, on the CPU, in a fixed order."""
    from gensynth.data.loader import eval_batches, to_condition

    out = []
    for batch in eval_batches(cfg.data, parts.dataset, batch_size=batch_size, limit=limit, num_workers=0):
        real, cond = to_condition(batch, parts.num_classes, "cpu", dontcare_last=parts.dontcare_last,
                                  dontcare=parts.dataset.dontcare)
        out.append(ValBatch(real, cond, batch.label.long()))
    if not out:
        raise RuntimeError(f"no validation samples in split {cfg.data.val_split!r} of {cfg.data.name!r}")
    return out


# ---------------------------------------------------------------------------------------------
# the segmenter trained once on real images
# ---------------------------------------------------------------------------------------------
def segmenter_dir(cfg: RunConfig, settings: Settings) -> Path:
    """Cache directory of the segmenter for this data and segmenter configuration."""
    h, w = cfg.data.size
    name = (f"segmenter-{cfg.data.name}-{h}x{w}-n{cfg.data.demo_samples}-w{settings.segmenter_width}"
            f"-s{settings.segmenter_steps}-seed{settings.seed}")
    return settings.data_cache() / name


def real_segmenter(cfg: RunConfig, parts: Parts, settings: Settings, log: Callable[[str], None] = print) -> nn.Module:
    """A SmallSegNet trained on the real training images of ``cfg.data``: loaded from the cache or trained now."""
    from gensynth.eval.segmenter_train import SegmenterTrainConfig, train_segmenter
    from gensynth.eval.segmenters import build_small_segmenter

    d = segmenter_dir(cfg, settings)
    if not (d / "segmenter.json").is_file():
        log(f"training the real-image segmenter ({settings.segmenter_steps} steps) -> {d}")
        t0 = time.perf_counter()
        seg_cfg = SegmenterTrainConfig(steps=settings.segmenter_steps, width=settings.segmenter_width, depth=3,
                                       lr=3e-3, seed=settings.seed, log_every=max(1, settings.segmenter_steps // 4))
        train_segmenter(cfg.data, parts.dataset, d, seg_cfg, log=log)
        log(f"segmenter trained in {time.perf_counter() - t0:.0f} s")
    return build_small_segmenter(parts.num_classes, path=str(d)).eval()


class PooledFeatures:
    """Penultimate features of a SmallSegNet: the input of its 1x1 head, averaged over pixels -> (B, width).

    Captured with a forward hook, so the segmenter's logits and features come from one forward pass."""

    def __init__(self, segmenter: nn.Module):
        self.segmenter = segmenter
        self.last: Tensor | None = None
        segmenter.head.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.last = inputs[0].mean(dim=(2, 3)).detach()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) in [-1, 1] -> (predicted ids (B, H, W), features (B, width))."""
        logits = self.segmenter(images)
        return logits.argmax(1), self.last


# ---------------------------------------------------------------------------------------------
# references measured once on real images
# ---------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Real-image statistics every model is compared with."""

    mu: np.ndarray  # (D,) segmenter features of real val images
    sigma: np.ndarray  # (D, D)
    histograms: ClassHistograms  # per-class LAB / LBP histograms of real val images
    ceiling: float  # segmenter mIoU on real val images
    chance: float  # segmenter mIoU on real val images scored against other images' label maps
    chance_uniform: float  # mIoU of uniformly random class predictions


def _confusion(parts: Parts) -> tuple[ConfusionMatrix, Tensor]:
    """An empty confusion matrix over the dataset's classes (don't-care ignored) and the id table."""
    table, n_eval = eval_id_mapping(parts.num_classes, parts.dataset.eval_ids, parts.dataset.dontcare)
    return ConfusionMatrix(n_eval, ignore=IGNORE), table


def segmentation_miou(features: PooledFeatures, images: list[Tensor], labels: list[Tensor], parts: Parts
                      ) -> tuple[float, float, FeatureStats]:
    """(mIoU, pixel accuracy, feature statistics) of the segmenter on ``images`` (each (B, 3, H, W)) scored
    against ``labels`` (each (B, H, W) dataset ids)."""
    cm, table = _confusion(parts)
    stats = FeatureStats()
    for img, ids in zip(images, labels):
        pred, feats = features(img)
        cm.update(apply_mapping(pred, table), apply_mapping(ids, table))
        stats.update(feats)
    return cm.miou(), cm.pixel_accuracy(), stats


def uniform_chance(batches: list[ValBatch], parts: Parts, seed: int = 0) -> float:
    """mIoU of predictions drawn uniformly from the non-don't-care classes (a floor, not a baseline to beat)."""
    cm, table = _confusion(parts)
    valid = [c for c in range(parts.num_classes) if c != parts.dataset.dontcare]
    g = torch.Generator().manual_seed(seed)
    for b in batches:
        pick = torch.randint(0, len(valid), b.ids.shape, generator=g)
        cm.update(apply_mapping(torch.tensor(valid)[pick], table), apply_mapping(b.ids, table))
    return cm.miou()


def reference(features: PooledFeatures, batches: list[ValBatch], parts: Parts) -> Reference:
    """Segmenter ceiling and chance levels, real feature statistics and real colour/texture histograms."""
    reals = [b.real for b in batches]
    ids = [b.ids for b in batches]
    ceiling, _, stats = segmentation_miou(features, reals, ids, parts)
    all_ids = torch.cat(ids)
    shifted = torch.roll(all_ids, 1, dims=0).split([i.shape[0] for i in ids])  # another image's label map
    chance, _, _ = segmentation_miou(features, reals, list(shifted), parts)
    hist = ClassHistograms(parts.num_classes, ignore=parts.dataset.dontcare)
    for b in batches:
        hist.update(b.real, b.ids)
    mu, sigma = stats.mean_cov()
    return Reference(mu, sigma, hist, ceiling, chance, uniform_chance(batches, parts))


# ---------------------------------------------------------------------------------------------
# measurements of one (generator, discriminator) pair
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(G: nn.Module, batches: list[ValBatch], seed: int = 0, repeat: int = 1) -> list[Tensor]:
    """G's images (B*repeat, 3, H, W) in [-1, 1] for every batch's label maps (each map ``repeat`` times in a row),
    eval mode, noise from a fixed seed (the same for every checkpoint)."""
    was = G.training
    G.eval()
    rng = torch.Generator().manual_seed(seed)
    out = []
    for b in batches:
        labels = b.cond.labels.repeat_interleave(repeat, dim=0)
        ids = None if b.cond.ids is None else b.cond.ids.repeat_interleave(repeat, dim=0)
        z = G.sample_noise(labels.shape[0], "cpu", rng)
        out.append(G(Condition(labels=labels, ids=ids), z).image.float().clamp(-1, 1))
    G.train(was)
    return out


def class_mean_colours(images: list[Tensor], labels: list[Tensor], num_classes: int) -> tuple[Tensor, Tensor]:
    """(num_classes, 3) mean RGB in 0..255 of each class's pixels over all images, and (num_classes,) pixel counts.

    images: each (B, 3, H, W) in [-1, 1]; labels: each (B, H, W) class ids."""
    sums = torch.zeros(num_classes, 3, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for img, ids in zip(images, labels):
        rgb = ((img.double() + 1) * 127.5).permute(1, 0, 2, 3).reshape(3, -1)  # (3, B*H*W)
        flat = ids.reshape(-1)
        sums.index_add_(0, flat, rgb.t())
        counts += torch.bincount(flat, minlength=num_classes).double()
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def colour_error(fakes: list[Tensor], batches: list[ValBatch], parts: Parts) -> float:
    """Mean over the classes present (don't-care excluded) of ||mean RGB(fake pixels of c) - mean RGB(real ones)||."""
    labels = [b.ids for b in batches]
    real_mean, counts = class_mean_colours([b.real for b in batches], labels, parts.num_classes)
    fake_mean, _ = class_mean_colours(fakes, labels, parts.num_classes)
    keep = counts > 0
    if parts.dataset.dontcare is not None:
        keep[parts.dataset.dontcare] = False
    return float((real_mean - fake_mean)[keep].norm(dim=1).mean())


@torch.no_grad()
def discriminator_miou(D: nn.Module, batches: list[ValBatch], parts: Parts) -> tuple[float, float] | None:
    """(mIoU, pixel accuracy) of ``argmax(D(real).logits[:, 1:])`` against the labels in D's channel order,
    don't-care ignored; None for a discriminator that does not segment (its output is not (B, N+1, H, W))."""
    if getattr(D, "output_kind", None) != DOutputKind.PIXEL_CLASSES:
        return None
    table, n_eval = eval_id_mapping(parts.num_classes, None, parts.dontcare_index)
    cm = ConfusionMatrix(n_eval, ignore=IGNORE)
    was = D.training
    D.eval()
    for b in batches:
        pred = D(b.real, b.cond).logits[:, 1:].argmax(dim=1)
        cm.update(apply_mapping(pred, table), apply_mapping(b.cond.label_ids, table))
    D.train(was)
    return cm.miou(), cm.pixel_accuracy()


def first_maps(batches: list[ValBatch], maps: int) -> ValBatch:
    """The first ``maps`` samples of the batches as one ValBatch (real (maps, 3, H, W), ...)."""
    conds = [b.cond for b in batches]
    ids = None if any(c.ids is None for c in conds) else torch.cat([c.ids for c in conds])[:maps]
    return ValBatch(torch.cat([b.real for b in batches])[:maps],
                    Condition(labels=torch.cat([c.labels for c in conds])[:maps], ids=ids),
                    torch.cat([b.ids for b in batches])[:maps])


def diversity(G: nn.Module, batches: list[ValBatch], maps: int, samples: int, seed: int = 1) -> float:
    """Mean over the first ``maps`` label maps of the mean pairwise MS-SSIM of ``samples`` samples of each map."""
    many = generate(G, [first_maps(batches, maps)], seed=seed, repeat=samples)[0]  # (maps*samples, 3, H, W)
    return float(np.mean([mean_pairwise(chunk, ms_ssim) for chunk in many.split(samples)]))


def measure(G: nn.Module, D: nn.Module, batches: list[ValBatch], parts: Parts, features: PooledFeatures,
            ref: Reference, settings: Settings) -> dict[str, float]:
    """Every learning figure of one generator/discriminator pair (see the module docstring)."""
    fakes = generate(G, batches)
    ids = [b.ids for b in batches]
    miou, acc, stats = segmentation_miou(features, fakes, ids, parts)
    mu, sigma = stats.mean_cov()
    hist = ClassHistograms(parts.num_classes, ignore=parts.dataset.dontcare)
    for fake, b in zip(fakes, batches):
        hist.update(fake, b.ids)
    ct = compare(ref.histograms, hist, min_pixels=16)
    row = {"seg_miou": miou, "seg_pixel_acc": acc, "seg_fd": frechet_distance(mu, sigma, ref.mu, ref.sigma),
           "color_emd": ct["color_emd"], "texture_chi2": ct["texture_chi2"],
           "colour_err": colour_error(fakes, batches, parts),
           "ms_ssim": diversity(G, batches, settings.diversity_maps, settings.diversity_samples)}
    d = discriminator_miou(D, batches, parts)
    if d is not None:
        row["d_miou"], row["d_pixel_acc"] = d
    return row


# ---------------------------------------------------------------------------------------------
# training and the learning curve of one model
# ---------------------------------------------------------------------------------------------
def initial_models(cfg: RunConfig) -> tuple[nn.Module, nn.Module, Parts]:
    """G and D exactly as the trainer builds them before step 1 (same seed, same order)."""
    parts = resolve_parts(cfg)
    seed_everything(cfg.trainer.seed)
    G = build_generator(parts)
    D = build_discriminator(parts)
    return G, D, parts


def loss_means(run_dir: Path, upto: int, since: int = 0) -> dict[str, float]:
    """Mean of each logged loss over the train log lines with since < step <= upto."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "train" and since < r["step"] <= upto]
    skip = {"step", "kind", "time", "lr_g", "lr_d", "images_per_s", "ema_decay"}
    keys = sorted({k for r in rows for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in keys}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every step_* checkpoint directory of a run, oldest first."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir())


def train(cfg: RunConfig, provenance: dict[str, str], log: Callable[[str], None] = print) -> tuple[Any, float]:
    """Run the real trainer on ``cfg`` (a fresh run directory); (TrainResult, wall seconds)."""
    from rich.console import Console

    from gensynth.train.trainer import run_training

    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        result = run_training(cfg, provenance, console=Console(file=devnull), resume=False)
    return result, time.perf_counter() - t0


def learning_curve(cfg: RunConfig, run_dir: Path, batches: list[ValBatch], features: PooledFeatures,
                   ref: Reference, settings: Settings) -> tuple[list[dict[str, float]], nn.Module]:
    """Rows {step, metrics..., loss/*} at initialisation and at every checkpoint; and the last EMA generator."""
    from gensynth.api import load_model

    G, D, parts = initial_models(cfg)
    rows = [{"step": 0, **measure(G, D, batches, parts, features, ref, settings)}]
    prev = 0
    for ck in checkpoint_dirs(run_dir):
        m = load_model(ck, ema=True, with_discriminator=True)
        G = m.generator
        step = int(m.checkpoint.meta["step"])
        row = {"step": step, **measure(G, m.discriminator, batches, parts, features, ref, settings)}
        row.update({f"loss/{k}": v for k, v in loss_means(run_dir, step, prev).items()})
        rows.append(row)
        prev = step
    return rows, G


def probe_discriminator(cfg: RunConfig, parts: Parts, batches: list[ValBatch], steps: int, every: int
                        ) -> list[dict[str, float]] | None:
    """A diagnostic: the model's discriminator (as built for step 1) trained ALONE as a supervised segmenter of
    real training images (cross-entropy on its class channels 1..N, don't-care ignored; no generator, no fake
    images) with the run's D optimiser settings and batch size. Rows {step, d_miou, d_pixel_acc} on the
    held-out batches every ``every`` steps; None when the discriminator does not segment.

    How fast D can learn to segment bounds how fast an OASIS generator can learn the classes: its only class
    supervision is D's segmentation of its images."""
    import torch.nn.functional as F

    from gensynth.data.loader import to_condition, train_batches

    _, D, _ = initial_models(cfg)
    if getattr(D, "output_kind", None) != DOutputKind.PIXEL_CLASSES:
        return None
    oc = cfg.optim
    opt = torch.optim.Adam(D.parameters(), lr=oc.lr_d, betas=(oc.beta1, oc.beta2))
    ignore = parts.dontcare_index if parts.dontcare_index is not None else -100
    it = train_batches(cfg.data, parts.dataset, batch_size=cfg.trainer.batch_size, rank=0, world_size=1,
                       seed=cfg.trainer.seed, num_workers=0)
    rows = []
    D.train()
    for step in range(1, steps + 1):
        real, cond = to_condition(next(it), parts.num_classes, "cpu", dontcare_last=parts.dontcare_last,
                                  dontcare=parts.dataset.dontcare)
        loss = F.cross_entropy(D(real, cond).logits[:, 1:], cond.label_ids, ignore_index=ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            miou, acc = discriminator_miou(D, batches, parts)
            rows.append({"step": step, "d_miou": miou, "d_pixel_acc": acc, "loss": float(loss.detach())})
    return rows


# ---------------------------------------------------------------------------------------------
# outputs: table, curves, sample grids
# ---------------------------------------------------------------------------------------------
#: (metric, markdown column title); the plot uses ASCII titles (Pillow's default font has no arrows)
TABLE_COLUMNS = [("seg_miou", "seg mIoU ↑"), ("seg_fd", "seg-feature FD ↓"), ("color_emd", "colour EMD ↓"),
                 ("texture_chi2", "texture χ² ↓"), ("colour_err", "mean-RGB err ↓"),
                 ("d_miou", "D mIoU (real) ↑"), ("ms_ssim", "MS-SSIM ↓")]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(report: dict[str, Any]) -> str:
    """A markdown table: one row per (model, step); the references and skipped models below it."""
    head = "| model | step | " + " | ".join(t for _, t in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for name, m in report["models"].items():
        for r in m["curve"]:
            step = "0 (init)" if r["step"] == 0 else str(r["step"])
            lines.append(f"| {name} | {step} | " + " | ".join(_fmt(r.get(k)) for k, _ in TABLE_COLUMNS) + " |")
    ref = report["reference"]
    lines.append("")
    lines.append(f"Segmenter references on real validation images: ceiling (real images) "
                 f"{ref['ceiling']:.3f}, chance (real images vs another image's label map) {ref['chance']:.3f}, "
                 f"uniform random classes {ref['chance_uniform']:.3f}.")
    for name, m in report["models"].items():
        terms = ", ".join(f"{k}={v:g}" for k, v in m["losses"].items()) or "none"
        lines.append(f"- {name}: G {m['params_g'] / 1e6:.2f}M, D {m['params_d'] / 1e6:.3f}M parameters; "
                     f"{m['steps']} steps in {m['train_seconds']:.0f} s ({m['seconds_per_step']:.2f} s/step); "
                     f"loss terms besides the adversarial one: {terms}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- {name}: skipped ({why})")
    return "\n".join(lines) + "\n"


#: (metric, title, log scale)
CURVE_PANELS = [("seg_miou", "generated-image mIoU, segmenter (higher better)", False),
                ("seg_fd", "segmenter-feature FD, log scale (lower better)", True),
                ("color_emd", "colour EMD, LAB (lower better)", False),
                ("texture_chi2", "texture chi2, LBP (lower better)", False),
                ("d_miou", "D mIoU on real images (higher better)", False),
                ("ms_ssim", "MS-SSIM between samples (lower = diverse)", False)]
MODEL_COLOURS = {"oasis": (200, 40, 40), "spade+": (40, 90, 200), "spade+vgg": (30, 150, 60),
                 "cc-fpse": (160, 60, 180)}


def _font(size: int):
    """Pillow's default font at ``size`` pixels (scalable when Pillow has FreeType), else its bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _panel(draw, box: tuple[int, int, int, int], title: str, series: dict[str, list[tuple[int, float]]],
           hlines: dict[str, float], max_step: int, log: bool = False) -> None:
    """One line chart in ``box`` (x0, y0, x1, y1): a series per model, dashed reference lines; ``log``: the y axis
    is log10 of the (positive) values, labelled with the values themselves."""
    if log:
        def to_log(v):
            return math.log10(v) if v is not None and math.isfinite(v) and v > 0 else None

        series = {k: [(s, to_log(v)) for s, v in pts] for k, pts in series.items()}
        hlines = {k: to_log(v) for k, v in hlines.items() if to_log(v) is not None}
    x0, y0, x1, y1 = box
    font, small = _font(13), _font(11)
    draw.text((x0 + 8, y0 + 4), title, fill=(0, 0, 0), font=font)
    px0, py0, px1, py1 = x0 + 48, y0 + 24, x1 - 22, y1 - 22
    values = [v for pts in series.values() for _, v in pts] + list(hlines.values())
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        draw.text((px0 + 8, py0 + 20), "n/a (no segmenting D)", fill=(120, 120, 120), font=small)
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    if not log:
        lo = max(0.0, lo)  # every metric here is >= 0
    digits = 0 if hi - lo >= 20 else 1 if hi - lo >= 2 else 2

    def xy(step: float, v: float) -> tuple[float, float]:
        return (px0 + (px1 - px0) * step / max(max_step, 1), py1 - (py1 - py0) * (v - lo) / (hi - lo))

    draw.rectangle((px0, py0, px1, py1), outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        _, y = xy(0, v)
        label = f"{10 ** v:.2g}" if log else f"{v:.{digits}f}"
        draw.text((x0 + 4, y - 6), label, fill=(90, 90, 90), font=small)
    for s in (0, max_step // 2, max_step):
        x, _ = xy(s, lo)
        draw.text((x - 3 * len(str(s)), py1 + 4), str(s), fill=(90, 90, 90), font=small)
    for name, v in hlines.items():
        _, y = xy(0, v)
        for xs in range(int(px0), int(px1), 8):
            draw.line((xs, y, min(xs + 4, px1), y), fill=(120, 120, 120))
        draw.text((px0 + 4, y - 13), name, fill=(90, 90, 90), font=small)
    for name, pts in series.items():
        pts = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
        colour = MODEL_COLOURS.get(name, (0, 0, 0))
        coords = [xy(s, v) for s, v in pts]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords:
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=colour)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """curves.png: a panel per metric (metric vs step), a line per model; drawn with Pillow only."""
    from PIL import Image, ImageDraw

    cols, rows, pw, ph = 3, 2, 330, 220
    img = Image.new("RGB", (cols * pw, rows * ph + 28), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    max_step = max((r["step"] for m in report["models"].values() for r in m["curve"]), default=1)
    ref = report["reference"]
    for i, (key, title, log) in enumerate(CURVE_PANELS):
        series = {name: [(r["step"], r.get(key)) for r in m["curve"]] for name, m in report["models"].items()}
        hlines = {"ceiling": ref["ceiling"], "chance": ref["chance"]} if key == "seg_miou" else {}
        box = ((i % cols) * pw, (i // cols) * ph, (i % cols + 1) * pw, (i // cols + 1) * ph)
        _panel(draw, box, title, series, hlines, max_step, log)
    x, font = 12, _font(13)
    for name in report["models"]:
        draw.rectangle((x, rows * ph + 9, x + 14, rows * ph + 19), fill=MODEL_COLOURS.get(name, (0, 0, 0)))
        draw.text((x + 18, rows * ph + 6), name, fill=(0, 0, 0), font=font)
        x += 40 + 8 * len(name)
    draw.text((x + 10, rows * ph + 6), "x axis: training step; dashed: segmenter on real images (ceiling) and "
              "on mismatched label maps (chance)", fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def sample_grid(G: nn.Module, batches: list[ValBatch], parts: Parts, path: Path, maps: int = 6,
                samples: int = 4) -> None:
    """samples_<model>.png: one row per label map: label (colour) | real | ``samples`` samples (different noise)."""
    from gensynth.train.samples import colorize, palette, save_png, to_uint8

    first = first_maps(batches, maps)
    real = first.real
    fakes = generate(G, [first], seed=2, repeat=samples)[0].reshape(maps, samples, *real.shape[1:])
    columns = [colorize(first.ids, palette(parts.dataset.classes)), to_uint8(real)] + \
              [to_uint8(fakes[:, j]) for j in range(samples)]
    h, w, pad = real.shape[-2], real.shape[-1], 2
    grid = torch.full((3, maps * (h + pad) - pad, len(columns) * (w + pad) - pad), 255, dtype=torch.uint8)
    for i in range(maps):
        for j, col in enumerate(columns):
            grid[:, i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = col[i]
    save_png(grid, path)


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def command_line(settings: Settings) -> str:
    """The shell command that repeats this run."""
    parts = ["OMP_NUM_THREADS=1 python benchmarks/learning.py", f"--steps {settings.steps}",
             f"--every {settings.every}", f"--models {','.join(settings.models)}", f"--seed {settings.seed}",
             f"--precision {settings.precision}"]
    if settings.tiny:
        parts.append("--tiny")
    parts += [f"--set {k}={v}" for k, v in settings.extra.items()]
    if settings.probe_d:
        parts.append("--probe-d")
    if settings.vgg_weights:
        parts.append("--vgg-weights PATH")
    if Path(settings.out).resolve() != RESULTS:
        parts.append(f"--out {settings.out}")
    return " ".join(parts)


def shown_config(model: str, settings: Settings) -> dict[str, Any]:
    """The model's dotted configuration keys without machine-specific paths (for the report)."""
    keys = run_overrides(model, settings, Path("RUN"))
    return {k: v for k, v in keys.items() if k not in ("trainer.run_dir", "data.cache_dir")
            and not k.startswith("model.loss_options.vgg.weights_path")}


def plan(settings: Settings, log: Callable[[str], None]) -> tuple[list[str], dict[str, str]]:
    """The models to train and the ones skipped with the reason (spade+vgg without VGG19 weights)."""
    unknown = [m for m in settings.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; allowed: {', '.join(MODELS)}")
    skipped = {}
    todo = []
    for name in settings.models:
        if name == "spade+vgg":
            path = find_vgg_weights(settings.vgg_weights)
            if path is None:
                skipped[name] = ("no VGG19 weights file: gensynth cannot download it; pass --vgg-weights PATH "
                                 "(torchvision's vgg19-dcbb9e9d.pth, see gensynth/nn/vgg.py)")
                log(f"[skip] {name}: {skipped[name]}")
                continue
            settings.vgg_weights = str(path)
        todo.append(name)
    return todo, skipped


def run_benchmark(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and measure every model of ``settings``; write the outputs; return the report (learning.json)."""
    todo, skipped = plan(settings, log)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    work = settings.work_dir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="gensynth-learning-")
        work = Path(tmp.name)
    report: dict[str, Any] = {"command": command_line(settings), "machine": machine_info(torch.device("cpu")), "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
        if k not in ("out", "work_dir", "cache_dir", "vgg_weights")}, "models": {}, "skipped": skipped}
    try:
        features = ref = None
        for name in todo:
            cfg, provenance = resolve(run_overrides(name, settings, Path(work) / name))
            parts = resolve_parts(cfg)
            batches = val_batches(cfg, parts, settings.val_samples)
            if features is None:
                features = PooledFeatures(real_segmenter(cfg, parts, settings, log))
                ref = reference(features, batches, parts)
                report["reference"] = {"ceiling": ref.ceiling, "chance": ref.chance,
                                       "chance_uniform": ref.chance_uniform, "val_samples": settings.val_samples,
                                       "ms_ssim_scales": ms_ssim_scales(*cfg.data.size),
                                       "segmenter": segmenter_dir(cfg, settings).name}
                log(f"segmenter on real val images: mIoU {ref.ceiling:.3f} (ceiling); chance {ref.chance:.3f}")
            G0, D0, _ = initial_models(cfg)
            log(f"{name}: G {count_parameters(G0) / 1e6:.3f}M, D {count_parameters(D0) / 1e6:.3f}M parameters; "
                f"training {settings.steps} steps ({settings.precision}, seed {settings.seed})")
            result, seconds = train(cfg, provenance, log)
            log(f"{name}: {result.step} steps in {seconds:.0f} s ({seconds / max(result.step, 1):.2f} s/step)")
            curve, G = learning_curve(cfg, result.run_dir, batches, features, ref, settings)
            for r in curve:
                log(f"  {name} step {r['step']:>5}: " + " ".join(f"{k}={_fmt(r.get(k))}" for k, _ in TABLE_COLUMNS))
            sample_grid(G, batches, parts, out / f"samples_{name.replace('+', 'plus')}.png")
            report["models"][name] = {
                "params_g": count_parameters(G0), "params_d": count_parameters(D0), "steps": result.step,
                "train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(result.step, 1), 3),
                "losses": dict(parts.losses), "config": shown_config(name, settings),
                "curve": curve}
    finally:
        if tmp is not None:
            tmp.cleanup()
    write_outputs(report, out)
    return report


def run_probe(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``--probe-d``: :func:`probe_discriminator` for every model whose D segments; writes ``probe_d.json``."""
    todo, _ = plan(settings, log)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": command_line(settings), "machine": machine_info(torch.device("cpu")), "probe_d": {}}
    for name in todo:
        cfg, _ = resolve(run_overrides(name, settings, Path("unused")))
        parts = resolve_parts(cfg)
        t0 = time.perf_counter()
        rows = probe_discriminator(cfg, parts, val_batches(cfg, parts, settings.val_samples), settings.steps,
                                   settings.every)
        if rows is None:
            log(f"{name}: its discriminator does not segment; nothing to probe")
            continue
        for r in rows:
            log(f"  {name} D alone, supervised, step {r['step']:>5}: mIoU {r['d_miou']:.3f} "
                f"pixel acc {r['d_pixel_acc']:.3f}")
        report["probe_d"][name] = {"seconds": round(time.perf_counter() - t0, 1), "lr_d": cfg.optim.lr_d,
                                   "discriminator_options": parts.discriminator_options, "curve": rows}
    (out / "probe_d.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """learning.json, learning.md and curves.png in ``out``."""
    (out / "learning.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    if report["models"]:
        (out / "learning.md").write_text(markdown_table(report))
        plot_curves(report, out / "curves.png")


def parse_args(argv: list[str] | None) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=Settings.steps, help="training steps of every model")
    ap.add_argument("--every", type=int, default=Settings.every, help="checkpoint/measure every N steps")
    ap.add_argument("--models", default=",".join(Settings.models), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--vgg-weights", default=None, help="torchvision vgg19 state dict for spade+vgg")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="training autocast")
    ap.add_argument("--seed", type=int, default=0, help="one seed for every model and the segmenter")
    ap.add_argument("--tiny", action="store_true", help="the CI configuration: 32x32, tiny widths")
    ap.add_argument("--out", default=str(RESULTS), help="output directory")
    ap.add_argument("--work-dir", default=None, help="keep the run directories here (default: temporary)")
    ap.add_argument("--cache-dir", default=None, help="segmenter and demo data cache (default: <out>/cache)")
    ap.add_argument("--segmenter-steps", type=int, default=Settings.segmenter_steps)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra configuration key for every model (as gensynth train --set)")
    ap.add_argument("--probe-d", action="store_true",
                    help="diagnostic instead of the benchmark: each segmenting D trained alone as a supervised "
                         "segmenter for --steps steps (probe_d.json)")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.every < 1:
        ap.error("--steps and --every must be at least 1")
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        ap.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; allowed: {', '.join(MODELS)}")
    return Settings(models=models, steps=a.steps, every=a.every, seed=a.seed, precision=a.precision, tiny=a.tiny,
                    vgg_weights=a.vgg_weights, out=Path(a.out), work_dir=Path(a.work_dir) if a.work_dir else None,
                    cache_dir=Path(a.cache_dir) if a.cache_dir else None, segmenter_steps=a.segmenter_steps,
                    extra=parse_set(a.set), probe_d=a.probe_d)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    t0 = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    report = run_probe(settings, log) if settings.probe_d else run_benchmark(settings, log)
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {settings.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
