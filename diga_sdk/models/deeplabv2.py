"""DeepLabV2 with a dilated ResNet-101 (output stride 8), with the head DiGA's authors train.

`deeplabv2_r101` (the authors' head): a 1x1 branch and four dilated 3x3 branches (rates 6/12/18/24),
each conv -> GroupNorm(32) -> ReLU, concatenated, a squeeze-excitation block, a 3x3 conv to 256
channels with GroupNorm, dropout, then a bias-free 1x1 classifier; the 256-d GroupNorm output is the
feature map DiGA's class centroids live in. The backbone's BatchNorm affine parameters are frozen
(their statistics still update), as in their code. `deeplabv2_r101_aspp_sum` keeps the classic head:
3x3 branches summed to 256 channels. Module names follow torchvision's ResNet so an ImageNet backbone
converted to safetensors loads as is (`backbone_weights=`); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import DigaError
from .registry import register


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, mid * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet(nn.Module):
    """ResNet with layer3/layer4 dilated (2, 4) instead of strided: output stride 8."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._cin = 64
        self.layer1 = self._layer(64, layers[0])
        self.layer2 = self._layer(128, layers[1], stride=2)
        self.layer3 = self._layer(256, layers[2], dilation=2)
        self.layer4 = self._layer(512, layers[3], dilation=4)

    def _layer(self, mid: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self._cin != mid * 4:
            down = nn.Sequential(nn.Conv2d(self._cin, mid * 4, 1, stride, bias=False), nn.BatchNorm2d(mid * 4))
        mods = [Bottleneck(self._cin, mid, stride, dilation, down)]
        self._cin = mid * 4
        mods += [Bottleneck(self._cin, mid, 1, dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def recompute_units(self) -> list[nn.Module]:
        """The bottlenecks: what activation checkpointing recomputes."""
        return [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]


class ASPPV2(nn.Module):
    """DeepLabV2's atrous spatial pyramid: parallel dilated 3x3 convs, summed, to a 256-d feature map."""

    def __init__(self, cin: int, feature_dim: int = 256, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(cin, feature_dim, 3, 1, r, dilation=r) for r in rates)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(sum(b(x) for b in self.branches))


class SqueezeExcitation(nn.Module):
    """Channel attention: global average -> bottleneck MLP -> sigmoid gate on every channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * w[:, :, None, None]


def _conv_gn(cin: int, cout: int, k: int, dilation: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, dilation * (k // 2), dilation=dilation),
                               nn.GroupNorm(32, cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ASPPSEHead(nn.Module):
    """The authors' DeepLabV2 head: 1x1 + dilated 3x3 branches with GroupNorm, concatenated, SE, 3x3 to
    `feature_dim` with GroupNorm (no ReLU: the classifier and the centroids see the normalised map)."""

    def __init__(self, cin: int, feature_dim: int = 256, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_gn(cin, feature_dim, 1)] +
                                      [_conv_gn(cin, feature_dim, 3, r) for r in rates])
        width = feature_dim * (len(rates) + 1)
        self.se = SqueezeExcitation(width)
        self.fuse = _conv_gn(width, feature_dim, 3, relu=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.se(torch.cat([b(x) for b in self.branches], 1)))


class DeepLabV2(nn.Module):
    """Dilated ResNet-101 + a DeepLabV2 head; returns (logits, 256-d features) at output stride 8."""

    HEAD_PREFIXES = ("head.", "classifier.")  # what the optimiser's head learning-rate multiplier covers

    def __init__(self, num_classes: int = 19, feature_dim: int = 256,
                 layers: tuple[int, int, int, int] = (3, 4, 23, 3), head: str = "aspp_se",
                 freeze_bn_affine: bool = True) -> None:
        super().__init__()
        self.backbone = DilatedResNet(layers)
        if head == "aspp_se":
            self.head: nn.Module = ASPPSEHead(2048, feature_dim)
            self.classifier = nn.Conv2d(feature_dim, num_classes, 1, bias=False)
            nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        elif head == "aspp_sum":
            self.head = ASPPV2(2048, feature_dim)
            self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        else:
            raise DigaError(f"unknown DeepLabV2 head {head!r}; use aspp_se or aspp_sum")
        self.dropout = nn.Dropout2d(0.1)
        self.num_classes, self.feature_dim = num_classes, feature_dim
        if freeze_bn_affine:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def recompute_units(self) -> list[nn.Module]:
        """What activation checkpointing recomputes: the backbone's bottlenecks."""
        return self.backbone.recompute_units()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.head(self.backbone(x))
        return self.classifier(self.dropout(f)), f


def load_backbone(backbone: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights (torchvision ResNet names, safetensors) into `backbone`; fc.* is skipped."""
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"backbone weights {p} not found; pass a safetensors file of an ImageNet ResNet")
    try:
        state = {k: v for k, v in load_file(str(p)).items() if not k.startswith("fc.")}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DigaError(f"cannot read backbone weights {p}: {exc}; it must be a safetensors file") from None
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DigaError(f"backbone weights {p} do not fit the ResNet: missing {missing[:3]}, unexpected {unexpected[:3]}")


@register("deeplabv2_r101")
def deeplabv2_r101(num_classes: int = 19, feature_dim: int = 256, backbone_weights: str | None = None,
                   freeze_bn_affine: bool = True, **_: object) -> nn.Module:
    """The authors' DeepLabV2-ResNet101 (GroupNorm + SE head, frozen backbone BatchNorm affines)."""
    model = DeepLabV2(num_classes, feature_dim, head="aspp_se", freeze_bn_affine=freeze_bn_affine)
    if backbone_weights:
        load_backbone(model.backbone, backbone_weights)
    return model


@register("deeplabv2_r101_aspp_sum")
def deeplabv2_r101_aspp_sum(num_classes: int = 19, feature_dim: int = 256, backbone_weights: str | None = None,
                            **_: object) -> nn.Module:
    """DeepLabV2-ResNet101 with the classic head: dilated 3x3 branches summed to 256 channels."""
    model = DeepLabV2(num_classes, feature_dim, head="aspp_sum", freeze_bn_affine=False)
    if backbone_weights:
        load_backbone(model.backbone, backbone_weights)
    return model
