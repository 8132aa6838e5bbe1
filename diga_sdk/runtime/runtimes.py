"""One inference interface over every runtime: PyTorch, onnxruntime, OpenVINO and TensorRT.

`open_runtime(path, runtime="auto", device="cpu")` accepts a diga checkpoint (.safetensors), an ONNX
file, an OpenVINO IR (.xml) or a TensorRT engine (+ its JSON sidecar) and returns a `Runtime`:

- `predict(images)`: uint8 RGB batch (B,H,W,3), any H,W -> uint8 train-ID label maps (B,H,W);
- `logits(images)`: the same batch -> float32 (B,C,H,W) logits at the input size;
- `name` (torch | onnxruntime | openvino | tensorrt), `precision`, `meta` (ModelMeta), `model_hash`.

`runtime="auto"` picks the fastest path whose accuracy was checked: the file itself in every runtime
installed for its format and device, plus (for a checkpoint or an fp32 ONNX on the CPU) every
reduced-precision path of the same source checkpoint (INT8 / FP16 artefacts, bf16 hints) whose measured
mIoU change (`export/checked.py`, written by `diga export --val` or `diga bench precision`) is within
`max_miou_drop` points; a path that lost more, or was never checked, is not taken. Among those it
takes the fastest by a recorded measurement (`record_choice`, written by `diga bench latency`) or else a
short measured probe at the model's training size; the choice, its timings and the paths it turned down
are in `Runtime.choice` and logged.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from ..models.checkpoint import ModelMeta
from ..progress import log
from .cache import cache_dir
from .checked import DEFAULT_MAX_MIOU_DROP
from .signal_stack import preserved_signal_stack

RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")
CHECKPOINT_SUFFIXES = (".safetensors",)
ONNX_SUFFIXES = (".onnx",)
OPENVINO_SUFFIXES = (".xml",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def model_format(path: str | Path) -> str:
    """'checkpoint' | 'onnx' | 'openvino' | 'tensorrt' from the file's suffix; a clear error otherwise."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        kind = "checkpoint"
    elif suffix in ONNX_SUFFIXES:
        kind = "onnx"
    elif suffix in OPENVINO_SUFFIXES:
        kind = "openvino"
    elif suffix in ENGINE_SUFFIXES:
        kind = "tensorrt"
    else:
        raise DigaError(f"unsupported model file {p}: expected a .safetensors checkpoint, an .onnx file, an "
                        f"OpenVINO .xml IR or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")
    if not p.is_file():
        raise DigaError(f"model file {p} not found; pass the path of a checkpoint or an exported model")
    return kind


# Which runtimes can run which format (checkpoint -> ONNX is exported on the fly into the cache).
_COMPATIBLE = {
    "checkpoint": ("torch", "onnxruntime", "openvino"),
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt",),
}


