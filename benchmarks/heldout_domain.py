"""A switch of the DiGA pipeline judged on a target domain it was not chosen on: `scenario:camera2`.

The embedded benchmark's target is where the pipeline's defaults were chosen. This script renders a
second labelled target, the benchmark's target scenes through the `scenario:camera2` camera (another
colour drift, white balance, exposure, blur, noise and vignette; written for the online protocol's judged
streams), in the Cityscapes layout (400 train + 100 val frames at 256x512), then runs the offline pipeline
on the `make demo` schedule (each model's steps: `DEMO_STEPS`) from each model's source-only checkpoint
with the switch on and off:

    python benchmarks/heldout_domain.py --data runs/camera2 --out runs/heldout \
        --model light=runs/demo/source_only/model.safetensors --model fast=PATH --seeds 2 \
        [--set selftrain.target_bn=false] [--json benchmarks/results/heldout_camera2.json]

`--no-switch` runs only the release's defaults: the two models compared on the held-out target
(`--json benchmarks/results/heldout_camera2_models.json`).

`--source-seeds K` also varies the source-only model every run starts from: seed 0 is the given
checkpoint, seeds 1..K-1 are trained here (`train_baselines`' source-only recipe with that training
seed); adaptation seed k runs from source-only seed k. Each source-only model is scored on the held-out
camera and on the benchmark's target-val, and the report adds the K pairs' means and fast minus light
with its standard error: a comparison that does not rest on one source-only model per architecture.

`--camera camera3` renders another camera (`camera3_render`) to choose changes on, so that camera2 stays
a judge no choice was made on.

Where the switch only acts in self-training (every `--set` key under `selftrain.`), both variants of a
seed share its warm-up, so a seed costs one warm-up and two self-training chains; otherwise each variant
runs its own. Resumable: finished stages are read back from --out.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("warmup", "selftrain", "selftrain_round2")
COUNTS = {"train": 400, "val": 100}
SIZE = (256, 512)


def camera3_render():  # noqa: ANN201 - a RenderStyle
    """A tuning camera: the target scenes with a palette shift about as large as camera2's, through other
    camera settings (brighter, less blur, noise and vignette, stronger lighting gradient). A change to
    the models or the pipeline can be chosen here and judged on camera2, which no choice is made on."""
    from diga_sdk.data.synthetic_render import _SOURCE_BASE, _TARGET_BASE, RenderStyle, _lut

    return RenderStyle(base=0.5 * _lut(_SOURCE_BASE) + 0.5 * _lut(_TARGET_BASE), instance_jitter=16.0,
                       texture=0.15, exposure=(0.85, 1.3), gradient=0.4, shadows=1.5, white_balance=0.08,
                       blur_sigma=(0.2, 0.6), noise_sigma=(2.0, 5.0), vignette=0.15)


CAMERAS = ("camera2", "camera3")


def camera_style(camera: str):  # noqa: ANN201 - a RenderStyle
    """camera2 (the online protocol's judged scenario, held out here) or the tuning camera3."""
    if camera == "camera2":
        from diga_sdk.data.streams import camera2_render

        return camera2_render()
    return camera3_render()


def render_camera(root: Path, camera: str = "camera2") -> Path:
    """The target scenes through `camera` in the Cityscapes layout (label IDs), frames keyed apart from the
    benchmark's and from the other camera's."""
    import numpy as np
    from PIL import Image

    from diga_sdk.data.synthetic import CITIES, _item_seed
    from diga_sdk.data.synthetic_render import render
    from diga_sdk.data.synthetic_scene import TARGET_SCENE, make_scene
    from diga_sdk.io import atomic_path

    style = camera_style(camera)  # one style object for every frame (it builds colour tables)
    for split, n in COUNTS.items():
        for i in range(n):
            city = CITIES[split][i % len(CITIES[split])]
            stem = f"{city}_{i // len(CITIES[split]):06d}_000019"
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            if img.is_file() and lab.is_file():
                continue
            rng = np.random.default_rng(_item_seed(0, f"{camera}-offline", split, i))
            scene = make_scene(SIZE[0], SIZE[1], TARGET_SCENE, rng)
            for path, arr in ((lab, scene.label), (img, render(scene, style, rng))):
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
    return root


def run_variant(model: str, source_ckpt: str, data: Path, out: Path, seed: int, sets: list[str],
                shared_warmup: Path | None) -> dict[str, float]:
    from diga_sdk.adapt.pipeline import run_pipeline
    from diga_sdk.bench.ablation import demo_adapt_config
    from diga_sdk.config import with_sets

    base = demo_adapt_config(source_ckpt, model=model).model_copy(update={
        "seed": seed, "target": f"cityscapes:{data}@train", "target_val": f"cityscapes:{data}@val"})
    base = with_sets(base, sets)  # the switch on top of the demo's settings
    if shared_warmup is not None and not (out / "warmup").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "warmup").symlink_to(shared_warmup.resolve(), target_is_directory=True)
    stages = run_pipeline(base, out, resume=True)["stages"]
    return {s["name"]: s["target_val_miou"] for s in stages if s["name"] in STAGES}


