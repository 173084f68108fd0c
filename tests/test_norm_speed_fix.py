"""The speed workarounds of group and instance norm (bf16 channels_last CPU inputs normalised in the contiguous
format, docs/speed.md) give torch's own layers' outputs and gradients, and keep the channels_last format."""

import pytest
import torch
from torch import nn

from basinlab.nn.norms import ContiguousGroupNorm, ContiguousInstanceNorm2d, NormSpec


def _pair(kind: str, c: int):
    if kind == "group":
        return nn.GroupNorm(4, c), ContiguousGroupNorm(4, c)
    return nn.InstanceNorm2d(c, affine=True), ContiguousInstanceNorm2d(c, affine=True)


@pytest.mark.parametrize("kind", ["group", "instance"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_outputs_and_gradients_as_torch_layer_in_channels_last(kind, dtype):
    gen = torch.Generator().manual_seed(0)
    plain, fast = _pair(kind, 8)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(8, generator=gen))
        plain.bias.copy_(torch.randn(8, generator=gen))
    fast.load_state_dict(plain.state_dict())
    x = (torch.randn(6, 8, 5, 7, generator=gen) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 8, 5, 7, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    outs = []
    for layer in (plain, fast):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad)
        outs.append((y, xi.grad, layer.weight.grad, layer.bias.grad))
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    for ref, got in zip(outs[0], outs[1]):
        torch.testing.assert_close(got.float(), ref.float(), **tol)
    y = outs[1][0]
    assert y.dtype == dtype
    if dtype == torch.bfloat16:  # float32 takes torch's own path (and format) unchanged
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_norm_spec_builds_the_workaround_layers_and_keeps_state_keys():
    assert type(NormSpec("group").make(16)) is ContiguousGroupNorm
    assert type(NormSpec("gn_ws").make(16)) is ContiguousGroupNorm
    assert type(NormSpec("instance").make(16)) is ContiguousInstanceNorm2d
    assert set(NormSpec("group").make(16).state_dict()) == set(nn.GroupNorm(8, 16).state_dict())
