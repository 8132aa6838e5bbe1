"""`Segmenter`: one object for a model file in any format, with a verb per task (predict, val, export,
adapt, online, benchmark) returning typed results. The `diga` command calls these same methods.

Nothing heavy loads here: each verb imports what it needs when it runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DigaError
from .segmenter_results import AdaptRun, EvalResult, ExportReport, LatencyReport, Prediction

if TYPE_CHECKING:
    from .config import AdaptConfig
    from .models.checkpoint import ModelMeta
    from .online.adapter import OnlineAdapter, OnlineConfig
    from .runtime.runtimes import Runtime

ImageLike = str | Path | np.ndarray
PRESETS = ("demo",)  # named adaptation settings; `demo` is what `make demo` runs on the embedded benchmark


class Segmenter:
    """A segmentation model: a checkpoint (.safetensors), an ONNX file, an OpenVINO IR (.xml) or a TensorRT engine.

    `runtime="auto"` picks the fastest installed runtime for the file on `device` (measured once, then
    remembered per model and machine); the runtime opens on first use."""

    def __init__(self, model: str | Path, runtime: str = "auto", device: str = "cpu", *,
                 precision: str | None = None, threads: int | None = None) -> None:
        from .runtime.runtimes import RUNTIMES, model_format

        self.path = Path(model)
        if not self.path.is_file():
            raise DigaError(f"model file {self.path} not found; give a .safetensors checkpoint, .onnx, .xml or .engine")
        if runtime != "auto" and runtime not in RUNTIMES:
            raise DigaError(f"unknown runtime {runtime!r}; choose auto or one of {', '.join(RUNTIMES)}")
        self.format = model_format(self.path)
        self.runtime_name, self.device, self.precision, self.threads = runtime, device, precision, threads
        self._runtime: Runtime | None = None

    def __repr__(self) -> str:
        return f"Segmenter({str(self.path)!r}, runtime={self.runtime_name!r}, device={self.device!r})"

    # ------------------------------------------------------------------------------------ the model
    @property
    def runtime(self) -> Runtime:
        """The opened runtime (opened, and with `auto` chosen, on first use)."""
        if self._runtime is None:
            from .runtime.runtimes import open_runtime

            self._runtime = open_runtime(self.path, self.runtime_name, self.device, precision=self.precision,
                                         threads=self.threads)
        return self._runtime

    @property
    def meta(self) -> ModelMeta:
        """The model's metadata: name, class names, palette, normalisation, input size."""
        if self.format == "checkpoint" and self._runtime is None:
            from .models.checkpoint import read_meta

            return read_meta(self.path)
        return self.runtime.meta

    @property
    def is_checkpoint(self) -> bool:
        return self.format == "checkpoint"

    def _need_checkpoint(self, verb: str) -> Path:
        if not self.is_checkpoint:
            raise DigaError(f"{verb} needs the .safetensors checkpoint, not the exported {self.path.name}; "
                            "open the checkpoint with diga.Segmenter('model.safetensors')")
        return self.path

    # ------------------------------------------------------------------------------------- predict
    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 1) -> list[Prediction]:
        """Label maps for an image file, an (H,W,3) uint8 RGB array (or a (B,H,W,3) batch), or a list of either."""
        from .data.datasets import read_image

        if isinstance(images, np.ndarray) and images.ndim == 4:
            items: list[ImageLike] = list(images)
        else:
            items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        if not items:
            raise DigaError("predict got no images; pass a path, an (H,W,3) uint8 array or a list of them")
        if batch_size < 1:
            raise DigaError(f"batch_size must be at least 1, got {batch_size}")
        loaded: list[tuple[np.ndarray, Path | None]] = []
        for item in items:
            if isinstance(item, (str, Path)):
                p = Path(item)
                if not p.is_file():
                    raise DigaError(f"image {p} does not exist")
                loaded.append((read_image(p), p))
            elif isinstance(item, np.ndarray):
                loaded.append((_check_image(item), None))
            else:
                raise DigaError(f"predict takes image paths or (H,W,3) uint8 arrays, got {type(item).__name__}")
        rt = self.runtime
        labels: list[np.ndarray | None] = [None] * len(loaded)
        for start in range(0, len(loaded), batch_size):
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in range(start, min(start + batch_size, len(loaded))):
                groups.setdefault(loaded[i][0].shape, []).append(i)
            for idx in groups.values():  # images of one size run together
                for i, lab in zip(idx, rt.predict(np.stack([loaded[i][0] for i in idx])), strict=True):
                    labels[i] = lab
        meta = rt.meta
        return [Prediction(img, lab, list(meta.class_names), [list(c) for c in meta.palette], path, rt.label)
                for (img, path), lab in zip(loaded, labels, strict=True)]

    # ----------------------------------------------------------------------------------------- val
    def val(self, data: str, subset: int | None = None, *, limit: int | None = None,
            scales: tuple[float, ...] = (1.0,)) -> EvalResult:
        """mIoU, per-class IoU and pixel accuracy on a labelled dataset spec (e.g. 'cityscapes:/data/cs@val').

        A checkpoint is evaluated by the same PyTorch evaluator as `diga eval`; an exported model by its runtime.
        `subset` 16 or 13 averages over the SYNTHIA class subsets; `scales` max-fuses multi-scale logits
        (the authors report 1.0 + 0.5; checkpoints only)."""
        if self.is_checkpoint and self.runtime_name in ("auto", "torch") and limit is None:
            from .evaluate_specs import evaluate_specs

            return EvalResult.from_summary(data, evaluate_specs(self.path, [data], subset=subset,
                                                                device=self.device, scales=scales)[data])
        if tuple(scales) != (1.0,):
            raise DigaError("multi-scale evaluation runs on checkpoints (runtime torch); evaluate the checkpoint")
        if subset not in (None, 19):
            raise DigaError("subset 16/13 is evaluated on checkpoints (runtime torch); evaluate the checkpoint instead")
        from .export.accuracy import runtime_miou

        return EvalResult.from_summary(data, runtime_miou(self.runtime, data, limit=limit))

    # -------------------------------------------------------------------------------------- export
    def export(self, format: str, path: str | Path, calib: str | None = None, *, parity: bool = True,
               parity_data: str | None = None, **options: Any) -> ExportReport:
        """Export the checkpoint to `format` (onnx, onnx-int8, onnx-fp16, openvino, openvino-int8, tensorrt) at `path`.

        `calib` are target-domain images for INT8 calibration. The parity check against PyTorch runs on
        `parity_data`. Both default to the data the checkpoint records it was trained on (its target's val
        and train splits; the embedded benchmark only for a model trained there). An export that fails
        parity raises and writes nothing (parity=False skips it: not recommended). Other options are those
        of `diga export` (opset, dynamic, embed_pre, embed_post, parity_images, calib_images, val, precision, ...)."""
        from .export.pipeline import default_data_specs, export_model

        ckpt = self._need_checkpoint("export")
        default_parity, default_calib = default_data_specs(ckpt)
        calib = calib or default_calib
        parity_data = parity_data or (calib if calib != default_calib else default_parity)
        report = export_model(ckpt, format, path, calib=calib, parity_data=parity_data if parity else None,
                              **options)
        return ExportReport.from_report(report)

    # --------------------------------------------------------------------------------------- adapt
    def adapt(self, source: str | None = None, target: str | None = None, target_val: str | None = None,
              preset: str | None = None, config: Any = None, *, mode: str = "uda",
              eval_sets: Sequence[str] | None = None, labelled_fraction: float | None = None,
              labelled_list: str | Path | None = None, out: str | Path = "runs/adapt", seeds: int = 1,
              resume: bool = False) -> AdaptRun:
        """Train from this checkpoint with DiGA in one of its three uses, evaluating every stage.

        - mode="uda" (`diga adapt`): labelled `source`, unlabelled `target`; warm-up starts from this model,
          then pseudo-labels and self-training rounds; stages evaluated on `target_val`.
        - mode="dg" (`diga adapt dg`): labelled `source` only, no target image; this model is the baseline
          (stage `init`) and the DG stage starts from it; stages evaluated on `eval_sets` (default [target_val]).
        - mode="semi" (`diga adapt semi`): `target` is one labelled dataset, of which `labelled_fraction` (or
          the images in `labelled_list`) stay labelled; the supervised stage fine-tunes this model on them,
          then warm-up and self-training use the unlabelled rest; stages evaluated on `target_val`.

        `config` is the mode's config (AdaptConfig, DGConfig or SemiConfig), a dict of its settings or a YAML
        file; `preset` a named setting ('demo', 'gta5-cityscapes', 'synthia-cityscapes' for uda; 'gta5-dg'
        for dg). The arguments given override both. Results and checkpoints go to `out`; `.final` is the
        last stage's model."""
        ckpt = self._need_checkpoint("adapt")
        if mode == "uda":
            from .adapt.pipeline import run_seeds

            updates = {k: v for k, v in (("source", source), ("target", target), ("target_val", target_val)) if v}
            cfg = _adapt_config(preset, config, str(ckpt), {**updates, "init_checkpoint": str(self.path)})
            stages = run_seeds(cfg, out, seeds, resume)
            return AdaptRun(Path(out), stages, seeds,
                            "best_target_val_uses_target_labels" if cfg.select_best else "last")
        if mode not in ("dg", "semi"):
            raise DigaError(f"unknown adaptation mode {mode!r}; choose uda, dg or semi")
        if seeds != 1:
            raise DigaError(f"seeds={seeds}: several seeds are run by mode='uda' only; run the {mode} mode per seed")
        meta = self.meta
        model = {"model.name": meta.model_name, "model.num_classes": meta.num_classes, "model.classes": meta.classes,
                 "model.options": meta.model_options}
        if mode == "dg":
            from .adapt.dg import run_dg
            from .config import DGConfig

            _refuse(mode, target=target, labelled_fraction=labelled_fraction, labelled_list=labelled_list)
            specs = list(eval_sets) if eval_sets else ([target_val] if target_val else None)
            cfg = _mode_config(DGConfig, preset, config, {**model, "source": source, "eval": specs,
                                                          "init_checkpoint": str(ckpt)})
            dg = run_dg(cfg, out, resume)
            js = dg.to_json()
            return AdaptRun(Path(out), js.pop("stages"), mode="dg", details=js)
        from .adapt.semi import run_semi
        from .config import SemiConfig

        _refuse(mode, source=source, eval_sets=eval_sets, preset=preset)
        adapt_model = {f"adapt.{k}": v for k, v in model.items()}
        cfg = _mode_config(SemiConfig, None, config, {
            **adapt_model, **{f"supervised.{k}": v for k, v in model.items()}, "target": target,
            "target_val": target_val, "labelled_fraction": labelled_fraction,
            "labelled_list": str(labelled_list) if labelled_list else None, "supervised.init_checkpoint": str(ckpt)})
        js = run_semi(cfg, out, resume).to_json()
        return AdaptRun(Path(out), js.pop("stages"), mode="semi", details=js)

    # --------------------------------------------------------------------------------- recalibrate
    def recalibrate(self, target: str, out: str | Path = "runs/recalibrate", *, overwrite: bool = False,
                    batch_size: int = 4) -> Segmenter:
        """BatchNorm statistics re-estimated on the unlabelled `target` frames (AdaBN, `diga adapt recalibrate`);
        returns a Segmenter of `out/bn_recalibrated.safetensors`. This checkpoint is left as it was."""
        from .adapt.bn_recalibration import RECALIBRATED, recalibrated_checkpoint
        from .data.datasets import open_dataset
        from .outputs import claim_run_folder

        ckpt = self._need_checkpoint("recalibration")
        claim_run_folder(Path(out), resume=False, overwrite=overwrite, what="recalibrated model")
        path = recalibrated_checkpoint(ckpt, open_dataset(target, labelled=False), Path(out) / RECALIBRATED,
                                       batch_size, self.device)
        return Segmenter(path, runtime=self.runtime_name, device=self.device, precision=self.precision,
                         threads=self.threads)

    # -------------------------------------------------------------------------------------- online
    def online(self, config: OnlineConfig | dict[str, Any] | str | Path | None = None, *,
               state: str | Path | None = None, resume: bool = False) -> OnlineAdapter:
        """The on-device adapter for this checkpoint: `adapter.step(frame)` predicts and adapts frame by frame.

        `config` is an OnlineConfig, a dict of its settings or a YAML file; `state` where its state is saved
        (with resume=True an existing state is continued)."""
        from .config import load_config
        from .online.adapter import OnlineConfig, open_adapter

        if isinstance(config, (str, Path)):
            cfg = load_config(config, OnlineConfig)
        elif isinstance(config, dict):
            cfg = load_config(None, OnlineConfig, _flatten(config))
        else:
            cfg = config
        return open_adapter(self._need_checkpoint("online adaptation"), cfg, state=state, resume=resume)

    # ----------------------------------------------------------------------------------- benchmark
    def benchmark(self, sizes: Sequence[tuple[int, int]] = ((512, 1024),), batches: Sequence[int] = (1,), *,
                  runs: int = 20, warmup: int = 3, paths: Sequence[str] | None = None, threads: int | None = None,
                  calib: str = "synthetic:target@train", calib_images: int = 32,
                  work: str | Path | None = None, engine: str | Path | None = None) -> LatencyReport:
        """Latency of every runtime path (a checkpoint: eager, ONNX Runtime, OpenVINO, INT8, ...; an exported
        file: its own runtime), measured interleaved in worker processes, as `diga bench latency` does.
        `engine` adds a TensorRT engine of the checkpoint (GPU machines)."""
        from .bench.latency import Variant, add_ratios, machine_info, measure, run_latency

        size_list = [(int(h), int(w)) for h, w in sizes]
        if self.is_checkpoint:
            result = run_latency(self.path, sizes=size_list, batches=list(batches), runs=runs, warmup=warmup,
                                 threads=threads, calib=calib, calib_images=calib_images,
                                 include=list(paths) if paths else None, work=Path(work) if work else None,
                                 engine=engine)
        else:
            rt = self.runtime
            rows = measure([Variant(f"{rt.name}-{rt.precision}", str(self.path), rt.name, self.precision,
                                    self.device, note=f"{self.path.name} as given")],
                           size_list, list(batches), runs=runs, warmup=warmup, threads=threads)
            add_ratios(rows)  # no eager row here: speed-ups stay empty, time_vs_fastest is filled
            result = {"checkpoint": str(self.path), "sizes": [f"{h}x{w}" for h, w in size_list],
                      "batches": list(batches), "runs": runs, "warmup": warmup, "threads": threads, "rows": rows,
                      "machine": machine_info()}
        return LatencyReport(result["rows"], result["machine"], result)


