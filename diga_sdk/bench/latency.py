"""Latency of every runtime path for one model: p50/p90/p99, throughput and peak RSS.

Each path (PyTorch eager fp32 / bf16 autocast, onnxruntime fp32 / INT8, OpenVINO fp32 / bf16 / INT8,
`auto`, and CUDA / TensorRT when present) lives in its own worker process, so its peak RSS is its own
and one path's allocations never slow another. The coordinator interleaves the timed runs: round r
asks every worker for one run in turn, so drift of a shared, noisy machine hits all paths alike.
Warm-up runs are excluded. Timed: `Runtime.predict` end to end (uint8 pixels in, label map out).

How far from the machine's limit each path runs: the model's GFLOP per image at each measured size
(torch's FlopCounterMode, 2 per multiply-accumulate) against the fp32 peak of this machine, measured as
a 2048^3 fp32 matmul with the same thread count before and after the timed runs (the faster of the
two). Each row states its achieved GFLOP/s (model GFLOP x batch / p50) and that as a share of the peak;
INT8 and Winograd paths do fewer real fp32 FLOPs, so their share can pass 1.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from ..progress import log, progress_bar
from ..results import ISA_FLAGS, cpu_isa_flags  # noqa: F401  (re-exported for the CLI)
from ..runtime.checked import DEFAULT_MAX_MIOU_DROP


@dataclass
class Variant:
    """One measured path: a name, the file it runs and how `open_runtime` opens it."""

    name: str
    path: str
    runtime: str
    precision: str | None = None
    device: str = "cpu"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)




def library_versions() -> dict[str, str | None]:
    """Versions of every inference library involved (None = not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "openvino", "nncf", "tensorrt"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info() -> dict[str, Any]:
    """env_info() plus ISA flags, library versions and the load average at the start (contention)."""
    from ..results import env_info

    info = env_info()
    info.update({"isa_flags": cpu_isa_flags(), "libraries": library_versions(),
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
    return info


# ----------------------------------------------------------------------------------------- workers
def _worker(conn: Any, variant: Variant, shapes: list[tuple[int, int, int]], warmup: int, threads: int | None) -> None:
    """Open the runtime, warm up every shape, then answer ('run', shape_index) with seconds of one predict."""
    os.environ.setdefault("DIGA_NO_PROGRESS", "1")
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ..runtime.runtimes import open_runtime

        kwargs = {"max_miou_drop": variant.extra["max_miou_drop"]} if "max_miou_drop" in variant.extra else {}
        rt = open_runtime(variant.path, variant.runtime, variant.device, precision=variant.precision, threads=threads,
                          **kwargs)
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8) for b, h, w in shapes]
        for batch in batches:
            for _ in range(warmup):
                rt.predict(batch)
        conn.send(("ready", {"label": rt.label, "choice": rt.choice}))
    except Exception as exc:  # report any failure to the coordinator instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            from ..results import peak_rss_mib

            conn.send(("rss", peak_rss_mib()))
            return
        t0 = time.perf_counter()
        try:
            rt.predict(batches[msg[1]])
        except Exception as exc:  # a failed run is reported, never left for the coordinator to wait on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("time", time.perf_counter() - t0))


def _answer(conn: Any, proc: Any, name: str) -> tuple[str, Any]:
    """The worker's next message; a DigaError naming the path if it died without one."""
    try:
        return conn.recv()
    except (EOFError, ConnectionError):
        proc.join(5)
        raise DigaError(f"the {name} benchmark worker exited with code {proc.exitcode} without an answer") from None


def _stop_all(workers: dict[str, tuple[Any, Any]]) -> None:
    for proc, _ in workers.values():
        if proc.is_alive():
            proc.terminate()
        proc.join(5)


def measure(variants: list[Variant], sizes: list[tuple[int, int]], batches: list[int], *, runs: int = 20,
            warmup: int = 3, threads: int | None = None) -> list[dict[str, Any]]:
    """Interleaved timed runs of every variant at every (batch, size); one row per (variant, size, batch)."""
    if not sizes or not batches or min(batches) < 1:
        raise DigaError(f"batch sizes must be at least 1 and sizes given; got batches {batches}, sizes {sizes}")
    shapes = [(b, h, w) for (h, w) in sizes for b in batches]
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for v in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, v, shapes, warmup, threads), daemon=True)
        proc.start()
        child.close()  # only the worker holds its end: its death reads as EOF here, not as a hang
        log.info("bench: starting %s", v.name)
        kind, payload = _answer(parent, proc, v.name)  # one at a time: loading and warm-up do not overlap
        if kind == "error":
            log.warning("bench: %s unavailable: %s", v.name, payload)
            errors[v.name] = payload
            proc.join()
            continue
        workers[v.name], info[v.name] = (proc, parent), payload
    times: dict[tuple[str, int], list[float]] = {(n, s): [] for n in workers for s in range(len(shapes))}
    with progress_bar("latency", runs * len(shapes)) as bar:
        for _ in range(runs):
            for s in range(len(shapes)):
                for name, (proc, conn) in workers.items():
                    conn.send(("run", s))
                    kind, payload = _answer(conn, proc, name)
                    if kind == "error":
                        _stop_all(workers)
                        raise DigaError(f"{name} failed at batch {shapes[s][0]}, {shapes[s][1]}x{shapes[s][2]}: "
                                        f"{payload}")
                    times[(name, s)].append(payload)
                bar.advance()
    rss: dict[str, float] = {}
    for name, (proc, conn) in workers.items():
        conn.send(("stop",))
        rss[name] = conn.recv()[1]
        proc.join(timeout=30)
    rows = []
    by_name = {v.name: v for v in variants}
    for (name, s), ts in times.items():
        b, h, w = shapes[s]
        arr = np.asarray(ts) * 1e3
        p50 = float(np.percentile(arr, 50))
        rows.append({"variant": name, "runtime": info[name]["label"], "size": f"{h}x{w}", "batch": b,
                     "p50_ms": p50, "p90_ms": float(np.percentile(arr, 90)), "p99_ms": float(np.percentile(arr, 99)),
                     "mean_ms": float(arr.mean()), "throughput_img_s": 1e3 * b / p50, "peak_rss_mib": rss[name],
                     "runs": len(ts), "note": by_name[name].note, "choice": info[name].get("choice") or None})
    for name, err in errors.items():
        rows.append({"variant": name, "error": err, "note": by_name[name].note})
    return rows


