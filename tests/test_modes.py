"""Domain generalisation and semi-supervised segmentation on the tiny benchmark: the labelled split
(reproducible, written, read back, the authors' list format), `diga adapt dg` / `diga adapt semi` end to
end with their JSON, crash-resume, and `diga eval` with several sets in one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diga_sdk.adapt.dg import dg_stage_configs, run_dg
from diga_sdk.adapt.distill import train_distil_stage
from diga_sdk.cli import main
from diga_sdk.config import AdaptConfig, DGConfig, DistilConfig, SemiConfig, TrainConfig, semi_selftrain
from diga_sdk.data.datasets import open_dataset
from diga_sdk.data.split import (
    choose_labelled,
    match_list,
    read_split,
    relative_names,
    split_text,
    write_split,
)
from diga_sdk.errors import DigaError


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- the labelled split ----

def test_labelled_share_is_reproducible_and_sized() -> None:
    a, b, c = choose_labelled(400, 0.125, 0), choose_labelled(400, 0.125, 0), choose_labelled(400, 0.125, 1)
    assert a == b and a != c and len(a) == 50 and len(set(a)) == 50 and a == sorted(a)
    assert 0 <= min(a) and max(a) < 400
    assert len(choose_labelled(10, 0.01, 0)) == 1
    with pytest.raises(DigaError, match="labelled-fraction"):
        choose_labelled(10, 0.0, 0)


def test_split_spec_labelled_and_unlabelled_parts(tiny_specs: dict[str, str], tmp_path: Path) -> None:
    data = open_dataset(tiny_specs["target_train"])
    chosen = choose_labelled(len(data), 0.25, 0)
    f = write_split(tmp_path / "split.txt", split_text(tiny_specs["target_train"], data, chosen, "test"))
    spec, lines = read_split(f)
    assert spec == tiny_specs["target_train"] and len(lines) == 3
    assert lines[0].startswith("leftImg8bit/train/")  # relative to the dataset root
    lab, unlab = open_dataset(f"split:{f}@labelled"), open_dataset(f"split:{f}@unlabelled")
    assert lab.has_labels and not unlab.has_labels and len(lab) == 3 and len(unlab) == 9
    names_lab = {p for p, _ in lab.pairs}
    names_unlab = {p for p, _ in unlab.pairs}
    assert not names_lab & names_unlab and names_lab | names_unlab == {p for p, _ in data.pairs}
    assert lab[0].label is not None and unlab[0].label is None
    assert open_dataset(f"split:{f}@labelled", labelled=False).has_labels is False
    with pytest.raises(DigaError, match="split:FILE@labelled"):
        open_dataset(f"split:{f}@train")
    (tmp_path / "plain.txt").write_text(lines[0] + "\n")
    with pytest.raises(DigaError, match="--labelled-list"):
        open_dataset(f"split:{tmp_path / 'plain.txt'}@labelled")


def test_authors_list_format_is_matched_by_path_tail(tiny_specs: dict[str, str], tmp_path: Path) -> None:
    data = open_dataset(tiny_specs["target_train"])
    names = relative_names(data)
    # the authors' train_image_labeled_1-8.txt lines: city/NAME_leftImg8bit.png
    tails = ["/".join(names[i].split("/")[-2:]) for i in (5, 1)]
    assert match_list(tails, data, "list") == [1, 5]
    with pytest.raises(DigaError, match="names no image"):
        match_list(["aachen/nowhere_leftImg8bit.png"], data, "list")
    with pytest.raises(DigaError, match="twice"):
        match_list([tails[0], names[5]], data, "list")


# ---- domain generalisation ----

def _dg_config(specs: dict[str, str], steps: int = 4) -> DGConfig:
    return DGConfig(source=specs["source_train"], eval=[specs["source_val"], specs["target_val"]],
                    source_only=TrainConfig(steps=3, batch_size=2, val_data=[]),
                    dg=DistilConfig(steps=steps, batch_size=2, mix=False), crop=(64, 128), scale=(0.75, 1.0),
                    checkpoint_every=2)


def test_dg_needs_no_target_and_refuses_a_mixture_without_one(tiny_specs, tiny_checkpoint, tmp_path) -> None:
    acfg, scfg = dg_stage_configs(_dg_config(tiny_specs))
    assert acfg.target is None and scfg.mix is False and scfg.aug_beta == 0.4
    with pytest.raises(DigaError, match="needs target images"):
        train_distil_stage("dg", acfg, scfg.model_copy(update={"mix": True}), tiny_checkpoint, tmp_path / "x")


@pytest.mark.slow
def test_adapt_dg_cli_json_table_and_crash_resume(tiny_specs, tmp_path, monkeypatch) -> None:
    cfg = _dg_config(tiny_specs)
    cfg_path = tmp_path / "dg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out, js = tmp_path / "run", tmp_path / "dg.json"
    assert main(["adapt", "dg", "--config", str(cfg_path), "--out", str(out), "--json", str(js), "--workers", "0"]) == 0
    assert yaml.safe_load((out / "source_only" / "config.yaml").read_text())["data"]["workers"] == 0
    res = json.loads(js.read_text())
    assert [s["name"] for s in res["stages"]] == ["source_only", "dg"]
    for s in res["stages"]:
        assert list(s["eval"]) == cfg.eval and all(0.0 <= v <= 100.0 for v in s["eval"].values())
    # the DG stage starts from the source-only model, as the warm-up of `diga adapt` does, and moves away from it
    src_ckpt = out / "source_only" / "model.safetensors"
    assert json.loads((out / "dg" / "stage.json").read_text())["init"] == str(src_ckpt)
    assert not _same(src_ckpt, out / "dg" / "model.safetensors")
    assert (out / "dg" / "teacher.safetensors").is_file()
    # the same run killed after DG step 3 (state saved at step 2) and resumed ends with the same weights
    from test_adapt_pipeline import SimulatedCrash, crash_after

    crash_after(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        run_dg(cfg, tmp_path / "crashed", show=False)
    monkeypatch.undo()
    assert (tmp_path / "crashed" / "source_only" / "stage.json").is_file()
    again = run_dg(cfg, tmp_path / "crashed", resume=True, show=False)
    assert _same(out / "dg" / "model.safetensors", tmp_path / "crashed" / "dg" / "model.safetensors")
    assert again.to_json()["stages"][1]["eval"] == res["stages"][1]["eval"]
    with pytest.raises(DigaError, match="--resume"):
        run_dg(cfg, out, show=False)


# ---- semi-supervised ----

def _semi_config(specs: dict[str, str], **extra) -> SemiConfig:
    adapt = AdaptConfig(source_val=None, warmup=DistilConfig(steps=2, batch_size=2, mix=False),
                        selftrain=DistilConfig(steps=2, batch_size=2, lambda_distil=0.25, aug_beta=0.3),
                        crop=(64, 128), scale=(0.75, 1.0), checkpoint_every=2)
    fields = {"target": specs["target_train"], "target_val": specs["target_val"], "labelled_fraction": 0.25,
              "supervised": TrainConfig(steps=2, batch_size=2, crop=(64, 128), val_data=[]), "adapt": adapt}
    return SemiConfig(**{**fields, **extra})


@pytest.mark.slow
def test_adapt_semi_cli_stages_split_and_resume(tiny_specs, tmp_path) -> None:
    cfg_path = tmp_path / "semi.yaml"
    cfg_path.write_text(yaml.safe_dump(_semi_config(tiny_specs).model_dump(mode="json")))
    out, js = tmp_path / "run", tmp_path / "semi.json"
    assert main(["adapt", "semi", "--config", str(cfg_path), "--out", str(out), "--json", str(js), "--workers", "1"]) == 0
    res = json.loads(js.read_text())
    assert [s["name"] for s in res["stages"]] == ["supervised", "warmup", "selftrain", "selftrain_round2"]
    assert all(s["target_val_miou"] is not None and s["source_val_miou"] is None for s in res["stages"])
    assert res["labelled"] == 3 and res["unlabelled"] == 9
    spec, lines = read_split(out / "split.txt")
    assert spec == tiny_specs["target_train"] and len(lines) == 3
    # warm-up starts from the supervised model, which learnt from the labelled share only
    assert json.loads((out / "warmup" / "stage.json").read_text())["init"] == res["stages"][0]["checkpoint"]
    sup_cfg = yaml.safe_load((out / "supervised" / "config.yaml").read_text())
    assert sup_cfg["train_data"].endswith("split.txt@labelled") and sup_cfg["data"]["workers"] == 1
    # resuming a finished run recomputes nothing and reports the same numbers; another share is refused
    assert main(["adapt", "semi", "--config", str(cfg_path), "--out", str(out), "--resume",
                 "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["stages"] == res["stages"]
    assert main(["adapt", "semi", "--config", str(cfg_path), "--out", str(out), "--resume",
                 "--labelled-fraction", "0.5"]) == 1


def test_semi_reads_the_authors_list_and_rejects_bad_requests(tiny_specs, tmp_path) -> None:
    from diga_sdk.adapt.semi import make_split

    data = open_dataset(tiny_specs["target_train"])
    names = relative_names(data)
    lst = tmp_path / "train_image_labeled_1-4.txt"
    lst.write_text("\n".join("/".join(names[i].split("/")[-2:]) for i in (0, 7, 3)) + "\n")
    cfg = _semi_config(tiny_specs, labelled_list=str(lst))
    assert make_split(cfg, tmp_path / "run" / "split.txt") == (3, 9)
    assert match_list(read_split(tmp_path / "run" / "split.txt")[1], data, "x") == [0, 3, 7]
    with pytest.raises(DigaError, match="nothing is left"):
        make_split(_semi_config(tiny_specs, labelled_fraction=1.0), tmp_path / "all.txt")
    with pytest.raises(DigaError, match="has no labels"):
        make_split(_semi_config(tiny_specs).model_copy(update={"target": f"folder:{data.root}"}), tmp_path / "f.txt")


# ---- diga eval: one table, a column per set ----

def test_eval_prints_one_table_with_a_column_per_set(tiny_specs, tiny_checkpoint, tmp_path, capsys) -> None:
    from diga_sdk.progress import console

    js = tmp_path / "eval.json"
    specs = [tiny_specs["source_val"], tiny_specs["target_val"]]
    with console.capture() as cap:
        assert main(["eval", "--model", str(tiny_checkpoint), "--data", specs[0], "--data", specs[1],
                     "--json", str(js)]) == 0
    text = cap.get()
    res = json.loads(js.read_text())
    assert list(res) == specs
    assert text.count("IoU (%)") == 1 and text.count("mIoU") == 1  # one table, one mIoU row
    miou_row = next(line for line in text.splitlines() if "mIoU" in line)
    assert [c.strip() for c in miou_row.strip("│ ").split("│")[1:]] == [f"{res[s]['miou']:.1f}" for s in specs]


def test_bad_eval_and_val_specs_fail_before_any_training(tiny_specs, tmp_path) -> None:
    from diga_sdk.adapt.semi import run_semi

    cfg = _dg_config(tiny_specs).model_copy(update={"eval": [tiny_specs["target_val"], f"mapillary:{tmp_path}/no"]})
    with pytest.raises(DigaError, match="Mapillary Vistas folder .*/no does not exist"):
        run_dg(cfg, tmp_path / "dg", show=False)
    bad_val = _semi_config(tiny_specs, target_val=f"bdd100k:{tmp_path}/none@val")
    with pytest.raises(DigaError, match="BDD100K folder"):
        run_semi(bad_val, tmp_path / "semi", show=False)
    assert not (tmp_path / "dg").exists() and not (tmp_path / "semi").exists()


def test_semi_self_training_follows_its_warm_up() -> None:
    """The authors' semi self-training loss weights and steps, plus the warm-up's target BN pass (on by default,
    chosen on the selection split); switching the warm-up's off switches self-training's off too."""
    st = SemiConfig().adapt.selftrain
    assert (st.lambda_distil, st.aug_beta, st.target_bn) == (0.5, 0.4, True)
    assert st.steps == SemiConfig().adapt.warmup.steps
    off = semi_selftrain(DistilConfig(target_bn=False))
    assert off.target_bn is False and semi_selftrain(DistilConfig(), target_bn=True).target_bn is True
