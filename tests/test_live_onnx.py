"""The online adapter's onnxruntime forwards: equal to torch, live (weights changed in place are seen
without a new export), frozen copies embed their weights, and the export is cached on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diga_sdk.models.fast import FastSegmenter
from diga_sdk.models.folded import FoldedCopy

pytest.importorskip("onnxruntime")


def _folded(seed: int) -> FoldedCopy:
    torch.manual_seed(seed)
    model = FastSegmenter(num_classes=5, width=8, feature_dim=16).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    folded = FoldedCopy.build(model, channels_last=False)
    assert folded is not None
    return folded


def test_live_graph_follows_in_place_weight_changes_and_frozen_copy_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diga_sdk.runtime import live_onnx

    monkeypatch.setenv("DIGA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(live_onnx, "_EXPORTS", {})
    folded = _folded(0)
    x = torch.rand(2, 3, 64, 128)
    graph = live_onnx.LiveOnnxGraph(folded.gm, x, ["logits", "features"], threads=1)
    feed = graph.feed(folded.gm)
    frozen = graph.frozen(folded.gm)
    with torch.no_grad():
        ref = folded(x)
        for got in (graph.run(x, feed), frozen.run(x)):
            for g, r in zip(got, ref, strict=True):
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        # the live module learns (a step's worth of change, in place): the same feed sees it, the frozen copy not
        for p in folded.source.parameters():
            p.add_(0.05 * torch.randn_like(p))
        folded.refresh()
        moved = folded(x)
        live = graph.run(x, feed)
    torch.testing.assert_close(live[0], moved[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(moved[0], ref[0], atol=1e-3)
    torch.testing.assert_close(frozen.run(x)[0], ref[0], rtol=1e-4, atol=1e-4)
    # a different input size runs on the same graph (dynamic height and width)
    small = torch.rand(1, 3, 32, 64)
    torch.testing.assert_close(graph.run(small, feed)[0], folded(small)[0], rtol=1e-4, atol=1e-4)

    cached = list((tmp_path / "live_onnx").glob("*.onnx"))
    assert len(cached) == 1
    good = cached[0].read_bytes()
    cached[0].write_bytes(good[: len(good) // 2])  # a damaged cache file: exported anew, not an error
    monkeypatch.setattr(live_onnx, "_EXPORTS", {})
    repaired = live_onnx.LiveOnnxGraph(folded.gm, x, ["logits", "features"], threads=1)
    torch.testing.assert_close(repaired.run(x, repaired.feed(folded.gm))[0], moved[0], rtol=1e-4, atol=1e-4)
    assert cached[0].read_bytes() == repaired.model
    monkeypatch.setattr(live_onnx, "_EXPORTS", {})
    monkeypatch.setattr(live_onnx, "_export", lambda *a, **k: pytest.fail("exported again despite the disk cache"))
    again = live_onnx.LiveOnnxGraph(folded.gm, x, ["logits", "features"], threads=1)
    torch.testing.assert_close(again.run(x, again.feed(folded.gm))[0], moved[0], rtol=1e-4, atol=1e-4)


def test_feed_rejects_a_channels_last_copy() -> None:
    from diga_sdk.runtime.live_onnx import LiveOnnxGraph

    folded = _folded(1)
    graph = LiveOnnxGraph(folded.gm, torch.rand(1, 3, 64, 128), ["logits", "features"], threads=1)
    other = FoldedCopy.build(folded.source, channels_last=True)
    with pytest.raises(ValueError, match="not contiguous"):
        graph.feed(other.gm)
