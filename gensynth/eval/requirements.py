"""What each metric needs before it can run (packages, weights files, a segmenter), checked up front.

:func:`plan_evaluation` is called before training's step 1 (and before ``gensynth compare`` trains anything): every
requirement of every requested metric is checked; a missing one is a ConfigError naming the file or package and
what to do, or, with ``eval.on_missing=skip`` (and always for the default set, when ``eval.metrics`` is unset),
a warning that drops that metric. Nothing is downloaded and no network is built except a segmenter, which is
built once to see that it can be.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gensynth.errors import ConfigError, GensynthError
from gensynth.eval.deps import EXTRA_HINT, missing_package
from gensynth.eval.evaluate import DEFAULT_METRICS, FEATURE_METRICS, OUTPUTS, parse_metrics

#: metric -> the import names of the packages it needs
PACKAGES_NEEDED = {
    "fid": ("pytorch_fid", "torch_fidelity"),
    "kid": ("pytorch_fid", "torch_fidelity"),
    "prec-recall": ("pytorch_fid", "torch_fidelity"),
    "ms-ssim": ("torchmetrics", "pytorch_msssim"),
    "lpips": ("lpips",),
    "color-texture": ("skimage",),
    "miou": (),
}


@dataclass
class EvalPlan:
    """The metrics that will run, those skipped (metric -> why) and a segmenter built for mIoU, if any."""

    metrics: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    segmenter: object | None = None
    segmenter_name: str | None = None

    def tools(self):
        """EvalTools carrying the segmenter built here (the rest is built by the evaluation)."""
        from gensynth.eval.evaluate import EvalTools

        return EvalTools(segmenter=self.segmenter, segmenter_name=self.segmenter_name)

    def outputs(self) -> list[str]:
        return [k for m in self.metrics for k in OUTPUTS[m]]


def _missing_packages(metric: str) -> str | None:
    gone = [p for p in (missing_package(m) for m in PACKAGES_NEEDED[metric]) if p]
    if gone:
        return f"needs the Python package{'s' if len(gone) > 1 else ''} {', '.join(gone)}: {EXTRA_HINT}"
    return None


def _feature_weights(cfg) -> str | None:
    from gensynth.eval.fid import fid_weights_path

    try:
        fid_weights_path(cfg.eval.fid_weights)
    except FileNotFoundError as exc:
        return str(exc)
    return None


def _lpips_weights(cfg) -> str | None:
    from gensynth.eval.diversity import lpips_backbone_path

    try:
        lpips_backbone_path(cfg.eval.lpips_net, cfg.eval.lpips_weights)
    except FileNotFoundError as exc:
        return str(exc)
    return None


def plan_evaluation(cfg, parts, *, metrics=None, discriminator=None, checkpoint=None, device="cpu",
                    warn: Callable[[str], None] | None = None, run_later: bool = False) -> EvalPlan:
    """Check every requirement of the requested metrics (``metrics``, else ``cfg.eval.metrics``, else the default
    set) and return the plan.

    discriminator: the run's live discriminator, used as the 'oasis-discriminator' segmenter during training;
    run_later: the run does not exist yet (``gensynth compare``): the segmenter is only looked up, built later.
    Raises ConfigError for a missing requirement of a metric the user named, unless ``cfg.eval.on_missing`` is
    "skip"; the default set always skips (``warn`` receives one line per skipped metric).
    """
    explicit = metrics is not None or cfg.eval.metrics is not None
    names = parse_metrics(metrics if metrics is not None else cfg.eval.metrics, DEFAULT_METRICS)
    skip = cfg.eval.on_missing == "skip" or not explicit
    problems: dict[str, str] = {}
    weights_problem = _feature_weights(cfg) if any(m in FEATURE_METRICS for m in names) else None
    segmenter = None
    for m in names:
        why = _missing_packages(m)
        if why is None and m in FEATURE_METRICS:
            why = weights_problem
        if why is None and m == "lpips":
            why = _lpips_weights(cfg)
        if why is None and m == "miou":
            why, segmenter = _segmenter(cfg, parts, discriminator, checkpoint, device, run_later)
        if why is None and m == "ms-ssim":
            why = _ms_ssim_size(cfg, parts)
        if why:
            problems[m] = why
    if problems and not skip:
        lines = "\n".join(f"  {m}: {why}" for m, why in problems.items())
        raise ConfigError(f"evaluation cannot run the requested metric{'s' if len(problems) > 1 else ''} "
                          f"({', '.join(problems)}):\n{lines}\nFix that, drop the metric from eval.metrics, or set "
                          f"eval.on_missing=skip to evaluate without it.")
    plan = EvalPlan([m for m in names if m not in problems], dict(problems), segmenter,
                    (cfg.eval.segmenter or "oasis-discriminator") if segmenter is not None else None)
    if warn is not None:
        for m, why in problems.items():
            warn(f"evaluation skips {m}: {why}")
        if cfg.eval.every and cfg.eval.track not in plan.outputs():
            warn(f"eval.track={cfg.eval.track!r} is not among the evaluated metrics' results "
                 f"({', '.join(plan.outputs()) or 'none'}); the BEST checkpoint is not tracked")
    return plan


def _segmenter(cfg, parts, discriminator, checkpoint, device, run_later=False):
    """(problem or None, segmenter or None): the live discriminator for 'oasis-discriminator' without a run
    option; any other segmenter is built once."""
    name = cfg.eval.segmenter or "oasis-discriminator"
    opts = dict(cfg.eval.segmenter_options)
    try:
        if run_later and name == "oasis-discriminator" and not opts.get("run"):
            from gensynth.plugins import get_host

            get_host().registry("segmenters").entry(name)
            return None, None
        if name == "oasis-discriminator" and not opts.get("run") and discriminator is not None:
            from gensynth.eval.segmenters import DiscriminatorSegmenter

            return None, DiscriminatorSegmenter(discriminator, parts.num_classes)
        from gensynth.eval.segmenters import build_segmenter

        seg = build_segmenter(name, num_classes=parts.num_classes, checkpoint=checkpoint, device=device, **opts)
        return None, seg
    except (GensynthError, FileNotFoundError) as exc:
        return f"segmenter {name!r}: {exc}", None


def _ms_ssim_size(cfg, parts) -> str | None:
    from gensynth.eval.diversity import ms_ssim_scales

    size = tuple(cfg.data.size or parts.dataset.default_size)
    try:
        ms_ssim_scales(*size)
    except ValueError as exc:
        return str(exc)
    return None
