"""The references are the specification: hand-made cases whose answers are worked out by hand,
run through every backend (reference, CPU fast path, Triton under the interpreter)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton module is first imported (lazily)

import pytest
import torch

from diga_sdk import kernels

BACKENDS = ["reference", "cpu", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("DIGA_KERNELS", request.param)
    return request.param


def test_consensus_two_centroids_by_hand(backend):
    # Features at (0,0) and (10,0), centroids at the same points: the left feature pixel is class 0
    # (weight 1/(1+e^-10)), the right one class 1. Upsampled to width 4 (align_corners): positions
    # 0, 1/3, 2/3, 1 -> classes 0, 0, 1, 1.
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    features = torch.tensor([[0.0, 10.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    pseudo = torch.tensor([[[0, 1, 1, 0], [255, 0, 255, 1]]])
    out = kernels.consensus_select(pseudo, features, centroids)
    assert out.tolist() == [[[0, 255, 1, 255], [255, 0, 255, 1]]]
    assert out.dtype == pseudo.dtype


def test_consensus_duplicate_centroids_tie_goes_to_first_class(backend):
    # Classes 1 and 3 share a centroid: their weights tie exactly and argmax keeps the first (1).
    centroids = torch.tensor([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0], [4.0, 4.0]])
    features = torch.tensor([4.0, 4.0]).reshape(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    pseudo_first = torch.full((1, 5, 7), 1, dtype=torch.uint8)
    pseudo_second = torch.full((1, 5, 7), 3, dtype=torch.uint8)
    assert (kernels.consensus_select(pseudo_first, features, centroids) == 1).all()
    assert (kernels.consensus_select(pseudo_second, features, centroids) == 255).all()


def test_consensus_custom_ignore_index(backend):
    centroids = torch.tensor([[0.0], [1.0]])
    features = torch.zeros(1, 1, 2, 2)  # class 0 everywhere
    pseudo = torch.tensor([[[0, 1], [-1, 0]]])
    out = kernels.consensus_select(pseudo, features, centroids, ignore_index=-1)
    assert out.tolist() == [[[0, -1], [-1, 0]]]


def test_class_mix_by_hand(backend):
    chosen = torch.tensor([[True, False, False]])
    label_a = torch.tensor([[[0, 1], [255, 2]]])
    label_b = torch.full((1, 2, 2), 5)
    img_a = torch.ones(1, 3, 2, 2)
    img_b = torch.zeros(1, 3, 2, 2)
    mixed_img, mixed_label = kernels.class_mix(img_a, img_b, label_a, label_b, chosen)
    assert mixed_label.tolist() == [[[0, 5], [255, 5]]]
    assert mixed_img[0, :, 0, 0].tolist() == [1.0] * 3 and mixed_img[0, :, 1, 0].tolist() == [1.0] * 3
    assert mixed_img[0, :, 0, 1].tolist() == [0.0] * 3 and mixed_img[0, :, 1, 1].tolist() == [0.0] * 3


def test_class_mix_label_outside_chosen_table_takes_b(backend):
    chosen = torch.tensor([[True, True]])
    label_a = torch.tensor([[[7, -3, 1]]])  # 7 and -3 are not class ids of the table
    label_b = torch.tensor([[[4, 4, 4]]])
    img_a = torch.full((1, 3, 1, 3), 2.0)
    img_b = torch.full((1, 3, 1, 3), -2.0)
    mixed_img, mixed_label = kernels.class_mix(img_a, img_b, label_a, label_b, chosen)
    assert mixed_label.tolist() == [[[4, 4, 1]]]
    assert mixed_img[0, 0, 0].tolist() == [-2.0, -2.0, 2.0]


def test_choose_classes_picks_half_of_present(backend):
    labels = torch.tensor([
        [[0, 2, 5, 5], [255, 2, 0, 0]],  # present {0, 2, 5} -> 1 chosen
        [[1, 1, 3, 4], [6, 7, 255, 255]],  # present {1, 3, 4, 6, 7} -> 2 chosen
        [[255, 255, 255, 255], [255, 255, 255, 255]],  # nothing present -> none
    ])
    chosen = kernels.choose_classes(labels, 8, generator=torch.Generator().manual_seed(0))
    assert chosen.shape == (3, 8) and chosen.dtype == torch.bool
    assert chosen.sum(1).tolist() == [1, 2, 0]
    assert set(chosen[0].nonzero().flatten().tolist()) <= {0, 2, 5}
    assert set(chosen[1].nonzero().flatten().tolist()) <= {1, 3, 4, 6, 7}


def test_choose_classes_reproducible_and_backend_independent(monkeypatch, backend):
    labels = torch.randint(0, 19, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    first = kernels.choose_classes(labels, 19, generator=torch.Generator().manual_seed(42))
    again = kernels.choose_classes(labels, 19, generator=torch.Generator().manual_seed(42))
    monkeypatch.setenv("DIGA_KERNELS", "reference")
    spec = kernels.choose_classes(labels, 19, generator=torch.Generator().manual_seed(42))
    assert torch.equal(first, again) and torch.equal(first, spec)
    draws = {tuple(kernels.choose_classes(labels, 19, generator=torch.Generator().manual_seed(s))[0].tolist())
             for s in range(8)}
    assert len(draws) > 1  # the generator matters


def test_centroid_sums_by_hand(backend):
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])[None]  # (1,2,2,2)
    labels = torch.tensor([[[0, 1], [1, 255]]])
    sums, counts = kernels.centroid_sums(features, labels, 3)
    assert sums.tolist() == [[[1.0, 10.0], [5.0, 50.0], [0.0, 0.0]]]
    assert counts.tolist() == [[1, 2, 0]]
    assert sums.dtype == torch.float32 and counts.dtype == torch.int64


def test_distillation_uniform_logits_give_log_c(backend):
    # Uniform teacher and student: each cross-entropy term is log C, the loss (1 + scale) log C.
    teacher = torch.zeros(4, 5, 3, 2)
    student = torch.zeros(4, 5, 3, 2, requires_grad=True)
    loss = kernels.symmetric_distillation_loss(teacher, student, mixed_scale=0.25)
    assert loss.item() == pytest.approx(1.25 * math.log(5), rel=1e-6)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-8  # q - p = 0


def test_distillation_matching_one_hot_views_by_hand(backend):
    # Teacher clean says class 0 sharply, student mixed says class 0 with logit 0 vs -log(3) for the
    # other two: q = (0.6, 0.2, 0.2) -> H = -log 0.6 for the first term; the second term is log 3.
    big = 60.0
    teacher = torch.tensor([[big, 0.0, 0.0], [0.0, 0.0, 0.0]]).reshape(2, 3, 1, 1)
    student = torch.tensor([[0.0, 0.0, 0.0], [0.0, -math.log(3), -math.log(3)]]).reshape(2, 3, 1, 1)
    loss = kernels.symmetric_distillation_loss(teacher, student, mixed_scale=0.5)
    assert loss.item() == pytest.approx(-math.log(0.6) + 0.5 * math.log(3), rel=1e-5)
