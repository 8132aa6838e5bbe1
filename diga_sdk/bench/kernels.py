"""Kernel benchmark: loop-style (research code) vs vectorised reference vs the CPU fast path, per op and
shape set, with the bytes each op must move, its FLOPs, and floors from a measured copy rate and a
measured FMA rate on the same machine. Timings are interleaved (one repeat of every variant, then the
next) so machine load hits all variants alike; medians are reported.

Used by `benchmarks/bench_kernels.py` and `diga bench kernels`; machine facts are passed in by them.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..kernels import reference as ref
from . import loop_style

SHAPES: dict[str, dict[str, int]] = {
    # the paper's training shapes (DeepLabV2 on 512x896 crops, 1/8 features)
    "paper": {"B": 3, "C": 19, "D": 256, "H": 512, "W": 896, "h": 65, "w": 113},
    # the embedded synthetic benchmark's training shapes
    "embedded": {"B": 3, "C": 19, "D": 256, "H": 256, "W": 512, "h": 32, "w": 64},
    # a seconds-long smoke run (tests, --quick)
    "tiny": {"B": 2, "C": 19, "D": 64, "H": 64, "W": 128, "h": 9, "w": 17},
}


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _time_interleaved(variants: dict[str, Callable[[], Any]], repeats: int,
                      cpu_ms: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall-clock ms per variant; also fills `cpu_ms` with the median process CPU time (all
    threads), which a shared machine's load inflates far less than wall time."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    cpu_samples: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: JIT compilation, allocator, caches
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            samples[name].append(time.perf_counter() - start)
            cpu_samples[name].append(time.process_time() - cpu_start)
    if cpu_ms is not None:
        cpu_ms.update({k: _median_ms(v) for k, v in cpu_samples.items()})
    return {k: _median_ms(v) for k, v in samples.items()}


def measure_machine(repeats: int = 5) -> dict[str, float]:
    """Copy rate (read + write bytes / s) into fresh and preallocated memory, and fp32 matmul FLOP rate."""
    src = torch.rand(16 * 2**20)  # 64 MiB
    dst = torch.empty_like(src)
    a = torch.rand(1024, 1024)
    b = torch.rand(1024, 1024)
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({"clone": src.clone, "copy": lambda: dst.copy_(src), "matmul": lambda: a @ b}, repeats, cpu_t)
    nbytes = 2 * src.numel() * 4
    return {"copy_fresh_gbps": nbytes / t["clone"] / 1e6, "copy_prealloc_gbps": nbytes / t["copy"] / 1e6,
            "fp32_gflops": 2 * 1024**3 / t["matmul"] / 1e6}


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def make_inputs(s: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic inputs: features clustered around the centroid of a blocky label map (so cells have
    class borders like a real segmenter's), pseudo-labels from the same map with 10% ignore."""
    gen = torch.Generator().manual_seed(seed)
    b, c, d, big_h, big_w, h, w = (s[k] for k in ("B", "C", "D", "H", "W", "h", "w"))
    centroids = 2 * torch.randn(c, d, generator=gen)
    blocks = torch.randint(0, c, (b, 1, max(1, h // 8), max(1, w // 8)), generator=gen).float()
    lab_lr = F.interpolate(blocks, size=(h, w), mode="nearest").long()[:, 0]
    features = (centroids[lab_lr].permute(0, 3, 1, 2) + torch.randn(b, d, h, w, generator=gen)).contiguous()
    pseudo = F.interpolate(blocks, size=(big_h, big_w), mode="nearest").long()[:, 0]
    pseudo[torch.rand(b, big_h, big_w, generator=gen) < 0.1] = 255
    return {
        "centroids": centroids, "features": features, "features_random": torch.randn(b, d, h, w, generator=gen),
        "pseudo": pseudo, "img_a": torch.rand(b, 3, big_h, big_w, generator=gen),
        "img_b": torch.rand(b, 3, big_h, big_w, generator=gen), "label_b": torch.randint(0, c, (b, big_h, big_w), generator=gen),
        "chosen": torch.rand(b, c, generator=gen) < 0.5, "labels_lr": lab_lr,
        "teacher": torch.randn(2 * b, c, big_h, big_w, generator=gen),
        "student": torch.randn(2 * b, c, big_h, big_w, generator=gen),
    }


def _row(op: str, times: dict[str, float], cpu_times: dict[str, float], bytes_moved: int, flops: float, machine: dict[str, float],
         **extra: Any) -> dict[str, Any]:
    fast = times["fast"]
    mem_floor = bytes_moved / machine["copy_fresh_gbps"] / 1e6
    mem_floor_prealloc = bytes_moved / machine["copy_prealloc_gbps"] / 1e6
    flop_floor = flops / machine["fp32_gflops"] / 1e6
    floor = max(mem_floor, flop_floor)
    row = {"op": op, "ms": times, "cpu_ms": cpu_times, "bytes_moved": bytes_moved, "flops": flops,
           "floor_ms": floor, "memory_floor_ms": mem_floor, "memory_floor_prealloc_ms": mem_floor_prealloc,
           "flop_floor_ms": flop_floor, "fast_over_floor": fast / floor,
           "fast_over_prealloc_memory_floor": fast / mem_floor_prealloc,
           "speedup_vs_loop": times["loop"] / fast, "speedup_vs_reference": times["reference"] / fast,
           "cpu_speedup_vs_loop": cpu_times["loop"] / cpu_times["fast"],
           "cpu_speedup_vs_reference": cpu_times["reference"] / cpu_times["fast"]}
    row.update(extra)
    return row


def run(shape_names: list[str], repeats: int = 5, seed: int = 0,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark every op at each named shape set; returns the JSON-ready result (without machine facts)."""
    say = progress or (lambda _msg: None)
    load_before = os.getloadavg()
    say("measuring the copy rate and the matmul FLOP rate")
    machine = measure_machine(repeats)
    results: list[dict[str, Any]] = []
    for name in shape_names:
        results.extend(_bench_shape(name, repeats, seed, machine, say))
    return {"machine_rates": machine, "shapes": {n: SHAPES[n] for n in shape_names}, "repeats": repeats,
            "results": results, "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "threads": {"torch": torch.get_num_threads(), "numba": _numba_threads()}}


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _bench_shape(name: str, repeats: int, seed: int, machine: dict[str, float],
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
    """All ops at one shape set."""
    from ..kernels import cpu
    from ..kernels.ops import _FusedDistillation

    rows: list[dict[str, Any]] = []
    s = SHAPES[name]
    x = make_inputs(s, seed)
    b, c, d, big_h, big_w, h, w = (s[k] for k in ("B", "C", "D", "H", "W", "h", "w"))
    pix, fpix = b * big_h * big_w, b * h * w

    say(f"{name}: consensus_select")
    args = (x["pseudo"], x["features"], x["centroids"])
    rand_args = (x["pseudo"], x["features_random"], x["centroids"])
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({
        "loop": lambda: loop_style.consensus_select_loop(*args),
        "reference": lambda: ref.consensus_select_ref(*args),
        "vectorised_fp32_cdist": lambda: loop_style.consensus_select_vectorised_fp32(*args),
        "fast": lambda: cpu.consensus_select_cpu(*args),
        "fast_random_features": lambda: cpu.consensus_select_cpu(*rand_args),
    }, repeats, cpu_t)
    flops = 3 * fpix * c * d + 8 * pix * c  # distances + bilinear upsample and argmax of C maps
    rows.append(_row("consensus_select", t, cpu_t, _nbytes(x["pseudo"], x["features"], x["centroids"], x["pseudo"]),
                     flops, machine, shape=name))

    say(f"{name}: class_mix")
    la = x["pseudo"]
    margs = (x["img_a"], x["img_b"], la, x["label_b"], x["chosen"])
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({"loop": lambda: loop_style.class_mix_loop(*margs),
                           "reference": lambda: ref.class_mix_ref(*margs),
                           "fast": lambda: cpu.class_mix_cpu(*margs)}, repeats, cpu_t)
    moved = _nbytes(x["img_a"], x["img_b"], la, x["label_b"], x["img_a"], la)
    rows.append(_row("class_mix", t, cpu_t, moved, 0.0, machine, shape=name))

    say(f"{name}: choose_classes")
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({"loop": lambda: loop_style.choose_classes_loop(la, c, gen()),
                           "reference": lambda: ref.choose_classes_ref(la, c, gen()),
                           "fast": lambda: ref.pick_half(cpu.class_presence_cpu(la, c), gen())}, repeats, cpu_t)
    rows.append(_row("choose_classes", t, cpu_t, _nbytes(la), float(pix), machine, shape=name))

    say(f"{name}: centroid_sums")
    sargs = (x["features"], x["labels_lr"], c)
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({"loop": lambda: loop_style.centroid_sums_loop(*sargs),
                           "reference": lambda: ref.centroid_sums_ref(*sargs),
                           "fast": lambda: cpu.centroid_sums_cpu(*sargs)}, repeats, cpu_t)
    rows.append(_row("centroid_sums", t, cpu_t, _nbytes(x["features"], x["labels_lr"]) + b * c * (d * 4 + 8),
                     float(fpix * d), machine, shape=name))

    say(f"{name}: symmetric_distillation_loss (forward + backward)")
    teacher, student = x["teacher"], x["student"].requires_grad_()

    def fwd_bwd(fn):
        student.grad = None
        fn(teacher, student).backward()


    cpu_t: dict[str, float] = {}
    t = _time_interleaved({
        "loop": lambda: fwd_bwd(loop_style.symmetric_distillation_loss_loop),
        "reference": lambda: fwd_bwd(ref.symmetric_distillation_loss_ref),
        "fast": lambda: fwd_bwd(lambda tt, ss: _FusedDistillation.apply(tt, ss, 0.5, "cpu")),
    }, max(1, repeats // 2), cpu_t)
    flops = 12.0 * teacher.numel()  # two exps, a log, max/sum passes and the gradient per logit pair
    rows.append(_row("symmetric_distillation_loss", t, cpu_t, _nbytes(teacher, student, student), flops, machine,
                     shape=name, repeats=max(1, repeats // 2)))
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (times in ms; ratios are loop / fast and reference / fast)."""
    lines = [
        "| shape | op | loop-style ms | reference ms | fast ms | vs loop | vs ref | CPU-time vs loop | CPU-time vs ref "
        "| MB moved | MFLOP | floor ms | fast / floor | fast / prealloc-copy floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        ms = r["ms"]
        lines.append(f"| {r['shape']} | {r['op']} | {ms['loop']:.1f} | {ms['reference']:.1f} | {ms['fast']:.2f} | "
                     f"{r['speedup_vs_loop']:.1f}x | {r['speedup_vs_reference']:.1f}x | {r['cpu_speedup_vs_loop']:.1f}x | "
                     f"{r['cpu_speedup_vs_reference']:.1f}x | {r['bytes_moved'] / 1e6:.1f} | "
                     f"{r['flops'] / 1e6:.0f} | {r['floor_ms']:.2f} | {r['fast_over_floor']:.1f}x | "
                     f"{ms['fast'] / max(r['memory_floor_prealloc_ms'], r['flop_floor_ms']):.1f}x |")
    m = result["machine_rates"]
    lines.append("")
    lines.append(f"Copy rate (read+write) {m['copy_fresh_gbps']:.1f} GB/s into fresh memory, "
                 f"{m['copy_prealloc_gbps']:.1f} GB/s into preallocated memory; fp32 matmul {m['fp32_gflops']:.0f} GFLOP/s. "
                 "Floor = max(bytes / fresh copy rate, FLOPs / matmul rate); the last column uses the copy into "
                 "preallocated memory instead (stricter: no page faults). Times are wall-clock medians; "
                 "CPU-time ratios use the process CPU time (all threads), which other jobs on a shared machine "
                 f"inflate less. Load average before / after: {result['load_average_before'][0]:.1f} / "
                 f"{result['load_average_after'][0]:.1f} on {os.cpu_count()} cores.")
    extra = [r for r in result["results"] if r["op"] == "consensus_select"]
    for r in extra:
        lines.append(f"consensus_select ({r['shape']}): vectorised with float32 cdist {r['ms']['vectorised_fp32_cdist']:.1f} ms "
                     f"({r['ms']['vectorised_fp32_cdist'] / r['ms']['fast']:.1f}x the fast path); fast path on "
                     f"unclustered random features (no uniform cells) {r['ms']['fast_random_features']:.1f} ms.")
    return "\n".join(lines) + "\n"
