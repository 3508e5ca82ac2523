"""Train gensynth's small segmenter (:class:`~gensynth.eval.segmenters.SmallSegNet`) on a dataset's real images.

For datasets without a public segmenter; the result is used with ``eval.segmenter=gensynth-segmenter`` and
``eval.segmenter_options.path=DIR``. Cross-entropy over the model classes, the don't-care class ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gensynth.eval.segmenters import SmallSegNet, save_small_segmenter


@dataclass
class SegmenterTrainConfig:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 32
    depth: int = 3
    seed: int = 0
    log_every: int = 100


def train_segmenter(data_cfg, spec, out: str | Path, cfg: SegmenterTrainConfig, *, device="cpu",
                    log=None) -> tuple[Path, float]:
    """Train on ``data_cfg``'s training split; returns (output directory, final running loss)."""
    from gensynth.data.loader import train_batches

    torch.manual_seed(cfg.seed)
    net = SmallSegNet(spec.num_classes, cfg.width, cfg.depth).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ignore = spec.dontcare if spec.dontcare is not None else -100
    running = None
    batches = train_batches(data_cfg, spec, batch_size=cfg.batch_size, rank=0, world_size=1, seed=cfg.seed)
    for step, batch in zip(range(cfg.steps), batches):
        image, label = batch.image.to(device), batch.label.to(device).long()
        loss = F.cross_entropy(net(image), label, ignore_index=ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if log and (step + 1) % cfg.log_every == 0:
            log(f"step {step + 1}/{cfg.steps} loss {running:.4f}")
    size = list(data_cfg.size or spec.default_size)
    path = save_small_segmenter(net.eval(), out, {"dataset": spec.name, "size": size, "steps": cfg.steps,
                                                  "final_loss": running})
    return path, running
