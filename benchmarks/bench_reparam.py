"""What `fast`'s training-time branches cost, side by side in one process: one source-only training step
(forward, backward, SGD step; a batch of 4 crops of 128x256 in channels-last, as the trainers run it) of
`fast` with the branches, `fast` without them (its deployed layout) and `light`; and one eval forward of a
512x1024 frame of `fast` unfolded against folded (what `load_checkpoint(fold=True)` gives every deploy
path). Round-robin timings, medians, ratios, the machine line.

    python benchmarks/bench_reparam.py --repeats 15 --threads 2 --json benchmarks/results/reparam_cost.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def train_step(model: torch.nn.Module) -> Callable[[], None]:
    from diga_sdk.models.registry import channels_last

    model = channels_last(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(4, 3, 128, 256), torch.randint(0, 19, (4, 128, 256))

    def step() -> None:
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(logits, size=y.shape[-2:], mode="bilinear"), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def eval_forward(model: torch.nn.Module) -> Callable[[], None]:
    x = torch.randn(1, 3, 512, 1024)
    model = model.eval()

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("runs/bench/reparam_cost.json"))
    args = ap.parse_args()
    from diga_sdk.io import atomic_write_json
    from diga_sdk.models.fast import FastSegmenter
    from diga_sdk.models.registry import build_model
    from diga_sdk.models.reparam import fold_reparam
    from diga_sdk.results import cpu_isa_flags, env_info

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rep = FastSegmenter(reparam=True)
    cases = {"train_step_fast_branches": train_step(copy.deepcopy(rep)),
             "train_step_fast_plain": train_step(FastSegmenter(reparam=False)),
             "train_step_light": train_step(build_model("light")),
             "eval_512x1024_fast_unfolded": eval_forward(copy.deepcopy(rep)),
             "eval_512x1024_fast_folded": eval_forward(fold_reparam(copy.deepcopy(rep).eval()))}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up: oneDNN primitives, allocator
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {"benchmark": "fast's re-parameterised branches: training and eval cost", "repeats": args.repeats,
              "threads": args.threads, "median_s": med, "times_s": times,
              "ratios": {"train_branches_vs_plain": med["train_step_fast_branches"] / med["train_step_fast_plain"],
                         "train_branches_vs_light": med["train_step_fast_branches"] / med["train_step_light"],
                         "eval_folded_vs_unfolded": med["eval_512x1024_fast_folded"]
                         / med["eval_512x1024_fast_unfolded"]},
              "env": {**env_info(), "torch_threads": torch.get_num_threads(), "isa_flags": cpu_isa_flags()}}
    atomic_write_json(args.json, report)
    for k, v in med.items():
        print(f"{k:32s} {1000 * v:8.1f} ms")
    for k, v in report["ratios"].items():
        print(f"{k:32s} {v:8.3f}")


if __name__ == "__main__":
    main()
