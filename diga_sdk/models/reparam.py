"""Training-time re-parameterised convolutions (RepVGG style): extra capacity while training, none deployed.

`RepConvBN` trains a 3x3 conv+BN, a 1x1 conv+BN with the same stride and, where input and output
shapes agree, a BatchNorm of the input itself, and sums them. In eval mode all three are linear in
the input, so `fold_reparam(model)` replaces each by one 3x3 Conv2d + BatchNorm2d computing the same
function: the deployed graph has exactly the shape (and cost) of the plain model, while training
sees an over-parameterised one, which helps small models trained from scratch.

The folded BatchNorm keeps real running statistics: each `RepConvBN` tracks the running mean and
variance of its summed output while it trains (a BatchNorm without affine that only measures, so the
pipeline's BatchNorm recalibration re-measures it too), and the fold writes them as the statistics of
the folded conv. A folded model that trains on (the online adapter) or moves its statistics (BN
adaptation) thus starts from values that describe its activations, as a plainly trained one would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm: bn(x) = scale * x + shift per channel."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class RepConvBN(nn.Module):
    """3x3 conv+BN (+ 1x1 conv+BN, + BN identity where shapes agree) summed, then ReLU if `relu`."""

    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        # a strided 1x1 conv is the 1x1 conv of the strided samples; written so because torch 2.13's CPU
        # backward of a channels-last 1x1 conv with stride 2 corrupts the heap (seen with 4 and 8 inputs)
        self.stride = stride
        self.conv1x1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1x1 = nn.BatchNorm2d(cout)
        self.bn_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.summed = nn.BatchNorm2d(cout, affine=False)  # measures the sum's statistics; output unused
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sampled = x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]
        y = self.bn(self.conv(x)) + self.bn1x1(self.conv1x1(sampled))
        if self.bn_identity is not None:
            y = y + self.bn_identity(x)
        if self.training:
            self.summed(y.detach())
        return F.relu(y) if self.relu else y

    @torch.no_grad()
    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one 3x3 convolution equal to this module before its ReLU, in eval mode."""
        scale, shift = bn_affine(self.bn)
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        s1, b1 = bn_affine(self.bn1x1)
        weight[:, :, 1:2, 1:2] += self.conv1x1.weight * s1.reshape(-1, 1, 1, 1)
        shift = shift + b1
        if self.bn_identity is not None:
            si, bi = bn_affine(self.bn_identity)
            weight[torch.arange(weight.shape[0]), torch.arange(weight.shape[0]), 1, 1] += si
            shift = shift + bi
        return weight, shift

    @torch.no_grad()
    def folded(self) -> nn.Sequential:
        """One Conv2d(3x3, no bias) + BatchNorm2d (+ ReLU) equal to this module in eval mode."""
        weight, shift = self.fused()
        # statistics of weight * x = (the summed output) - shift
        mean, var = self.summed.running_mean - shift, self.summed.running_var
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, self.conv.stride, 1, bias=False)
        conv.weight.copy_(weight)
        # y = weight * x + shift, written as a BatchNorm with statistics (mean, var) of weight * x:
        # (w x - mean) / sqrt(var + eps) * gamma + beta with gamma = sqrt(var + eps), beta = shift + mean
        bn = nn.BatchNorm2d(conv.out_channels, eps=self.bn.eps, momentum=self.bn.momentum)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(shift + mean)
        bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        layers: list[nn.Module] = [conv, bn] + ([nn.ReLU(inplace=True)] if self.relu else [])
        return nn.Sequential(*layers).to(self.conv.weight.device).train(self.training)


def fold_reparam(model: nn.Module) -> nn.Module:
    """Replace every `RepConvBN` in `model` (in place) by its folded Conv2d + BatchNorm2d; returns it."""
    for name, child in list(model.named_children()):
        if isinstance(child, RepConvBN):
            setattr(model, name, child.folded())
        else:
            fold_reparam(child)
    return model


def has_reparam(model: nn.Module) -> bool:
    """Whether `model` still has training-form re-parameterised convolutions."""
    return any(isinstance(m, RepConvBN) for m in model.modules())


def is_folded_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict holds no re-parameterised branches (saved from a folded or plain model)."""
    return not any(".conv1x1." in k for k in state)


__all__ = ["RepConvBN", "bn_affine", "fold_reparam", "has_reparam", "is_folded_state"]
