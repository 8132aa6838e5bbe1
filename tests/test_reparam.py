"""Training-time re-parameterised convolutions: the fold keeps the function and describes the activations."""

from __future__ import annotations

import copy

import pytest
import torch

from diga_sdk.models import ModelMeta, load_checkpoint, save_checkpoint
from diga_sdk.models.fast import FastSegmenter
from diga_sdk.models.registry import build_model, channels_last
from diga_sdk.models.reparam import RepConvBN, fold_reparam, has_reparam


def _trained(module: torch.nn.Module, shape: tuple[int, ...], steps: int = 4) -> torch.nn.Module:
    """A few SGD steps in train mode (channels-last, as the trainers run it): every BatchNorm holds
    statistics and affine values far from their initial ones."""
    torch.manual_seed(0)
    channels_last(module).train()
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        out = module(torch.randn(*shape) * 2 + 0.5)
        out = out[0] if isinstance(out, tuple) else out
        opt.zero_grad()
        (out.square().mean() - out.mean()).backward()
        opt.step()
    return module.eval()


@pytest.mark.parametrize(("cin", "cout", "stride", "relu"), [(16, 16, 1, False), (16, 16, 1, True), (3, 16, 2, True),
                                                              (8, 24, 2, False), (16, 32, 1, True)])
def test_folded_conv_equals_the_branches_in_eval_mode(cin: int, cout: int, stride: int, relu: bool) -> None:
    """One 3x3 conv + BN gives the sum of 3x3, 1x1 (strided like it) and identity branches, on odd sizes."""
    rep = _trained(RepConvBN(cin, cout, stride, relu), (4, cin, 21, 34))
    assert (rep.bn_identity is not None) == (cin == cout and stride == 1)
    folded = rep.folded().eval()
    x = torch.randn(2, cin, 19, 33)
    with torch.no_grad():
        want, got = rep(x), folded(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "BatchNorm2d"] + (["ReLU"] if relu else [])


def test_folded_statistics_describe_the_folded_convolution() -> None:
    """The folded BatchNorm's running mean and variance are those of its conv's output on the data the
    layer saw (measured while training), so BN adaptation on a folded model starts where it should."""
    rep = RepConvBN(16, 16)
    torch.manual_seed(0)
    rep.train()
    for _ in range(30):  # momentum 0.1: the running statistics settle on this distribution
        with torch.no_grad():
            rep(torch.randn(8, 16, 24, 24) * 1.5 + 0.3)
    folded = rep.eval().folded()
    conv, bn = folded[0], folded[1]
    with torch.no_grad():
        out = conv(torch.randn(8, 16, 24, 24) * 1.5 + 0.3)
    torch.testing.assert_close(bn.running_mean, out.mean((0, 2, 3)), atol=0.05, rtol=0.05)
    torch.testing.assert_close(bn.running_var, out.var((0, 2, 3)), atol=0.05, rtol=0.1)


def test_fast_folds_to_the_plain_layout_with_the_same_outputs() -> None:
    """`fast` trains with branches; folded it has exactly the plain model's tensors (the deployed graph)
    and the same logits and features."""
    model = _trained(build_model("fast"), (2, 3, 64, 128), steps=2)
    assert has_reparam(model)
    plain = FastSegmenter(reparam=False)
    folded = fold_reparam(copy.deepcopy(model))
    assert not has_reparam(folded)
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(1, 3, 72, 136)
    with torch.no_grad():
        (want_logits, want_feats), (logits, feats) = model(x), folded(x)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats, want_feats, atol=1e-4, rtol=1e-4)


def test_checkpoints_load_in_the_form_asked_for(tmp_path) -> None:
    """Training stages load the branches (fold=False); deploy paths the folded form (fold=True); a state
    saved folded (an on-device-adapted model, or one trained before the branches) loads into `fast`."""
    model = _trained(build_model("fast"), (2, 3, 64, 128), steps=2)
    path = save_checkpoint(model, tmp_path / "fast.safetensors", ModelMeta(model_name="fast"))
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        want = model(x)[0]
    trainable, _ = load_checkpoint(path)
    deployed, _ = load_checkpoint(path, fold=True)
    assert has_reparam(trainable) and not has_reparam(deployed)
    folded_path = save_checkpoint(deployed, tmp_path / "folded.safetensors", ModelMeta(model_name="fast"))
    reloaded, _ = load_checkpoint(folded_path)
    assert not has_reparam(reloaded)
    with torch.no_grad():
        for m in (trainable, deployed, reloaded):
            torch.testing.assert_close(m(x)[0], want, atol=1e-4, rtol=1e-4)


def test_the_online_adapter_adapts_the_folded_form() -> None:
    """The vehicle trains the deployed graph (not the costlier training form), and its
    weights keep the plain layout, so they pool with other vehicles' and load as a `fast` checkpoint."""
    from diga_sdk.online.adapter import OnlineAdapter, OnlineConfig

    model = _trained(build_model("fast"), (2, 3, 64, 128), steps=2)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        want = model(x)[0]
    adapter = OnlineAdapter(model, OnlineConfig(), meta=ModelMeta(model_name="fast"))
    assert not has_reparam(adapter.student)
    assert set(adapter.weights()) == set(FastSegmenter(reparam=False).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(adapter.student.eval()(x)[0], want, atol=1e-4, rtol=1e-4)
