"""Checkpoint -> ONNX: dynamic batch/height/width, optional embedded pre-processing (uint8 RGB NHWC in)
and post-processing (a uint8 label map out beside the logits), diga metadata in `metadata_props`,
`onnx.checker`, and onnxslim kept only where it measurably shrinks the graph."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DigaError
from ..models.checkpoint import ModelMeta, checkpoint_hash, load_checkpoint
from ..progress import log
from .metadata import GraphInfo, metadata_props

MIN_OPSET = 17
DEFAULT_OPSET = 18


class DeployGraph(nn.Module):
    """What gets exported: [uint8 NHWC -> normalised NCHW] -> segmenter -> logits at input size [-> labels]."""

    def __init__(self, model: nn.Module, meta: ModelMeta, embed_pre: bool, embed_post: bool) -> None:
        super().__init__()
        self.model, self.embed_pre, self.embed_post = model, embed_pre, embed_post
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.embed_pre:
            x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift
        logits, _ = self.model(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.embed_post:
            return logits, logits.argmax(1).to(torch.uint8)
        return logits


def graph_info(embed_pre: bool, embed_post: bool, opset: int, precision: str = "fp32") -> GraphInfo:
    return GraphInfo(input_name="image" if embed_pre else "input", embed_pre=embed_pre, embed_post=embed_post,
                     logits_name="logits", labels_name="labels" if embed_post else None, precision=precision,
                     opset=opset)


def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) ONNX opset this SDK can export with the installed torch and onnx."""
    import onnx

    highest = onnx.defs.onnx_opset_version()
    try:
        from torch.onnx import _constants  # the exporter's own ceiling (private, so read defensively)

        highest = min(highest, int(_constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError, ValueError):
        pass
    return MIN_OPSET, highest


def export_onnx_model(checkpoint: str | Path, *, opset: int = DEFAULT_OPSET, dynamic: bool = True,
                      embed_pre: bool = False, embed_post: bool = False, slim: bool = True) -> tuple[Any, dict[str, Any]]:
    """Trace the checkpoint into an onnx.ModelProto (checked, metadata set, maybe slimmed) + an export report."""
    import onnx

    low, high = supported_opsets()
    if not low <= opset <= high:
        why = "is too old" if opset < low else "is newer than the installed exporter supports"
        raise DigaError(f"opset {opset} {why}; use --opset {low} to {high}")
    model, meta = load_checkpoint(checkpoint, "cpu", fold=True)
    graph = graph_info(embed_pre, embed_post, opset)
    wrapper = DeployGraph(model, meta, embed_pre, embed_post).eval()
    h, w = meta.input_size
    example = (torch.zeros(1, h, w, 3, dtype=torch.uint8) if embed_pre else torch.zeros(1, 3, h, w))
    dims = (0, 1, 2) if embed_pre else (0, 2, 3)
    dynamic_shapes = {"x": {d: torch.export.Dim.DYNAMIC for d in dims}} if dynamic else None
    outputs = ["logits", "labels"] if embed_post else ["logits"]
    with quiet_exporter():
        try:
            program = torch.onnx.export(wrapper, (example,), None, input_names=[graph.input_name],
                                        output_names=outputs, opset_version=opset, dynamic_shapes=dynamic_shapes,
                                        dynamo=True, verbose=False)
        except Exception as exc:  # the exporter raises many internal types
            raise DigaError(f"ONNX export of {meta.model_name} failed: {str(exc).splitlines()[0]}") from None
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise DigaError(f"the exporter wrote opset {written} when asked for {opset}; use --opset {written}")
    _rename_dims(proto, graph, embed_pre)
    proto.producer_name, proto.doc_string = "diga-sdk", f"{meta.model_name} segmenter exported by diga-sdk"
    onnx.helper.set_model_props(proto, metadata_props(meta, graph, checkpoint_hash(checkpoint)))
    report: dict[str, Any] = {"opset": opset, "dynamic": dynamic, "embed_pre": embed_pre, "embed_post": embed_post,
                              "nodes_exported": len(proto.graph.node)}
    if slim:
        proto, report["slim"] = _maybe_slim(proto)
    check_onnx(proto)
    report["checker"] = "passed"
    report["nodes"] = len(proto.graph.node)
    return proto, report


def check_onnx(proto: Any) -> None:
    """onnx.checker (full check with shape inference); a DigaError naming the failure otherwise."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DigaError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None


def _maybe_slim(proto: Any) -> tuple[Any, dict[str, Any]]:
    """Run onnxslim; keep its graph only if it has fewer nodes (the measurable gain) and still checks."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        return proto, {"used": False, "reason": "onnxslim not installed"}
    before = len(proto.graph.node)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slimmed = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
        check_onnx(slimmed)
    except Exception as exc:  # onnxslim failures must not break an export
        log.warning("onnxslim failed (%s); keeping the exporter's graph", str(exc).splitlines()[0])
        return proto, {"used": False, "reason": f"onnxslim failed: {exc}"}
    after = len(slimmed.graph.node)
    if after < before:
        del slimmed.metadata_props[:]
        slimmed.metadata_props.extend(proto.metadata_props)
        slimmed.producer_name, slimmed.doc_string = proto.producer_name, proto.doc_string
        return slimmed, {"used": True, "nodes_before": before, "nodes_after": after}
    return proto, {"used": False, "nodes_before": before, "nodes_after": after, "reason": "no fewer nodes"}


def _rename_dims(proto: Any, graph: GraphInfo, embed_pre: bool) -> None:
    """Name the dynamic dimensions batch/height/width on the input and outputs (readable in Netron, trtexec)."""
    names = ["batch", "height", "width", None] if embed_pre else ["batch", None, "height", "width"]
    for value in proto.graph.input:
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        out_names = ["batch", None, "height", "width"] if len(dims) == 4 else ["batch", "height", "width"]
        for dim, name in zip(dims, out_names, strict=False):
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name


@contextlib.contextmanager
def quiet_exporter():
    """The dynamo exporter logs torchvision notices and prints progress: keep the CLI output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def save_onnx(proto: Any, path: str | Path) -> Path:
    """Write an ONNX model atomically (single file; models here stay far below protobuf's 2 GB)."""
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, proto.SerializeToString())
    return Path(path)


def cached_onnx(checkpoint: str | Path) -> Path:
    """An fp32 ONNX export of a checkpoint, cached by content hash (used when an ONNX runtime is asked to run a checkpoint)."""
    from .cache import cache_dir

    h = checkpoint_hash(checkpoint)
    dest = cache_dir() / "onnx" / f"{h}.onnx"
    if not dest.is_file():
        log.info("exporting %s to ONNX for the runtime (cached at %s)", checkpoint, dest)
        proto, _ = export_onnx_model(checkpoint)
        save_onnx(proto, dest)
    return dest
