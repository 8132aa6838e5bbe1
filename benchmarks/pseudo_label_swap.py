"""Whose pseudo-labels, whose student: each model's first self-training round on its own round-1
pseudo-labels and on the other model's, from its own warm-up checkpoint.

Where one model gains less from self-training than another on a target, two things can be at fault: its
pseudo-labels (made by its warm-up model) or how much it learns from pseudo-labels. Training each model's
self-training round on both models' labels separates them. The student keeps its own centroids (its
teacher's feature space), so the bilateral consensus keeps the pixels where the given label and the
student's nearest centroid agree. The run folders are finished pipeline seeds (`heldout_domain.py`'s,
for instance on the tuning camera3); a cell whose labels are the student's own, at the run's seed, is that
run's self-training stage read back:

    python benchmarks/pseudo_label_swap.py --run light=runs/heldout3/light/seed0/default \
        --run fast=runs/heldout3/fast/seed0/default --seeds 2 --out runs/swap \
        --json benchmarks/results/pseudo_label_swap_camera3.json

`--set KEY=VALUE` changes the students' settings in every cell (a self-training knob tried on fixed
warm-ups and labels; give it its own --out). Resumable: finished cells are read back from --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _stage(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


def self_train_on(student_run: Path, labels_run: Path, seed: int, out: Path, sets: list[str]) -> float:
    """Target-val mIoU of the student's first self-training round on `labels_run`'s round-1 pseudo-labels,
    with `sets` (KEY=VALUE) on top of the student run's settings."""
    from diga_sdk.adapt.distill import SelfTrainInputs
    from diga_sdk.adapt.pipeline import run_stage, stage_train
    from diga_sdk.config import AdaptConfig, load_config, with_sets

    cfg = load_config(student_run / "adapt.yaml", AdaptConfig)
    if labels_run == student_run and seed == cfg.seed and not sets:
        return _stage(student_run / "selftrain")["target_val_miou"]
    cfg = with_sets(cfg.model_copy(update={"seed": seed}), sets)
    inputs = SelfTrainInputs(labels_run / "pseudo_r1", student_run / "pseudo_r1" / "centroids.safetensors",
                             cfg.selection)
    warm = _stage(student_run / "warmup")["checkpoint"]
    rec = run_stage("selftrain", out, lambda: stage_train("selftrain", cfg, cfg.selftrain, warm, out, True, inputs),
                    resume=True)
    return rec["target_val_miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=FINISHED_PIPELINE_SEED_FOLDER")
    ap.add_argument("--seeds", type=int, default=2, help="self-training seeds per cell (0..N-1)")
    ap.add_argument("--student", action="append", default=None,
                    help="train only these students (default: every --run); the others' cells are left out")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE on top of each student's settings in every cell (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/swap"))
    ap.add_argument("--json", type=Path, default=RESULTS / "pseudo_label_swap.json")
    args = ap.parse_args()
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    runs = {name: Path(folder) for name, folder in (item.split("=", 1) for item in args.run)}
    missing = [f"{r}/{s}" for r in runs.values() for s in ("warmup", "pseudo_r1", "selftrain")
               if not (r / s / "stage.json").is_file()]
    if missing:
        ap.error(f"not finished pipeline seeds (no stage.json in {', '.join(missing)}): run the pipeline first")
    report: dict = {"runs": {n: str(r) for n, r in runs.items()}, "seeds": args.seeds, "sets": args.sets,
                    "students": {},
                    "pseudo_label_miou_vs_gt": {n: _stage(r / "pseudo_r1")["pseudo_label_miou_vs_gt"]
                                                for n, r in runs.items()}, "env": env_info()}
    for student, srun in runs.items():
        if args.student and student not in args.student:
            continue
        cells = {}
        for labels, lrun in runs.items():
            per_seed = {str(k): self_train_on(srun, lrun, k, args.out / f"{student}_on_{labels}" / f"seed{k}",
                                              args.sets) for k in range(args.seeds)}
            cells[labels] = {"per_seed": per_seed, "mean": statistics.fmean(per_seed.values())}
            report["students"][student] = {"warmup": _stage(srun / "warmup")["target_val_miou"], "labels": cells}
            atomic_write_json(args.json, report)
    print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=2))


if __name__ == "__main__":
    main()
