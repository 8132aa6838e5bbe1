"""The two mixes of DiGA, built on the fused kernels (`class_mix`, `choose_classes`).

- cross-domain mixture (warm-up and self-training): per source sample, half of the classes present
  in its label are kept from the strongly augmented source, the rest comes from the translated
  source; the ignore region always counts as kept. The label is unchanged.
- source->target ClassMix (self-training): half of the source's classes pasted onto the augmented
  target image; the label is the source label there and the selected pseudo-label elsewhere.
"""

from __future__ import annotations

import torch

from .. import kernels


def cross_domain_mixture(x_aug: torch.Tensor, translated: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,3,H,W) mixed source: x_aug on a random half of each sample's classes (and ignore), translated elsewhere."""
    chosen = kernels.choose_classes(labels, num_classes, generator)
    mixed, _ = kernels.class_mix(x_aug, translated, labels, labels, chosen)
    return mixed


def source_to_target_classmix(x_source: torch.Tensor, y_source: torch.Tensor, x_target: torch.Tensor,
                              y_target: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste half of each source sample's classes onto its target image: (mixed image, mixed label)."""
    chosen = kernels.choose_classes(y_source, num_classes, generator)
    return kernels.class_mix(x_source, x_target, y_source, y_target.to(y_source.dtype), chosen)
