"""Recycled weight gradients (gensynth.nn.grad_buffer): the matrix-product layers write the weight gradient into
memory kept from the previous backward, only when nothing else still uses it, and the values never change."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch

from gensynth.nn.conv import Conv2d
from gensynth.nn.grad_buffer import GradientBuffer, release_gradient_buffers
from gensynth.nn.spectral import SpectralConv2d, consecutive_calls


def _layer(kind: str, recycle: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = (SpectralConv2d(64, 32, 3, padding=1) if kind == "spectral" else Conv2d(64, 32, 3, padding=1)).double()
    layer.recycle_weight_grad = recycle
    return layer


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    return layer.weight_orig if isinstance(layer, SpectralConv2d) else layer.weight


def _backward(layer: torch.nn.Module, x: torch.Tensor) -> None:
    (layer(x) ** 2).sum().backward()


def _memory(layer: torch.nn.Module) -> int:
    return layer.__dict__["_weight_grad_buffer"]._memory.data_ptr()


KINDS = ["spectral", "conv"]


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_land_in_the_kept_memory_with_unchanged_values(kind):
    x = torch.randn(2, 64, 2, 2, dtype=torch.float64)  # 18432 weights per 256 outputs: the matrix-product path
    layer, ref = _layer(kind), _layer(kind, recycle=False)
    pointers = []
    for _ in range(3):
        for m in (layer, ref):
            m.zero_grad(set_to_none=True)
            _backward(m, x)
        assert torch.equal(_weight(layer).grad, _weight(ref).grad)
        if kind == "conv":
            assert torch.equal(layer.bias.grad, ref.bias.grad)
        pointers.append(_weight(layer).grad.data_ptr())
    assert pointers == [_memory(layer)] * 3  # no copy on the way into param.grad, the same memory every time
    assert "_weight_grad_buffer" not in ref.__dict__
    assert _weight(ref).grad.data_ptr() != _memory(layer)


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_gradients_never_overwrite_the_held_memory(kind):
    x = torch.randn(1, 64, 2, 2, dtype=torch.float64)
    layer, ref = _layer(kind).eval(), _layer(kind, recycle=False).eval()  # eval: the same sigma in every call
    for m in (layer, ref):
        for _ in range(3):  # no zero_grad in between: param.grad holds the memory, new gradients are added to it
            _backward(m, x)
    assert torch.allclose(_weight(layer).grad, _weight(ref).grad, rtol=1e-12, atol=0)
    one = _layer(kind, recycle=False).eval()
    _backward(one, x)
    assert torch.allclose(_weight(layer).grad, 3 * _weight(one).grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_gradient_kept_elsewhere_is_not_overwritten(kind):
    x = torch.randn(1, 64, 2, 2, dtype=torch.float64)
    layer = _layer(kind).eval()
    _backward(layer, x)
    kept = _weight(layer).grad
    expected = kept.clone()
    _weight(layer).grad = None  # set_to_none, but the caller still holds the tensor
    _backward(layer, 2 * x)
    assert torch.equal(kept, expected)
    assert _weight(layer).grad.data_ptr() != kept.data_ptr()
    assert not torch.allclose(_weight(layer).grad, expected)
    del kept
    _weight(layer).grad = None
    _backward(layer, x)  # released: the kept memory serves again
    assert _weight(layer).grad.data_ptr() == _memory(layer)
    assert torch.equal(_weight(layer).grad, expected)


def test_a_layer_called_twice_in_one_graph_sums_both_gradients():
    x1, x2 = torch.randn(1, 64, 2, 2, dtype=torch.float64), torch.randn(1, 64, 2, 2, dtype=torch.float64)
    layer, ref = _layer("spectral").eval(), _layer("spectral", recycle=False).eval()
    for m in (layer, ref):
        _backward(m, x1)  # the kept memory now exists and serves param.grad
        m.zero_grad(set_to_none=True)
        ((m(x1) ** 2).sum() + (m(x2) ** 3).sum()).backward()
    assert torch.allclose(_weight(layer).grad, _weight(ref).grad, rtol=1e-12, atol=0)


def test_merged_consecutive_calls_use_the_kept_memory():
    x = torch.randn(3, 64, 1, 2, dtype=torch.float64)
    layer, ref = _layer("spectral"), _layer("spectral", recycle=False)
    for _ in range(2):
        for m in (layer, ref):
            m.zero_grad(set_to_none=True)
            with consecutive_calls(m, [1, 2]):
                _backward(m, x)
        assert torch.equal(_weight(layer).grad, _weight(ref).grad)
        assert _weight(layer).grad.data_ptr() == _memory(layer)


@pytest.mark.parametrize("kind", KINDS)
def test_no_memory_is_kept_without_gradients_or_off_the_matrix_product_path(kind):
    layer = _layer(kind)
    with torch.no_grad():
        layer(torch.randn(1, 64, 2, 2, dtype=torch.float64))
    assert "_weight_grad_buffer" not in layer.__dict__  # inference keeps nothing
    _backward(layer, torch.randn(1, 64, 16, 16, dtype=torch.float64))  # a large map: the library convolution
    assert "_weight_grad_buffer" not in layer.__dict__


@pytest.mark.parametrize("kind", KINDS)
def test_copies_and_pickles_start_without_the_memory_and_the_state_dict_is_unchanged(kind):
    layer = _layer(kind)
    _backward(layer, torch.randn(1, 64, 2, 2, dtype=torch.float64))
    buffer = layer._weight_grad_buffer
    assert buffer.nbytes == 32 * 64 * 9 * 8 and "bytes" in repr(buffer)
    assert set(layer.state_dict()) == set(_layer(kind, recycle=False).state_dict())
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._weight_grad_buffer.nbytes == 0
        _backward(clone, torch.randn(1, 64, 2, 2, dtype=torch.float64))
        assert _weight(clone).grad.data_ptr() == _memory(clone) != _memory(layer)


def test_take_matches_shape_dtype_and_refuses_shared_memory():
    buffer = GradientBuffer()
    p = torch.nn.Parameter(torch.zeros(4, 3))
    first = buffer.take(p)
    assert first.shape == (4, 3) and first.dtype == torch.float32 and first.is_contiguous()
    assert buffer.take(p) is None  # `first` still uses it
    del first
    again = buffer.take(p)
    assert again is not None
    p.grad = again.detach()  # what autograd does with it
    del again
    assert buffer.take(p) is None
    p.grad = None
    double = buffer.take(p.detach().double())  # another dtype: new memory
    assert double.dtype == torch.float64 and buffer.nbytes == 12 * 8
    del double
    buffer.release()
    assert buffer.nbytes == 0


def test_release_drops_every_layers_kept_memory():
    model = torch.nn.Sequential(_layer("spectral"), _layer("conv"))
    x = torch.randn(1, 64, 2, 2, dtype=torch.float64)
    for layer in model:
        _backward(layer, x)
    assert release_gradient_buffers(model) == 2 * 32 * 64 * 9 * 8
    assert all(layer._weight_grad_buffer.nbytes == 0 for layer in model)
    assert release_gradient_buffers(model) == 0
    assert _weight(model[0]).grad is not None  # the gradients themselves stay
