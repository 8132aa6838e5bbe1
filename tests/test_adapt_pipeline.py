"""The DiGA pipeline on the tiny benchmark: CLI end to end, determinism, crash-resume, honest
checkpoint selection, seeds, the threshold baseline and the learned translator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diga_sdk.adapt import distill
from diga_sdk.adapt.bn_recalibration import RECALIBRATED
from diga_sdk.adapt.distill import SelfTrainInputs, train_distil_stage
from diga_sdk.adapt.pipeline import aggregate_seeds, stage_train
from diga_sdk.cli import main
from diga_sdk.config import AdaptConfig, DistilConfig, SelectionConfig


def tiny_adapt_config(specs: dict[str, str], init: Path | None = None, steps: int = 4, **extra) -> AdaptConfig:
    return AdaptConfig(source=specs["source_train"], target=specs["target_train"], target_val=specs["target_val"],
                       source_val=specs["source_val"], init_checkpoint=str(init) if init else None,
                       warmup=DistilConfig(steps=steps, batch_size=2),
                       selftrain=DistilConfig(steps=steps, batch_size=2, lambda_distil=0.25, aug_beta=0.3),
                       crop=(64, 128), scale=(0.75, 1.0), checkpoint_every=2, **extra)


class SimulatedCrash(RuntimeError):
    """The process dies in the middle of a stage (raised by `crash_after`)."""


def crash_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make the training loop die when it starts step `steps` (after `steps` finished steps and their saves)."""
    real_step = distill.diga_step

    def step_or_crash(ctx, step, *args, **kwargs):
        if step == steps:
            raise SimulatedCrash(f"killed in {ctx.stage} after step {steps}")
        return real_step(ctx, step, *args, **kwargs)

    monkeypatch.setattr(distill, "diga_step", step_or_crash)


def _yaml(cfg: AdaptConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_specs, tiny_checkpoint) -> tuple[Path, dict]:
    """`diga adapt` end to end (warm-up, pseudo-labels, centroids, self-training, one round)."""
    tmp = tmp_path_factory.mktemp("adapt")
    cfg_path = _yaml(tiny_adapt_config(tiny_specs, tiny_checkpoint), tmp / "cfg.yaml")
    out, js = tmp / "run", tmp / "res.json"
    assert main(["adapt", "--config", str(cfg_path), "--out", str(out), "--json", str(js)]) == 0
    return out, json.loads(js.read_text())


def test_cli_pipeline_writes_every_stage(pipeline_run, tiny_specs):
    from diga_sdk.evaluate_specs import evaluate_specs

    out, res = pipeline_run
    names = [s["name"] for s in res["stages"]]
    assert names == ["warmup", "selftrain", "selftrain_round2"]
    for s in res["stages"]:
        assert s["checkpoint_selection"] == "last" and Path(s["checkpoint"]).is_file()
        # the recorded mIoU is the stage's own checkpoint evaluated on target-val (not a stale or other number)
        again = evaluate_specs(s["checkpoint"], [tiny_specs["target_val"], tiny_specs["source_val"]])
        assert s["target_val_miou"] == again[tiny_specs["target_val"]]["miou"]
        assert s["source_val_miou"] == again[tiny_specs["source_val"]]["miou"]
    assert res["checkpoint_selection"] == "last"
    for r in (1, 2):
        assert len(list((out / f"pseudo_r{r}" / "labels").glob("*.png"))) == 12
        assert (out / f"pseudo_r{r}" / "centroids.safetensors").is_file()  # same pass as the labels
    # round 2 is labelled by the self-trained model as the stage handed it on (BatchNorm recalibrated, the default)
    handed_on = res["stages"][1]["checkpoint"]
    assert handed_on.endswith("selftrain/bn_recalibrated.safetensors")
    assert json.loads((out / "pseudo_r2" / "stage.json").read_text())["labelled_by"] == handed_on
    assert json.loads((out / "results.json").read_text())["stages"][0]["name"] == "warmup"


def test_pseudo_label_pass_gives_the_centroids_of_a_separate_pass(pipeline_run, tmp_path):
    """The pipeline's one pass (labels + centroids) equals `diga adapt centroids` on the same model."""
    from diga_sdk.adapt.centroids import load_centroids
    from diga_sdk.adapt.pipeline import stage_centroids

    out, _ = pipeline_run
    cfg = AdaptConfig.model_validate(yaml.safe_load((out / "adapt.yaml").read_text()))
    labelled_by = json.loads((out / "pseudo_r1" / "stage.json").read_text())["labelled_by"]
    separate = stage_centroids(cfg, labelled_by, tmp_path)["centroids"]
    fused_c, fused_seen = load_centroids(out / "pseudo_r1" / "centroids.safetensors")
    sep_c, sep_seen = load_centroids(separate)
    assert torch.equal(fused_seen, sep_seen) and int(sep_seen.sum()) >= 1
    torch.testing.assert_close(fused_c, sep_c, rtol=1e-5, atol=1e-5)


