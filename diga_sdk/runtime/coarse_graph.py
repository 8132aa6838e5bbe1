"""The exported graph cut before its final upsample: label maps from the model-resolution logits.

An exported graph ends in `Resize(bilinear, half-pixel)` of the (B,C,h,w) logits to the input size (and,
with post-processing embedded, an ArgMax over those full-size logits). For label maps a runtime runs
the graph up to the Resize's input and finishes with the fused upsample + argmax kernel, which never
writes the (B,C,H,W) logits (19 x 512 x 1024 floats = 40 MB per frame). The full graph still serves
`logits()`."""

from __future__ import annotations

from typing import Any

HALF_PIXEL = (b"half_pixel", b"pytorch_half_pixel")


def coarse_logits_graph(model: Any, logits_name: str) -> tuple[Any, str] | None:
    """(a copy of `model` whose only output is the input of the Resize that makes `logits_name`, that
    tensor's name), or None when the graph does not end in a bilinear half-pixel Resize."""
    import onnx
    from onnx import helper

    producer = {out: node for node in model.graph.node for out in node.output}
    resize = producer.get(logits_name)
    if resize is None or resize.op_type != "Resize":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    if attrs.get("mode") != b"linear" or attrs.get("coordinate_transformation_mode", b"half_pixel") not in HALF_PIXEL:
        return None
    if attrs.get("antialias", 0):
        return None
    coarse = resize.input[0]
    keep, todo = set(), [coarse]
    while todo:  # the nodes the coarse logits depend on
        node = producer.get(todo.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        todo.extend(i for i in node.input if i)
    nodes = [n for n in model.graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    graph = cut.graph
    del graph.node[:]
    graph.node.extend(nodes)
    kept_init = [t for t in model.graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(coarse, onnx.TensorProto.FLOAT, None))
    return cut, coarse
