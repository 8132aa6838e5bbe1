"""The authors' method details as switches: target BatchNorm statistics in warm-up, the ClassMix batch
as its own forward, per-image-mean centroids with a pixel minimum, consensus labels for the update."""

from __future__ import annotations

import torch

from diga_sdk.adapt.augment import StrongView
from diga_sdk.adapt.centroids import CentroidAccumulator
from diga_sdk.adapt.distill import StepContext, diga_step
from diga_sdk.adapt.ema import EMATeacher
from diga_sdk.adapt.optim import make_optimizer
from diga_sdk.adapt.translators import FourierTranslator
from diga_sdk.config import DistilConfig, OptimConfig, SelectionConfig
from diga_sdk.data.transforms import normalize
from diga_sdk.models.registry import build_model

B, H, W, C = 2, 32, 64, 19


def _step(scfg: DistilConfig, selftrain: bool) -> list[tuple[bool, bool, torch.Tensor]]:
    """Run one DiGA step; return (train mode, grad enabled, input) of every student forward."""
    torch.manual_seed(0)
    model = build_model("light", C).train()
    calls: list[tuple[bool, bool, torch.Tensor]] = []
    model.register_forward_pre_hook(lambda m, args: calls.append((m.training, torch.is_grad_enabled(),
                                                                  args[0].detach().clone())))
    gen = torch.Generator().manual_seed(1)
    x_s, x_t = torch.rand(B, 3, H, W, generator=gen), torch.rand(B, 3, H, W, generator=gen) * 0.5 + 0.5
    y_s = torch.randint(0, 4, (B, H, W), generator=gen)
    pl = torch.randint(0, 4, (B, H, W), generator=gen) if selftrain else None
    ctx = StepContext(stage="t", seed=0, scfg=scfg, num_classes=C, net=model, teacher=EMATeacher(model),
                      optimizer=make_optimizer(model, OptimConfig()), translator=FourierTranslator(0.05),
                      strong=StrongView(), selection=SelectionConfig() if selftrain else None,
                      centroids=torch.rand(C, model.feature_dim, generator=gen) if selftrain else None,
                      seen=torch.ones(C, dtype=torch.bool) if selftrain else None)
    diga_step(ctx, 0, x_s, y_s, x_t, pl)
    calls.append((True, False, normalize(x_t)))  # the expected target input, for the caller to compare
    return calls


def test_target_bn_adds_one_no_grad_train_mode_forward_of_the_target_crops() -> None:
    *without, _ = _step(DistilConfig(target_bn=False), selftrain=False)
    *with_bn, want = _step(DistilConfig(target_bn=True), selftrain=False)
    assert len(without) == 1 and len(with_bn) == 2
    training, grad, x = with_bn[0]
    assert training and not grad and torch.equal(x, want[2])  # BN statistics move on the target, no gradient
    assert with_bn[1][1] and with_bn[1][2].shape[0] == 2 * B  # then the usual [clean ; mixed] source forward


def test_separate_mix_forward_runs_the_classmix_batch_on_its_own() -> None:
    *joint, _ = _step(DistilConfig(mix_forward="joint"), selftrain=True)
    *separate, _ = _step(DistilConfig(mix_forward="separate"), selftrain=True)
    assert [c[2].shape[0] for c in joint] == [3 * B]
    assert [c[2].shape[0] for c in separate] == [2 * B, B] and all(c[1] for c in separate)
    torch.testing.assert_close(separate[1][2], joint[0][2][2 * B:])  # the same ClassMix images


def test_image_mode_centroids_average_per_image_means_with_a_pixel_minimum() -> None:
    feats = torch.zeros(2, 4, 1, 10)
    feats[0, 0] = 1.0  # image 0: class 1 on 8 pixels with feature 1
    feats[1, 0] = 3.0  # image 1: class 1 on 2 pixels with feature 3, class 2 on 4 pixels
    labels = torch.full((2, 1, 10), 255)
    labels[0, 0, :8] = 1
    labels[1, 0, :2] = 1
    labels[1, 0, 2:6] = 2
    pixel = CentroidAccumulator(3, "pixel")
    pixel.add(feats, labels)
    cents, seen, counts = pixel.result()
    assert cents[1, 0] == (8 * 1.0 + 2 * 3.0) / 10 and counts.tolist() == [0, 10, 4]
    image = CentroidAccumulator(3, "image", min_pixels=1)
    image.add(feats, labels)
    cents, seen, counts = image.result()
    assert cents[1, 0] == (1.0 + 3.0) / 2 and counts.tolist() == [0, 2, 1]  # each image counts once
    strict = CentroidAccumulator(3, "image", min_pixels=5)
    strict.add(feats, labels)
    cents, seen, counts = strict.result()
    assert cents[1, 0] == 1.0 and counts.tolist() == [0, 1, 0] and seen.tolist() == [False, True, False]