class Runtime(ABC):
    """A loaded model behind one call convention: uint8 RGB in, labels or logits out."""

    name: str = ""
    precision: str = "fp32"

    def __init__(self, meta: ModelMeta, model_hash: str, device: str, embed_pre: bool = False,
                 labels_output: bool = False) -> None:
        self.meta, self.model_hash, self.device = meta, model_hash, device
        self.embed_pre, self.labels_output = embed_pre, labels_output
        self.choice: dict[str, Any] = {}
        self._scale = (1.0 / (255.0 * np.asarray(meta.std, np.float32))).reshape(1, 3, 1, 1)
        self._shift = (-np.asarray(meta.mean, np.float32) / np.asarray(meta.std, np.float32)).reshape(1, 3, 1, 1)

    @property
    def label(self) -> str:
        """Human-readable 'runtime (precision)'."""
        return f"{self.name} ({self.precision})"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 RGB -> (B,H,W) uint8 train-ID label maps."""
        images = check_images(images)
        if self.labels_output:
            return self._labels(images)
        return self._logits(images).argmax(1).astype(np.uint8)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 RGB -> (B,C,H,W) float32 logits at the input size."""
        return np.asarray(self._logits(check_images(images)), dtype=np.float32)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> normalised float32 NCHW (what a graph without embedded pre-processing takes)."""
        x = images.transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray(x * self._scale + self._shift)

    def graph_input(self, images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images) if self.embed_pre else self.preprocess(images)

    @abstractmethod
    def _logits(self, images: np.ndarray) -> np.ndarray: ...

    def _labels(self, images: np.ndarray) -> np.ndarray:
        return self._logits(images).argmax(1).astype(np.uint8)

    def __repr__(self) -> str:
        return f"<Runtime {self.label} {self.meta.model_name} hash={self.model_hash} device={self.device}>"


def check_images(images: Any) -> np.ndarray:
    """A clear error unless `images` is a (B,H,W,3) uint8 array."""
    if not isinstance(images, np.ndarray):
        raise DigaError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise DigaError(f"images must have shape (B,H,W,3) with B >= 1, got {images.shape}; stack RGB images into a batch")
    if images.dtype != np.uint8:
        raise DigaError(f"images must be uint8 RGB, got dtype {images.dtype}")
    if images.shape[1] < 8 or images.shape[2] < 8:
        raise DigaError(f"images of {images.shape[1]}x{images.shape[2]} are too small; both sides must be >= 8 pixels")
    return images


# --------------------------------------------------------------------------------------------- torch
class TorchRuntime(Runtime):
    """PyTorch eager (fp32, or bf16 autocast with precision='bf16')."""

    name = "torch"

    def __init__(self, path: Path, device: str = "cpu", precision: str | None = None, threads: int | None = None) -> None:
        import torch

        from ..models.checkpoint import checkpoint_hash, load_checkpoint

        if precision not in (None, "fp32", "bf16", "bf16-emulated"):
            raise DigaError(f"torch runtime precision {precision!r} unsupported; use fp32, bf16 or bf16-emulated")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DigaError("device cuda requested but PyTorch sees no CUDA GPU; use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        model, meta = load_checkpoint(path, device, fold=True)
        if precision == "bf16-emulated":
            emulate_bf16(model)
        super().__init__(meta, checkpoint_hash(path), device)
        self.model, self.precision = model, precision or "fp32"

    def _logits(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(self.preprocess(images)).to(self.device)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(dev_type, torch.bfloat16, enabled=self.precision == "bf16"):
            logits, _ = self.model(x)
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.float().cpu().numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 RGB -> (B,H,W) uint8 labels, upsample and argmax fused (no full-size logits)."""
        return self._labels(check_images(images))

    def _labels(self, images: np.ndarray) -> np.ndarray:
        import torch

        from ..kernels import upsample_argmax

        x = torch.from_numpy(self.preprocess(images)).to(self.device)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(dev_type, torch.bfloat16, enabled=self.precision == "bf16"):
            logits, _ = self.model(x)
        return upsample_argmax(logits, x.shape[-2:], dtype=torch.uint8).cpu().numpy()


def emulate_bf16(model) -> None:
    """bf16 inference numerics in fp32 kernels: every convolution's weights and inputs rounded to bf16, products
    accumulated in fp32 (what AMX / AVX512-BF16 do). For accuracy checks on CPUs without bf16 units, where
    oneDNN's bf16 autocast falls back to very slow reference kernels; not a fast path."""
    import torch
    import torch.nn as nn

    def round_input(_module: nn.Module, args: tuple) -> tuple:
        return (args[0].to(torch.bfloat16).float(), *args[1:])

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.to(torch.bfloat16).float()
            m.register_forward_pre_hook(round_input)


