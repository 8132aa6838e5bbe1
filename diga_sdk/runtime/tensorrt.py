"""TensorRT engines: built from the ONNX export with the TensorRT Python API (10.x and 11.x), an
optimisation profile for dynamic shapes and a timing cache. The engine file stays a plain engine
(trtexec / Triton load it); its metadata goes into a JSON sidecar that is checked on load, so an engine
built by another TensorRT version or for another GPU gives a clear error instead of a crash.

Precision follows the installed TensorRT: on 10.x the FP16/INT8 builder flags; on 11.x (strongly typed
networks, those flags removed) FP16 comes from an fp16 ONNX and INT8 from the Q/DQ ONNX of `onnx-int8`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DigaError
from ..io import atomic_write_bytes, atomic_write_json
from ..progress import log

ALTERNATIVES = ("onnx", "onnx-int8", "openvino")
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
# Driving-scene defaults (NCHW): min 1x3x256x512, opt 1x3x512x1024, max 4x3x1024x2048.
DEFAULT_PROFILE = {"min": (1, 3, 256, 512), "opt": (1, 3, 512, 1024), "max": (4, 3, 1024, 2048)}
SIDECAR_VERSION = 1


def _no_trt(reason: str) -> DigaError:
    return DigaError(f"TensorRT is unavailable: {reason}. TensorRT engines need an NVIDIA GPU and the `gpu` extra "
                     f"(pip install 'diga-sdk[gpu]'); on this machine export with --format "
                     f"{' / '.join(ALTERNATIVES)} instead")


def require_tensorrt() -> Any:
    """Import tensorrt and check for a CUDA GPU; a DigaError naming the alternatives otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise _no_trt("the tensorrt Python package is not installed") from None
    import torch

    if not torch.cuda.is_available():
        raise _no_trt("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return trt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


# -------------------------------------------------------------------------------------- profiles
def parse_shape(text: str | tuple[int, ...] | list[int], what: str) -> tuple[int, int, int, int]:
    """'1x3x512x1024' -> (1, 3, 512, 1024) (NCHW); a clear error for anything else."""
    if isinstance(text, str):
        try:
            dims = tuple(int(v) for v in text.lower().split("x"))
        except ValueError:
            raise DigaError(f"bad {what} shape {text!r}; write BxCxHxW, e.g. 1x3x512x1024") from None
    else:
        dims = tuple(int(v) for v in text)
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise DigaError(f"bad {what} shape {text!r}; write four positive sizes BxCxHxW, e.g. 1x3x512x1024")
    if dims[1] != 3:
        raise DigaError(f"bad {what} shape {text!r}: the channel size must be 3 (RGB)")
    return dims  # type: ignore[return-value]


def build_profile(min_shape: str | None = None, opt_shape: str | None = None,
                  max_shape: str | None = None) -> dict[str, tuple[int, int, int, int]]:
    """Validated min <= opt <= max NCHW shapes, defaults filled in from DEFAULT_PROFILE."""
    prof = {
        "min": parse_shape(min_shape, "min") if min_shape else DEFAULT_PROFILE["min"],
        "opt": parse_shape(opt_shape, "opt") if opt_shape else DEFAULT_PROFILE["opt"],
        "max": parse_shape(max_shape, "max") if max_shape else DEFAULT_PROFILE["max"],
    }
    for i, axis in enumerate("BCHW"):
        if not prof["min"][i] <= prof["opt"][i] <= prof["max"][i]:
            raise DigaError(f"optimisation profile needs min <= opt <= max on {axis}: got min {prof['min']}, "
                            f"opt {prof['opt']}, max {prof['max']}")
    return prof


def graph_layout_shape(nchw: tuple[int, int, int, int], embed_pre: bool) -> tuple[int, ...]:
    """An NCHW profile shape in the layout the graph's input uses (NHWC for embedded pre-processing)."""
    b, c, h, w = nchw
    return (b, h, w, c) if embed_pre else (b, c, h, w)


# --------------------------------------------------------------------------------------- sidecar
def sidecar_path(engine: str | Path) -> Path:
    """`model.engine` -> `model.engine.json`."""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def installed_versions() -> dict[str, Any]:
    """TensorRT, CUDA and GPU facts of this machine (for the sidecar and its check)."""
    import torch

    out: dict[str, Any] = {"tensorrt": None, "cuda": torch.version.cuda, "gpu": None, "compute_capability": None}
    try:
        import tensorrt as trt

        out["tensorrt"] = str(trt.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        out["compute_capability"] = f"{major}.{minor}"
    return out


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The engine's sidecar JSON; a clear error when it is missing or unreadable."""
    side = sidecar_path(engine)
    if not side.is_file():
        raise DigaError(f"TensorRT engine {engine} has no sidecar {side}; rebuild it with `diga export --format tensorrt`"
                        " (the sidecar holds the model metadata and the versions it was built with)")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise DigaError(f"sidecar {side} is unreadable ({exc}); rebuild the engine") from None
    missing = [k for k in ("sidecar_version", "meta", "graph", "built_with") if k not in data]
    if missing:
        raise DigaError(f"sidecar {side} lacks {', '.join(missing)}; rebuild the engine with `diga export --format tensorrt`")
    return data


def check_sidecar(sidecar: dict[str, Any], installed: dict[str, Any], engine: str | Path = "engine") -> None:
    """Engines load only with the TensorRT version and GPU architecture they were built for: say so clearly."""
    built = sidecar["built_with"]
    if not installed.get("tensorrt"):
        raise _no_trt("the tensorrt Python package is not installed")
    if built.get("tensorrt") != installed["tensorrt"]:
        raise DigaError(f"TensorRT engine {engine} was built with TensorRT {built.get('tensorrt')} but "
                        f"TensorRT {installed['tensorrt']} is installed; engines do not load across versions: rebuild "
                        f"it here with `diga export --format tensorrt` or install TensorRT {built.get('tensorrt')}")
    if not installed.get("compute_capability"):
        raise _no_trt("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if built.get("compute_capability") != installed["compute_capability"]:
        raise DigaError(f"TensorRT engine {engine} was built for a GPU of compute capability "
                        f"{built.get('compute_capability')} ({built.get('gpu')}) but this GPU is "
                        f"{installed['compute_capability']} ({installed.get('gpu')}); rebuild the engine on this GPU")


def load_engine(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Check the sidecar against this machine, then deserialize the engine."""
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"TensorRT engine {p} not found")
    sidecar = read_sidecar(p)
    check_sidecar(sidecar, installed_versions(), p)
    trt = require_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(p.read_bytes())
    if engine is None:
        raise DigaError(f"TensorRT could not deserialize {p}; rebuild it with `diga export --format tensorrt`")
    return engine, sidecar


# -------------------------------------------------------------------------------------- building
def build_engine(onnx_path: str | Path, out: str | Path, props: dict[str, str], *, precision: str = "fp16",
                 profile: dict[str, tuple[int, int, int, int]] | None = None, timing_cache: str | Path | None = None,
                 workspace_gib: float = 4.0) -> Path:
    """Build a serialized engine from an ONNX file (already fp16/Q-DQ where the TensorRT version needs it)."""
    from .metadata import GRAPH_KEY, META_KEY, GraphInfo

    if precision not in ENGINE_PRECISIONS:
        raise DigaError(f"TensorRT precision {precision!r} unsupported; use one of {', '.join(ENGINE_PRECISIONS)}")
    profile = profile or build_profile()
    trt = require_tensorrt()
    graph = GraphInfo.model_validate_json(props[GRAPH_KEY])
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = major >= 11 or precision == "fp32"
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DigaError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if major < 11 and not strongly_typed:  # 10.x: precision through builder flags
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # the Q/DQ nodes carry the scales: no calibrator
    opt_profile = builder.create_optimization_profile()
    shapes = {k: graph_layout_shape(v, graph.embed_pre) for k, v in profile.items()}
    opt_profile.set_shape(graph.input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("building a TensorRT %s engine (%s precision), this takes minutes", trt.__version__, precision)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DigaError("TensorRT failed to build the engine; run with --verbose for the builder log")
    atomic_write_bytes(out, bytes(serialized))
    if cache_path:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "sidecar_version": SIDECAR_VERSION, "engine": Path(out).name, "precision": precision,
        "meta": json.loads(props[META_KEY]), "graph": json.loads(props[GRAPH_KEY]),
        "source_checkpoint_hash": props.get("diga.source_checkpoint_hash", ""),
        "sdk_version": props.get("diga.sdk_version", ""), "onnx_metadata": props,
        "profile": {k: list(v) for k, v in shapes.items()},
        "built_with": installed_versions(),
    }
    atomic_write_json(sidecar_path(out), sidecar)
    return Path(out)
