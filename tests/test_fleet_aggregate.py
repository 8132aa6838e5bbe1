"""Fleet aggregation on hand-made arrays: weights by frames adapted, centroids by pixel counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diga_sdk.errors import DigaError
from diga_sdk.fleet.params import aggregate, arrays_to_state, state_to_arrays


def _vehicle(w: float, steps: int, cents: list[list[float]], counts: list[float]) -> list[np.ndarray]:
    return [np.full((2, 2), w, np.float32), np.array(steps, np.int64), np.array(cents, np.float32),
            np.array(counts, np.float64)]


def test_weights_follow_frames_adapted_and_centroids_follow_pixel_counts() -> None:
    a = _vehicle(1.0, 10, [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], [100, 0, 10])
    b = _vehicle(4.0, 20, [[3.0, 3.0], [2.0, 2.0], [9.0, 9.0]], [300, 0, 30])
    prev = np.array([[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]], np.float32)
    out = aggregate([(a, 1), (b, 3)], prev)
    np.testing.assert_allclose(out[0], np.full((2, 2), 0.25 * 1 + 0.75 * 4))  # 1 and 3 frames adapted
    assert out[1].dtype == np.int64 and int(out[1]) == round(0.25 * 10 + 0.75 * 20)
    np.testing.assert_allclose(out[2][0], [(100 * 0 + 300 * 3) / 400] * 2)  # by pixel counts, not frames
    np.testing.assert_allclose(out[2][2], [(10 * 5 + 30 * 9) / 40] * 2)
    np.testing.assert_allclose(out[2][1], prev[1])  # no vehicle saw class 1: the fleet keeps its centroid
    np.testing.assert_allclose(out[3], [400, 0, 40])


def test_no_adaptation_anywhere_gives_the_plain_mean() -> None:
    a, b = _vehicle(2.0, 0, [[1.0]], [1]), _vehicle(6.0, 0, [[3.0]], [1])
    np.testing.assert_allclose(aggregate([(a, 0), (b, 0)], None)[0], np.full((2, 2), 4.0))


def test_wire_format_round_trip_and_shape_check() -> None:
    state = {"w": torch.randn(3, 2), "n": torch.tensor(5)}
    arrays = state_to_arrays(state, torch.ones(19, 4), torch.arange(19.0))
    back, cents, counts = arrays_to_state(arrays, state)
    assert torch.equal(back["w"], state["w"]) and back["n"].dtype == torch.int64
    assert cents.shape == (19, 4) and counts[3] == 3
    with pytest.raises(DigaError, match="same model"):
        arrays_to_state(arrays[:-1], state)
    with pytest.raises(DigaError, match="shape"):
        arrays_to_state([np.zeros((2, 2))] + arrays[1:], state)