# ------------------------------------------------------------------------------------- onnxruntime
class OnnxRuntime(Runtime):
    """onnxruntime on CPU (or CUDA with onnxruntime-gpu)."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, fused_labels: bool = True) -> None:
        import onnxruntime as ort

        from .metadata import parse_metadata

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DigaError("device cuda requested but onnxruntime has no CUDAExecutionProvider; install the "
                                "`gpu` extra (onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise DigaError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}; re-export it") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        meta, graph, source_hash = parse_metadata(props, str(path))
        super().__init__(meta, source_hash, device, graph.embed_pre, graph.labels_name is not None)
        self.graph, self.precision = graph, graph.precision
        # on CPU: labels from the coarse graph + the fused upsample-argmax kernel (the full graph serves logits)
        self._coarse = self._coarse_session(path, opts, providers) if fused_labels and device == "cpu" else None
        self.fused_labels = self._coarse is not None

    def _coarse_session(self, path: Path, opts: Any, providers: list[str]) -> tuple[Any, str] | None:
        """The graph up to its final Resize (coarse_graph.py), or None where it does not end in one."""
        import onnx
        import onnxruntime as ort

        from .coarse_graph import coarse_logits_graph

        cut = coarse_logits_graph(onnx.load(str(path)), self.graph.logits_name)
        if cut is None:
            return None
        return ort.InferenceSession(cut[0].SerializeToString(), opts, providers=providers), cut[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 RGB -> (B,H,W) uint8 labels; with the coarse graph, upsample and argmax fused."""
        images = check_images(images)
        if self._coarse is None:
            return super().predict(images)
        import torch

        from ..kernels import upsample_argmax

        session, name = self._coarse
        coarse = session.run([name], {self.graph.input_name: self.graph_input(images)})[0]
        return upsample_argmax(torch.from_numpy(coarse), images.shape[1:3], dtype=torch.uint8).numpy()

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.graph.logits_name], {self.graph.input_name: self.graph_input(images)})[0]

    def _labels(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.graph.labels_name], {self.graph.input_name: self.graph_input(images)})[0]


# ---------------------------------------------------------------------------------------- openvino
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoRuntime(Runtime):
    """OpenVINO on an ONNX file or an IR; precision None = the device's default inference precision
    (bf16 on CPUs with AMX/AVX512-BF16, f32 elsewhere)."""

    name = "openvino"

    def __init__(self, path: Path, device: str = "cpu", precision: str | None = None, threads: int | None = None) -> None:
        import openvino as ov

        from .metadata import parse_metadata, read_rt_info

        if precision not in (None, *OV_PRECISIONS):
            raise DigaError(f"openvino precision {precision!r} unsupported; use one of {sorted(OV_PRECISIONS)}")
        ov_device = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}.get(device.lower(), None)
        if ov_device is None:
            raise DigaError(f"openvino runs on cpu, gpu (Intel) or npu, not {device!r}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise DigaError(f"OpenVINO cannot read {path}: {str(exc).splitlines()[0]}; re-export it") from None
        props = read_rt_info(model) if path.suffix.lower() == ".xml" else _onnx_custom_props(path)
        meta, graph, source_hash = parse_metadata(props, str(path))
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = OV_PRECISIONS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with preserved_signal_stack():  # see signal_stack.py: OpenVINO leaves a dangling one otherwise
                self.compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise DigaError(f"OpenVINO cannot compile {path} for {ov_device}: {str(exc).splitlines()[0]}") from None
        super().__init__(meta, source_hash, device, graph.embed_pre, graph.labels_name is not None)
        self.graph = graph
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        actual = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint, hint)
        self.precision = actual if graph.precision == "fp32" else f"{graph.precision}+{actual}"
        with preserved_signal_stack():
            self.request = self.compiled.create_infer_request()

    def _run(self, images: np.ndarray, output: str) -> np.ndarray:
        res = self.request.infer({self.graph.input_name: self.graph_input(images)})
        return np.array(res[self.compiled.output(output)])

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, self.graph.logits_name)

    def _labels(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, self.graph.labels_name)


def _onnx_custom_props(path: Path) -> dict[str, str]:
    from .metadata import onnx_props

    return onnx_props(path)


