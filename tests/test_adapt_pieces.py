"""Unit tests of DiGA's pieces on small hand-made tensors whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from diga_sdk import kernels
from diga_sdk.adapt.augment import StrongView
from diga_sdk.adapt.centroids import FAR, agreeing_labels, class_means, initial_centroids, momentum_update
from diga_sdk.adapt.ema import EMATeacher, ema_decay
from diga_sdk.adapt.mixture import cross_domain_mixture, source_to_target_classmix
from diga_sdk.adapt.pseudo import PseudoLabelledDataset, fused_logits
from diga_sdk.adapt.translator_train import semantic_boundary, semantic_edge_loss
from diga_sdk.adapt.translators import Generator, LearnedTranslator, fourier_translate, low_frequency_mask
from diga_sdk.data.datasets import Sample

# ---- EMA teacher ----


def test_ema_decay_schedule():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == pytest.approx(0.5)
    assert ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(10**6) == 0.999


def test_ema_teacher_averages_parameters_and_batchnorm_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    teacher = EMATeacher(student)
    t0 = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()
    student(torch.randn(4, 1, 3, 3) * 5 + 3)  # moves running_mean / running_var / num_batches_tracked
    s = student.state_dict()
    a = teacher.update(student, step=3)  # a = 1 - 1/4
    assert a == pytest.approx(0.75)
    got = teacher.module.state_dict()
    for k, v in got.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.75 * t0[k] + 0.25 * s[k])
        else:
            assert torch.equal(v, s[k])
    assert not torch.equal(got["1.running_mean"], t0["1.running_mean"])  # the collapse pitfall is avoided
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert not teacher.module.training


def test_ema_teacher_step_zero_copies_student():
    student = nn.Linear(3, 2)
    teacher = EMATeacher(student)
    with torch.no_grad():
        student.weight.mul_(-2)
    teacher.update(student, step=0)
    torch.testing.assert_close(teacher.module.weight, student.weight)


# ---- strong photometric view ----


def test_strong_view_blends_and_is_reproducible():
    x = torch.rand(2, 3, 16, 16)
    view = StrongView()
    a, b = view(x, 0.4, seed=7), view(x, 0.4, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(view(x, 0.0, seed=7), x)  # beta = 0: the clean image
    full = view(x, 1.0, seed=7)
    torch.testing.assert_close(a, 0.4 * full + 0.6 * x)  # beta blends linearly with the clean image
    assert not torch.equal(view(x, 1.0, seed=8), full)
    assert a.min() >= 0 and a.max() <= 1


# ---- translators ----


def test_fourier_window_mask_size():
    m = low_frequency_mask(16, 32, 0.125)  # b = 2 -> a 5x5 square
    assert int(m.sum()) == 25 and bool(m[8, 16]) and not bool(m[8, 19])


def test_fourier_translate_swaps_low_frequency_amplitude():
    torch.manual_seed(0)
    src, tgt = torch.rand(1, 3, 16, 16) * 0.5, torch.rand(1, 3, 16, 16) * 0.5 + 0.4
    assert torch.allclose(fourier_translate(src, src, 0.1), src, atol=1e-5)  # same style: unchanged
    out = fourier_translate(src, tgt, 0.1)
    # The DC amplitude (per-channel mean) now comes from the target; the phase of a positive mean is 0.
    torch.testing.assert_close(out.mean((-2, -1)), tgt.mean((-2, -1)), atol=1e-4, rtol=0)
    assert not torch.allclose(out, tgt, atol=1e-2)  # the rest of the source survives
    with pytest.raises(Exception, match="one shape"):
        fourier_translate(src, tgt[..., :8])


def test_learned_translator_keeps_size_and_range():
    gen = Generator(width=4, res_blocks=1)
    out = LearnedTranslator(gen)(torch.rand(2, 3, 18, 30))
    assert out.shape == (2, 3, 18, 30) and out.min() >= 0 and out.max() <= 1


def test_semantic_boundary_and_edge_loss():
    lab = torch.zeros(1, 6, 6, dtype=torch.long)
    lab[:, :, 3:] = 1
    mask = semantic_boundary(lab)[0, 0]
    assert mask[:, 2:4].all() and not mask[:, :2].any() and not mask[:, 4:].any()
    img = torch.rand(1, 3, 6, 6)
    assert semantic_edge_loss(img, img, lab).item() == 0.0
    assert semantic_edge_loss(torch.zeros_like(img), img, lab).item() > 0.0


# ---- the two mixes ----


def test_cross_domain_mixture_keeps_chosen_classes_and_ignore_from_the_augmented_view():
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 255]]])  # 4 classes present -> 2 chosen
    x_aug, translated = torch.ones(1, 3, 2, 4), torch.zeros(1, 3, 2, 4)
    gen = torch.Generator().manual_seed(0)
    mixed = cross_domain_mixture(x_aug, translated, labels, 19, gen)
    chosen = kernels.choose_classes(labels, 19, torch.Generator().manual_seed(0))
    assert int(chosen.sum()) == 2
    keep = chosen[0][labels.clamp(max=18)] | (labels == 255)
    assert torch.equal(mixed[:, 0] == 1, keep)
    assert bool(mixed[0, :, 1, 3].eq(1).all())  # the ignore pixel is always the augmented source


def test_source_to_target_classmix_labels():
    y_s = torch.tensor([[[5, 5, 7, 255]]])
    y_t = torch.tensor([[[1, 2, 3, 4]]])
    x_s, x_t = torch.full((1, 3, 1, 4), 0.9), torch.full((1, 3, 1, 4), 0.1)
    img, lab = source_to_target_classmix(x_s, y_s, x_t, y_t, 19, torch.Generator().manual_seed(3))
    pasted = lab[0, 0, :2].tolist()
    assert pasted in ([5, 5], [1, 2])  # one of the two source classes (floor(2/2) = 1) is pasted
    assert (lab[0, 0, 2].item() == 7) != (pasted == [5, 5])  # ...and exactly one
    assert lab[0, 0, 3].item() == 255 and img[0, 0, 0, 3].item() == pytest.approx(0.9)  # ignore travels too
    from_source = [pasted == [5, 5]] * 2 + [lab[0, 0, 2].item() == 7, True]
    assert (img[0, :, 0] > 0.5).all(0).tolist() == from_source


# ---- symmetric distillation ----


def test_symmetric_distillation_loss_hand_computed():
    # N=1, C=2, one pixel. teacher clean: p=(0.5,0.5); teacher mixed: p=(1,0) (approx. by large logit).
    t = torch.tensor([[0.0, 0.0], [50.0, 0.0]]).view(2, 2, 1, 1)
    s = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]).view(2, 2, 1, 1).requires_grad_()
    # H(p_t_clean, q_s_mixed) = -(.5 log .5 + .5 log .5) = log 2
    # H(p_t_mixed, q_s_clean) = -log q_s_clean[0] = -log(3/4)
    expected = math.log(2) + 0.5 * -math.log(0.75)
    loss = kernels.symmetric_distillation_loss(t, s, 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_symmetric_distillation_gives_no_gradient_to_the_teacher():
    t = torch.randn(4, 3, 2, 2, requires_grad=True)
    s = torch.randn(4, 3, 2, 2, requires_grad=True)
    kernels.symmetric_distillation_loss(t, s).backward()
    assert t.grad is None and s.grad is not None


# ---- centroids and consensus selection ----


def test_class_means_and_minimum_pixels():
    f = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # B=1, D=1, 2x2
    lab = torch.tensor([[[0, 0], [1, 255]]])
    means, valid = class_means(f, lab, 3)
    assert means[0, 0, 0].item() == 2.0 and means[0, 1, 0].item() == 5.0
    assert valid[0].tolist() == [True, True, False]
    _, valid2 = class_means(f, lab, 3, min_pixels=2)
    assert valid2[0].tolist() == [True, False, False]


def test_momentum_update_equals_sequential_updates():
    torch.manual_seed(0)
    c0 = torch.randn(4, 3)
    seen = torch.tensor([True, True, True, False])
    means = torch.randn(5, 4, 3)
    valid = torch.rand(5, 4) > 0.4
    valid[:, 3] = torch.tensor([False, True, False, True, True])
    m = 0.3
    got, got_seen = momentum_update(c0, seen, means, valid, m)
    want, want_seen = c0.clone(), seen.clone()
    for b in range(5):
        for c in range(4):
            if valid[b, c]:
                if not want_seen[c]:
                    want[c], want_seen[c] = means[b, c], True
                else:
                    want[c] = (1 - m) * want[c] + m * means[b, c]
    torch.testing.assert_close(got, want)
    assert got_seen.all()


def test_agreeing_labels_keep_only_agreement_at_feature_resolution():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # 2x4 -> 1x2
    logits = torch.tensor([[[[5.0, 5.0]], [[0.0, 0.0]]]])  # argmax 0 everywhere
    assert agreeing_labels(labels, logits).tolist() == [[[0, 255]]]


def test_consensus_select_on_hand_made_features():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, :, 1] = 10.0  # right column near class 1, left column near class 0
    pl = torch.tensor([[[0, 0], [1, 255]]])
    got = kernels.consensus_select(pl, feats, centroids)
    # (0,0): pl 0 = feat 0 -> keep; (0,1): pl 0 != feat 1 -> ignore; (1,0): pl 1 != 0 -> ignore; 255 stays.
    assert got.tolist() == [[[0, 255], [255, 255]]]


class _Fixed(nn.Module):
    """A fake segmenter: logits = 2*x[:, :2], features = x (3-d), at half resolution."""

    num_classes = 2

    def forward(self, x):
        h = nn.functional.avg_pool2d(x, 2)
        return 2 * h[:, :2], h


def test_initial_centroids_are_feature_means_of_predicted_classes():
    class DS:
        def __init__(self, imgs):
            self.imgs = imgs

        def __len__(self):
            return len(self.imgs)

        def __getitem__(self, i):
            return Sample(self.imgs[i], None, str(i))

    img = np.zeros((4, 4, 3), np.uint8)
    img[:, :2, 0] = 255  # left: channel 0 high -> class 0
    img[:, 2:, 1] = 255  # right: channel 1 high -> class 1
    from diga_sdk.data.transforms import normalize, to_tensor

    cents, seen, counts = initial_centroids(_Fixed(), DS([img, img]), 3, batch_size=1)
    feats = nn.functional.avg_pool2d(normalize(to_tensor(img)[None]), 2)[0]
    torch.testing.assert_close(cents[0], feats[:, :, 0].mean(1))
    torch.testing.assert_close(cents[1], feats[:, :, 1].mean(1))
    assert seen.tolist() == [True, True, False] and counts.tolist() == [4, 4, 0]
    assert bool((cents[2] == FAR).all())


# ---- pseudo-labels ----


def test_fused_logits_take_the_elementwise_max_over_scales():
    class Const(nn.Module):
        def forward(self, x):  # class 0 wins at full size, class 1 at half size
            b, _, h, w = x.shape
            big = float(h >= 8)
            return torch.stack([torch.full((b, h, w), big), torch.full((b, h, w), 0.5)], 1), x

    out = fused_logits(Const(), torch.rand(1, 3, 8, 8), (1.0, 0.5))
    assert out.shape == (1, 2, 8, 8)
    assert torch.equal(out[:, 0], torch.ones(1, 8, 8)) and torch.equal(out[:, 1], torch.full((1, 8, 8), 0.5))


def test_threshold_baseline_reads_confidence(tmp_path):
    import json

    (tmp_path / "labels").mkdir()
    (tmp_path / "confidence").mkdir()
    Image.fromarray(np.array([[3, 4, 5]], np.uint8), mode="L").save(tmp_path / "labels" / "00000.png")
    Image.fromarray(np.array([[250, 200, 229]], np.uint8), mode="L").save(tmp_path / "confidence" / "00000.png")
    (tmp_path / "manifest.json").write_text(json.dumps({"count": 1}))

    class Images:
        dataset, root = "cityscapes", tmp_path

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Sample(np.zeros((1, 3, 3), np.uint8), None, "a")

    assert PseudoLabelledDataset(Images(), tmp_path)[0].label.tolist() == [[3, 4, 5]]
    assert PseudoLabelledDataset(Images(), tmp_path, threshold=0.9)[0].label.tolist() == [[3, 255, 5]]  # 229 >= floor(.9*255)


def test_gap_closed_percent():
    from diga_sdk.bench.ablation import gap_closed

    stages = [{"name": "source_only", "target_val_miou": 20.0}, {"name": "oracle", "target_val_miou": 60.0},
              {"name": "selftrain", "target_val_miou": 50.0}]
    assert gap_closed(stages, "selftrain") == pytest.approx(75.0)
    assert gap_closed(stages, "missing") is None
