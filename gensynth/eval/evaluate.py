"""Evaluate a generator on the validation split: FID, KID, precision/recall, mIoU, MS-SSIM, LPIPS, colour/texture.

One pass over ``eval_batches`` generates one sample per label map (fixed noise seeds, eval mode) and feeds every
requested metric. The trainer calls :func:`evaluate_generator` (contract 4); ``gensynth evaluate`` calls
:func:`evaluate`, which also returns per-class IoU and the protocol.

With ``on_error="record"`` (the trainer's choice) a metric whose computation raises is dropped from the results
and its error is kept in ``EvalReport.errors`` (metric name -> message); the other metrics still run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from gensynth.errors import ConfigError, suggest
from gensynth.eval.colour_texture import ClassHistograms, compare
from gensynth.eval.diversity import (load_lpips, mean_pairwise, ms_ssim, ms_ssim_betas, ms_ssim_library,
                                     ms_ssim_scales)
from gensynth.eval.fid import FeatureStats, StatsCache, StatsKey, fid_feature_network, frechet_distance, network_hash
from gensynth.eval.kid import KID_SUBSET_SIZE, KID_SUBSETS, kernel_inception_distance, kid_subset_size
from gensynth.eval.miou import ConfusionMatrix, apply_mapping, eval_id_mapping
from gensynth.eval.precision_recall import precision_recall

METRICS = ("fid", "kid", "prec-recall", "miou", "ms-ssim", "lpips", "color-texture")
#: the one default set of ``gensynth evaluate``, ``gensynth compare`` and ``eval.metrics``
DEFAULT_METRICS = ("fid", "color-texture")
_ALIASES = {"precision-recall": "prec-recall", "pr": "prec-recall", "colour-texture": "color-texture",
            "diversity": "ms-ssim", "msssim": "ms-ssim", "ms_ssim": "ms-ssim"}
#: the result keys each metric writes
OUTPUTS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prec-recall": ("precision", "recall"),
           "miou": ("miou", "pixel_accuracy", "miou_real"), "ms-ssim": ("ms_ssim",), "lpips": ("lpips",),
           "color-texture": ("color_emd", "texture_chi2", "color_texture_classes")}
FEATURE_METRICS = ("fid", "kid", "prec-recall")  # share the InceptionV3 features
DIVERSITY_METRICS = ("ms-ssim", "lpips")  # share the several samples per label map


def parse_metrics(names: Iterable[str] | str | None, default: Iterable[str] = DEFAULT_METRICS) -> list[str]:
    """'fid,miou' or a list -> validated metric names (ConfigError naming the unknown one)."""
    if names is None:
        names = default
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out = []
    for n in names:
        n = _ALIASES.get(n.strip().lower(), n.strip().lower())
        if not n:
            continue
        if n not in METRICS:
            raise ConfigError(f"unknown metric {n!r}.{suggest(n, METRICS)} Allowed: {', '.join(METRICS)}")
        if n not in out:
            out.append(n)
    return out


@dataclass
class EvalTools:
    """Networks the evaluation uses; any left None is built from the configuration when needed."""

    feature_net: nn.Module | None = None  # (B, 3, H, W) in [-1, 1] -> (B, D)
    segmenter: nn.Module | None = None
    segmenter_name: str | None = None  # what to report for a given segmenter (default: its class name)
    lpips: nn.Module | None = None
    stats_cache: StatsCache | None = None


@dataclass
class EvalReport:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # metric -> error message (on_error="record")

    def to_json(self) -> dict[str, Any]:
        def clean(v):
            return None if isinstance(v, float) and not np.isfinite(v) else v

        doc = {"metrics": {k: clean(v) for k, v in self.metrics.items()},
               "per_class": {k: {c: clean(v) for c, v in d.items()} for k, d in self.per_class.items()},
               "protocol": self.protocol}
        if self.errors:
            doc["errors"] = dict(self.errors)
        return doc


class _Guard:
    """Runs the parts of an evaluation that belong to some metrics; with ``record`` a failure drops those metrics
    (kept in ``errors``) instead of raising."""

    def __init__(self, metrics: list[str], on_error: str):
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        self.active = list(metrics)
        self.record = on_error == "record"
        self.errors: dict[str, str] = {}

    def any(self, names: Iterable[str]) -> bool:
        return any(n in self.active for n in names)

    def run(self, names: Iterable[str], fn, *args):
        names = [n for n in names if n in self.active]
        if not names:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            if not self.record:
                raise
            for n in names:
                self.errors[n] = f"{type(exc).__name__}: {exc}"
                self.active.remove(n)
            return None


def _gather(obj, world_size: int) -> list:
    """All ranks' objects (a one-element list when not distributed)."""
    import torch.distributed as dist

    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _channel_to_dataset_ids(pred: Tensor, num_classes: int, dontcare: int | None, dontcare_last: bool) -> Tensor:
    """Inverse of the SPADE roll: network channel ids -> dataset class ids."""
    if not dontcare_last or dontcare is None:
        return pred
    return torch.where(pred == num_classes - 1, torch.full_like(pred, dontcare), pred + (pred >= dontcare).long())


