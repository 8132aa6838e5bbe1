"""BatchNorm recalibration on the target (adapt/bn_recalibration.py): the running statistics become the
target pass's exact average, nothing else changes, and a pipeline stage hands the recalibrated copy on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from test_adapt_pipeline import tiny_adapt_config

from diga_sdk.adapt.bn_recalibration import RECALIBRATED, recalibrate_batchnorm
from diga_sdk.adapt.pipeline import stage_train
from diga_sdk.data.datasets import Sample
from diga_sdk.data.transforms import normalize, to_tensor
from diga_sdk.errors import DigaError


class Frames:
    """A list of images posing as an unlabelled dataset."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        return Sample(self.images[i], None, f"f{i}")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(0.5), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=0.3))


def _frames(sizes: list[tuple[int, int]], seed: int = 0) -> Frames:
    rng = np.random.default_rng(seed)
    return Frames([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes])


def test_running_statistics_become_the_average_of_the_pass():
    model = _model()
    frames = _frames([(8, 16)] * 5 + [(12, 8)] * 2)  # batches of 2: [2, 2, 1 (size changes), 2]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = recalibrate_batchnorm(model, frames, batch_size=2)
    assert seen == 7
    # expected: the equal-weight average over the batches of each batch's mean (and unbiased variance)
    conv = model[0]
    batches = [[0, 1], [2, 3], [4], [5, 6]]
    with torch.no_grad():
        outs = [conv(normalize(torch.stack([to_tensor(frames[i].image) for i in b]))) for b in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    # weights untouched, momenta restored, eval mode (dropout was off: the second layer's statistics are
    # those of the deterministic eval-mode path, so a second pass gives the same numbers)
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model[1].momentum == 0.1 and model[5].momentum == 0.3
    assert not model.training
    first = model[5].running_mean.clone()
    recalibrate_batchnorm(model, frames, batch_size=2)
    torch.testing.assert_close(model[5].running_mean, first)


def test_recalibration_refuses_a_model_without_batchnorm():
    with pytest.raises(DigaError, match="bn_recalibration: off"):
        recalibrate_batchnorm(nn.Conv2d(3, 2, 1), _frames([(8, 8)]))


def test_a_stage_hands_on_the_recalibrated_copy(tiny_specs, tiny_checkpoint, tmp_path: Path):
    cfg = tiny_adapt_config(tiny_specs, tiny_checkpoint, steps=2)  # the default: bn_recalibration "target"
    rec = stage_train("warmup", cfg, cfg.warmup, tiny_checkpoint, tmp_path / "w", resume=False)
    assert Path(rec["checkpoint"]).name == RECALIBRATED
    trained = load_file(rec["bn_recalibrated_from"])
    recal = load_file(rec["checkpoint"])
    stats = [k for k in trained if k.endswith("running_mean")]
    assert stats and any(not torch.equal(trained[k], recal[k]) for k in stats)
    assert all(torch.equal(trained[k], recal[k]) for k in trained if "running" not in k and "num_batches" not in k)
    off = stage_train("warmup", tiny_adapt_config(tiny_specs, tiny_checkpoint, steps=2, bn_recalibration="off"), cfg.warmup,
                      tiny_checkpoint, tmp_path / "w_off", resume=False)
    assert "bn_recalibrated_from" not in off and Path(off["checkpoint"]).name == "model.safetensors"


def test_cli_recalibrate_writes_a_new_file_and_keeps_the_input(tiny_specs, tiny_checkpoint, tmp_path: Path, capsys):
    import json

    from diga_sdk.cli import main

    before = tiny_checkpoint.read_bytes()
    out, js = tmp_path / "recal", tmp_path / "recal.json"
    args = ["adapt", "recalibrate", "--model", str(tiny_checkpoint), "--target", tiny_specs["target_train"],
            "--target-val", tiny_specs["target_val"], "--out", str(out), "--json", str(js)]
    assert main(args) == 0
    rec = json.loads(js.read_text())
    assert Path(rec["checkpoint"]) == out / RECALIBRATED and rec["bn_recalibrated_from"] == str(tiny_checkpoint)
    assert rec["images"] > 0 and rec["target_val_miou"] is not None and rec["source_val_miou"] is None
    assert tiny_checkpoint.read_bytes() == before
    capsys.readouterr()
    assert main(args) == 1  # the folder holds a recalibrated model: no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_segmenter_recalibrate_returns_the_recalibrated_model(tiny_checkpoint, tiny_specs, tmp_path: Path):
    import diga_sdk as diga

    seg = diga.Segmenter(tiny_checkpoint, runtime="torch")
    new = seg.recalibrate(tiny_specs["target_train"], tmp_path / "r")
    assert new.path == tmp_path / "r" / RECALIBRATED and new.runtime_name == "torch"
    before, after = load_file(str(tiny_checkpoint)), load_file(str(new.path))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_var"))
    with pytest.raises(DigaError, match="overwrite"):
        seg.recalibrate(tiny_specs["target_train"], tmp_path / "r")
