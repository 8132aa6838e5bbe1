"""PyTorch references of the adaptation's hot ops: the specification every fast path is tested against.

Written to be read. Each function is the vectorised form of what the research code does with
Python loops; the fast paths (`cpu.py`, Triton kernels) must agree with these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def consensus_select_ref(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                         ignore_index: int = 255) -> torch.Tensor:
    """Bilateral consensus: keep a pseudo-label only where it equals the feature label.

    feature label = argmax_c of softmax_c(-||f - centroid_c||_2), computed at feature resolution
    (B,C,h,w), upsampled bilinearly (align_corners=True) to the label size (H,W).
    """
    b, d, h, w = features.shape
    f = features.float().permute(0, 2, 3, 1).reshape(b, h * w, d)
    dist = torch.cdist(f, centroids.float()[None].expand(b, -1, -1))  # (B, h*w, C)
    weights = torch.softmax(-dist, dim=-1).transpose(1, 2).reshape(b, -1, h, w)
    weights = F.interpolate(weights, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True)
    feat_label = weights.argmax(1)
    keep = (pseudo_labels.long() == feat_label) & (pseudo_labels != ignore_index)
    return torch.where(keep, pseudo_labels, torch.full_like(pseudo_labels, ignore_index))


def choose_classes_ref(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                       ignore_index: int = 255) -> torch.Tensor:
    """(B,H,W) labels -> (B,num_classes) bool: floor(n/2) of the n classes present per sample, at random."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).long()
    valid = (flat >= 0) & (flat < num_classes)
    offsets = torch.arange(b, device=labels.device)[:, None] * num_classes
    hist = torch.bincount((flat + offsets)[valid], minlength=b * num_classes).view(b, num_classes)
    present = hist > 0
    # Random scores, absent classes pushed to the end; the first floor(n/2) ranks are chosen.
    scores = torch.rand(b, num_classes, generator=generator, device="cpu").to(labels.device)
    scores = torch.where(present, scores, torch.full_like(scores, 2.0))
    ranks = scores.argsort(1).argsort(1)
    n_pick = present.sum(1, keepdim=True) // 2
    return ranks < n_pick


def class_mix_ref(img_a: torch.Tensor, img_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                  chosen: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the pixels of image A whose label is a chosen class (or ignore) onto image B."""
    k = chosen.shape[1]
    la = label_a.long()
    in_range = (la >= 0) & (la < k)
    picked = torch.gather(chosen, 1, la.clamp(0, k - 1).reshape(la.shape[0], -1)).view_as(la) & in_range
    mask = picked | (la == ignore_index)
    mixed_img = torch.where(mask[:, None], img_a, img_b)
    mixed_label = torch.where(mask, label_a, label_b.to(label_a.dtype))
    return mixed_img, mixed_label


def centroid_sums_ref(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-class sums of feature vectors (B,C,D) and pixel counts (B,C)."""
    b, d, h, w = features.shape
    lab = labels.reshape(b, -1).long()
    valid = (lab >= 0) & (lab < num_classes) & (lab != ignore_index)
    onehot = F.one_hot(torch.where(valid, lab, 0), num_classes).to(features.dtype) * valid[..., None]
    f = features.reshape(b, d, h * w)
    sums = torch.bmm(onehot.transpose(1, 2), f.transpose(1, 2))  # (B,C,D)
    counts = onehot.sum(1).long()
    return sums, counts


def symmetric_distillation_loss_ref(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                                    mixed_scale: float = 0.5) -> torch.Tensor:
    """Cross-view distillation on [clean ; mixed] batches (2N,C,H,W):
    H(p_teacher_clean, q_student_mixed) + mixed_scale * H(p_teacher_mixed, q_student_clean),
    each the mean over pixels of -sum_c p_c log q_c. The teacher gets no gradient."""
    n = teacher_logits.shape[0] // 2
    p = torch.softmax(teacher_logits.detach().float(), dim=1)
    logq = torch.log_softmax(student_logits.float(), dim=1)
    h_clean_to_mixed = -(p[:n] * logq[n:]).sum(1).mean()
    h_mixed_to_clean = -(p[n:] * logq[:n]).sum(1).mean()
    return h_clean_to_mixed + mixed_scale * h_mixed_to_clean