# ---------------------------------------------------------------------------------------- tensorrt
class TensorRTRuntime(Runtime):
    """A TensorRT engine (TensorRT 10.x/11.x Python API, CUDA tensors held by PyTorch)."""

    name = "tensorrt"

    def __init__(self, path: Path, device: str = "cuda") -> None:
        from .tensorrt import load_engine

        engine, sidecar = load_engine(path)
        meta, graph = ModelMeta.model_validate(sidecar["meta"]), sidecar["graph"]
        from .metadata import GraphInfo

        graph = GraphInfo.model_validate(graph)
        super().__init__(meta, sidecar.get("source_checkpoint_hash", ""), device if device != "cpu" else "cuda",
                         graph.embed_pre, graph.labels_name is not None)
        self.engine, self.graph, self.sidecar = engine, graph, sidecar
        self.precision = sidecar.get("precision", graph.precision)
        self.context = engine.create_execution_context()
        self.profile = sidecar.get("profile", {})

    def _execute(self, images: np.ndarray) -> dict[str, Any]:
        import torch

        x = self.graph_input(images)
        lo, hi = self.profile.get("min"), self.profile.get("max")
        if lo and hi and not all(a <= b <= c for a, b, c in zip(lo, x.shape, hi, strict=True)):
            raise DigaError(f"input shape {list(x.shape)} is outside the engine's optimisation profile "
                            f"(min {lo}, max {hi}); rebuild it with `diga export --format tensorrt --min/--max`")
        xt = torch.from_numpy(x).cuda()
        self.context.set_input_shape(self.graph.input_name, tuple(xt.shape))
        self.context.set_tensor_address(self.graph.input_name, xt.data_ptr())
        outs: dict[str, Any] = {}
        names = [self.graph.logits_name] + ([self.graph.labels_name] if self.graph.labels_name else [])
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self._torch_dtype(self.engine.get_tensor_dtype(name))
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DigaError("TensorRT execution failed; check the engine with `trtexec --loadEngine`")
        stream.synchronize()
        return outs

    @staticmethod
    def _torch_dtype(trt_dtype: Any) -> Any:
        """The torch dtype of an engine I/O tensor (outputs keep the ONNX graph's I/O types)."""
        import tensorrt as trt
        import torch

        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.uint8: torch.uint8,
                 trt.int32: torch.int32, trt.int64: torch.int64, trt.bfloat16: torch.bfloat16}
        if trt_dtype not in table:
            raise DigaError(f"TensorRT engine output type {trt_dtype} is not supported by diga's runtime")
        return table[trt_dtype]

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return self._execute(images)[self.graph.logits_name].float().cpu().numpy()

    def _labels(self, images: np.ndarray) -> np.ndarray:
        return self._execute(images)[self.graph.labels_name].cpu().numpy()


