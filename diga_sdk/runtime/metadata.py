"""The metadata every exported model carries (ONNX `metadata_props`, OpenVINO rt_info, TensorRT
sidecar): the checkpoint's ModelMeta, the graph's input/output contract and the source hash."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import DigaError
from ..models.checkpoint import ModelMeta

META_KEY = "diga.meta"
GRAPH_KEY = "diga.graph"
HASH_KEY = "diga.source_checkpoint_hash"
RT_SECTION = "diga"  # the OpenVINO rt_info section holding the same key/values


class GraphInfo(BaseModel):
    """How to feed an exported graph and what it returns."""

    model_config = ConfigDict(extra="ignore")

    input_name: str = "input"
    embed_pre: bool = False  # True: input is uint8 RGB NHWC; False: normalised float32 NCHW
    embed_post: bool = False  # True: a uint8 "labels" output beside the logits
    logits_name: str = "logits"
    labels_name: str | None = None
    precision: str = "fp32"  # fp32 | fp16 | int8 (what the weights/graph hold)
    opset: int = 0


def metadata_props(meta: ModelMeta, graph: GraphInfo, source_hash: str) -> dict[str, str]:
    """String key/values for ONNX `metadata_props` (also used for OpenVINO rt_info and the TensorRT sidecar)."""
    from .._version import __version__

    return {
        META_KEY: meta.model_dump_json(),
        GRAPH_KEY: graph.model_dump_json(),
        HASH_KEY: source_hash,
        "diga.sdk_version": __version__,
        "model_name": meta.model_name,
        "class_names": json.dumps(meta.class_names),
        "palette": json.dumps(meta.palette),
        "mean": json.dumps(meta.mean),
        "std": json.dumps(meta.std),
        "input_size": json.dumps(meta.input_size),
    }


def parse_metadata(props: dict[str, str], where: str) -> tuple[ModelMeta, GraphInfo, str]:
    """(ModelMeta, GraphInfo, source hash) from exported key/values; a clear error if they are missing."""
    if META_KEY not in props or GRAPH_KEY not in props:
        raise DigaError(f"{where} carries no diga metadata ({META_KEY}, {GRAPH_KEY}); export it with `diga export`")
    try:
        meta = ModelMeta.model_validate_json(props[META_KEY])
        graph = GraphInfo.model_validate_json(props[GRAPH_KEY])
    except ValueError as exc:
        raise DigaError(f"{where} has unreadable diga metadata: {exc}") from None
    return meta, graph, props.get(HASH_KEY, "")


def onnx_props(path: Any) -> dict[str, str]:
    """metadata_props of an ONNX file, read without loading the weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / OSError variants
        raise DigaError(f"ONNX file {path} is corrupt or unreadable ({exc}); re-export it") from None
    return {p.key: p.value for p in model.metadata_props}


def read_rt_info(model: Any) -> dict[str, str]:
    """The diga key/values stored in an OpenVINO model's rt_info ({} when absent)."""
    if not model.has_rt_info([RT_SECTION, "props"]):
        return {}
    return json.loads(model.get_rt_info([RT_SECTION, "props"]).astype(str))
