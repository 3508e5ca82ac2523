"""Run the official OASIS code (boschresearch/OASIS) beside gensynth, in the same process, for side-by-side timings.

Nothing of the official code is shipped with gensynth (it is AGPL-3.0): give the path of your own checkout,

    git clone https://github.com/boschresearch/OASIS /path/to/OASIS
    python benchmarks/train_step.py --official /path/to/OASIS

and this module imports its ``models`` package from there, builds ``OASIS_model`` with the options of the
configuration being measured and runs one training iteration exactly as the official ``train.py`` does (G step,
D step, ``update_EMA``'s per-key blend, and the per-iteration host copy of the losses that ``losses_saver``
makes), on the CPU or one GPU (``put_on_multi_gpus`` is not used: its CPU branch makes ``model.module`` point to
the model itself, which recurses in ``state_dict``).
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch


class OfficialUnavailable(RuntimeError):
    """The given path is not an importable official OASIS checkout."""


def import_official(path: str | Path):
    """(models.models, models.losses) of the checkout at ``path``."""
    root = Path(path).expanduser().resolve()
    if not (root / "models" / "models.py").is_file():
        raise OfficialUnavailable(f"{root} is not an OASIS checkout (no models/models.py); clone "
                                  f"https://github.com/boschresearch/OASIS there")
    if "models" in sys.modules and not str(getattr(sys.modules["models"], "__file__", "")).startswith(str(root)):
        raise OfficialUnavailable("another package named 'models' is already imported")
    sys.path.insert(0, str(root))
    try:
        models = importlib.import_module("models.models")
        losses = importlib.import_module("models.losses")
    except ImportError as exc:
        raise OfficialUnavailable(f"cannot import the official code from {root}: {exc}") from exc
    return models, losses


def official_options(num_classes: int, height: int, width: int, batch: int, *, dontcare: bool, labelmix: float,
                     ema_decay: float, lr_g: float, lr_d: float, gpu: bool, channels: int = 64,
                     num_res_blocks: int = 6, z_dim: int = 64) -> types.SimpleNamespace:
    """The ``opt`` namespace of the official config.py for one measured configuration.

    ``num_classes``: semantic_nc (label_nc + 1 when the dataset has a don't-care class, as the official loaders).
    """
    return types.SimpleNamespace(
        name="bench", phase="train", gpu_ids="0" if gpu else "-1", batch_size=batch, seed=42,
        channels_G=channels, num_res_blocks=num_res_blocks, z_dim=z_dim, no_3dnoise=False, no_spectral_norm=False,
        param_free_norm="syncbatch", spade_ks=3, no_EMA=False, EMA_decay=ema_decay, continue_train=False,
        add_vgg_loss=False, lambda_vgg=10.0, no_labelmix=False, lambda_labelmix=labelmix, no_balancing_inloss=False,
        beta1=0.0, beta2=0.999, lr_g=lr_g, lr_d=lr_d, crop_size=width, aspect_ratio=width / height,
        label_nc=num_classes - (1 if dontcare else 0), contain_dontcare_label=dontcare, semantic_nc=num_classes)


class OfficialRun:
    """The official model, optimisers and loss computer, ready to run :meth:`iteration` on one batch."""

    def __init__(self, path: str | Path, opt: types.SimpleNamespace, device: torch.device):
        self.models, losses = import_official(path)
        self.opt, self.device = opt, device
        self.model = self.models.OASIS_model(opt).to(device)
        self.losses_computer = losses.losses_computer(opt)
        self.opt_g = torch.optim.Adam(self.model.netG.parameters(), lr=opt.lr_g, betas=(opt.beta1, opt.beta2))
        self.opt_d = torch.optim.Adam(self.model.netD.parameters(), lr=opt.lr_d, betas=(opt.beta1, opt.beta2))

    def batch(self, label_ids: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, one-hot label) from ids (B, H, W) and an image (B, 3, H, W), through ``preprocess_input``."""
        data = {"label": label_ids[:, None].cpu(), "image": image.cpu()}
        image, label = self.models.preprocess_input(self.opt, data)
        return image.to(self.device), label.to(self.device)

    def iteration(self, image: torch.Tensor, label: torch.Tensor) -> None:
        """One iteration of the official train.py loop (no image saving, checkpoints or FID)."""
        m, lc = self.model, self.losses_computer
        m.netG.zero_grad()
        loss_g, losses_g = m(image, label, "losses_G", lc)
        loss_g, losses_g = loss_g.mean(), [x.mean() if x is not None else None for x in losses_g]
        loss_g.backward()
        self.opt_g.step()
        m.netD.zero_grad()
        loss_d, losses_d = m(image, label, "losses_D", lc)
        loss_d, losses_d = loss_d.mean(), [x.mean() if x is not None else None for x in losses_d]
        loss_d.backward()
        self.opt_d.step()
        with torch.no_grad():  # utils.update_EMA, without the BN-statistics pass (not every iteration)
            ema, g = m.netEMA.state_dict(), m.netG.state_dict()
            for key in ema:
                ema[key].data.copy_(ema[key].data * self.opt.EMA_decay + g[key].data * (1 - self.opt.EMA_decay))
        for x in losses_g + losses_d:  # utils.losses_saver: one host copy per loss per iteration
            if x is not None:
                x.detach().cpu().numpy()