def source_seed_runs(name: str, ckpt: str, data: Path, out: Path, seeds: int, first_source: float,
                     first_pair: dict[str, float]) -> dict:
    """Source-only seeds 0..seeds-1 of one model (0 = `ckpt`, `first_source` on the held-out camera), each
    scored on the held-out camera and the benchmark's target-val, and adaptation seed k on that camera from
    source-only seed k (pair 0 is `first_pair`)."""
    from diga_sdk.bench.ablation import train_baselines
    from diga_sdk.evaluate_specs import evaluate_specs

    held_out, benchmark = f"cityscapes:{data}@val", "synthetic:target@val"
    source = {"0": {"held_out": first_source, "benchmark_target_val": evaluate_specs(ckpt, [benchmark])[benchmark]["miou"]}}
    pairs = {"0": first_pair}
    for k in range(1, seeds):
        folder = out / name / f"source{k}"
        entry = train_baselines(folder, model=name, names=("source_only",), seed=k)[0]
        source[str(k)] = {"held_out": evaluate_specs(entry["checkpoint"], [held_out])[held_out]["miou"],
                          "benchmark_target_val": entry["target_val_miou"]}
        pairs[str(k)] = run_variant(name, entry["checkpoint"], data, folder / f"seed{k}", k, [], None)
    return {"source_only": source, "pairs": pairs,
            "pairs_mean": {k: statistics.fmean(r[k] for r in pairs.values()) for k in STAGES},
            "source_only_held_out_mean": statistics.fmean(r["held_out"] for r in source.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camera", choices=CAMERAS, default="camera2",
                    help="the held-out camera; camera3 is for choosing, camera2 for judging")
    ap.add_argument("--data", type=Path, default=Path("runs/camera2"), help="where that camera's frames are written")
    ap.add_argument("--out", type=Path, default=Path("runs/heldout"))
    ap.add_argument("--model", action="append", required=True, help="NAME=SOURCE_ONLY_CHECKPOINT")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=None,
                    help="the switch's 'off' variant (default: selftrain.target_bn=false)")
    ap.add_argument("--no-switch", action="store_true", help="the defaults only: compare the models")
    ap.add_argument("--source-seeds", type=int, default=1,
                    help="source-only models per model (seed 0 = the given checkpoint); adaptation seed k runs "
                         "from source-only seed k (with --no-switch)")
    ap.add_argument("--json", type=Path, default=RESULTS / "heldout_camera2.json")
    args = ap.parse_args()
    if args.source_seeds > 1 and not args.no_switch:
        ap.error("--source-seeds compares the models with the defaults: give --no-switch as well")
    from diga_sdk.bench.ablation import demo_schedule
    from diga_sdk.bench.seeds import mean_difference
    from diga_sdk.config import AdaptConfig, settings_of
    from diga_sdk.evaluate_specs import evaluate_specs
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    sets = [] if args.no_switch else (args.sets or ["selftrain.target_bn=false"])
    variants = ("default",) if args.no_switch else ("default", "variant")
    data = render_camera(args.data, args.camera)
    report: dict = {"camera": args.camera,
                    "domain": f"{args.camera}: the target scenes, Cityscapes layout, 400 train + 100 val at 256x512",
                    "schedule": demo_schedule([m.split("=", 1)[0] for m in args.model]),
                    "default": settings_of(AdaptConfig(), sets), "variant": sets, "models": {}, "env": env_info()}
    for item in args.model:
        name, ckpt = item.split("=", 1)
        src = evaluate_specs(ckpt, [f"cityscapes:{data}@val"])[f"cityscapes:{data}@val"]["miou"]
        runs: dict[str, dict[str, dict[str, float]]] = {v: {} for v in variants}
        for seed in range(args.seeds):
            folder = args.out / name / f"seed{seed}"
            runs["default"][str(seed)] = run_variant(name, ckpt, data, folder / "default", seed, [], None)
            # the variant shares the seed's warm-up only when its settings act in self-training alone
            shared = folder / "default" / "warmup" if all(k.startswith("selftrain.") for k in sets) else None
            if "variant" in runs:
                runs["variant"][str(seed)] = run_variant(name, ckpt, data, folder / "variant", seed, sets, shared)
            mean = {v: {k: statistics.fmean(r[k] for r in runs[v].values()) for k in STAGES} for v in runs}
            report["models"][name] = {"source_only": src, "per_seed": runs, "mean": mean}
            if "variant" in runs:
                report["models"][name]["final_default_minus_variant"] = (mean["default"]["selftrain_round2"]
                                                                         - mean["variant"]["selftrain_round2"])
            atomic_write_json(args.json, report)
        if args.source_seeds > 1:
            report["models"][name]["source_seeds"] = source_seed_runs(
                name, ckpt, data, args.out, args.source_seeds, src, runs["default"]["0"])
            atomic_write_json(args.json, report)
    if {"light", "fast"} <= report["models"].keys():
        light, fast = report["models"]["light"], report["models"]["fast"]
        report["fast_minus_light_final_mean"] = {
            v: fast["mean"][v]["selftrain_round2"] - light["mean"][v]["selftrain_round2"] for v in variants}
        if args.source_seeds > 1:
            finals = [[r["selftrain_round2"] for r in m["source_seeds"]["pairs"].values()] for m in (light, fast)]
            diff, stderr = mean_difference(*finals)
            report["fast_minus_light_pairs"] = {"final_mean": diff, "final_mean_stderr": stderr,
                                                "source_only_held_out_mean": fast["source_seeds"]["source_only_held_out_mean"]
                                                - light["source_seeds"]["source_only_held_out_mean"]}
        atomic_write_json(args.json, report)
    print(report["models"])


if __name__ == "__main__":
    main()