def _refuse(mode: str, **given: Any) -> None:
    """Arguments that mean nothing in this mode raise instead of being ignored."""
    wrong = [k for k, v in given.items() if v is not None]
    if wrong:
        raise DigaError(f"mode={mode!r} takes no {', '.join(wrong)} (see Segmenter.adapt's docstring)")


def _mode_config(cls: type, preset: str | None, config: Any, updates: dict[str, Any]) -> Any:
    """A DGConfig / SemiConfig / AdaptConfig from a preset or a config (instance, dict or YAML), `updates` on top."""
    from .config import load_config

    if preset is not None and config is not None:
        raise DigaError("pass either preset= or config=, not both (a config holds every setting a preset sets)")
    if preset is not None:
        return load_config(None, cls, updates, preset=preset)
    if config is None or isinstance(config, dict):
        base = config or {}
    elif isinstance(config, cls):
        base = config.model_dump(exclude_unset=True)
    elif isinstance(config, (str, Path)):
        base = load_config(config, cls).model_dump(exclude_unset=True)
    else:
        raise DigaError(f"config must be a {cls.__name__}, a dict or a YAML path, got {type(config).__name__}")
    return load_config(None, cls, {**_flatten(base), **updates})


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DigaError(f"an image array must be (H,W,3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'warmup': {'steps': 4}} -> {'warmup.steps': 4} (load_config's override form)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _adapt_config(preset: str | None, config: Any, init: str, updates: dict[str, Any]) -> AdaptConfig:
    """The run's AdaptConfig from a preset or a config, with `updates` (source, target, ...) on top; built by
    validation so that evaluation sets left unset derive from the data the user names."""
    from .config import AdaptConfig
    from .presets import PRESETS as RECIPES

    if preset is not None and config is not None:
        raise DigaError("pass either preset= or config=, not both (a config holds every setting a preset sets)")
    if preset is not None and preset not in PRESETS and preset not in RECIPES:
        raise DigaError(f"unknown adaptation preset {preset!r}; known: {', '.join((*PRESETS, *RECIPES))}")
    if preset == "demo":
        from .bench.ablation import demo_adapt_config
        from .models.checkpoint import read_meta

        return _mode_config(AdaptConfig, None, demo_adapt_config(init, model=read_meta(init).model_name), updates)
    return _mode_config(AdaptConfig, preset, config, updates)
