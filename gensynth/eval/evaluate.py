"""Evaluate a generator on the validation split: FID, precision/recall, mIoU, diversity, colour/texture.

One pass over ``eval_batches`` generates one sample per label map (fixed noise seeds, eval mode) and feeds every
requested metric. The trainer calls :func:`evaluate_generator` (contract 4); ``gensynth evaluate`` calls
:func:`evaluate`, which also returns per-class IoU and the protocol.
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
from gensynth.eval.diversity import LPIPS, mean_pairwise, ms_ssim, ms_ssim_scales
from gensynth.eval.fid import FeatureStats, StatsCache, StatsKey, fid_feature_network, frechet_distance, network_hash
from gensynth.eval.miou import ConfusionMatrix, apply_mapping, eval_id_mapping
from gensynth.eval.precision_recall import precision_recall

METRICS = ("fid", "prec-recall", "miou", "diversity", "color-texture")
_ALIASES = {"precision-recall": "prec-recall", "pr": "prec-recall", "colour-texture": "color-texture",
            "lpips": "diversity", "ms-ssim": "diversity"}


def parse_metrics(names: Iterable[str] | str | None, default: Iterable[str] = ("fid",)) -> list[str]:
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
    lpips: nn.Module | None = None
    stats_cache: StatsCache | None = None


@dataclass
class EvalReport:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def clean(v):
            return None if isinstance(v, float) and not np.isfinite(v) else v

        return {"metrics": {k: clean(v) for k, v in self.metrics.items()},
                "per_class": {k: {c: clean(v) for c, v in d.items()} for k, d in self.per_class.items()},
                "protocol": self.protocol}


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
        self.fake_stats = FeatureStats(keep_features="prec-recall" in metrics)
        self.real_stats = FeatureStats(keep_features="prec-recall" in metrics)
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


@torch.no_grad()
def evaluate(generator, parts, cfg, *, device, rank: int = 0, world_size: int = 1, metrics=None,
             tools: EvalTools | None = None, checkpoint=None, batch_size: int | None = None, seed: int = 0,
             batches: Iterable | None = None) -> EvalReport:
    """Evaluate ``generator`` (its EMA copy, normally) on ``cfg.data``'s validation split.

    checkpoint: the run being evaluated (for the 'oasis-discriminator' segmenter); batches: an iterable of
    gensynth.data.loader.Batch to use instead of ``eval_batches`` (tests, custom label sets).
    """
    from gensynth.data.loader import eval_batches, to_condition

    metrics = parse_metrics(metrics, cfg.eval.metrics)
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

    feature_net = None
    cached = None
    key = None
    if "fid" in metrics or "prec-recall" in metrics:
        feature_net = tools.feature_net or fid_feature_network(cfg.eval.fid_backend, cfg.eval.fid_weights, device)
        feature_net = feature_net.to(device).eval()
        cache = tools.stats_cache or StatsCache(cfg.eval.stats_dir)
        key = StatsKey(spec.name, split, size, network_hash(feature_net), cfg.eval.num_samples)
        cached = cache.load(key)
        if cached is not None and "prec-recall" in metrics and "features" not in cached:
            cached = None
        protocol["fid"] = {"backend": cfg.eval.fid_backend if tools.feature_net is None else type(feature_net).__name__,
                           "features": "pool3 2048-d" if tools.feature_net is None else "custom",
                           "resize": "bilinear to 299 (inside the network)" if tools.feature_net is None else "none", "real_stats": str(cache.path(key)),
                           "real_stats_cached": cached is not None}
    segmenter = None
    if "miou" in metrics:
        segmenter = tools.segmenter
        if segmenter is None:
            from gensynth.eval.segmenters import build_segmenter

            name = cfg.eval.segmenter or "oasis-discriminator"
            segmenter = build_segmenter(name, num_classes=n, checkpoint=checkpoint, device=device,
                                        **cfg.eval.segmenter_options)
            protocol["miou"] = {"segmenter": name, "segmenter_options": dict(cfg.eval.segmenter_options)}
        else:
            protocol["miou"] = {"segmenter": type(segmenter).__name__}
        segmenter = segmenter.to(device).eval()
        space = getattr(segmenter, "output_space", "model")
        protocol["miou"].update({"input_resolution": list(getattr(segmenter, "input_size", None) or size),
                                 "id_set": "dataset eval_ids" if spec.eval_ids is not None else
                                 f"{n} model classes, don't-care ({spec.dontcare}) ignored",
                                 "num_eval_classes": n_eval, "segmenter_outputs": space})
    lpips_net = None
    k_div = cfg.eval.diversity_samples
    if "diversity" in metrics:
        lpips_net = tools.lpips or LPIPS.pretrained(cfg.eval.lpips_net, cfg.eval.lpips_weights, device)
        lpips_net = lpips_net.to(device).eval()
        protocol["diversity"] = {"samples_per_label_map": k_div, "ms_ssim_scales": ms_ssim_scales(*size),
                                 "lpips": getattr(lpips_net, "net_name", type(lpips_net).__name__)}
    if "color-texture" in metrics:
        protocol["color_texture"] = {"colour": "LAB 1-D histograms (L 50 bins, a/b 64 bins), EMD averaged over L,a,b",
                                     "texture": "LBP 8-neighbour radius 1, 256 bins, chi-squared",
                                     "average": "over classes present in real and generated sets"}

    was_training = generator.training
    generator.eval()
    state = _Run(metrics, n, spec.dontcare, n_eval)
    if batches is None:
        batches = eval_batches(cfg.data, spec, batch_size=bs, rank=rank, world_size=world_size, split=split,
                               limit=cfg.eval.num_samples)
    z_dim = int(getattr(generator, "z_dim", 0) or 0)
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
            if feature_net is not None:
                state.fake_stats.update(feature_net(fake))
                if cached is None:
                    state.real_stats.update(feature_net(real))
            if segmenter is not None:
                gt = apply_mapping(ids, table.to(device))
                for img, cm in ((fake, state.cm), (real, state.cm_real)):
                    pred = segmenter(img).argmax(1)
                    if getattr(segmenter, "output_space", "model") == "model":
                        pred = apply_mapping(_channel_to_dataset_ids(pred, n, spec.dontcare, parts.dontcare_last),
                                             table.to(device))
                    cm.update(pred, gt)
            if "color-texture" in metrics:
                state.hist_real.update(real, ids)
                state.hist_fake.update(fake, ids)
            if lpips_net is not None:
                for j in range(b):
                    c1 = cond[j:j + 1]
                    reps = type(c1)(c1.labels.expand(k_div, -1, -1, -1),
                                    None if c1.instance_edges is None else c1.instance_edges.expand(k_div, -1, -1, -1))
                    many = generator(reps, sample(k_div)).image.float().clamp(-1, 1)
                    state.ssim_sum += mean_pairwise(many, ms_ssim)
                    state.lpips_sum += mean_pairwise(many, lambda x, y: lpips_net(x, y))
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
    if feature_net is not None:
        if cached is None:
            real_mu, real_sigma = total.real_stats.mean_cov()
            arrays = {"mu": real_mu, "sigma": real_sigma}
            if total.real_stats.keep:
                arrays["features"] = total.real_stats.all_features()
            if rank == 0:
                (tools.stats_cache or StatsCache(cfg.eval.stats_dir)).save(key, **arrays)
            cached = arrays
        if "fid" in metrics:
            mu, sigma = total.fake_stats.mean_cov()
            out["fid"] = frechet_distance(mu, sigma, cached["mu"], cached["sigma"])
        if "prec-recall" in metrics:
            k = min(3, total.images - 1, len(cached["features"]) - 1)
            pr = precision_recall(cached["features"], total.fake_stats.all_features(), k=k)
            out.update(pr)
            protocol["prec_recall"] = {"k": k, "features": "same as FID"}
    if segmenter is not None:
        names = _eval_class_names(spec, table, n_eval)
        iou = total.cm.iou()
        out["miou"] = total.cm.miou()
        out["pixel_accuracy"] = total.cm.pixel_accuracy()
        out["miou_real"] = total.cm_real.miou()
        per_class["iou"] = {names[c]: float(iou[c]) for c in range(n_eval) if np.isfinite(iou[c])}
        per_class["iou_real"] = {names[c]: float(v) for c, v in enumerate(total.cm_real.iou()) if np.isfinite(v)}
    if lpips_net is not None and total.div_maps:
        out["ms_ssim"] = total.ssim_sum / total.div_maps
        out["lpips"] = total.lpips_sum / total.div_maps
    if "color-texture" in metrics:
        out.update(compare(total.hist_real, total.hist_fake))
    protocol["seconds"] = round(time.time() - t0, 2)
    return EvalReport(out, per_class, protocol)


def _eval_class_names(spec, table: Tensor, n_eval: int) -> list[str]:
    names = [f"id{e}" for e in range(n_eval)]
    for c, e in enumerate(table.tolist()):
        if 0 <= e < n_eval and names[e] == f"id{e}":
            names[e] = spec.classes[c].name
    return names


def evaluate_generator(generator, parts, cfg, *, device, rank: int = 0, world_size: int = 1, metrics=None,
                       **kwargs) -> dict[str, float]:
    """The trainer's periodic evaluation (contract 4): flat metric name -> value (same code as the CLI)."""
    return evaluate(generator, parts, cfg, device=device, rank=rank, world_size=world_size, metrics=metrics,
                    **kwargs).metrics
