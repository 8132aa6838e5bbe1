"""Models: output shapes, checkpoint round trip, backbone loading, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import diga_sdk
from diga_sdk.errors import DigaError
from diga_sdk.models import (
    ModelMeta,
    available_models,
    build_model,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


def test_registry_and_light_shapes() -> None:
    assert {"light", "deeplabv2_r101"} <= set(available_models())
    model = build_model("light").eval()
    logits, feats = model(torch.randn(2, 3, 64, 128))
    assert logits.shape == (2, 19, 8, 16) and feats.shape == (2, 256, 8, 16)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1e6 < n_params < 5e6
    with pytest.raises(DigaError, match="unknown model"):
        build_model("segformer")


def test_deeplabv2_r101_shapes_and_stride() -> None:
    model = build_model("deeplabv2_r101").eval()
    assert sum(p.numel() for p in model.parameters()) > 40e6  # ResNet-101 backbone
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, 19, 8, 12) and feats.shape == (1, 256, 8, 12)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("light").eval()
    meta = ModelMeta(model_name="light", input_size=[64, 128], stage="source_only")
    path = save_checkpoint(model, tmp_path / "m.safetensors", meta)
    assert read_meta(path).stage == "source_only"
    loaded = diga_sdk.load_model(str(path))
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert loaded.diga_meta.sdk_version == diga_sdk.__version__


def test_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(DigaError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DigaError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DigaError, match="without diga metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_backbone_weights_from_user_file(tmp_path: Path) -> None:
    ref = build_model("deeplabv2_r101").backbone
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)  # a torchvision checkpoint carries the classifier: skipped
    save_file(state, str(tmp_path / "r101.safetensors"))
    model = build_model("deeplabv2_r101", backbone_weights=str(tmp_path / "r101.safetensors"))
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    with pytest.raises(DigaError, match="not found"):
        build_model("deeplabv2_r101", backbone_weights=str(tmp_path / "none.safetensors"))


@pytest.mark.parametrize("name", ["light", "fast", "deeplabv2_r101", "deeplabv2_r101_aspp_sum"])
def test_folded_copy_matches_the_module_and_follows_its_changes(name):
    """The BatchNorm-folded channels-last copy (the EMA teacher's forward) equals the eval-mode module,
    before and after the module's weights and BatchNorm statistics change in place."""
    from diga_sdk.models.folded import FoldedCopy

    torch.manual_seed(0)
    model = build_model(name, 19)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.affine:  # (fast's `summed` only measures)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    folded = FoldedCopy.build(model)
    assert folded is not None and len(folded._convs) + len(folded._reps) >= 19  # every conv->bn pair folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.gm.modules())
    x = torch.rand(2, 3, 64, 96)
    for _ in range(2):
        with torch.no_grad():
            want = model(x)
            got = folded(x)
        for w, g in zip(want, got, strict=True):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))
        with torch.no_grad():  # move every weight and statistic; the copy must follow after refresh()
            for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
                t.mul_(1 + 0.05 * torch.rand_like(t))  # positive factors keep running_var positive
        folded.refresh()


def test_deeplabv2_r101_is_the_authors_head_and_the_sum_head_keeps_its_name() -> None:
    from diga_sdk.adapt.optim import make_optimizer
    from diga_sdk.config import OptimConfig

    model = build_model("deeplabv2_r101")
    head = model.head
    assert len(head.branches) == 5 and head.branches[0][0].kernel_size == (1, 1)
    assert [b[0].dilation for b in head.branches[1:]] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(isinstance(b[1], torch.nn.GroupNorm) and b[1].num_groups == 32 for b in head.branches)
    assert head.fuse[0].in_channels == 5 * 256 and isinstance(head.fuse[1], torch.nn.GroupNorm)
    assert model.classifier.bias is None
    bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.weight.requires_grad or m.bias.requires_grad for m in bn)
    model.eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 64, 96))
    # the features are the GroupNorm output (affine at its init: identity): zero mean, unit variance per group
    groups = feats.reshape(2, 32, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2, 32), atol=1e-4, rtol=0)
    torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(2, 32), atol=2e-2, rtol=0)
    # the authors' recipe: the whole head (ASPP branches, SE, fuse, classifier) at 10x the lr; frozen BN excluded
    opt = make_optimizer(model, OptimConfig(lr=2.5e-4, head_lr_mult=10, head_scope="head"))
    body, head_group = opt.param_groups
    head_ids = {id(p) for p in list(model.head.parameters()) + list(model.classifier.parameters())}
    assert {id(p) for p in head_group["params"]} == head_ids and head_group["lr"] == pytest.approx(2.5e-3)
    assert not any(id(p) in head_ids or not p.requires_grad for p in body["params"])
    classic = build_model("deeplabv2_r101_aspp_sum")
    assert classic.classifier.bias is not None and len(classic.head.branches) == 4


def test_fast_two_branch_shapes_and_a_fifth_of_lights_flops() -> None:
    """`fast` returns (logits, 256-d features) at 1/8 like `light`, on sizes that do not divide by 32,
    for at most a third of light's FLOPs (counted by torch's FlopCounterMode, not timed)."""
    from diga_sdk.models.flops import flops_by_part, model_gflops
    from diga_sdk.models.reparam import fold_reparam

    fast, light = fold_reparam(build_model("fast")).eval(), build_model("light").eval()  # fast as deployed
    with torch.no_grad():
        for h, w in [(64, 128), (72, 136), (8, 8)]:
            logits, feats = fast(torch.randn(2, 3, h, w))
            assert logits.shape == (2, 19, -(-h // 8), -(-w // 8)) and feats.shape == (2, 256, *logits.shape[2:])
    assert 1e6 < sum(p.numel() for p in fast.parameters()) < 5e6
    g_fast, g_light = model_gflops(fast, (256, 512)), model_gflops(light, (256, 512))
    assert g_fast <= g_light / 3, (g_fast, g_light)
    parts = flops_by_part(fast, (256, 512))
    assert {"stem", "detail", "context", "head", "classifier"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(g_fast, rel=1e-6)


def test_activation_checkpointing_gives_the_same_gradients_and_batchnorm_statistics() -> None:
    """Recomputed blocks must change memory only: same loss, same gradients, BatchNorm statistics
    moved once per step (a recomputation that moved them again would drift every running mean)."""
    from diga_sdk.models.deeplabv2 import DeepLabV2
    from diga_sdk.models.recompute import enable_activation_checkpointing

    torch.manual_seed(0)
    plain = DeepLabV2(19, layers=(1, 2, 2, 1)).train()  # ResNet-101's blocks, fewer of them: a quick test
    recomputed = copy.deepcopy(plain)
    assert enable_activation_checkpointing(recomputed) == 6
    assert enable_activation_checkpointing(recomputed) == 0  # nothing wrapped twice
    x = torch.randn(2, 3, 32, 48)
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout mask in the head
        logits, feats = model(x)
        (logits.square().mean() + feats.mean()).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with torch.no_grad():  # evaluation runs the plain forward
        torch.testing.assert_close(plain.eval()(x)[0], recomputed.eval()(x)[0])


def test_activation_checkpointing_on_a_model_without_blocks_is_a_clear_error() -> None:
    from diga_sdk.models.recompute import enable_activation_checkpointing

    with pytest.raises(DigaError, match="activation_checkpointing=false"):
        enable_activation_checkpointing(torch.nn.Conv2d(3, 3, 1))
