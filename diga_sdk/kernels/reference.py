"""PyTorch references of the adaptation's hot ops: the specification every fast path is tested against.

Written to be read. Each function is the vectorised form of what the research code does with
Python loops; the fast paths (`cpu.py`, `triton_ops.py`) must agree with these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centroid_distances_ref(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B,D,h,w) features, (C,D) centroids -> (B,C,h,w) Euclidean distances, computed in float64
    directly (no ||f||^2 - 2f.c + ||c||^2 cancellation) and rounded to float32: the exact value."""
    b, d, h, w = features.shape
    f = features.double().permute(0, 2, 3, 1).reshape(b, h * w, d)
    c = centroids.double()[None].expand(b, -1, -1)
    dist = torch.cdist(f, c, compute_mode="donot_use_mm_for_euclid_dist")  # (B, h*w, C)
    return dist.float().transpose(1, 2).reshape(b, -1, h, w)


def consensus_select_ref(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                         ignore_index: int = 255) -> torch.Tensor:
    """Bilateral consensus: keep a pseudo-label only where it equals the feature label.

    feature label = argmax_c of softmax_c(-||f - centroid_c||_2), computed at feature resolution
    (B,C,h,w), upsampled bilinearly (align_corners=True) to the label size (H,W). A pseudo-label
    equal to ignore_index stays ignored.
    """
    weights = torch.softmax(-centroid_distances_ref(features, centroids), dim=1)
    weights = F.interpolate(weights, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True)
    feat_label = weights.argmax(1)
    keep = (pseudo_labels.long() == feat_label) & (pseudo_labels != ignore_index)
    return torch.where(keep, pseudo_labels, torch.full_like(pseudo_labels, ignore_index))


def class_presence_ref(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B,H,W) labels -> (B,num_classes) bool: which classes occur in each sample (one histogram pass)."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).long()
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
    offsets = torch.arange(b, device=labels.device)[:, None] * num_classes
    hist = torch.bincount((flat + offsets)[valid], minlength=b * num_classes).view(b, num_classes)
    return hist > 0


def pick_half(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,K) bool presence -> (B,K) bool: floor(n/2) of each row's n present classes, uniformly at random.

    The random scores are drawn on the generator's device (CPU when none is given), so one generator
    seed gives the same choice whichever backend computed `present`.
    """
    b, k = present.shape
    device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand(b, k, generator=generator, device=device).to(present.device)
    scores = torch.where(present, scores, torch.full_like(scores, 2.0))  # absent classes rank last
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
    n_pick = present.sum(1, keepdim=True) // 2
    return ranks < n_pick


def choose_classes_ref(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                       ignore_index: int = 255) -> torch.Tensor:
    """(B,H,W) labels -> (B,num_classes) bool: floor(n/2) of the n classes present per sample, at random."""
    return pick_half(class_presence_ref(labels, num_classes, ignore_index), generator)


def class_mix_ref(img_a: torch.Tensor, img_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                  chosen: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the pixels of image A whose label is a chosen class (or ignore) onto image B.

    Returns the mixed image (img_a's dtype) and the mixed label (label_a's dtype). Labels of A outside
    [0, K) that are not ignore_index take B's pixel.
    """
    k = chosen.shape[1]
    la = label_a.long()
    in_range = (la >= 0) & (la < k)
    picked = torch.gather(chosen.bool(), 1, la.clamp(0, k - 1).reshape(la.shape[0], -1)).view_as(la) & in_range
    mask = picked | (la == ignore_index)
    mixed_img = torch.where(mask[:, None], img_a, img_b.to(img_a.dtype))
    mixed_label = torch.where(mask, label_a, label_b.to(label_a.dtype))
    return mixed_img, mixed_label


def centroid_sums_ref(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-class sums of feature vectors (B,C,D) in float32 and pixel counts (B,C) int64.

    Pixels whose label is ignore_index or outside [0, C) count nowhere.
    """
    b, d, h, w = features.shape
    lab = labels.reshape(b, -1).long()
    valid = (lab >= 0) & (lab < num_classes) & (lab != ignore_index)
    cls = torch.where(valid, lab, 0)
    onehot = F.one_hot(cls, num_classes).float() * valid[..., None]  # (B, h*w, C)
    f = features.float().reshape(b, d, h * w)
    sums = torch.bmm(onehot.transpose(1, 2), f.transpose(1, 2))  # (B,C,D)
    offsets = torch.arange(b, device=labels.device)[:, None] * num_classes
    counts = torch.bincount((cls + offsets)[valid], minlength=b * num_classes).view(b, num_classes)
    return sums, counts


def symmetric_distillation_loss_ref(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                                    mixed_scale: float = 0.5) -> torch.Tensor:
    """Cross-view distillation on [clean ; mixed] batches (2N,C,H,W):
    H(p_teacher_clean, q_student_mixed) + mixed_scale * H(p_teacher_mixed, q_student_clean),
    each the mean over the N*H*W pixels of -sum_c p_c log q_c. The teacher gets no gradient."""
    n = teacher_logits.shape[0] // 2
    p = torch.softmax(teacher_logits.detach().float(), dim=1)
    logq = torch.log_softmax(student_logits.float(), dim=1)
    h_clean_to_mixed = -(p[:n] * logq[n:]).sum(1).mean()
    h_mixed_to_clean = -(p[n:] * logq[:n]).sum(1).mean()
    return h_clean_to_mixed + mixed_scale * h_mixed_to_clean


def upsample_argmax_ref(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,C,h,w) logits -> (B,H,W) int64 labels: argmax_c of the bilinear (align_corners=False) upsampling
    to `size`, as predict-time post-processing does it. Ties go to the lowest class index (torch.argmax)."""
    up = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up.argmax(1)