class _Run:
    """State of one evaluation pass (one object per rank; merged at the end)."""

    def __init__(self, metrics: list[str], num_classes: int, dontcare, n_eval: int):
        keep = "prec-recall" in metrics or "kid" in metrics
        self.fake_stats = FeatureStats(keep_features=keep)
        self.real_stats = FeatureStats(keep_features=keep)
        self.cm = ConfusionMatrix(n_eval)
        self.cm_real = ConfusionMatrix(n_eval)
        self.hist_real = ClassHistograms(num_classes, ignore=dontcare)
        self.hist_fake = ClassHistograms(num_classes, ignore=dontcare)
        self.ssim_sum = 0.0
        self.lpips_sum = 0.0
        self.div_maps = 0
        self.images = 0

    def merge(self, o: "_Run") -> None:
        self.fake_stats.merge(o.fake_stats)
        self.real_stats.merge(o.real_stats)
        self.cm.matrix += o.cm.matrix
        self.cm.missed += o.cm.missed
        self.cm_real.matrix += o.cm_real.matrix
        self.cm_real.missed += o.cm_real.missed
        for a, b in zip(self.hist_real.lab + [self.hist_real.lbp], o.hist_real.lab + [o.hist_real.lbp]):
            a += b
        for a, b in zip(self.hist_fake.lab + [self.hist_fake.lbp], o.hist_fake.lab + [o.hist_fake.lbp]):
            a += b
        self.ssim_sum += o.ssim_sum
        self.lpips_sum += o.lpips_sum
        self.div_maps += o.div_maps
        self.images += o.images


def _build_segmenter(tools: EvalTools, cfg, n: int, checkpoint, device, protocol: dict):
    segmenter = tools.segmenter
    if segmenter is None:
        from gensynth.eval.segmenters import build_segmenter

        name = cfg.eval.segmenter or "oasis-discriminator"
        segmenter = build_segmenter(name, num_classes=n, checkpoint=checkpoint, device=device,
                                    **cfg.eval.segmenter_options)
        protocol["miou"] = {"segmenter": name, "segmenter_options": dict(cfg.eval.segmenter_options)}
    elif tools.segmenter_name:
        protocol["miou"] = {"segmenter": tools.segmenter_name, "segmenter_options": dict(cfg.eval.segmenter_options)}
    else:
        protocol["miou"] = {"segmenter": type(segmenter).__name__}
    return segmenter.to(device).eval()


