"""Fused post-processing (bilinear upsample + argmax) against its reference, F.interpolate + argmax:
random logits at predict-like and awkward shapes, deliberately built ties (lowest class wins), output
dtypes, and input errors. The Triton kernel runs under Triton's interpreter on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton module is first imported (lazily)

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diga_sdk import kernels
from diga_sdk.errors import DigaError
from diga_sdk.kernels import cpu
from diga_sdk.kernels import reference as ref

FAST = ["cpu", "triton"]


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty made during the call comes back full of 77 / NaN, so unwritten labels show."""
    real_empty = torch.empty

    def empty(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(torch, "empty", empty)


def _upsampled(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


CASES = [  # (B, C, h, w, H, W): output stride 8, odd ratios, downsampling, same size, single rows/columns
    (1, 19, 16, 32, 128, 256),
    (2, 19, 9, 13, 33, 47),
    (2, 7, 5, 3, 17, 9),
    (1, 19, 12, 10, 5, 4),
    (1, 5, 6, 6, 6, 6),
    (2, 3, 1, 7, 4, 30),
    (1, 1, 4, 4, 9, 9),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_matches_reference_on_random_logits(backend, case, poisoned, monkeypatch):
    b, c, h, w, big_h, big_w = case
    gen = torch.Generator().manual_seed(sum(case))
    logits = 4 * torch.randn(b, c, h, w, generator=gen)
    expected = ref.upsample_argmax_ref(logits, (big_h, big_w))
    monkeypatch.setenv("DIGA_KERNELS", backend)
    got = kernels.upsample_argmax(logits, (big_h, big_w))
    assert got.dtype == torch.int64 and got.shape == (b, big_h, big_w)
    assert torch.equal(got, expected), f"{int((got != expected).sum())} of {got.numel()} labels differ"


def _tied_logits(gen: torch.Generator) -> torch.Tensor:
    """Blocky random logits (a 2x2 block of cells shares its values) whose winning class is copied into a
    higher class chosen per block, and a block where three classes hold the same value: exact ties after
    any bilinear blend, since tied classes go through identical arithmetic."""
    b, c, h, w = 2, 19, 8, 12
    coarse = torch.randn(b, c, h // 2, w // 2, generator=gen)
    top = coarse.argmax(1)
    twin = top + 1 + (torch.rand(top.shape, generator=gen) * (c - 1 - top)).long()
    has_twin = twin < c
    bi, yi, xi = has_twin.nonzero(as_tuple=True)
    coarse[bi, twin[has_twin], yi, xi] = coarse.amax(1)[has_twin]
    logits = F.interpolate(coarse, size=(h, w), mode="nearest").contiguous()
    logits[:, :, :4, :4] = 0.0
    logits[:, [4, 9, 17], :4, :4] = 2.5  # class 4 must win this block
    return logits


@pytest.mark.parametrize("backend", FAST)
def test_ties_go_to_the_lowest_class(backend, monkeypatch):
    logits = _tied_logits(torch.Generator().manual_seed(3))
    size = (64, 96)
    up = _upsampled(logits, size)
    top2 = up.topk(2, dim=1).values
    tied = top2[:, 0] == top2[:, 1]
    assert tied.float().mean() > 0.3  # the case really holds many exact ties (44% of pixels)
    expected = ref.upsample_argmax_ref(logits, size)
    assert (expected[:, :24, :24] == 4).all()  # torch.argmax's rule: first maximum
    monkeypatch.setenv("DIGA_KERNELS", backend)
    got = kernels.upsample_argmax(logits, size)
    assert torch.equal(got, expected)
    # at every tied pixel the label is the lowest class holding the maximum
    lowest = (up == top2[:, :1]).float().argmax(1)
    assert torch.equal(got[tied], lowest[tied])


def test_constant_logits_give_class_zero(monkeypatch):
    monkeypatch.setenv("DIGA_KERNELS", "cpu")
    assert (kernels.upsample_argmax(torch.zeros(1, 19, 3, 5), (17, 23)) == 0).all()
    ninf = torch.full((1, 4, 3, 3), float("-inf"))
    assert (kernels.upsample_argmax(ninf, (5, 5)) == ref.upsample_argmax_ref(ninf, (5, 5))).all()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_label_dtypes(backend, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 19, 6, 7, generator=gen).to(torch.float16)  # half logits are read as float32
    monkeypatch.setenv("DIGA_KERNELS", backend)
    got = kernels.upsample_argmax(logits, (20, 30), dtype=dtype)
    assert got.dtype == dtype
    assert torch.equal(got.long(), ref.upsample_argmax_ref(logits, (20, 30)))


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 24), h=st.integers(1, 9), w=st.integers(1, 9),
       big_h=st.integers(1, 40), big_w=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_cpu_property(b, c, h, w, big_h, big_w, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=gen)
    logits[:, c // 2] = logits[:, 0]  # a tied twin of class 0 (itself when c <= 1)
    expected = ref.upsample_argmax_ref(logits, (big_h, big_w))
    assert torch.equal(cpu.upsample_argmax_cpu(logits, (big_h, big_w)), expected)


def test_taps_equal_pytorch_weights():
    """Each output column's two source weights, read off F.interpolate of one-hot columns."""
    for src, dst in [(128, 1024), (13, 47), (113, 896), (10, 4), (5, 37), (1, 6)]:
        eye = torch.eye(src).reshape(1, src, 1, src)
        weights = F.interpolate(eye, size=(1, dst), mode="bilinear", align_corners=False)[0, :, 0]  # (src, dst)
        i0, i1, w0, w1 = cpu.bilinear_taps(src, dst)
        cols = torch.arange(dst)
        split = torch.from_numpy(i1 != i0)
        assert torch.equal(weights[torch.from_numpy(i0), cols][split], torch.from_numpy(w0)[split])
        assert torch.equal(weights[torch.from_numpy(i1), cols][split], torch.from_numpy(w1)[split])
        assert ((weights != 0).sum(0) <= 2).all()


def test_reference_backend_and_input_errors(monkeypatch):
    logits = torch.randn(1, 3, 4, 4)
    monkeypatch.setenv("DIGA_KERNELS", "reference")
    assert torch.equal(kernels.upsample_argmax(logits, torch.Size([8, 8])), ref.upsample_argmax_ref(logits, (8, 8)))
    monkeypatch.delenv("DIGA_KERNELS")
    with pytest.raises(DigaError, match="logits must be"):
        kernels.upsample_argmax(torch.randn(3, 4, 4), (8, 8))
    with pytest.raises(DigaError, match="floating-point"):
        kernels.upsample_argmax(torch.zeros(1, 3, 4, 4, dtype=torch.long), (8, 8))
    with pytest.raises(DigaError, match="size"):
        kernels.upsample_argmax(logits, (0, 8))
    with pytest.raises(DigaError, match="do not fit"):
        kernels.upsample_argmax(torch.randn(1, 300, 2, 2), (4, 4), dtype=torch.uint8)
    assert kernels.upsample_argmax(torch.randn(0, 3, 4, 4), (8, 8)).shape == (0, 8, 8)


def test_predict_paths_use_the_fused_labels(tiny_checkpoint):
    """Evaluation's labels and the served runtime's labels equal the argmax of the full-resolution logits."""
    import numpy as np

    from diga_sdk.evaluate import predict_labels, predict_logits
    from diga_sdk.models.checkpoint import load_checkpoint
    from diga_sdk.runtime.runtimes import open_runtime

    model, meta = load_checkpoint(tiny_checkpoint, "cpu")
    model.eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = predict_labels(model, images, meta.mean, meta.std)
        assert torch.equal(labels, predict_logits(model, images, meta.mean, meta.std).argmax(1))
    rt = open_runtime(tiny_checkpoint, runtime="torch")
    rgb = (images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    served = rt.predict(rgb)
    assert served.dtype == np.uint8 and served.shape == (2, 64, 96)
    assert np.array_equal(served, rt.logits(rgb).argmax(1))
