"""A light DeepLab-style segmenter for CPUs and vehicles (~2M parameters, output stride 8).

Same interface as DeepLabV2: `forward(x) -> (logits, features)` with 256-d features at 1/8
resolution, the map DiGA's class centroids live in.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register
from .reparam import RepConvBN


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (projected when widths differ); `reparam` trains each
    3x3 with folding branches (`reparam.RepConvBN`, undilated only), folded it is the plain block."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, reparam: bool = False) -> None:
        super().__init__()
        if reparam:
            if dilation != 1:
                raise ValueError("re-parameterised blocks are undilated")
            self.conv1: nn.Module = RepConvBN(cin, cout, stride)
            self.conv2: nn.Module = RepConvBN(cout, cout, relu=False)
        else:
            self.conv1 = _cbr(cin, cout, 3, stride, dilation)
            self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, dilation, dilation=dilation, bias=False),
                                       nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class LightASPP(nn.Module):
    """ASPP with a 1x1 branch, two dilated 3x3 branches and image pooling, projected to 256-d."""

    def __init__(self, cin: int, mid: int = 128, out: int = 256, rates: tuple[int, int] = (6, 12)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, mid, 1)] + [_cbr(cin, mid, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, mid, 1, bias=False), nn.ReLU(inplace=True))
        self.project = _cbr(mid * (len(rates) + 2), out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(feats, 1))


class LightSegmenter(nn.Module):
    """Stem -> three strided stages (1/8) -> dilated stage -> ASPP (256-d features) -> 1x1 classifier."""

    def __init__(self, num_classes: int = 19, width: int = 32, feature_dim: int = 256) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_cbr(3, w, 3, 2), _cbr(w, w))
        self.stage1 = ResidualBlock(w, 2 * w, stride=2)
        self.stage2 = nn.Sequential(ResidualBlock(2 * w, 4 * w, stride=2), ResidualBlock(4 * w, 4 * w))
        self.stage3 = nn.Sequential(ResidualBlock(4 * w, 5 * w, dilation=2), ResidualBlock(5 * w, 5 * w, dilation=4))
        self.head = LightASPP(5 * w, mid=4 * w, out=feature_dim)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.classifier(self.dropout(f)), f


@register("light")
def light(num_classes: int = 19, width: int = 32, feature_dim: int = 256, **_: object) -> nn.Module:
    return LightSegmenter(num_classes, width, feature_dim)
