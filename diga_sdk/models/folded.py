"""A BatchNorm-folded, channels-last inference copy of a segmenter whose weights keep changing.

The EMA teacher runs only forward passes in eval mode, so every Conv2d -> BatchNorm2d pair is one
affine convolution: w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta.
`FoldedCopy` traces the model once with torch.fx, drops the BatchNorm nodes from the graph, and
`refresh()` recomputes the folded weights from the live module (~3 ms for the light model); the copy
then runs in channels-last memory format, which oneDNN convolves faster on this CPU. Measured on the
light model, 8 crops of 128x256, 2 threads: 0.165 s -> 0.125 s.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from .reparam import bn_affine, fold_reparam


def _conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[str, str, fx.Node]]:
    """(conv target, bn target, bn node) for every BatchNorm2d whose only input is a Conv2d used only by it."""
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and mods[node.target].affine and mods[node.target].track_running_stats):
            pairs.append((src.target, node.target, node))
    return pairs


class FoldedCopy:
    """`FoldedCopy.build(module)` -> an inference copy with BatchNorm folded into the convolutions,
    or None when the module cannot be traced (then callers run the module itself)."""

    def __init__(self, source: nn.Module, gm: fx.GraphModule, pairs: list[tuple[str, str]],
                 channels_last: bool = True) -> None:
        self.source, self.gm = source, gm
        self.channels_last = channels_last
        src_mods = dict(source.named_modules())
        gm_mods = dict(gm.named_modules())
        # a pair is a Conv2d -> BatchNorm2d of the source, or the fold of one of its RepConvBN modules
        plain = [(c, b) for c, b in pairs if c in src_mods]
        self._convs = [src_mods[c] for c, _ in plain]
        self._bns = [src_mods[b] for _, b in plain]
        self._folded = [gm_mods[c] for c, _ in plain]
        self._reps = [(src_mods[c.rsplit(".", 1)[0]], gm_mods[c]) for c, _ in pairs if c not in src_mods]
        # every other parameter/buffer of the copy mirrors the source's one by name
        src_state = dict(source.named_parameters()) | dict(source.named_buffers())
        self._mirror = [(t, src_state[n]) for n, t in list(gm.named_parameters()) + list(gm.named_buffers())
                        if n in src_state and not any(n.startswith(c + ".") for c, _ in pairs)]

    @classmethod
    def build(cls, module: nn.Module, channels_last: bool = True) -> FoldedCopy | None:
        """`channels_last=False` keeps the copy's weights contiguous (for a runtime that reads them as arrays)."""
        try:  # re-parameterised branches fold first (the teacher runs the deployed form)
            gm = fx.symbolic_trace(fold_reparam(copy.deepcopy(module)).eval())
        except Exception:  # noqa: BLE001  (data-dependent control flow: run the module unfolded)
            return None
        pairs = _conv_bn_pairs(gm)
        mods = dict(gm.named_modules())
        for conv_name, _bn_name, bn_node in pairs:
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
            conv = mods[conv_name]
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        gm.eval()
        for p in gm.parameters():
            p.requires_grad_(False)
        gm.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        folded = cls(module, gm, [(c, b) for c, b, _ in pairs], channels_last)
        folded.refresh()
        return folded

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded weights (and copy every other tensor) from the source module; a loop
        over layers, measured 2x faster than the same with torch._foreach ops on this CPU."""
        for conv, bn, out in zip(self._convs, self._bns, self._folded, strict=True):
            scale, shift = bn_affine(bn)
            out.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            out.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
        for rep, out in self._reps:
            weight, bias = rep.fused()
            out.weight.copy_(weight)
            out.bias.copy_(bias)
        for mine, theirs in self._mirror:
            mine.copy_(theirs)

    def __call__(self, x: torch.Tensor):  # noqa: ANN204  (the model's own outputs)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.gm(x)


__all__ = ["FoldedCopy"]
