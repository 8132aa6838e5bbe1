"""onnxruntime forwards for modules whose weights change while they run (the online adapter's teacher).

An exported ONNX graph normally embeds its weights, so a model that learns would need a new export and a new
session after every update. `LiveOnnxGraph` exports a module's graph once with every weight as a graph
*input*; each call feeds the module's current tensors (numpy views of them: nothing is copied), so updates,
rollbacks and resumes are seen without re-exporting. `frozen()` turns the same graph into a session with the
weights embedded, which onnxruntime pre-packs (faster) for weights that never change (the shipped model).

Measured (`fast` model, BN-folded, one 256x512 frame, 1 thread, AMD EPYC): torch channels-last 18.5 ms,
onnxruntime with weights as inputs 14 ms, with embedded weights 9.9 ms. The export (torch.export, a few
seconds) is cached by the graph's signature, in the process and on disk (the graph holds no weights), so
the next adapter of the same architecture pays only for the session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..io import atomic_path
from .cache import cache_dir
from .onnx_export import DEFAULT_OPSET, quiet_exporter

_EXPORTS: dict[tuple, bytes] = {}  # graph signature -> serialized ONNX model with the weights as inputs


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + [(n, b) for n, b in module.named_buffers()
                                               if b.dtype.is_floating_point]


class _WeightsAsInputs(nn.Module):
    """forward(x, *weights) = module(x) with those weights: what gets exported."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module, self.names = module, names

    def forward(self, x: torch.Tensor, *weights: torch.Tensor) -> Any:
        return torch.func.functional_call(self.module, dict(zip(self.names, weights, strict=True)), (x,))


def _export(module: nn.Module, example: torch.Tensor, names: list[str], tensors: list[torch.Tensor],
            outputs: list[str]) -> bytes:
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with quiet_exporter():
        program = torch.onnx.export(_WeightsAsInputs(module, names).eval(), (example, *tensors), None,
                                    input_names=["x", *names], output_names=outputs, opset_version=DEFAULT_OPSET,
                                    dynamic_shapes=(dims, tuple(None for _ in tensors)), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def _cached_export(signature: tuple, export: Callable[[], bytes], refresh: bool = False) -> bytes:
    """The export from the disk cache (`cache_dir()/live_onnx`, named by the signature's hash: the graph holds
    no weights, so one file serves every checkpoint of an architecture), else exported and stored atomically."""
    path = cache_dir() / "live_onnx" / (hashlib.sha256(repr(signature).encode()).hexdigest()[:24] + ".onnx")
    if path.is_file() and not refresh:
        return path.read_bytes()
    model = export()
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(model)
    except OSError:  # a read-only home: export in every process instead
        pass
    return model


def _session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _run(session: Any, x: torch.Tensor, feed: dict[str, np.ndarray]) -> list[torch.Tensor]:
    outs = session.run(None, {"x": np.ascontiguousarray(x.detach().numpy(), dtype=np.float32), **feed})
    return [torch.from_numpy(o) for o in outs]


class LiveOnnxGraph:
    """`LiveOnnxGraph(module, example, outputs)`: one onnxruntime session of the module's graph with its
    weights as inputs; `run(x, feed)` with `feed = graph.feed(module_like)` (any module of the same structure)."""

    def __init__(self, module: nn.Module, example: torch.Tensor, outputs: list[str], threads: int | None = None) -> None:
        weights = _weights(module)
        self.names = [n for n, _ in weights]
        signature = (type(module).__qualname__, str(getattr(module, "code", "")), tuple(outputs),
                     tuple((n, tuple(t.shape)) for n, t in weights), torch.__version__, _onnx_version())
        def export() -> bytes:
            return _export(module, example, self.names, [t.detach().contiguous() for _, t in weights], outputs)

        if signature not in _EXPORTS:
            _EXPORTS[signature] = _cached_export(signature, export)
        self.threads = threads or torch.get_num_threads()
        try:
            self.session = _session(_EXPORTS[signature], self.threads)
        except Exception:  # noqa: BLE001  (onnxruntime's own types: a damaged cache file) -> export anew
            _EXPORTS[signature] = _cached_export(signature, export, refresh=True)
            self.session = _session(_EXPORTS[signature], self.threads)
        self.model = _EXPORTS[signature]
        self.inputs = {i.name for i in self.session.get_inputs()}  # the exporter drops weights the graph never uses

    def feed(self, module: nn.Module) -> dict[str, np.ndarray]:
        """numpy views of the module's current weights (contiguous tensors: they share memory, so in-place
        changes to the module are fed without copying; call again after a tensor is replaced)."""
        weights = dict(_weights(module))
        missing = [n for n in self.inputs - {"x"} if n not in weights]
        if missing:
            raise ValueError(f"the module lacks weights the graph takes: {missing[:3]}")
        out = {}
        for n in self.inputs - {"x"}:
            t = weights[n].detach()
            if not t.is_contiguous():
                raise ValueError(f"weight {n} is not contiguous: build the module in the default memory format")
            out[n] = t.numpy()
        return out

    def run(self, x: torch.Tensor, feed: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return _run(self.session, x, feed)

    def frozen(self, module: nn.Module) -> FrozenOnnx:
        """A session of the same graph with this module's current weights embedded (for weights that never change)."""
        return FrozenOnnx(self, module)


class FrozenOnnx:
    """The graph of a `LiveOnnxGraph` with fixed weights as initializers (onnxruntime pre-packs them)."""

    def __init__(self, graph: LiveOnnxGraph, module: nn.Module) -> None:
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto.FromString(graph.model)
        feed = graph.feed(module)
        kept = [i for i in proto.graph.input if i.name not in feed]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        proto.graph.initializer.extend(numpy_helper.from_array(v.copy(), name=k) for k, v in feed.items())
        self.session = _session(proto.SerializeToString(), graph.threads)

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run(self.session, x, {})


__all__ = ["FrozenOnnx", "LiveOnnxGraph", "onnxruntime_available"]