def add_ratios(rows: list[dict[str, Any]], baseline: str = "torch-fp32") -> None:
    """speedup_vs_eager = baseline p50 / p50 and vs_fastest = p50 / fastest p50, per (size, batch)."""
    ok = [r for r in rows if "p50_ms" in r]
    for key in {(r["size"], r["batch"]) for r in ok}:
        group = [r for r in ok if (r["size"], r["batch"]) == key]
        base = next((r["p50_ms"] for r in group if r["variant"] == baseline), None)
        fastest = min(r["p50_ms"] for r in group)
        for r in group:
            r["speedup_vs_eager"] = base / r["p50_ms"] if base else None
            r["time_vs_eager"] = r["p50_ms"] / base if base else None
            r["time_vs_fastest"] = r["p50_ms"] / fastest


# ---------------------------------------------------------------------------------------- variants
def prepare_variants(checkpoint: str | Path, work: Path, *, calib: str, calib_images: int = 32,
                     include: list[str] | None = None, device: str = "cpu",
                     max_miou_drop: float | None = None) -> list[Variant]:
    """Export what the paths need into `work` (fp32 ONNX, INT8 ONNX, NNCF INT8 IR; reused when present)."""
    from ..export.images import dataset_images
    from ..export.openvino import convert_to_ir, quantize_ir_int8
    from ..export.pipeline import _preprocessor
    from ..export.quantize import quantize_int8
    from ..models.checkpoint import checkpoint_hash, read_meta
    from ..runtime.onnx_export import export_onnx_model, save_onnx

    meta = read_meta(checkpoint)
    work = work / checkpoint_hash(checkpoint)
    work.mkdir(parents=True, exist_ok=True)
    want = set(include or ALL_VARIANTS)
    unknown = want - set(ALL_VARIANTS)
    if unknown:
        raise DigaError(f"unknown latency path(s) {sorted(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    fp32, int8, ir, ir8 = work / "fp32.onnx", work / "int8.onnx", work / "fp32.xml", work / "int8.xml"
    needs_onnx = want & {"onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16", "openvino-int8"}
    if needs_onnx and not fp32.is_file():
        log.info("bench: exporting fp32 ONNX")
        save_onnx(export_onnx_model(checkpoint)[0], fp32)
    calib_samples = None
    if "onnxruntime-int8" in want and not int8.is_file():
        calib_samples = dataset_images(calib, calib_images, tuple(meta.input_size))
        quantize_int8(fp32, int8, [s.image for s in calib_samples], _preprocessor(meta))
    if "openvino-int8" in want and not ir8.is_file():
        from ..runtime.metadata import onnx_props

        if not ir.is_file():
            convert_to_ir(fp32, ir, onnx_props(fp32))
        calib_samples = calib_samples or dataset_images(calib, calib_images, tuple(meta.input_size))
        quantize_ir_int8(ir, ir8, [s.image for s in calib_samples], _preprocessor(meta))
    ck = str(checkpoint)
    table = {
        "torch-fp32": Variant("torch-fp32", ck, "torch", "fp32", note="PyTorch eager fp32 (the baseline)"),
        "torch-bf16": Variant("torch-bf16", ck, "torch", "bf16", note="PyTorch eager, bf16 autocast"),
        "onnxruntime-fp32": Variant("onnxruntime-fp32", str(fp32), "onnxruntime"),
        "onnxruntime-int8": Variant("onnxruntime-int8", str(int8), "onnxruntime",
                                    note=f"QDQ per-channel, calibrated on {calib_images} images of {calib}"),
        "openvino-fp32": Variant("openvino-fp32", str(fp32), "openvino", "fp32"),
        "openvino-bf16": Variant("openvino-bf16", str(fp32), "openvino", "bf16",
                                 note="bf16 inference hint (needs AVX512-BF16 / AMX, else OpenVINO runs f32)"),
        "openvino-int8": Variant("openvino-int8", str(ir8), "openvino", note="NNCF INT8 IR"),
        "auto": Variant("auto", ck, "auto", note="open_runtime(checkpoint, 'auto')",
                        extra={} if max_miou_drop is None else {"max_miou_drop": max_miou_drop}),
        "torch-cuda": Variant("torch-cuda", ck, "torch", "fp32", device="cuda"),
        "onnxruntime-cuda": Variant("onnxruntime-cuda", str(fp32), "onnxruntime", device="cuda"),
    }
    out = [table[n] for n in ALL_VARIANTS if n in want and (not n.endswith("cuda") or device.startswith("cuda"))]
    return out


ALL_VARIANTS = ("torch-fp32", "torch-bf16", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16",
                "openvino-int8", "auto", "torch-cuda", "onnxruntime-cuda")


def matmul_peak_gflops(threads: int | None = None, n: int = 2048, repeats: int = 8) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) with `threads` threads: the best of `repeats` n^3 matmuls."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n ** 3 / best / 1e9


