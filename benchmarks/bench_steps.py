"""Cost of one DiGA warm-up step and one self-training step vs one source-only step (same batch).

Usage: python benchmarks/bench_steps.py [--json runs/bench/steps.json] [--repeats 10] [--threads 2]
(the same as `diga bench steps`). Writes JSON + a markdown table; medians of round-robin timings.
"""

from __future__ import annotations

import argparse

from diga_sdk.bench.steps import run_step_benchmark

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default="runs/bench/steps.json")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    run_step_benchmark(args.json, repeats=args.repeats, threads=args.threads)
