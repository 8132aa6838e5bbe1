"""Latency of every deployment path for one model (the issue's table): PyTorch eager fp32 / bf16 autocast,
onnxruntime fp32 / INT8, OpenVINO fp32 / bf16 / INT8, `auto` (+ CUDA / TensorRT when present);
p50/p90/p99, throughput and peak RSS, warm-up excluded, runs interleaved; JSON + markdown + PNG.

    python benchmarks/bench_latency.py [--model runs/demo/source_only/model.safetensors] [--sizes 512x1024]
        [--batch 1] [--runs 20] [--threads N] [--json ...] [--md ...] [--plot ...]

Same as `diga bench latency` with the defaults below filled in for flags not given.
"""

from __future__ import annotations

import sys

from diga_sdk.cli import main

DEFAULTS = {"--model": "runs/demo/source_only/model.safetensors", "--sizes": "512x1024", "--batch": "1",
            "--json": "benchmarks/results/latency.json", "--md": "benchmarks/results/latency.md",
            "--plot": "benchmarks/results/latency.png"}

if __name__ == "__main__":
    args = sys.argv[1:]
    for flag, value in DEFAULTS.items():
        if flag not in args:
            args += [flag, value]
    sys.exit(main(["bench", "latency", *args]))