def checkpoint_gflops(checkpoint: str | Path, sizes: list[tuple[int, int]]) -> dict[str, float]:
    """{"HxW": GFLOP per image} of a checkpoint's model at each size."""
    from ..models.checkpoint import load_checkpoint
    from ..models.flops import model_gflops

    model, _ = load_checkpoint(checkpoint, fold=True)
    return {f"{h}x{w}": model_gflops(model, (h, w)) for h, w in sizes}


def add_efficiency(rows: list[dict[str, Any]], gflops: dict[str, float], peak: float) -> None:
    """model_gflops, achieved_gflops_s (model GFLOP x batch / p50) and share_of_peak on every timed row."""
    for r in rows:
        if "p50_ms" not in r or r["size"] not in gflops:
            continue
        g = gflops[r["size"]]
        rate = g * r["batch"] / (r["p50_ms"] / 1e3)
        r.update({"model_gflops": g, "achieved_gflops_s": rate, "share_of_peak": rate / peak if peak else None})


def run_latency(checkpoint: str | Path, *, sizes: list[tuple[int, int]], batches: list[int], runs: int = 20,
                warmup: int = 3, threads: int | None = None, calib: str = "synthetic:target@train",
                calib_images: int = 32, include: list[str] | None = None, work: Path | None = None,
                engine: str | Path | None = None, val: str | None = None, val_limit: int | None = None,
                max_miou_drop: float = DEFAULT_MAX_MIOU_DROP) -> dict[str, Any]:
    """Prepare every path (with `val`: check the accuracy of the reduced-precision ones not checked yet),
    measure them interleaved, add ratios, GFLOP/s, which paths are accepted and the auto verdict."""
    import torch

    from ..runtime.cache import cache_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = machine_info()
    variants = prepare_variants(checkpoint, work or cache_dir() / "bench", calib=calib, calib_images=calib_images,
                                include=include, device=device, max_miou_drop=max_miou_drop)
    if val:
        from .precision import check_variants

        check_variants(checkpoint, variants, val, limit=val_limit, threads=threads, measured_by="diga bench latency")
    if engine:
        variants.append(Variant("tensorrt", str(engine), "tensorrt", device="cuda"))
    gflops = checkpoint_gflops(checkpoint, sizes)
    peak_before = matmul_peak_gflops(threads)
    rows = measure(variants, sizes, batches, runs=runs, warmup=warmup, threads=threads)
    peak_after = matmul_peak_gflops(threads)
    machine["peak_gflops"] = max(peak_before, peak_after)
    machine["peak_gflops_runs"] = {"before": peak_before, "after": peak_after, "threads": threads,
                                   "what": "fp32 matmul 2048^3, best of 8"}
    add_ratios(rows)
    add_efficiency(rows, gflops, machine["peak_gflops"])
    add_acceptance(rows, variants, max_miou_drop)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _record_fastest(checkpoint, rows, device)
    return {"checkpoint": str(checkpoint), "sizes": [f"{h}x{w}" for h, w in sizes], "batches": batches, "runs": runs,
            "warmup": warmup, "threads": threads, "model_gflops": gflops, "max_miou_drop": max_miou_drop,
            "rows": rows, "machine": machine}


