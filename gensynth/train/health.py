"""The training-health monitor: a collapsed discriminator, divergence, and a generator that ignores its input.

Every model, on by default (``health.*``), and cheap: the per-step figures are accumulated on the device
(:meth:`HealthMonitor.after_step`, no host synchronisation); every ``health.every`` steps one all-reduce and one
copy to the host turn them into a :class:`HealthReport` (:meth:`HealthMonitor.check`).

What is measured, and the verdicts (thresholds are ``health.*`` settings):

* ``d_spread``: how much the discriminator's output varies over pixels, images and real-vs-fake, in logit units
  (:func:`output_spread` of D's outputs on the real and the fake images of the D step). A discriminator that
  gives every pixel of every image the same logits has spread ~0 (measured: 0.0006-0.005 in runs that died,
  0.07-10 in runs that live). **Collapsed** when the largest per-step spread stays under
  ``collapse_spread`` for ``patience`` consecutive steps. Its losses are then pinned (OASIS: at ln(N+1)) and
  LabelMix is ~0, which the message quotes.
* ``param_rms/<model>``: root mean square of the parameters of G and D. **Diverging** when one grew by
  ``weight_growth`` times or more since this process started training and is above 1 (Adam moves a weight by
  about the learning rate per step, so orders of magnitude within a run mean a learning rate far too large).
  Losses that grow by ``weight_growth`` times over their first check's mean (and exceed 1e3) are also reported.
* ``label_dependence``: the share of the generated images' colour variance explained by the label classes (the
  correlation ratio eta^2 of pixel colour given the class), relative to the same share in the real images.
  **Ignores its labels** when, after ``generator_grace`` steps, the generated share stays under
  ``label_ratio`` times the real one for ``patience`` steps. Measured on the G step's batch at check steps only.
* ``noise_dependence`` (generators with noise; from the trainer's sample grids, see
  :func:`noise_dependence`): the mean absolute difference between two samples of the same labels with
  different noise, relative to the images' own spread. **Ignores its noise** when under ``noise_ratio`` after
  ``generator_grace`` steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gensynth.interfaces import DiscriminatorOutput


# ---------------------------------------------------------------------------------------------
# per-step figures (device tensors, no host synchronisation)
# ---------------------------------------------------------------------------------------------
def _tensors(out: DiscriminatorOutput | Tensor) -> list[Tensor]:
    logits = out.logits if isinstance(out, DiscriminatorOutput) else out
    return list(logits) if isinstance(logits, (list, tuple)) else [logits]


#: the health figures read at most about this many positions per side of a map (a strided subset): enough for a
#: spread or a colour statistic, and cheap at any resolution (ADE20K's 151x256x256 logits: 64x fewer reads)
GRID = 32


def _grid(t: Tensor) -> Tensor:
    """A strided subset of a (B, C, H, W) map with at most ~GRID positions per side (other shapes unchanged)."""
    if t.dim() != 4:
        return t
    step = max(1, max(t.shape[-2:]) // GRID)
    return t[:, :, ::step, ::step]


def output_spread(*outputs: DiscriminatorOutput | Tensor) -> Tensor:
    """Standard deviation of D's logits over everything but the channel, averaged over channels and scales.

    ``outputs``: discriminator outputs on different images (e.g. real and fake) of one step, each a tensor
    (B, C, H, W) / (B, C) or a list of them over scales; same-scale tensors are pooled over all outputs, so a D
    that tells real from fake with spatially constant logits still has a spread. Maps are read on a strided grid
    of at most ~32x32 positions. Returns a 0-d float tensor."""
    per_output = [_tensors(o) for o in outputs if o is not None]
    spreads = []
    for scale in zip(*per_output):
        count, total, squares = 0, 0.0, 0.0
        for t in scale:
            x = _grid(t.detach()).float().transpose(0, 1).reshape(t.shape[1], -1)  # (C, positions)
            count += x.shape[1]
            total = total + x.sum(dim=1)
            squares = squares + (x * x).sum(dim=1)
        mean = total / count
        spreads.append((squares / count - mean * mean).clamp_min(0).sqrt().mean())
    return torch.stack(spreads).mean()


def label_dependence(image: Tensor, labels: Tensor) -> Tensor:
    """The correlation ratio eta^2 of pixel colour given the class: between-class / total colour variance.

    image (B, 3, H, W); labels (B, N, H, W) one-hot at the image's size, both read on a strided grid of at most
    ~32x32 positions. 0 when the colour does not depend on the class (or the image is flat), 1 when each class has
    one colour. Returns a 0-d float tensor."""
    x = image.detach().float()
    lab = labels.detach().float()
    if lab.shape[-2:] != x.shape[-2:]:
        lab = nn.functional.interpolate(lab, size=x.shape[-2:], mode="nearest")
    x, lab = _grid(x), _grid(lab)
    counts = lab.sum(dim=(0, 2, 3))  # (N,)
    sums = torch.einsum("bnhw,bchw->nc", lab, x)  # (N, 3)
    mean = x.mean(dim=(0, 2, 3))  # (3,)
    class_mean = sums / counts.clamp_min(1).unsqueeze(1)
    between = (counts.unsqueeze(1) * (class_mean - mean) ** 2).sum() / counts.sum().clamp_min(1)
    total = ((x - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3)).sum()
    return between / total.clamp_min(1e-8)


def noise_dependence(first: Tensor, second: Tensor) -> float:
    """Mean |first - second| over the images' own mean absolute deviation: two samples (B, 3, H, W) of the same
    labels with different noise. ~0 when the generator ignores its noise."""
    a, b = first.detach().float(), second.detach().float()
    own = (a - a.mean(dim=(2, 3), keepdim=True)).abs().mean()
    return float((a - b).abs().mean() / own.clamp_min(1e-8))


def parameter_rms(module: nn.Module) -> Tensor:
    """Root mean square of a module's floating-point parameters (0-d tensor on their device)."""
    params = [p.detach() for p in module.parameters() if p.dtype.is_floating_point]
    if not params:
        return torch.zeros(())
    norms = torch._foreach_norm(params)
    total = torch.stack([n.float() for n in norms]).pow(2).sum()
    return (total / sum(p.numel() for p in params)).sqrt()


