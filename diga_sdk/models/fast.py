"""A two-branch real-time segmenter for vehicles (~2.3M parameters, about a fifth of `light`'s FLOPs).

The family of BiSeNet / DDRNet / PIDNet: a shared stem brings the image to 1/8; from there a
high-resolution detail branch stays at 1/8 with few channels while a deep context branch goes down to
1/16 and 1/32 with many. After each stage the branches exchange information (bilateral fusion: the
context is projected and upsampled into the detail branch, the detail is strided down into the context
branch); a pooling pyramid on the 1/32 map adds image-level context. The head concatenates the detail
map and the upsampled context and projects them to the 256-d features at 1/8 that DiGA's class
centroids live in, then a 1x1 classifier: `forward(x) -> (logits, features)` like every segmenter here.

Why it is cheap: `light` keeps every deep layer at 1/8 (dilated stages + ASPP, 38.3 GFLOP per 512x1024
frame); here only 64 channels run at 1/8 and the wide layers run at 1/16 and 1/32 (docs/models.md has
the per-part FLOPs and measured latencies). Only dense convolutions: depthwise ones save FLOPs but not
time on a CPU's convolution kernels. Every Conv2d is followed by a BatchNorm2d that only it feeds, so
the BN-folded teacher copy (`models/folded.py`) folds them all.

`reparam` (the default) trains each 3x3 convolution with RepVGG-style 1x1 and identity branches
(`models/reparam.py`) that fold into it for deployment: more capacity in training, the same graph and
latency deployed. `reparam=False` builds the folded (deployed) layout directly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .light import ResidualBlock, _cbr
from .registry import register
from .reparam import RepConvBN


def _cb(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    """Convolution + BatchNorm without activation (a fusion path; the ReLU follows the sum)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PoolingContext(nn.Module):
    """Pyramid pooling on the 1/32 map: the map itself, two average-pooled scales (1/64, 1/128) and the
    image mean, each projected to `mid` channels, upsampled back and fused to `out` channels."""

    def __init__(self, cin: int, mid: int, out: int) -> None:
        super().__init__()
        self.local = _cbr(cin, mid, 1)
        self.scales = nn.ModuleList([nn.Sequential(nn.AvgPool2d(3, 2, 1), _cbr(cin, mid, 1)),
                                     nn.Sequential(nn.AvgPool2d(5, 4, 2), _cbr(cin, mid, 1))])
        # no BatchNorm on the 1x1 image mean: a batch of 4 crops gives it 4 values to normalise
        self.image = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, mid, 1, bias=False), nn.ReLU(inplace=True))
        self.project = _cbr(4 * mid, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.local(x)] + [_resize(s(x), x) for s in self.scales]
        parts.append(self.image(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(parts, 1))


class FastSegmenter(nn.Module):
    """Stem (1/8) -> detail branch (1/8, 2w) || context branch (1/16 4w, 1/32 8w) with bilateral fusion
    after each stage -> pooling pyramid -> concat -> 256-d features at 1/8 -> 1x1 classifier."""

    # the pyramid pools a small crop (128x256) to 1x1 before a BatchNorm, which cannot train on one value a
    # channel: trainers that may see a single small image (the online adapter) give it at least this many
    min_train_images = 2

    def __init__(self, num_classes: int = 19, width: int = 32, feature_dim: int = 256, reparam: bool = True) -> None:
        super().__init__()
        w = width
        # the 3x3 convolutions with (cbr3) and without (cb3) ReLU, trained with folding branches or plain
        def cbr3(cin: int, cout: int, stride: int) -> nn.Module:
            return RepConvBN(cin, cout, stride) if reparam else _cbr(cin, cout, 3, stride)

        def cb3(cin: int, cout: int, stride: int) -> nn.Module:
            return RepConvBN(cin, cout, stride, relu=False) if reparam else _cb(cin, cout, 3, stride)

        def block(cin: int, cout: int, stride: int = 1) -> ResidualBlock:
            return ResidualBlock(cin, cout, stride, reparam=reparam)

        self.stem = nn.Sequential(cbr3(3, w, 2), cbr3(w, w, 2), block(w, 2 * w, stride=2))
        self.detail = nn.ModuleList([block(2 * w, 2 * w), block(2 * w, 2 * w)])
        self.context = nn.ModuleList([block(2 * w, 4 * w, stride=2), block(4 * w, 8 * w, stride=2)])
        # context -> detail: 1x1 projection, upsampled and added; detail -> context: strided 3x3s, added
        self.to_detail = nn.ModuleList([_cb(4 * w, 2 * w), _cb(8 * w, 2 * w)])
        self.to_context = nn.ModuleList([cb3(2 * w, 4 * w, 2), nn.Sequential(cbr3(2 * w, 4 * w, 2), cb3(4 * w, 8 * w, 2))])
        self.pyramid = PoolingContext(8 * w, mid=2 * w, out=4 * w)
        self.head = _cbr(2 * w + 4 * w, feature_dim, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = c = self.stem(x)
        for detail, context, to_detail, to_context in zip(self.detail, self.context, self.to_detail,
                                                          self.to_context, strict=True):
            d, c = detail(d), context(c)
            d, c = F.relu(d + _resize(to_detail(c), d)), F.relu(c + to_context(d))
        f = self.head(torch.cat([d, _resize(self.pyramid(c), d)], 1))
        return self.classifier(self.dropout(f)), f


@register("fast")
def fast(num_classes: int = 19, width: int = 32, feature_dim: int = 256, reparam: bool = True,
         **_: object) -> nn.Module:
    return FastSegmenter(num_classes, width, feature_dim, reparam)
