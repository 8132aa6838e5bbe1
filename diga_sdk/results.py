"""Stage results shared by every job that trains or adapts: the table, the JSON, the machine facts."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from .io import atomic_write_json
from .progress import console

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")

def cpu_isa_flags() -> list[str]:
    """The SIMD / matrix instruction-set flags of this CPU that matter for inference speed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in flags]
    except OSError:
        pass
    return []


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_isa_flags()))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def env_info() -> dict[str, Any]:
    """Machine and library facts recorded beside every measurement."""
    import numpy
    import torch

    from ._version import __version__

    return {
        "diga_sdk": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "cpu": cpu_model(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "platform": platform.platform(),
    }


def stage_entry(name: str, source_val: float | None, target_val: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source_val_miou": source_val, "target_val_miou": target_val, **extra}


def write_results(path: str | Path, stages: list[dict[str, Any]], **extra: Any) -> None:
    """`{"stages": [...], "env": {...}}` written atomically."""
    atomic_write_json(path, {"stages": stages, "env": env_info(), **extra})


def print_stage_table(stages: list[dict[str, Any]], title: str = "mIoU (%)") -> None:
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("source-val", justify="right")
    table.add_column("target-val", justify="right")
    for s in stages:
        table.add_row(s["name"], _fmt(s.get("source_val_miou")), _fmt(s.get("target_val_miou")))
    console.print(table)


@dataclass(frozen=True)
class StageEval:
    """One trained stage of a mode: its checkpoint and mIoU (%) on each evaluated dataset spec."""

    name: str
    checkpoint: str
    eval: dict[str, float]
    seconds: float | None = None

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> StageEval:
        return cls(rec["name"], rec["checkpoint"], dict(rec["eval"]), rec.get("seconds"))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_eval_table(rows: list[tuple[str, dict[str, float | None]]], specs: list[str], title: str,
                     first: str = "stage") -> None:
    """One table: a row per stage (or class), a column per dataset spec."""
    table = Table(title=title)
    table.add_column(first)
    for spec in specs:
        table.add_column(spec, justify="right")
    for name, values in rows:
        table.add_row(name, *(_fmt(values.get(spec)) for spec in specs))
    console.print(table)
