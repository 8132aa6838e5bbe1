"""Training-batch throughput of the data path at real size: batches of 512x896 crops (the authors'
recipe: one frame rescaled to 720x1280 and two at full size, each resized per axis by 0.7-1.0) from
1914x1052 GTA5-layout PNGs, with 0 workers (decoding in the training process) against N workers.
Each setting runs in one process after the other on the same files; medians of batches/s over
repeats; JSON + markdown. Nothing else may run while it measures. One stream's rate varies by about 10 %
from run to run here (1.7x-1.9x for 2 workers on an idle 2-core machine), so the defaults take 48
batches a stream (start-up and the last worker's tail weigh less) and 5 interleaved repeats.

    python benchmarks/bench_loader.py [--images 24] [--batches 48] [--workers 2] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def cpu_line() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "")
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags.split()]
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, {' '.join(isa)}"


def rate(root: Path, workers: int, batches: int) -> float:
    from diga_sdk.data.datasets import GTA5Dataset
    from diga_sdk.data.loader import BatchStream, StepBatches

    data = GTA5Dataset(root)
    sb = StepBatches(data, 3, (512, 896), (0.7, 1.0), seed=0, stream="bench", sizes=[(720, 1280), None, None],
                     per_axis=True)
    stream = iter(BatchStream(sb, 0, batches + 2, workers))
    next(stream), next(stream)  # start-up (worker fork, first decode) is not throughput
    t0 = time.perf_counter()
    n = sum(1 for _ in stream)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/loader.json"))
    args = ap.parse_args()
    import torch

    from diga_sdk.data.layouts import GTA5_SIZE, write_gta5

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_gta5(Path(tmp) / "gta5", args.images, GTA5_SIZE)
        png_mb = sum(p.stat().st_size for p in (root / "images").iterdir()) / args.images / 2**20
        runs: dict[int, list[float]] = {0: [], args.workers: []}
        for _ in range(args.repeats):  # interleaved: drifts in the machine's load hit both alike
            for w in runs:
                runs[w].append(rate(root, w, args.batches))
    med = {w: statistics.median(v) for w, v in runs.items()}
    result = {
        "machine": {"cpu": cpu_line(), "python": platform.python_version(), "torch": torch.__version__},
        "setting": {"images": args.images, "image_size": list(GTA5_SIZE), "png_mb_per_image": round(png_mb, 2),
                    "batch": 3, "crop": [512, 896], "slot_sizes": [[720, 1280], None, None], "batches": args.batches,
                    "repeats": args.repeats},
        "batches_per_s": {str(w): v for w, v in runs.items()},
        "median_batches_per_s": {str(w): round(v, 3) for w, v in med.items()},
        "speedup": round(med[args.workers] / med[0], 2),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    table = ("| workers | batches/s (median) |\n|---:|---:|\n" +
             "".join(f"| {w} | {v:.2f} |\n" for w, v in med.items()) +
             f"\nspeedup {result['speedup']}x ({result['machine']['cpu']})\n")
    args.json.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
