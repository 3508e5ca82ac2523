"""The stable start: a discriminator with spectral norm that does not die in its first steps.

What kills it (measured on OASIS, benchmarks/README.md "Stability"): the official init (xavier, gain 0.02) leaves
a spectrally normalised weight with a top singular value of ~0.03, while Adam (beta1 = 0) moves every weight by
about the learning rate, all in step, on its first updates: a nearly rank-1 change of spectral norm ~0.6 on a
512x4608 weight, twenty times the weight itself. One power iteration per call then underestimates the new sigma;
the gains of all layers compound; by step 3 the logits reach 1e4-1e10 and the gradients with them. Adam's second
moment remembers those gradients (beta2 = 0.999), so every later step of D is ~1e-4 of its learning rate: D is
frozen, constant over pixels and images, and LabelMix (satisfied by a constant D) keeps it there.

The stable start changes two things, both for the discriminator only, and neither the function D computes at
initialisation:

* :func:`normalise_spectral_weights`: every spectrally normalised weight starts at ``W / sigma(W)`` with its
  power-iteration vectors converged (15 iterations, as ``torch.nn.utils.parametrizations.spectral_norm`` does at
  registration). Spectral norm divides by sigma anyway, so D's output is unchanged, but Adam's steps are now
  small against the weights (sigma = 1 instead of ~0.03).
* :func:`warmup_factor`: D's learning rate rises linearly over its first ``steps`` steps.

``trainer.stable_start`` turns it on (the default); ``--official-recipe`` turns it off with the EMA warm-up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: power iterations at initialisation: torch.nn.utils.parametrizations.spectral_norm's count at registration
INIT_ITERATIONS = 15


def spectral_layers(module: nn.Module) -> list[nn.Module]:
    """Modules holding a spectrally normalised weight in the hook layout (``weight_orig``, ``weight_u``,
    ``weight_v``): :class:`gensynth.nn.spectral.SpectralConv2d` and ``torch.nn.utils.spectral_norm`` layers."""
    return [m for m in module.modules()
            if all(isinstance(getattr(m, k, None), torch.Tensor) for k in ("weight_orig", "weight_u", "weight_v"))]


def _dims(layer: nn.Module) -> int:
    """The weight dimension torch's hook normalises over (``dim``; 0 but for transposed convolutions)."""
    for hook in layer._forward_pre_hooks.values():
        if hasattr(hook, "dim"):
            return int(hook.dim)
    return 0


@torch.no_grad()
def normalise_spectral_weights(module: nn.Module, iterations: int = INIT_ITERATIONS) -> int:
    """Converge every spectral-norm layer's u, v and divide its ``weight_orig`` by the resulting sigma.

    The layers compute the same function afterwards (up to rounding); returns the number of layers changed."""
    layers = spectral_layers(module)
    for layer in layers:
        w = layer.weight_orig
        dim = _dims(layer)
        mat = (w if dim == 0 else w.movedim(dim, 0)).reshape(w.shape[dim], -1)
        u, v = layer.weight_u, layer.weight_v
        eps = float(getattr(layer, "eps", 1e-12))
        for _ in range(iterations):
            v.copy_(F.normalize(torch.mv(mat.t(), u), dim=0, eps=eps))
            u.copy_(F.normalize(torch.mv(mat, v), dim=0, eps=eps))
        sigma = torch.dot(u, torch.mv(mat, v))
        if float(sigma) > 0:
            w.div_(sigma)
    return len(layers)


def warmup_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of a linear warm-up over ``steps`` steps (1 after it)."""
    if steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / steps)