FP32_PATHS = ("torch-fp32", "onnxruntime-fp32", "openvino-fp32")


def add_acceptance(rows: list[dict[str, Any]], variants: list[Variant], max_miou_drop: float) -> None:
    """`accepted` on every row: fp32 paths are the reference (True); a reduced-precision path is accepted
    when its recorded accuracy check loses at most `max_miou_drop` mIoU points (no check: False); the
    auto row gets the path it took and its time against the fastest accepted path of its (size, batch)."""
    from ..runtime.checked import read_checks

    by_name = {v.name: v for v in variants}
    for r in rows:
        v = by_name.get(r["variant"])
        if v is None or v.name == "auto":
            continue
        if v.name in FP32_PATHS or v.device.startswith("cuda"):
            r.update({"accepted": True, "accuracy": "fp32 reference"})
            continue
        check = read_checks(v.path).get(v.name) if v.runtime != "tensorrt" else None
        r["miou_change"] = check.miou_change if check else None
        r["accepted"] = bool(check and check.accepted(max_miou_drop))
        r["accuracy"] = (f"{check.miou_change:+.2f} mIoU on {check.val} ({check.images} images)" if check
                         else "not checked (run `diga bench precision` or pass --val)")
    timed = [r for r in rows if "p50_ms" in r]
    for r in timed:
        if r["variant"] != "auto":
            continue
        group = [o for o in timed if (o["size"], o["batch"]) == (r["size"], r["batch"]) and o.get("accepted")]
        if group:
            best = min(group, key=lambda o: o["p50_ms"])
            r.update({"fastest_accepted": best["variant"], "time_vs_fastest_accepted": r["p50_ms"] / best["p50_ms"]})
        r["picked"] = (r.get("choice") or {}).get("picked")