@torch.no_grad()
def evaluate(generator, parts, cfg, *, device, rank: int = 0, world_size: int = 1, metrics=None,
             tools: EvalTools | None = None, checkpoint=None, batch_size: int | None = None, seed: int = 0,
             batches: Iterable | None = None, on_error: str = "raise") -> EvalReport:
    """Evaluate ``generator`` (its EMA copy, normally) on ``cfg.data``'s validation split.

    checkpoint: the run being evaluated (for the 'oasis-discriminator' segmenter); batches: an iterable of
    gensynth.data.loader.Batch to use instead of ``eval_batches`` (tests, custom label sets); on_error: "raise",
    or "record" to drop a failing metric and keep its error in the report (the generator or the data failing
    still raises).
    """
    from gensynth.data.loader import eval_batches, to_condition

    metrics = parse_metrics(metrics, cfg.eval.metrics or DEFAULT_METRICS)
    guard = _Guard(metrics, on_error)
    tools = tools or EvalTools()
    device = torch.device(device)
    spec = parts.dataset
    n = parts.num_classes
    size = tuple(cfg.data.size or spec.default_size)
    split = cfg.data.val_split
    bs = batch_size or max(1, min(16, cfg.trainer.batch_size))
    t0 = time.time()
    protocol: dict[str, Any] = {"dataset": spec.name, "split": split, "resolution": list(size),
                                "generator": parts.generator, "samples_per_label_map": 1, "noise_seed": seed,
                                "metrics": metrics}
    table, n_eval = eval_id_mapping(n, spec.eval_ids, spec.dontcare)

    feature = {"net": None, "cached": None, "key": None}

    def setup_features():
        net = tools.feature_net or fid_feature_network(cfg.eval.fid_backend, cfg.eval.fid_weights, device)
        feature["net"] = net = net.to(device).eval()
        cache = tools.stats_cache or StatsCache(cfg.eval.stats_dir)
        feature["key"] = key = StatsKey(spec.name, split, size, network_hash(net), cfg.eval.num_samples)
        cached = cache.load(key)
        if cached is not None and guard.any(("prec-recall", "kid")) and "features" not in cached:
            cached = None
        feature["cached"] = cached
        own = tools.feature_net is None
        protocol["fid"] = {"backend": "pytorch-fid InceptionV3" if own else type(net).__name__,
                           "features": "pool3 2048-d" if own else "custom",
                           "resize": "bilinear to 299 (pytorch-fid, inside the network)" if own else "none",
                           "distance": "torch-fidelity fid_statistics_to_metric", "real_stats": str(cache.path(key)),
                           "real_stats_cached": cached is not None}

    guard.run(FEATURE_METRICS, setup_features)
    segmenter = guard.run(("miou",), _build_segmenter, tools, cfg, n, checkpoint, device, protocol)
    if segmenter is not None:
        space = getattr(segmenter, "output_space", "model")
        protocol["miou"].update({"input_resolution": list(getattr(segmenter, "input_size", None) or size),
                                 "id_set": "dataset eval_ids" if spec.eval_ids is not None else
                                 f"{n} model classes, don't-care ({spec.dontcare}) ignored",
                                 "num_eval_classes": n_eval, "segmenter_outputs": space,
                                 "convention": "per-class IoU NaN when absent from ground truth and predictions; "
                                               "mean over the others"})
    k_div = cfg.eval.diversity_samples
    if guard.any(DIVERSITY_METRICS):
        protocol["diversity"] = {"samples_per_label_map": k_div, "pairs": "all pairs of one label map's samples"}
    if "ms-ssim" in guard.active:
        scales = ms_ssim_scales(*size)
        protocol["diversity"].update({"ms_ssim": ms_ssim_library(*size),
                                      "ms_ssim_scales": scales, "ms_ssim_weights": list(ms_ssim_betas(scales))})
    lpips_net = guard.run(("lpips",), lambda: (tools.lpips or load_lpips(cfg.eval.lpips_net, cfg.eval.lpips_weights,
                                                                          device)).to(device).eval())
    if lpips_net is not None:
        protocol["diversity"]["lpips"] = f"lpips package v0.1, {getattr(lpips_net, 'net_name', type(lpips_net).__name__)}"
    if "color-texture" in guard.active:
        protocol["color_texture"] = {"colour": "skimage rgb2lab; L 50 bins, a/b 64 bins; scipy wasserstein_distance "
                                               "averaged over L,a,b",
                                     "texture": "skimage local_binary_pattern P=8 R=1 default, 256 bins, chi-squared",
                                     "average": "over classes present in real and generated sets"}

    was_training = generator.training
    generator.eval()
    state = _Run(guard.active, n, spec.dontcare, n_eval)
    if batches is None:
        batches = eval_batches(cfg.data, spec, batch_size=bs, rank=rank, world_size=world_size, split=split,
                               limit=cfg.eval.num_samples)
    z_dim = int(getattr(generator, "z_dim", 0) or 0)

    def update_features(real, fake):
        state.fake_stats.update(feature["net"](fake))
        if feature["cached"] is None:
            state.real_stats.update(feature["net"](real))

    def update_segmentation(real, fake, ids):
        gt = apply_mapping(ids, table.to(device))
        for img, cm in ((fake, state.cm), (real, state.cm_real)):
            pred = segmenter(img).argmax(1)
            if getattr(segmenter, "output_space", "model") == "model":
                pred = apply_mapping(_channel_to_dataset_ids(pred, n, spec.dontcare, parts.dontcare_last),
                                     table.to(device))
            cm.update(pred, gt)

    def update_colour_texture(real, fake, ids):
        state.hist_real.update(real, ids)
        state.hist_fake.update(fake, ids)

    try:
        for i, batch in enumerate(batches):
            real, cond = to_condition(batch, n, device, with_edges=getattr(generator, "uses_instance_edges", False),
                                      dontcare_last=parts.dontcare_last, dontcare=spec.dontcare)
            b = real.shape[0]
            rng = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + i)

            def sample(count):
                z = generator.sample_noise(count, "cpu", rng) if z_dim else None
                return None if z is None else z.to(device)

            fake = generator(cond, sample(b)).image.float().clamp(-1, 1)
            state.images += b
            ids = batch.label.to(device).long()
            guard.run(FEATURE_METRICS, update_features, real, fake)
            guard.run(("miou",), update_segmentation, real, fake, ids)
            guard.run(("color-texture",), update_colour_texture, real, fake, ids)
            if guard.any(DIVERSITY_METRICS):
                for j in range(b):
                    c1 = cond[j:j + 1]
                    reps = type(c1)(c1.labels.expand(k_div, -1, -1, -1),
                                    None if c1.instance_edges is None else c1.instance_edges.expand(k_div, -1, -1, -1))
                    many = generator(reps, sample(k_div)).image.float().clamp(-1, 1)
                    ssim = guard.run(("ms-ssim",), mean_pairwise, many, ms_ssim)
                    lp = guard.run(("lpips",), mean_pairwise, many, lambda x, y: lpips_net(x, y))
                    state.ssim_sum += ssim or 0.0
                    state.lpips_sum += lp or 0.0
                    state.div_maps += 1
    finally:
        generator.train(was_training)

    merged = _gather(state, world_size)
    total = merged[0]
    for other in merged[1:]:
        total.merge(other)
    out: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    protocol["num_images"] = total.images
    if total.images == 0:
        raise ConfigError(f"evaluation found no samples in split {split!r} of dataset {spec.name!r}")

    def real_statistics():
        if feature["cached"] is None:
            real_mu, real_sigma = total.real_stats.mean_cov()
            arrays = {"mu": real_mu, "sigma": real_sigma}
            if total.real_stats.keep:
                arrays["features"] = total.real_stats.all_features()
            if rank == 0:
                (tools.stats_cache or StatsCache(cfg.eval.stats_dir)).save(feature["key"], **arrays)
            feature["cached"] = arrays

    def fid():
        mu, sigma = total.fake_stats.mean_cov()
        out["fid"] = frechet_distance(mu, sigma, feature["cached"]["mu"], feature["cached"]["sigma"])

    def kid():
        real_f, fake_f = feature["cached"]["features"], total.fake_stats.all_features()
        out.update(kernel_inception_distance(real_f, fake_f, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                                             seed=seed))
        protocol["kid"] = {"subsets": KID_SUBSETS, "subset_size": kid_subset_size(len(real_f), len(fake_f)),
                           "kernel": "(x.y / d + 1)^3", "library": "torch-fidelity", "features": "same as FID"}

    def prec_recall():
        k = min(3, total.images - 1, len(feature["cached"]["features"]) - 1)
        out.update(precision_recall(feature["cached"]["features"], total.fake_stats.all_features(), k=k))
        protocol["prec_recall"] = {"k": k, "features": "same as FID", "library": "torch-fidelity"}

    def miou():
        names = _eval_class_names(spec, table, n_eval)
        iou = total.cm.iou()
        out["miou"] = total.cm.miou()
        out["pixel_accuracy"] = total.cm.pixel_accuracy()
        out["miou_real"] = total.cm_real.miou()
        per_class["iou"] = {names[c]: float(iou[c]) for c in range(n_eval) if np.isfinite(iou[c])}
        per_class["iou_real"] = {names[c]: float(v) for c, v in enumerate(total.cm_real.iou()) if np.isfinite(v)}

    guard.run(FEATURE_METRICS, real_statistics)
    guard.run(("fid",), fid)
    guard.run(("kid",), kid)
    guard.run(("prec-recall",), prec_recall)
    guard.run(("miou",), miou)
    if total.div_maps:
        if "ms-ssim" in guard.active:
            out["ms_ssim"] = total.ssim_sum / total.div_maps
        if "lpips" in guard.active:
            out["lpips"] = total.lpips_sum / total.div_maps
    guard.run(("color-texture",), lambda: out.update(compare(total.hist_real, total.hist_fake)))
    protocol["seconds"] = round(time.time() - t0, 2)
    if guard.errors:
        protocol["failed"] = sorted(guard.errors)
    return EvalReport(out, per_class, protocol, dict(guard.errors))


def _eval_class_names(spec, table: Tensor, n_eval: int) -> list[str]:
    names = [f"id{e}" for e in range(n_eval)]
    for c, e in enumerate(table.tolist()):
        if 0 <= e < n_eval and names[e] == f"id{e}":
            names[e] = spec.classes[c].name
    return names


def evaluate_generator(generator, parts, cfg, *, device, rank: int = 0, world_size: int = 1, metrics=None,
                       **kwargs) -> dict[str, float]:
    """Periodic evaluation (contract 4): flat metric name -> value (same code as the CLI)."""
    return evaluate(generator, parts, cfg, device=device, rank=rank, world_size=world_size, metrics=metrics,
                    **kwargs).metrics