# ---------------------------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------------------------
@dataclass
class Finding:
    """One problem found: ``kind`` (collapse, divergence, labels, noise), the step, and a plain-words message."""

    kind: str
    step: int
    message: str


@dataclass
class HealthReport:
    """The figures of one check (for metrics.jsonl and TensorBoard) and the problems found at it."""

    step: int
    figures: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in values.items())


class HealthMonitor:
    """Accumulates per-step health figures on the device and judges them every ``cfg.every`` steps.

    ``cfg``: a :class:`gensynth.config.HealthConfig`; ``models``: name -> module whose parameter RMS is watched;
    ``advice``: what to try when D collapses (the trainer's words depend on the recipe)."""

    def __init__(self, cfg, models: dict[str, nn.Module], device: torch.device, advice: str = ""):
        self.cfg = cfg
        self.models = models
        self.device = device
        self.advice = advice
        self._max_spread: Tensor | None = None
        self._sum_spread: Tensor | None = None
        self._steps = 0
        self._collapsed_since: int | None = None
        self._collapse_steps = 0
        self._labels_low_since: int | None = None
        # the reference for divergence: the parameters as this process starts (built, loaded or resumed)
        self._rms_ref: dict[str, float] = {k: float(parameter_rms(m)) for k, m in models.items()}
        self._loss_ref: dict[str, float] = {}
        self._eta: Tensor | None = None
        self._eta_real: Tensor | None = None
        self._active: set[str] = set()  # findings reported and not yet recovered (each is reported once)

    # -- per step (device only)
    def wants_images(self, next_step: int) -> bool:
        """Whether the coming step should measure its generated images (a check step, after the grace)."""
        return next_step % self.cfg.every == 0 and next_step > self.cfg.generator_grace

    def after_step(self, stats: dict[str, Tensor]) -> None:
        """Add one step's figures (``d_spread``, optional ``label_dependence`` / ``label_dependence_real``)."""
        self._steps += 1
        s = stats.get("d_spread")
        if s is not None:
            s = s.detach().float()
            if self._max_spread is None:
                self._max_spread, self._sum_spread = s.clone(), s.clone()
            else:
                self._max_spread = torch.maximum(self._max_spread, s)
                self._sum_spread = self._sum_spread + s
        if "label_dependence" in stats and "label_dependence_real" in stats:
            self._eta, self._eta_real = stats["label_dependence"], stats["label_dependence_real"]

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    # -- every cfg.every steps (one host synchronisation)
    def check(self, step: int, losses: dict[str, Tensor], all_reduce=None) -> HealthReport:
        """Judge the figures since the last check, with ``losses`` (the last step's, 0-d device tensors).

        ``all_reduce``: callable that averages a 1-d device tensor over ranks (None in one process). The figures
        and the losses reach the host in one copy."""
        named: dict[str, Tensor] = {}
        if self._max_spread is not None:
            named["d_spread_max"] = self._max_spread
            named["d_spread"] = self._sum_spread / max(self._steps, 1)
        for name, module in self.models.items():
            named[f"param_rms/{name}"] = parameter_rms(module)
        if self._eta is not None and self._eta_real is not None:
            named["label_dependence"], named["label_dependence_real"] = self._eta, self._eta_real
        loss_names = sorted(losses)
        named.update({f"loss/{k}": losses[k] for k in loss_names})
        vec = torch.stack([v.detach().float().reshape(()).to(self.device) for v in named.values()])
        if all_reduce is not None:
            vec = all_reduce(vec)
        values = dict(zip(named, vec.cpu().tolist()))
        window = self._steps
        self._max_spread = self._sum_spread = self._eta = self._eta_real = None
        self._steps = 0
        last_losses = {k: values.pop(f"loss/{k}") for k in loss_names}
        report = HealthReport(step=step, figures=values)
        self._judge_collapse(report, window, last_losses)
        self._judge_divergence(report, last_losses)
        self._judge_labels(report)
        return report

    def judge_noise(self, step: int, value: float) -> HealthReport:
        """Judge a noise-dependence figure measured on the sample grid (see :func:`noise_dependence`)."""
        report = HealthReport(step=step, figures={"noise_dependence": value})
        low = step > self.cfg.generator_grace and value < self.cfg.noise_ratio
        self._report(report, "noise", low,
                     f"the generator ignores its noise: two samples of the same label maps with different noise "
                     f"differ by {value:.2g} of the images' own variation (under {self.cfg.noise_ratio:g}) at step "
                     f"{step}. Diversity metrics will be near zero. Try: a lower G learning rate, a larger noise "
                     f"dimension (model.generator_options.z_dim), or check that the generator uses its z.")
        return report

    # -- the rules
    def _report(self, report: HealthReport, kind: str, bad: bool, message: str) -> None:
        if not bad:
            self._active.discard(kind)
            return
        if kind not in self._active:
            self._active.add(kind)
            report.findings.append(Finding(kind, report.step, message))

    def _judge_collapse(self, report: HealthReport, window: int, losses: dict[str, float]) -> None:
        spread = report.figures.get("d_spread_max")
        if spread is None:
            return
        if spread < self.cfg.collapse_spread:
            if self._collapsed_since is None:
                self._collapsed_since = report.step - window + 1
            self._collapse_steps += window
        else:
            self._collapsed_since, self._collapse_steps = None, 0
        bad = self._collapse_steps >= self.cfg.patience
        pinned = {k: v for k, v in losses.items() if k.startswith(("D_", "G_adv", "labelmix"))}
        self._report(
            report, "collapse", bad,
            f"the discriminator has collapsed: since step {self._collapsed_since} its outputs are the same for "
            f"every pixel and image (logit spread at most {spread:.2g}, under {self.cfg.collapse_spread:g}), so the "
            f"generator gets no training signal and its samples stay flat. Losses are pinned: {_fmt(pinned)}. "
            f"Try: {self.advice or 'a lower optim.lr_d or a smaller optim.grad_clip'}. "
            f"(health.action=stop saves a checkpoint and stops at this point.)")

    def _judge_divergence(self, report: HealthReport, losses: dict[str, float]) -> None:
        growth = self.cfg.weight_growth
        grown = []
        for name in self.models:
            rms = report.figures.get(f"param_rms/{name}")
            if rms is None:
                continue
            ref = self._rms_ref.setdefault(name, rms)
            if not math.isfinite(rms) or (rms > 1.0 and rms >= growth * max(ref, 1e-12)):
                grown.append(f"the {name}'s parameter RMS grew from {ref:.3g} to {rms:.3g}")
        for name, value in losses.items():
            ref = self._loss_ref.setdefault(name, abs(value))
            if math.isfinite(value) and abs(value) > 1e3 and abs(value) >= growth * max(ref, 1e-12):
                grown.append(f"loss {name} grew from {ref:.3g} to {value:.3g}")
        self._report(report, "divergence", bool(grown),
                     f"training is diverging: {'; '.join(grown)} (by {growth:g} times or more). "
                     f"Samples from such weights are saturated noise. Try: lower learning rates (optim.lr_g, "
                     f"optim.lr_d; Adam moves every weight by about its learning rate whatever the gradient, so "
                     f"clipping does not help here), or --precision fp32.")

    def _judge_labels(self, report: HealthReport) -> None:
        eta, eta_real = report.figures.get("label_dependence"), report.figures.get("label_dependence_real")
        if eta is None or eta_real is None or eta_real <= 1e-3:
            return
        low = eta < self.cfg.label_ratio * eta_real
        if low and self._labels_low_since is None:
            self._labels_low_since = report.step
        if not low:
            self._labels_low_since = None
        bad = low and report.step - self._labels_low_since + self.cfg.every >= self.cfg.patience
        self._report(report, "labels", bad,
                     f"the generator ignores its label maps: at step {report.step} the classes explain {eta:.2g} of "
                     f"the generated images' colour variance against {eta_real:.2g} in the real images (under "
                     f"{self.cfg.label_ratio:g} of it since step {self._labels_low_since}). Try: check that the "
                     f"dataset's labels match its images (gensynth datasets preview), and that the discriminator "
                     f"is alive (a collapsed one gives no label signal).")
