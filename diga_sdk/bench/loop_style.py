"""The research-code way of doing the hot ops (Python loops over samples and classes, full-resolution
intermediates), kept only as the benchmark's baseline: nothing in the SDK calls these."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def consensus_select_loop(pseudo_labels, features, centroids, ignore_index=255):
    """Per sample, per class torch.norm at feature resolution; softmax; full-resolution upsample; argmax."""
    out = pseudo_labels.clone()
    size = pseudo_labels.shape[-2:]
    for b in range(features.shape[0]):
        f = features[b]
        dist = torch.stack([torch.norm(f - centroids[c][:, None, None], p=2, dim=0)
                            for c in range(centroids.shape[0])])
        weights = torch.softmax(-dist, dim=0)[None]
        weights = F.interpolate(weights, size=size, mode="bilinear", align_corners=True)[0]
        feat_label = weights.argmax(0)
        label = out[b]
        label[label.long() != feat_label] = ignore_index
    return out


def consensus_select_vectorised_fp32(pseudo_labels, features, centroids, ignore_index=255):
    """The vectorised form with float32 cdist (||f||^2 - 2 f.c + ||c||^2), as it is commonly written:
    the reference before its distances were made exact; a benchmark row for fairness."""
    b, d, h, w = features.shape
    f = features.permute(0, 2, 3, 1).reshape(b, h * w, d)
    dist = torch.cdist(f, centroids[None].expand(b, -1, -1))
    weights = torch.softmax(-dist, dim=-1).transpose(1, 2).reshape(b, -1, h, w)
    weights = F.interpolate(weights, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True)
    keep = (pseudo_labels.long() == weights.argmax(1)) & (pseudo_labels != ignore_index)
    return torch.where(keep, pseudo_labels, torch.full_like(pseudo_labels, ignore_index))


def class_mix_loop(img_a, img_b, label_a, label_b, chosen, ignore_index=255):
    """Per sample, per chosen class a full-resolution comparison; float-mask blend (DACS style)."""
    mixed_img = torch.empty_like(img_a)
    mixed_label = torch.empty_like(label_a)
    for b in range(img_a.shape[0]):
        mask = label_a[b] == ignore_index
        for c in chosen[b].nonzero().flatten().tolist():
            mask = mask | (label_a[b] == c)
        m = mask.to(img_a.dtype)
        mixed_img[b] = m * img_a[b] + (1 - m) * img_b[b]
        mixed_label[b] = torch.where(mask, label_a[b], label_b[b].to(label_a.dtype))
    return mixed_img, mixed_label


def choose_classes_loop(labels, num_classes, generator=None, ignore_index=255):
    """Per sample torch.unique and a random permutation of the present classes."""
    chosen = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool)
    for b in range(labels.shape[0]):
        classes = torch.unique(labels[b])
        classes = classes[(classes != ignore_index) & (classes >= 0) & (classes < num_classes)]
        pick = classes[torch.randperm(len(classes), generator=generator)[: len(classes) // 2]]
        chosen[b, pick.long()] = True
    return chosen


def centroid_sums_loop(features, labels, num_classes, ignore_index=255):
    """Per sample, per class boolean-mask selection and sum."""
    b, d = features.shape[:2]
    sums = torch.zeros(b, num_classes, d)
    counts = torch.zeros(b, num_classes, dtype=torch.long)
    for i in range(b):
        f = features[i].reshape(d, -1)
        lab = labels[i].reshape(-1)
        for c in range(num_classes):
            m = lab == c
            if m.any():
                sums[i, c] = f[:, m].sum(1)
                counts[i, c] = m.sum()
    return sums, counts


def symmetric_distillation_loss_loop(teacher_logits, student_logits, mixed_scale=0.5):
    """Per sample and per view: softmax / log_softmax and a mean, summed in Python."""
    n = teacher_logits.shape[0] // 2
    total = 0.0
    for i in range(n):
        p_clean = torch.softmax(teacher_logits[i].detach(), dim=0)
        p_mixed = torch.softmax(teacher_logits[n + i].detach(), dim=0)
        total = total + (-(p_clean * torch.log_softmax(student_logits[n + i], dim=0)).sum(0).mean()) / n
        total = total + mixed_scale * (-(p_mixed * torch.log_softmax(student_logits[i], dim=0)).sum(0).mean()) / n
    return total