# --------------------------------------------------------------------------------------------- open
def open_runtime(path: str | Path, runtime: str = "auto", device: str = "cpu", *, precision: str | None = None,
                 threads: int | None = None, max_miou_drop: float = DEFAULT_MAX_MIOU_DROP) -> Runtime:
    """Load `path` (checkpoint, ONNX, OpenVINO IR or TensorRT engine) with `runtime`, or with 'auto' the
    fastest path whose accuracy was checked (reduced precisions within `max_miou_drop` mIoU points)."""
    p = Path(path)
    kind = model_format(p)
    if runtime != "auto" and runtime not in RUNTIMES:
        raise DigaError(f"unknown runtime {runtime!r}; choose auto or one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        if max_miou_drop < 0:
            raise DigaError(f"--max-miou-drop must be >= 0 mIoU points, got {max_miou_drop}")
        return _auto(p, kind, device, precision, threads, max_miou_drop)
    if runtime not in _COMPATIBLE[kind]:
        hint = {"tensorrt": "build an engine with `diga export --format tensorrt`",
                "torch": "the torch runtime needs the .safetensors checkpoint"}.get(runtime, "")
        raise DigaError(f"runtime {runtime} cannot run a {kind} file ({p.name}); it runs with "
                        f"{', '.join(_COMPATIBLE[kind])}{'; ' + hint if hint else ''}")
    return _open(p, kind, runtime, device, precision, threads)


def _open(p: Path, kind: str, runtime: str, device: str, precision: str | None, threads: int | None) -> Runtime:
    if runtime == "torch":
        return TorchRuntime(p, device, precision, threads)
    if runtime == "tensorrt":
        return TensorRTRuntime(p, device)
    if kind == "checkpoint":
        from .onnx_export import cached_onnx

        p = cached_onnx(p)
    if runtime == "onnxruntime":
        if precision not in (None, "fp32", "int8", "fp16"):
            raise DigaError(f"onnxruntime runs the precision stored in the file; export --format onnx-int8 or "
                            f"onnx-fp16 instead of asking for {precision!r}")
        return OnnxRuntime(p, device, threads)
    return OpenVinoRuntime(p, device, precision, threads)


def _candidates(kind: str, device: str) -> list[str]:
    if kind == "tensorrt":
        return ["tensorrt"]  # an engine runs only there; its loader explains a missing GPU or version mismatch
    if device.startswith("cuda"):
        return {"checkpoint": ["torch", "onnxruntime"], "onnx": ["onnxruntime"]}.get(kind, list(_COMPATIBLE[kind]))
    return [r for r in _COMPATIBLE[kind] if r != "tensorrt" and _installed(r)]


def _installed(runtime: str) -> bool:
    import importlib.util

    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    return importlib.util.find_spec(module) is not None


@dataclass
class AutoPath:
    """One path `auto` may take: a file, the runtime that opens it and the precision hint."""

    name: str  # e.g. onnxruntime-fp32, onnxruntime-int8, openvino-int8
    file: Path
    kind: str
    runtime: str
    precision: str | None = None
    miou_change: float | None = None  # None: the file the caller gave (its own precision, not re-checked)


def _auto(p: Path, kind: str, device: str, precision: str | None, threads: int | None,
          max_miou_drop: float = DEFAULT_MAX_MIOU_DROP) -> Runtime:
    runtimes = _candidates(kind, device)
    if not runtimes:
        raise DigaError(f"no runtime for a {kind} file on {device} is installed; install the `export` extra")
    try:
        own = _file_precision(p, kind)
    except DigaError:  # an unreadable file: each runtime's own attempt below says why it cannot load it
        own = "fp32"
    # OpenVINO's default inference precision is bf16 on CPUs with bf16 units: a path named fp32 must run fp32
    # (a reduced precision is only taken once its accuracy was checked)
    paths = [AutoPath(f"{r}-{precision or own}", p, kind, r,
                      precision or (own if r == "openvino" and own == "fp32" else None)) for r in runtimes]
    rejected: dict[str, float] = {}
    if precision is None and own == "fp32" and not device.startswith("cuda") and kind in ("checkpoint", "onnx"):
        try:
            more, rejected = _checked_paths(p, kind, max_miou_drop)
        except DigaError:  # unreadable metadata: no checked path; the runtimes below say why the file fails
            more, rejected = [], {}
        paths += more
    extra = {"max_miou_drop": max_miou_drop, "rejected": rejected,
             "accepted": {a.name: a.miou_change for a in paths if a.miou_change is not None}}
    if rejected:
        log.info("runtime auto: turned down %s (mIoU change beyond -%.2f)", _fmt_change(rejected), max_miou_drop)
    if len(paths) == 1:
        rt = _open_path(paths[0], device, threads)
        rt.choice = {"picked": paths[0].name, "reason": f"the only path for a {kind} file on {device}", **extra}
        log.info("runtime auto: %s (the only path for a %s file on %s)", rt.label, kind, device)
        return rt
    key = choice_key(p, device)
    ms = _read_choices().get(key, {}).get("ms", {})
    if all(a.name in ms for a in paths):
        best = min(paths, key=lambda a: ms[a.name])
        rt = _open_path(best, device, threads)
        rt.choice = {"picked": best.name, "ms": {a.name: ms[a.name] for a in paths},
                     "reason": "recorded measurement", **extra}
        log.info("runtime auto: %s from a recorded measurement (%s)", rt.label, _fmt_ms(rt.choice["ms"]))
        return rt
    rt = _probe(paths, device, threads, key)
    rt.choice.update(extra)
    return rt


def _file_precision(p: Path, kind: str) -> str:
    """fp32 for a checkpoint; what an exported graph's metadata says it holds otherwise (path names)."""
    from .metadata import GRAPH_KEY, GraphInfo

    if kind == "checkpoint":
        return "fp32"
    if kind == "onnx":
        from .metadata import onnx_props

        props = onnx_props(p)
    elif kind == "openvino" and _installed("openvino"):
        import openvino as ov

        from .metadata import read_rt_info

        props = read_rt_info(ov.Core().read_model(str(p)))
    else:
        return "engine"
    return GraphInfo.model_validate_json(props[GRAPH_KEY]).precision if GRAPH_KEY in props else "fp32"


def _checked_paths(p: Path, kind: str, max_miou_drop: float) -> tuple[list[AutoPath], dict[str, float]]:
    """The reduced-precision paths of p's source checkpoint: (accepted ones, {rejected name: mIoU change})."""
    from ..results import cpu_has_bf16_units
    from .checked import checked_paths

    if kind == "checkpoint":
        from ..models.checkpoint import checkpoint_hash

        source = checkpoint_hash(p)
    else:
        from .metadata import HASH_KEY, onnx_props

        source = onnx_props(p).get(HASH_KEY, "")
    bf16_units = cpu_has_bf16_units()
    accepted, rejected = [], {}
    for f, check in checked_paths(source):
        if check.runtime not in RUNTIMES or not _installed(check.runtime):
            continue
        if check.precision == "bf16" and not bf16_units:
            continue  # without bf16 units the hint runs fp32 (OpenVINO) or reference kernels (torch)
        if not check.accepted(max_miou_drop):
            rejected[check.path_name] = check.miou_change
            continue
        accepted.append(AutoPath(check.path_name, f, model_format(f), check.runtime, check.precision,
                                 check.miou_change))
    return accepted, rejected


def _open_path(a: AutoPath, device: str, threads: int | None) -> Runtime:
    return _open(a.file, a.kind, a.runtime, device, a.precision, threads)


def _probe(paths: list[AutoPath], device: str, threads: int | None, key: str, runs: int = 3) -> Runtime:
    """Open every candidate path, time a few single-image runs at the training size, keep the fastest."""
    opened: dict[str, Runtime] = {}
    ms: dict[str, float] = {}
    failures: list[str] = []
    for a in paths:
        try:
            rt = _open_path(a, device, threads)
        except DigaError as exc:
            log.warning("runtime auto: %s unavailable (%s)", a.name, exc)
            failures.append(f"{a.runtime}: {exc}")
            continue
        h, w = rt.meta.input_size
        img = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        rt.predict(img)  # warm-up, not timed
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rt.predict(img)
            times.append(time.perf_counter() - t0)
        ms[a.name] = float(np.median(times) * 1e3)
        opened[a.name] = rt
    if not opened:
        raise DigaError(f"no runtime could load {paths[0].file} ({'; '.join(failures)})")
    best = min(ms, key=ms.__getitem__)
    rt = opened[best]
    rt.choice = {"picked": best, "ms": ms, "reason": f"measured probe ({runs} runs at {rt.meta.input_size[0]}x"
                 f"{rt.meta.input_size[1]})"}
    record_choice(key, best, ms)
    log.info("runtime auto: picked %s by a measured probe (%s)", rt.label, _fmt_ms(ms))
    return rt


def _fmt_change(change: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:+.2f}" for k, v in sorted(change.items()))


def _fmt_ms(ms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1]))


# ------------------------------------------------------------------------------ recorded choices
def choice_key(path: Path, device: str) -> str:
    """Model content + device + CPU: a recorded choice is reused only on the same model and machine."""
    from ..io import file_sha256
    from ..results import cpu_model

    return f"{file_sha256(path)[:16]}|{device}|{cpu_model()}|{os.cpu_count()}"


def _read_choices() -> dict[str, Any]:
    f = cache_dir() / "runtime-choices.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def record_choice(key: str, picked: str, ms: dict[str, float]) -> None:
    """Remember each path's time for (model, device, machine), by path name (e.g. onnxruntime-int8); `auto`
    reuses it when every path it may take has a time."""
    from ..io import atomic_write_json

    if picked not in ms:
        raise DigaError(f"cannot record {picked!r} as the fastest path: it has no time among {sorted(ms)}")
    choices = _read_choices()
    choices[key] = {"picked": picked, "ms": ms, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        atomic_write_json(cache_dir() / "runtime-choices.json", choices)
    except OSError as exc:
        log.warning("could not record the runtime choice in %s: %s", cache_dir(), exc)
