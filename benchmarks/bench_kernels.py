"""Benchmark the fused kernels' CPU fast paths against the loop-style research code and the vectorised
reference, at the paper's training shapes and the embedded benchmark's; writes JSON + markdown.

    python benchmarks/bench_kernels.py [--shapes paper,embedded] [--repeats 5] [--json runs/bench_kernels.json]

Same as `diga bench kernels`.
"""

from __future__ import annotations

import sys

from diga_sdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
