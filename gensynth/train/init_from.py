"""``--init-from``: start a run from another checkpoint's weights (fine-tuning, other class counts).

Tensors whose name and shape match are copied; the others (e.g. the generator's first layer and the
SPADE ``mlp_shared`` convolutions when the class count differs, the discriminator's last layer) keep
their fresh initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from gensynth.checkpoint import strip_prefixes


@dataclass
class InitReport:
    """Per model: how many tensors were copied and which were re-initialised (and why)."""

    copied: dict[str, int] = field(default_factory=dict)
    reinitialised: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = []
        for name, n in self.copied.items():
            fresh = self.reinitialised.get(name, [])
            lines.append(f"  {name}: {n} tensors loaded, {len(fresh)} kept their fresh init"
                         + (f" ({', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''})" if fresh else ""))
        return "\n".join(lines)


def load_matching(module: nn.Module, state: dict[str, Tensor], name: str, report: InitReport) -> None:
    """Copy the entries of ``state`` whose key and shape match ``module``'s state dict."""
    state = strip_prefixes(state)
    own = module.state_dict()
    take, fresh = {}, []
    for key, t in own.items():
        src = state.get(key)
        if src is not None and tuple(src.shape) == tuple(t.shape):
            take[key] = src
        else:
            reason = "absent" if src is None else f"{tuple(src.shape)}->{tuple(t.shape)}"
            fresh.append(f"{key} [{reason}]")
    module.load_state_dict(take, strict=False)
    report.copied[name] = len(take)
    report.reinitialised[name] = fresh
