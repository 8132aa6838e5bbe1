"""Confusion-matrix metrics against a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import torch

from diga_sdk.metrics import ConfusionMatrix


def test_hand_computed_confusion_matrix() -> None:
    # 3 classes; ground truth / prediction over 8 pixels, one ignored.
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred[:4], gt[:4])
    cm.update(pred[4:], gt[4:])  # streaming: two updates
    assert cm.mat.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    # IoU: c0 = 2/(3+2-2)=2/3, c1 = 1/(2+2-1)=1/3, c2 = 2/(2+3-2)=2/3
    np.testing.assert_allclose(cm.iou(), [200 / 3, 100 / 3, 200 / 3])
    assert math.isclose(cm.miou(), (200 / 3 + 100 / 3 + 200 / 3) / 3)
    assert math.isclose(cm.pixel_accuracy(), 100 * 5 / 7)


def test_absent_classes_are_excluded_and_subsets() -> None:
    cm = ConfusionMatrix(19)
    cm.update(torch.tensor([0, 0, 10]), torch.tensor([0, 0, 10]))
    iou = cm.iou()
    assert iou[0] == 100 and iou[10] == 100 and np.isnan(iou[5])
    assert cm.miou() == 100.0
    cm.update(torch.tensor([9]), torch.tensor([8]))  # a wrong prediction of terrain (9) for vegetation (8)
    assert cm.iou()[9] == 0.0 and cm.iou()[8] == 0.0
    assert math.isclose(cm.miou(16), 200 / 3)  # terrain is not in the 16-class subset
    summary = cm.summary()
    assert summary["per_class"]["road"] == 100.0 and summary["per_class"]["pole"] is None
