"""The official CC-FPSE generator has BatchNorm layers it never applies; gensynth keeps them frozen, so DDP needs
no find_unused_parameters. Shown with a one-process gloo group: frozen, three steps run; made trainable, DDP's
reducer fails on the second step naming the parameters that got no gradient."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gensynth.interfaces import Condition, one_hot
from gensynth_ccfpse.generator import CondConvGenerator


@pytest.fixture()
def process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _three_steps(g: CondConvGenerator) -> None:
    ddp = DDP(g, find_unused_parameters=False)
    cond = Condition(one_hot(torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(0)), 4))
    for _ in range(3):
        ddp(cond).image.mean().backward()


def test_ddp_without_find_unused_parameters(process_group):
    torch.manual_seed(0)
    g = CondConvGenerator(4, ngf=4, hidden=8)
    frozen = [n for n, p in g.named_parameters() if not p.requires_grad]
    assert len(frozen) == 7 * 3 * 2 and all(n.endswith(("norm_0.weight", "norm_0.bias", "norm_layer.weight",
                                                         "norm_layer.bias")) for n in frozen)
    _three_steps(g)
    assert all(p.grad is None for n, p in g.named_parameters() if n in frozen)

    trainable = CondConvGenerator(4, ngf=4, hidden=8)
    trainable.requires_grad_(True)  # as the official code leaves them
    with pytest.raises(RuntimeError, match="did not receive grad"):
        _three_steps(trainable)
