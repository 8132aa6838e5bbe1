"""mIoU of every deployment precision (PyTorch fp32 / bf16, onnxruntime fp32 / INT8 / FP16, OpenVINO
fp32 / bf16 / INT8) on the target-val split; JSON + markdown.

    python benchmarks/bench_precision.py [--model runs/demo/source_only/model.safetensors]
        [--val synthetic:target@val] [--calib synthetic:target@train] [--calib-images 64]

Same as `diga bench precision` with the defaults below filled in for flags not given.
"""

from __future__ import annotations

import sys

from diga_sdk.cli import main

DEFAULTS = {"--model": "runs/demo/source_only/model.safetensors", "--json": "benchmarks/results/precision.json",
            "--md": "benchmarks/results/precision.md"}

if __name__ == "__main__":
    args = sys.argv[1:]
    for flag, value in DEFAULTS.items():
        if flag not in args:
            args += [flag, value]
    sys.exit(main(["bench", "precision", *args]))
