"""Per-frame cost of two (or three) online-adaptation setups side by side: each side is (code checkout, recipe
YAML); the sides run in alternating 1-thread child processes, `--rounds` times each, on the same frames, so a
shared machine's load falls on both alike. Median and p99 ms per frame (prediction + update + checks)
per side and their ratio; JSON + a markdown table.

    python benchmarks/bench_online_ab.py --model CKPT --a /work/main:docs/online/anchored.yaml \\
        --b .:docs/online/guarded.yaml --size 128x256 --frames 60 --rounds 3 --json benchmarks/results/online_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def child(model: str, config: str, size: tuple[int, int], frames: int, warmup: int, budget: float | None) -> dict:
    """Runs in the child: adapt on `frames` frames after `warmup` untimed ones; per-frame ms."""
    os.environ.setdefault("DIGA_NO_PROGRESS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import diga_sdk
    from diga_sdk.config import load_config
    from diga_sdk.data.streams import FrameStream
    from diga_sdk.online.adapter import OnlineConfig, open_adapter

    images = [f.image for f in FrameStream("scenario:target", frames + warmup, size, seed=5)]
    cfg = load_config(config, OnlineConfig, {"budget_ms": budget})
    ad = open_adapter(model, cfg)
    times, actions = [], []
    for img in images:
        r = ad.process(img)
        times.append(r.total_ms)
        actions.append(r.action)
    t = np.asarray(times[warmup:])
    return {"code": str(Path(diga_sdk.__file__).parent.parent), "config": config, "frames": int(t.size),
            "times_ms": t.tolist(), "actions": actions[warmup:]}


def side_config(code: str, config: str) -> Path:
    """A side's recipe: a relative path is the file in that side's own checkout (its version of the recipe),
    not the one in the directory the bench was started from."""
    path = Path(config)
    found = path if path.is_absolute() else Path(code) / path
    if not found.is_file():
        raise SystemExit(f"bench_online_ab: no recipe {found} (CODE_DIR:CONFIG, CONFIG relative to CODE_DIR)")
    return found.resolve()


def _commit(code: str) -> str | None:
    """The git commit of a side's code checkout (None outside git)."""
    out = subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--a", default=None, help="CODE_DIR:CONFIG of the first side (today's); CONFIG relative to CODE_DIR")
    p.add_argument("--b", default=None, help="CODE_DIR:CONFIG of the second side (the new one)")
    p.add_argument("--c", default=None, help="CODE_DIR:CONFIG of an optional third side (another reference)")
    p.add_argument("--size", default="128x256")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--warmup", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-ms", type=float, default=None)
    p.add_argument("--json", default="runs/bench/online_ab.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    if a.child is not None:
        print(json.dumps(child(a.model, a.child, (h, w), a.frames, a.warmup, a.budget_ms)))
        return 0
    if a.a is None or a.b is None:
        p.error("--a and --b are required")
    import numpy as np

    sides = {"a": a.a.split(":", 1), "b": a.b.split(":", 1)} | ({"c": a.c.split(":", 1)} if a.c else {})
    times: dict[str, list[float]] = {s: [] for s in sides}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(a.rounds):
        for side, (code, config) in sides.items():
            env = {**os.environ, "PYTHONPATH": str(Path(code).resolve()), "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "--model", a.model, "--size", a.size, "--frames", str(a.frames),
                   "--warmup", str(a.warmup), "--child", str(side_config(code, config))]
            if a.budget_ms is not None:
                cmd += ["--budget-ms", str(a.budget_ms)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            times[side] += r["times_ms"]
            runs[side].append({"code": r["code"], "config": config, "median_ms": float(np.median(r["times_ms"])),
                               "updates": r["actions"].count("update")})
            print(side, runs[side][-1], file=sys.stderr)
    rows = {}
    for side in sides:
        t = np.asarray(times[side])
        rows[side] = {"code": runs[side][0]["code"], "commit": _commit(sides[side][0]), "config": sides[side][1],
                      "frames": int(t.size),
                      "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "runs": runs[side]}
    def over(ref: str) -> dict[str, float]:
        return {"median": rows["b"]["median_ms"] / rows[ref]["median_ms"], "p99": rows["b"]["p99_ms"] / rows[ref]["p99_ms"]}

    ratio = over("a")
    from diga_sdk.io import atomic_write_bytes, atomic_write_json
    from diga_sdk.results import env_info

    result = {"size": [h, w], "model": a.model, "rounds": a.rounds, "sides": rows, "b_over_a": ratio,
              **({"b_over_c": over("c")} if "c" in rows else {}),
              "env": env_info(), "loadavg": os.getloadavg(),
              "note": "1 thread per child, sides alternate; a shared machine: compare the ratio, not the ms"}
    atomic_write_json(a.json, result)
    from diga_sdk.bench.docs import online_ab_table

    md = online_ab_table(result)
    atomic_write_bytes(Path(a.json).with_suffix(".md"), md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