def _record_fastest(checkpoint: str | Path, rows: list[dict[str, Any]], device: str) -> None:
    """Record every accepted path's batch-1 time at the largest size (by path name) so `auto` reuses them."""
    from ..runtime.runtimes import choice_key, record_choice

    cands = [r for r in rows if r.get("accepted") and r.get("batch") == 1 and "p50_ms" in r
             and not r["variant"].endswith("cuda") and r["variant"] != "tensorrt"]
    if not cands:
        return
    size = max({r["size"] for r in cands}, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    ms = {r["variant"]: r["p50_ms"] for r in cands if r["size"] == size}
    record_choice(choice_key(Path(checkpoint), device), min(ms, key=ms.__getitem__), ms)


# ------------------------------------------------------------------------------------------ output
def markdown_table(result: dict[str, Any]) -> str:
    """The results as a markdown table (one row per path, size and batch)."""
    head = ("| path | runtime (precision) | size | batch | p50 ms | p90 ms | p99 ms | img/s | peak RSS MiB "
            "| speed-up vs eager | time vs fastest | GFLOP/s | share of peak | accepted |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in sorted(result["rows"], key=lambda r: (r.get("size", ""), r.get("batch", 0), r.get("p50_ms", 1e18))):
        if "error" in r:
            lines.append(f"| {r['variant']} | unavailable: {r['error'][:80]} | | | | | | | | | | | | |")
            continue
        sp = f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else "-"
        rate = f"{r['achieved_gflops_s']:.1f}" if r.get("achieved_gflops_s") else "-"
        share = f"{100 * r['share_of_peak']:.0f} %" if r.get("share_of_peak") else "-"
        if r["variant"] == "auto":
            acc = f"took {r.get('picked')}"
            if r.get("time_vs_fastest_accepted"):
                acc += f", {r['time_vs_fastest_accepted']:.2f}x the fastest accepted ({r['fastest_accepted']})"
        else:
            acc = {True: "yes", False: "no", None: "-"}[r.get("accepted")]
            if r.get("miou_change") is not None:
                acc += f" ({r['miou_change']:+.2f} mIoU)"
        lines.append(f"| {r['variant']} | {r['runtime']} | {r['size']} | {r['batch']} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_img_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{sp} | {r['time_vs_fastest']:.2f} | {rate} | {share} | {acc} |")
    m = result["machine"]
    flops = result.get("model_gflops") or {}
    foot = (f"\nCPU: {m['cpu']}, {m['cores']} cores, ISA: {' '.join(m['isa_flags']) or '-'}; load average at start "
            f"{', '.join(f'{x:.1f}' for x in (m.get('load_average') or []))}; libraries: "
            + ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v) + "\n")
    if flops or m.get("peak_gflops"):
        foot += ("Model: " + ", ".join(f"{g:.1f} GFLOP per image at {s}" for s, g in flops.items())
                 + (f"; machine fp32 peak {m['peak_gflops']:.0f} GFLOP/s (2048^3 matmul, same threads)"
                    if m.get("peak_gflops") else "")
                 + (f"; accepted: fp32, or a reduced precision within {result['max_miou_drop']} mIoU"
                    if result.get("max_miou_drop") is not None else "") + "\n")
    return head + "\n".join(lines) + "\n" + foot


def plot(result: dict[str, Any], path: str | Path) -> Path | None:
    """A PNG bar chart of p50 latency (whiskers to p90 and p99) per path, one panel per (size, batch)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (the `plot` extra): no latency plot written")
        return None
    ok = [r for r in result["rows"] if "p50_ms" in r]
    keys = sorted({(r["size"], r["batch"]) for r in ok})
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        group = sorted([r for r in ok if (r["size"], r["batch"]) == key], key=lambda r: r["p50_ms"])
        names = [r["variant"] for r in group]
        p50 = np.array([r["p50_ms"] for r in group])
        ax.barh(names, p50, color="#4c72b0")
        ax.errorbar([r["p90_ms"] for r in group], names, fmt="|", color="black", label="p90")
        ax.errorbar([r["p99_ms"] for r in group], names, fmt="x", color="red", label="p99")
        ax.set_xlabel("latency (ms), bar = p50")
        ax.set_title(f"{key[0]}, batch {key[1]}")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
    fig.suptitle(f"diga latency: {result['machine']['cpu']} ({result['machine']['cores']} cores)")
    fig.tight_layout()
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
