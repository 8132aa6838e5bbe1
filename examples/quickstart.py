"""The ten lines a new user writes: predict, overlay, save, evaluate, export to ONNX, predict with the export.

    python examples/quickstart.py MODEL.safetensors IMAGE.png --val cityscapes:/data/cs@val \
        --calib cityscapes:/data/cs@train --out runs/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def main(model: str, image: str, val: str, calib: str, out: str) -> dict[str, Any]:
    import diga_sdk as diga

    seg = diga.Segmenter(model)                        # or .onnx / .xml / .engine; runtime="auto", device="cpu"
    results = seg.predict(image)                       # a path, an (H,W,3) uint8 array, or a list of either
    r = results[0]
    overlay = r.overlay(alpha=0.5)                     # (H, W, 3) uint8 colour overlay on the image
    r.save(f"{out}/labels.png")                        # label PNG of train IDs (color=True for the palette)
    ev = seg.val(val)                                  # EvalResult: .miou, .per_class, .pixel_acc
    rep = seg.export("onnx-int8", f"{out}/model-int8.onnx", calib=calib)   # ExportReport: .path .parity .miou_delta
    onnx = seg.export("onnx", f"{out}/model.onnx", calib=calib)
    from_onnx = diga.Segmenter(onnx.path).predict(image)[0]               # the exported model, same call
    from_int8 = diga.Segmenter(rep.path).predict(image)[0]
    print(f"mIoU {ev.miou:.2f} | INT8 export {rep.path} (parity passed: {rep.parity_passed}) | labels equal to the "
          f"checkpoint's on {100 * (from_onnx.labels == r.labels).mean():.3f}% of pixels (ONNX fp32), "
          f"{100 * (from_int8.labels == r.labels).mean():.3f}% (ONNX INT8)")
    return {"prediction": r, "overlay": overlay, "eval": ev, "int8": rep, "onnx": onnx, "from_onnx": from_onnx,
            "from_int8": from_int8}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--val", default="synthetic:target@val", help="labelled dataset spec")
    ap.add_argument("--calib", default="synthetic:target@train", help="target images for INT8 calibration")
    ap.add_argument("--out", default="runs/quickstart")
    a = ap.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    main(a.model, a.image, a.val, a.calib, a.out)