def test_cli_refuses_to_overwrite_and_resume_skips_finished_stages(pipeline_run, tmp_path):
    out, res = pipeline_run
    cfg_path = out / "adapt.yaml"
    assert main(["adapt", "--config", str(cfg_path), "--out", str(out)]) == 1  # finished stages, no --resume
    js = tmp_path / "again.json"
    assert main(["adapt", "--config", str(cfg_path), "--out", str(out), "--resume", "--json", str(js)]) == 0
    again = json.loads(js.read_text())
    assert [s["target_val_miou"] for s in again["stages"]] == [s["target_val_miou"] for s in res["stages"]]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_selftrain_is_deterministic_and_resumes_after_a_crash(pipeline_run, tiny_specs, tmp_path, monkeypatch):
    out, res = pipeline_run
    cfg = tiny_adapt_config(tiny_specs)
    inputs = SelfTrainInputs(out / "pseudo_r1", out / "pseudo_r1" / "centroids.safetensors", cfg.selection)
    init = Path(res["stages"][0]["checkpoint"])  # the warm-up as the pipeline handed it on
    a = train_distil_stage("selftrain", cfg, cfg.selftrain, init, tmp_path / "a", selftrain=inputs)
    # Same seed, same inputs: the same weights as the pipeline's own self-training stage.
    _assert_same(a, out / "selftrain" / "model.safetensors")
    # Killed after step 3 (last saved state: step 2), then resumed: the same weights again.
    crash_after(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        train_distil_stage("selftrain", cfg, cfg.selftrain, init, tmp_path / "b", selftrain=inputs)
    assert json.loads((tmp_path / "b" / "state" / "train_state.json").read_text())["step"] == 2
    monkeypatch.undo()
    b = train_distil_stage("selftrain", cfg, cfg.selftrain, init, tmp_path / "b", resume=True, selftrain=inputs)
    _assert_same(a, b)
    _assert_same(tmp_path / "a" / "teacher.safetensors", tmp_path / "b" / "teacher.safetensors")
    sa = load_file(str(tmp_path / "a" / "state" / "train_state.safetensors"))
    sb = load_file(str(tmp_path / "b" / "state" / "train_state.safetensors"))
    assert torch.equal(sa["extra.centroids"], sb["extra.centroids"])  # online centroids resumed too


def test_warmup_crash_resume_and_metrics_determinism(tiny_specs, tiny_checkpoint, tmp_path, monkeypatch):
    cfg = tiny_adapt_config(tiny_specs, tiny_checkpoint)
    rec_a = stage_train("warmup", cfg, cfg.warmup, tiny_checkpoint, tmp_path / "a", resume=False)
    crash_after(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        stage_train("warmup", cfg, cfg.warmup, tiny_checkpoint, tmp_path / "b", resume=False)
    assert json.loads((tmp_path / "b" / "state" / "train_state.json").read_text())["step"] == 2
    monkeypatch.undo()
    rec_b = stage_train("warmup", cfg, cfg.warmup, tiny_checkpoint, tmp_path / "b", resume=True)
    _assert_same(Path(rec_a["checkpoint"]), Path(rec_b["checkpoint"]))
    assert rec_a["target_val_miou"] == rec_b["target_val_miou"]
    assert rec_a["source_val_miou"] == rec_b["source_val_miou"]
    # the weights did move away from the initial checkpoint
    w0, w1 = _weights(tiny_checkpoint), _weights(Path(rec_a["checkpoint"]))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())


def test_select_best_is_opt_in_and_recorded(tiny_specs, tiny_checkpoint, tmp_path):
    cfg = tiny_adapt_config(tiny_specs, tiny_checkpoint, steps=2, select_best=True, snapshot_every=1)
    rec = stage_train("warmup", cfg, cfg.warmup, tiny_checkpoint, tmp_path / "w", resume=False)
    assert rec["checkpoint_selection"] == "best_target_val_uses_target_labels"
    scores = rec["candidates_target_val_miou"]
    assert len(scores) == 3  # snapshots at steps 1, 2 and the last checkpoint
    # the chosen checkpoint is the one recalibrated and handed on
    assert scores[rec["bn_recalibrated_from"]] == max(scores.values()) and rec["checkpoint"].endswith(RECALIBRATED)


def test_threshold_baseline_and_no_mix_ablation_via_cli(pipeline_run, tiny_specs, tmp_path):
    out, _ = pipeline_run
    cfg_path = _yaml(tiny_adapt_config(tiny_specs, steps=2), tmp_path / "cfg.yaml")
    js = tmp_path / "thr.json"
    assert main(["adapt", "selftrain", "--init", str(out / "warmup" / "model.safetensors"), "--pseudo",
                 str(out / "pseudo_r1"), "--selection", "threshold", "--threshold", "0.5", "--config", str(cfg_path),
                 "--out", str(tmp_path / "thr"), "--json", str(js)]) == 0
    assert 0 <= json.loads(js.read_text())["target_val_miou"] <= 100
    assert main(["adapt", "selftrain", "--init", str(out / "warmup" / "model.safetensors"), "--pseudo",
                 str(out / "pseudo_r1"), "--config", str(cfg_path), "--out", str(tmp_path / "x")]) == 1  # no centroids
    js2 = tmp_path / "nomix.json"
    assert main(["adapt", "warmup", "--init", str(out / "warmup" / "model.safetensors"), "--no-mix", "--config",
                 str(cfg_path), "--out", str(tmp_path / "nomix"), "--json", str(js2)]) == 0
    assert Path(json.loads(js2.read_text())["checkpoint"]).is_file()


def test_stage_commands_pseudo_and_centroids(pipeline_run, tiny_specs, tmp_path):
    out, res = pipeline_run
    cfg_path = _yaml(tiny_adapt_config(tiny_specs), tmp_path / "cfg.yaml")
    ckpt = res["stages"][0]["checkpoint"]  # the model that labelled round 1
    assert main(["adapt", "pseudo", "--model", str(ckpt), "--config", str(cfg_path), "--out", str(tmp_path / "p")]) == 0
    for a, b in zip(sorted((tmp_path / "p" / "labels").glob("*.png")), sorted((out / "pseudo_r1" / "labels").glob("*.png")),
                    strict=True):
        assert a.read_bytes() == b.read_bytes()  # same model, same labels
    assert main(["adapt", "centroids", "--model", str(ckpt), "--config", str(cfg_path), "--out",
                 str(tmp_path / "c")]) == 0
    assert torch.equal(load_file(str(tmp_path / "c" / "centroids.safetensors"))["centroids"],
                       load_file(str(out / "pseudo_r1" / "centroids.safetensors"))["centroids"])


def test_seeds_report_mean_and_std(tiny_specs, tiny_checkpoint, tmp_path):
    cfg_path = _yaml(tiny_adapt_config(tiny_specs, tiny_checkpoint, steps=2, rounds=0), tmp_path / "cfg.yaml")
    js = tmp_path / "s.json"
    assert main(["adapt", "--config", str(cfg_path), "--out", str(tmp_path / "r"), "--seeds", "2",
                 "--json", str(js)]) == 0
    stages = json.loads(js.read_text())["stages"]
    assert [s["name"] for s in stages] == ["warmup", "selftrain"]
    for s in stages:
        vals = [p["target_val_miou"] for p in s["per_seed"]]
        assert [p["seed"] for p in s["per_seed"]] == [0, 1]
        assert s["target_val_miou"] == pytest.approx(sum(vals) / 2)
        assert s["target_val_miou_std"] == pytest.approx(abs(vals[0] - vals[1]) / 2**0.5)


def test_aggregate_seeds_math():
    runs = [(0, [{"name": "w", "source_val_miou": 10.0, "target_val_miou": 1.0}]),
            (1, [{"name": "w", "source_val_miou": 20.0, "target_val_miou": 3.0}]),
            (2, [{"name": "w", "source_val_miou": 30.0, "target_val_miou": 5.0}])]
    (s,) = aggregate_seeds(runs)
    assert s["target_val_miou"] == 3.0 and s["target_val_miou_std"] == 2.0 and s["source_val_miou"] == 20.0


def test_learned_translator_trains_and_drives_a_warmup(tiny_specs, tiny_checkpoint, tmp_path):
    cfg = tiny_adapt_config(tiny_specs, tiny_checkpoint, steps=2)
    cfg = cfg.model_copy(update={"translator": cfg.translator.model_copy(update={
        "kind": "learned", "steps": 2, "width": 4, "res_blocks": 1, "batch_size": 1})})
    cfg_path = _yaml(cfg, tmp_path / "cfg.yaml")
    assert main(["adapt", "translator", "--config", str(cfg_path), "--out", str(tmp_path / "t"), "--workers", "2"]) == 0
    gen = tmp_path / "t" / "translator.safetensors"
    assert gen.is_file()
    assert main(["adapt", "translator", "--config", str(cfg_path), "--out", str(tmp_path / "t0"), "--workers", "0"]) == 0
    from safetensors.torch import load_file

    with_workers, in_process = load_file(gen), load_file(tmp_path / "t0" / "translator.safetensors")
    assert with_workers.keys() == in_process.keys()
    assert all(torch.equal(with_workers[k], in_process[k]) for k in with_workers)  # the same batches either way
    learned = cfg.model_copy(update={"translator": cfg.translator.model_copy(update={"checkpoint": str(gen)})})
    rec = stage_train("warmup", learned, learned.warmup, tiny_checkpoint, tmp_path / "w", resume=False)
    assert Path(rec["checkpoint"]).is_file()
    bad = cfg.model_copy(update={"translator": cfg.translator.model_copy(update={"checkpoint": None})})
    with pytest.raises(Exception, match="translator.checkpoint is empty"):
        stage_train("warmup", bad, bad.warmup, tiny_checkpoint, tmp_path / "w2", resume=False)


def test_selection_config_rejects_unknown_kind():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SelectionConfig(kind="confidence")
