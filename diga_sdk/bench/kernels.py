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

# predict-time post-processing: one 512x1024 frame, 19-class logits at output stride 8
POSTPROCESS_SHAPE: dict[str, int] = {"B": 1, "C": 19, "H": 512, "W": 1024, "h": 64, "w": 128}

OPS = ("consensus_select", "class_mix", "choose_classes", "centroid_sums", "symmetric_distillation_loss",
       "upsample_argmax")


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
    }


def distillation_inputs(s: dict[str, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[clean ; mixed] teacher and student logits (2B,C,H,W), made only when the loss is measured."""
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (2 * s["B"], s["C"], s["H"], s["W"])
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def _row(op: str, times: dict[str, float], cpu_times: dict[str, float], bytes_moved: int, flops: float, machine: dict[str, float],
         **extra: Any) -> dict[str, Any]:
    fast = times["fast"]
    mem_floor = bytes_moved / machine["copy_fresh_gbps"] / 1e6
    mem_floor_prealloc = bytes_moved / machine["copy_prealloc_gbps"] / 1e6
    flop_floor = flops / machine["fp32_gflops"] / 1e6
    floor = max(mem_floor, flop_floor)
    row = {"op": op, "ms": times, "cpu_ms": cpu_times, "bytes_moved": bytes_moved, "flops": flops,
           "floor_ms": floor, "memory_floor_ms": mem_floor, "memory_floor_prealloc_ms": mem_floor_prealloc,
           "flop_floor_ms": flop_floor, "fast_over_floor": fast / floor, "fast_over_memory_floor": fast / mem_floor,
           "fast_over_prealloc_memory_floor": fast / mem_floor_prealloc,
           "speedup_vs_loop": times["loop"] / fast, "speedup_vs_reference": times["reference"] / fast,
           "cpu_speedup_vs_loop": cpu_times["loop"] / cpu_times["fast"],
           "cpu_speedup_vs_reference": cpu_times["reference"] / cpu_times["fast"]}
    row.update(extra)
    return row


def run(shape_names: list[str], repeats: int = 5, seed: int = 0,
        progress: Callable[[str], None] | None = None, ops: tuple[str, ...] = OPS,
        post_size: tuple[int, int] = (POSTPROCESS_SHAPE["H"], POSTPROCESS_SHAPE["W"])) -> dict[str, Any]:
    """Benchmark the chosen ops at each named shape set (and the predict-time post-processing once);
    returns the JSON-ready result (without machine facts)."""
    say = progress or (lambda _msg: None)
    load_before = os.getloadavg()
    say("measuring the copy rate and the matmul FLOP rate")
    machine = measure_machine(repeats)
    results: list[dict[str, Any]] = []
    for name in shape_names:
        results.extend(_bench_shape(name, repeats, seed, machine, say, ops))
    if "upsample_argmax" in ops:
        results.extend(_bench_postprocess(post_size, repeats, seed, machine, say))
    post_shape = {**POSTPROCESS_SHAPE, "H": post_size[0], "W": post_size[1], "h": post_size[0] // 8, "w": post_size[1] // 8}
    return {"machine_rates": machine, "shapes": {n: SHAPES[n] for n in shape_names}, "repeats": repeats,
            "postprocess_shape": post_shape, "ops": list(ops), "results": results,
            "summary": summary(results), "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "threads": {"torch": torch.get_num_threads(), "numba": _numba_threads()}}


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """The headline ratios: each fused op's multiple of its memory floor at the paper's shapes, and the
    fused post-processing's speed-up over upsample + argmax (both kinds of logits)."""
    out: dict[str, float] = {}
    for r in results:
        if r["op"] in ("consensus_select", "class_mix") and r["shape"] == "paper":
            out[f"{r['op']}_over_memory_floor"] = r["fast_over_memory_floor"]
        if r["op"] == "upsample_argmax":
            out[f"upsample_argmax_speedup_{r['logits']}"] = r["speedup_vs_reference"]
    return out


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _bench_shape(name: str, repeats: int, seed: int, machine: dict[str, float],
                 say: Callable[[str], None], ops: tuple[str, ...] = OPS) -> list[dict[str, Any]]:
    """The chosen training-time ops at one shape set."""
    from ..kernels import cpu

    rows: list[dict[str, Any]] = []
    s = SHAPES[name]
    x = make_inputs(s, seed)
    b, c, d, big_h, big_w, h, w = (s[k] for k in ("B", "C", "D", "H", "W", "h", "w"))
    pix, fpix = b * big_h * big_w, b * h * w

    if "consensus_select" in ops:
        rows.append(_bench_consensus(name, x, s, repeats, machine, say))
    if "class_mix" in ops:
        rows.append(_bench_class_mix(name, x, repeats, machine, say))
    la = x["pseudo"]
    if "choose_classes" in ops:
        say(f"{name}: choose_classes")
        gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        cpu_t: dict[str, float] = {}
        t = _time_interleaved({"loop": lambda: loop_style.choose_classes_loop(la, c, gen()),
                               "reference": lambda: ref.choose_classes_ref(la, c, gen()),
                               "fast": lambda: ref.pick_half(cpu.class_presence_cpu(la, c), gen())}, repeats, cpu_t)
        rows.append(_row("choose_classes", t, cpu_t, _nbytes(la), float(pix), machine, shape=name))
    if "centroid_sums" in ops:
        say(f"{name}: centroid_sums")
        sargs = (x["features"], x["labels_lr"], c)
        cpu_t = {}
        t = _time_interleaved({"loop": lambda: loop_style.centroid_sums_loop(*sargs),
                               "reference": lambda: ref.centroid_sums_ref(*sargs),
                               "fast": lambda: cpu.centroid_sums_cpu(*sargs)}, repeats, cpu_t)
        rows.append(_row("centroid_sums", t, cpu_t, _nbytes(x["features"], x["labels_lr"]) + b * c * (d * 4 + 8),
                         float(fpix * d), machine, shape=name))
    if "symmetric_distillation_loss" in ops:
        rows.append(_bench_distillation(name, repeats, machine, say))
    return rows


def _bench_consensus(name: str, x: dict[str, torch.Tensor], s: dict[str, int], repeats: int,
                     machine: dict[str, float], say: Callable[[str], None]) -> dict[str, Any]:
    from ..kernels import cpu

    say(f"{name}: consensus_select")
    b, c, d, big_h, big_w, h, w = (s[k] for k in ("B", "C", "D", "H", "W", "h", "w"))
    pix, fpix = b * big_h * big_w, b * h * w
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
    return _row("consensus_select", t, cpu_t, _nbytes(x["pseudo"], x["features"], x["centroids"], x["pseudo"]),
                flops, machine, shape=name)


def _bench_class_mix(name: str, x: dict[str, torch.Tensor], repeats: int, machine: dict[str, float],
                     say: Callable[[str], None]) -> dict[str, Any]:
    from ..kernels import cpu

    say(f"{name}: class_mix")
    la = x["pseudo"]
    margs = (x["img_a"], x["img_b"], la, x["label_b"], x["chosen"])
    cpu_t: dict[str, float] = {}
    t = _time_interleaved({"loop": lambda: loop_style.class_mix_loop(*margs),
                           "reference": lambda: ref.class_mix_ref(*margs),
                           "fast": lambda: cpu.class_mix_cpu(*margs)}, repeats, cpu_t)
    moved = _nbytes(x["img_a"], x["img_b"], la, x["label_b"], x["img_a"], la)
    return _row("class_mix", t, cpu_t, moved, 0.0, machine, shape=name)


def _bench_distillation(name: str, repeats: int, machine: dict[str, float], say: Callable[[str], None]) -> dict[str, Any]:
    from ..kernels.ops import _FusedDistillation

    say(f"{name}: symmetric_distillation_loss (forward + backward)")
    teacher, student = distillation_inputs(SHAPES[name])
    student.requires_grad_()

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
    return _row("symmetric_distillation_loss", t, cpu_t, _nbytes(teacher, student, student), flops, machine,
                shape=name, repeats=max(1, repeats // 2))


def postprocess_logits(size: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Two kinds of (1,19,H/8,W/8) logits: i.i.d. random (every cell a class border: the worst case) and
    a segmenter-like map (blocky regions with a clear winner and noise)."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = POSTPROCESS_SHAPE["B"], POSTPROCESS_SHAPE["C"], max(8, size[0] // 8), max(8, size[1] // 8)
    regions = torch.randint(0, c, (b, 1, h // 8, w // 8), generator=gen).float()
    lab = F.interpolate(regions, size=(h, w), mode="nearest").long()[:, 0]
    smooth = torch.randn(b, c, h, w, generator=gen) + 6.0 * F.one_hot(lab, c).permute(0, 3, 1, 2).float()
    return {"random": 3.0 * torch.randn(b, c, h, w, generator=gen), "segmenter_like": smooth.contiguous()}


def _bench_postprocess(size: tuple[int, int], repeats: int, seed: int, machine: dict[str, float],
                       say: Callable[[str], None]) -> list[dict[str, Any]]:
    """upsample_argmax: F.interpolate + argmax (the unfused reference) against the fused CPU path."""
    from ..kernels import cpu

    rows = []
    for kind, logits in postprocess_logits(size, seed).items():
        say(f"upsample_argmax ({kind} logits) at {size[0]}x{size[1]}")
        fused = cpu.upsample_argmax_cpu(logits, size)
        mismatches = int((fused != ref.upsample_argmax_ref(logits, size)).sum())
        cpu_t: dict[str, float] = {}
        t = _time_interleaved({
            "reference": lambda lg=logits: ref.upsample_argmax_ref(lg, size),
            "upsample_only": lambda lg=logits: F.interpolate(lg, size=size, mode="bilinear", align_corners=False),
            "fast": lambda lg=logits: cpu.upsample_argmax_cpu(lg, size),
            "fast_uint8": lambda lg=logits: cpu.upsample_argmax_cpu(lg, size, torch.uint8),
        }, repeats, cpu_t)
        t["loop"], cpu_t["loop"] = t["reference"], cpu_t["reference"]  # no loop-style variant: the reference is it
        pix = logits.shape[0] * size[0] * size[1]
        flops = 7.0 * pix * logits.shape[1]  # per output pixel and class: two 2-tap blends and a compare
        rows.append(_row("upsample_argmax", t, cpu_t, _nbytes(logits) + pix * 8, flops, machine,
                         shape=f"{size[0]}x{size[1]}", logits=kind, mismatches_vs_reference=mismatches))
    return rows


def machine_line(result: dict[str, Any]) -> str:
    """CPU model, ISA flags, cores and threads of the run (from the `env` the CLI adds), one line."""
    env = result.get("env", {})
    threads = result.get("threads", {})
    return (f"Machine: {env.get('cpu', 'unknown CPU')}, ISA {' '.join(env.get('isa_flags', [])) or '-'}, "
            f"{env.get('cores', os.cpu_count())} cores; threads: torch {threads.get('torch')}, numba {threads.get('numba')}.")


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (times in ms; ratios are loop / fast and reference / fast)."""
    lines = [
        "| shape | op | loop-style ms | reference ms | fast ms | vs loop | vs ref | CPU-time vs loop | CPU-time vs ref "
        "| MB moved | MFLOP | memory floor ms | fast / memory floor | floor ms | fast / floor "
        "| fast / prealloc-copy floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        ms = r["ms"]
        op = r["op"] + (f" ({r['logits']} logits)" if "logits" in r else "")
        loop = "-" if r["op"] == "upsample_argmax" else f"{ms['loop']:.1f}"
        vs_loop = "-" if r["op"] == "upsample_argmax" else f"{r['speedup_vs_loop']:.1f}x"
        cpu_vs_loop = "-" if r["op"] == "upsample_argmax" else f"{r['cpu_speedup_vs_loop']:.1f}x"
        lines.append(f"| {r['shape']} | {op} | {loop} | {ms['reference']:.1f} | {ms['fast']:.2f} | "
                     f"{vs_loop} | {r['speedup_vs_reference']:.1f}x | {cpu_vs_loop} | "
                     f"{r['cpu_speedup_vs_reference']:.1f}x | {r['bytes_moved'] / 1e6:.1f} | "
                     f"{r['flops'] / 1e6:.0f} | {r['memory_floor_ms']:.2f} | {r['fast_over_memory_floor']:.1f}x | "
                     f"{r['floor_ms']:.2f} | {r['fast_over_floor']:.1f}x | "
                     f"{ms['fast'] / max(r['memory_floor_prealloc_ms'], r['flop_floor_ms']):.1f}x |")
    m = result["machine_rates"]
    lines.append("")
    lines.append(machine_line(result))
    lines.append(f"Copy rate (read+write) {m['copy_fresh_gbps']:.1f} GB/s into fresh memory, "
                 f"{m['copy_prealloc_gbps']:.1f} GB/s into preallocated memory; fp32 matmul {m['fp32_gflops']:.0f} GFLOP/s. "
                 "Memory floor = bytes the op must read and write / fresh copy rate; floor = max(memory floor, "
                 "FLOPs / matmul rate); the last column uses the copy into preallocated memory (no page faults) "
                 "instead. Times are wall-clock medians; CPU-time ratios use the process CPU time (all threads), "
                 "which other jobs on a shared machine inflate less. Load average before / after: "
                 f"{result['load_average_before'][0]:.1f} / {result['load_average_after'][0]:.1f} on {os.cpu_count()} cores.")
    for r in result["results"]:
        if r["op"] == "consensus_select":
            lines.append(f"consensus_select ({r['shape']}): vectorised with float32 cdist "
                         f"{r['ms']['vectorised_fp32_cdist']:.1f} ms ({r['ms']['vectorised_fp32_cdist'] / r['ms']['fast']:.1f}x "
                         f"the fast path); fast path on unclustered random features (few uniform cells) "
                         f"{r['ms']['fast_random_features']:.1f} ms.")
        if r["op"] == "upsample_argmax":
            lines.append(f"upsample_argmax ({r['logits']} logits, {r['shape']}, 19 classes): unfused F.interpolate + "
                         f"argmax {r['ms']['reference']:.1f} ms (the upsample alone {r['ms']['upsample_only']:.1f} ms), "
                         f"fused {r['ms']['fast']:.2f} ms ({r['speedup_vs_reference']:.1f}x), uint8 labels "
                         f"{r['ms']['fast_uint8']:.2f} ms; labels differing from the unfused path: "
                         f"{r['mismatches_vs_reference']}.")
    summ = result.get("summary", {})
    if summ:
        lines.append("Headline ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in summ.items()) + ".")
    return "\n".join(lines) + "\n"
