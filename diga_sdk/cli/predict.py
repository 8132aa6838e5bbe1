"""`diga predict`: label maps for image files from a checkpoint, ONNX, OpenVINO IR or TensorRT engine."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DigaError
from ..progress import console
from . import app
from .common import write_json


@app.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="image files (or folders of images)"),
    model: Path | None = typer.Option(None, "--model", help="checkpoint, .onnx, OpenVINO .xml or TensorRT engine"),
    out: Path = typer.Option(..., "--out", help="folder for the PNG label maps (train IDs)"),
    color: bool = typer.Option(False, "--color", help="also write a colour overlay <name>_color.png"),
    runtime: str = typer.Option("auto", "--runtime", help="auto | torch | onnxruntime | openvino | tensorrt"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    max_miou_drop: float = typer.Option(0.5, "--max-miou-drop", min=0.0,
                                        help="auto: take an INT8/FP16 path only if its checked mIoU loss is within this"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="images of one size run together"),
    json_path: Path | None = typer.Option(None, "--json", help="write the run summary (runtime picked, files) here"),
    url: str | None = typer.Option(None, "--url", help="a running `diga serve` endpoint instead of --model "
                                   "(bearer token from DIGA_API_TOKEN)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace label maps already in --out"),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=64,
                                          help="decoded pixel limit per image (default: DIGA_MAX_PIXELS or 40000000)"),
) -> None:
    """Predict label maps with any runtime; `--runtime auto` picks (and says) the fastest path whose accuracy was
    checked."""
    from ..runtime.runtimes import open_runtime
    from ..serving.runtime_files import claim_outputs, collect_images, predict_files

    if url is not None:
        from ..serving.client import predict_files_remote

        if model is not None:
            raise DigaError("pass either --model (predict here) or --url (a served model), not both")
        summary = predict_files_remote(url, collect_images(images), out, color=color, overwrite=overwrite)
        write_json(json_path, summary)
        console.print(f"wrote {len(summary['outputs'])} label maps to {out} from {summary['runtime']}", highlight=False)
        return
    if model is None:
        raise DigaError("diga predict needs --model PATH (a checkpoint or an exported model)")
    files = collect_images(images)
    claim_outputs(files, out, color, overwrite)  # before the model loads: a refusal costs nothing
    rt = open_runtime(model, runtime, device, max_miou_drop=max_miou_drop)
    console.print(f"runtime: {rt.label}" + (f" ({rt.choice.get('reason')})" if rt.choice else ""), highlight=False)
    summary = predict_files(rt, files, out, color=color, batch_size=batch_size, overwrite=overwrite,
                            max_pixels=max_pixels)
    summary["choice"] = rt.choice
    write_json(json_path, summary)
    console.print(f"wrote {len(summary['outputs'])} label maps to {out} "
                  f"({summary['ms_per_image']:.1f} ms per image with {rt.label})", highlight=False)
