"""Online adaptation on tiny 64x128 streams: it adapts, the batch-norm modes do what they say, the
budget skips updates, a forced collapse (noise frames) is rolled back to the pre-collapse mIoU, and
a run killed mid-stream resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from online_fixtures import ONLINE_SIZE, online_cfg

from diga_sdk.data.streams import FrameStream
from diga_sdk.online.adapter import OnlineAdapter, open_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


def _miou(model, frames) -> float:
    from diga_sdk.data.transforms import to_tensor
    from diga_sdk.evaluate import predict_logits
    from diga_sdk.metrics import ConfusionMatrix

    cm = ConfusionMatrix(19)
    for f in frames:
        cm.update(predict_logits(model, to_tensor(f.image)[None]).argmax(1)[0], torch.from_numpy(f.label))
    return cm.miou()


def test_adapter_updates_teacher_and_centroids(small_model: Path) -> None:
    stream = FrameStream("scenario:target", 6, ONLINE_SIZE, seed=1)
    ad = open_adapter(small_model, online_cfg())
    shipped = {k: v.clone() for k, v in ad.model.state_dict().items()}
    actions = [ad.process(f.image).action for f in stream]
    assert actions[:3] == ["calibrate"] * 3
    assert ad.counters["updates"] >= 2 and ad.counters["rollbacks"] == 0, actions  # no false alarm on clean frames
    assert ad.seen.any() and float(ad.pixel_counts.sum()) > 0
    moved = [k for k, v in ad.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, shipped[k])]
    assert moved, "the EMA teacher must follow the student"


@pytest.mark.parametrize("mode", ["adapt", "adapt-batch", "frozen"])
def test_batchnorm_modes(small_model: Path, mode: str) -> None:
    ad = open_adapter(small_model, online_cfg(bn=mode, safety={"enabled": False, "calib_frames": 2}))
    key = next(k for k in ad.student.state_dict() if k.endswith("running_mean"))
    before = ad.student.state_dict()[key].clone()
    for f in FrameStream("scenario:target", 4, ONLINE_SIZE, seed=2):
        ad.process(f.image)
    assert ad.counters["updates"] == 2
    changed = not torch.equal(before, ad.student.state_dict()[key])
    assert changed == (mode != "frozen")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_update_precision_autocasts_only_the_update(small_model: Path, precision: str) -> None:
    """`bf16`: the update's student forward runs under bf16 autocast (weights stay fp32, predictions fp32);
    `auto` takes bf16 exactly where the CPU has bf16 units."""
    from diga_sdk.results import cpu_has_bf16_units

    ad = open_adapter(small_model, online_cfg(update_precision=precision, safety={"enabled": False, "calib_frames": 2}))
    seen: list[tuple[bool, bool]] = []  # (grad enabled, autocast on) of every student forward
    ad.student.register_forward_pre_hook(lambda m, args: seen.append((torch.is_grad_enabled(),
                                                                      torch.is_autocast_enabled("cpu"))))
    shipped = {k: v.clone() for k, v in ad.student.state_dict().items()}
    results = [ad.process(f.image) for f in FrameStream("scenario:target", 4, ONLINE_SIZE, seed=2)]
    want = precision == "bf16" or (precision == "auto" and cpu_has_bf16_units())
    training = [on for grad, on in seen if grad]
    assert ad.counters["updates"] == 2 and len(training) == 2 and all(on == want for on in training)
    assert all(p.dtype == torch.float32 for p in ad.student.parameters())
    assert all(r.pred.dtype == np.uint8 for r in results)
    assert not all(torch.equal(v, shipped[k]) for k, v in ad.student.state_dict().items())


def test_budget_skips_updates_that_do_not_fit(small_model: Path) -> None:
    ad = open_adapter(small_model, online_cfg(budget_ms=0.01, safety={"enabled": False, "calib_frames": 1}))
    results = [ad.process(f.image) for f in FrameStream("scenario:target", 5, ONLINE_SIZE, seed=3)]
    # nothing measured yet: the prior (scaled from the frame's own prediction time) already says no crop fits
    assert [r.action for r in results] == ["calibrate"] + ["skip-budget"] * 4
    # over_budget counts exactly the frames whose measured time exceeded the budget: here every frame
    assert ad.counters["updates"] == 0 and ad.counters["over_budget"] == sum(r.total_ms > 0.01 for r in results)
    roomy = open_adapter(small_model, online_cfg(budget_ms=1e7, safety={"enabled": False, "calib_frames": 1}))
    results = [roomy.process(f.image) for f in FrameStream("scenario:target", 4, ONLINE_SIZE, seed=3)]
    assert [r.action for r in results] == ["calibrate"] + ["update"] * 3
    assert all(r.crop_scale == 1.0 for r in results[1:]) and roomy.cost["ms_per_kpx"] > 0
    assert roomy.counters["over_budget"] == 0 and all(r.total_ms < 1e7 for r in results)  # none of these was over
    # a budget between the frames' measured times: the counter follows each frame's own time
    mid = float(np.median([r.total_ms for r in results]))
    ad_mid = open_adapter(small_model, online_cfg(budget_ms=mid, safety={"enabled": False, "calib_frames": 1}))
    results = [ad_mid.process(f.image) for f in FrameStream("scenario:target", 4, ONLINE_SIZE, seed=3)]
    assert ad_mid.counters["over_budget"] == sum(r.total_ms > mid for r in results)


def test_budget_plan_uses_a_high_estimate(small_model: Path) -> None:
    ad = open_adapter(small_model, online_cfg(crop=(128, 256)))
    h, w, b = 256, 512, 2
    full_kpx = 2 * b * 128 * 256 / 1e3
    # before any measurement: 1.5 x the prior
    assert ad.plan_crop(1.5 * full_kpx + 0.1, h, w, b, prior_ms_per_kpx=1.0) == 1.0
    assert ad.plan_crop(1.5 * full_kpx - 0.1, h, w, b, prior_ms_per_kpx=1.0) < 1.0
    ad.cost.update(ms_per_kpx=1.0, overhead_ms=10.0, dev_per_kpx=0.0, dev_overhead=0.0)
    scales = [ad.plan_crop(left, h, w, b, prior_ms_per_kpx=99.0) for left in (5, 20, 40, 80, 120, 200)]
    assert scales == sorted(scales) and scales[0] == 0.0 and scales[-1] == 1.0  # more time, never a smaller crop
    assert ad.plan_crop(10 + full_kpx, h, w, b, 99.0) == 1.0
    ad.cost.update(dev_per_kpx=0.5, dev_overhead=5.0)  # a noisy cost: the same time buys a smaller crop
    assert ad.plan_crop(10 + full_kpx, h, w, b, 99.0) < 1.0
    assert ad.plan_crop(20 + 2.0 * full_kpx, h, w, b, 99.0) == 1.0


def _collapse_run(model: Path, safety: bool):
    # aggressive settings (fast teacher, fast BN statistics, high lr) so that learning on noise frames hurts
    cfg = online_cfg(lr=0.05, ema_decay=0.5, bn_momentum=0.1,
               safety={"enabled": safety, "calib_frames": 3})  # the default bounds
    stream = FrameStream("scenario:target", 15, ONLINE_SIZE, segments="noise@6:12", seed=4)
    held_out = list(FrameStream("scenario:target", 6, ONLINE_SIZE, seed=99))
    ad = open_adapter(model, cfg)
    pre = None
    actions = []
    for f in stream:
        if f.index == 6:
            pre = _miou(ad.model, held_out)
        actions.append(ad.process(f.image).action)
    post = _miou(ad.model, held_out)  # after the noise and the clean frames that follow it
    return ad, pre, post, actions


def test_forced_collapse_rolls_back_to_pre_collapse_miou(small_model: Path) -> None:
    unsafe, pre_u, post_u, _ = _collapse_run(small_model, safety=False)
    safe, pre, post, actions = _collapse_run(small_model, safety=True)
    assert pre_u - post_u > 2.0, f"noise frames must really damage an unguarded adapter ({pre_u:.1f} -> {post_u:.1f})"
    assert safe.counters["rollbacks"] >= 1
    # noise on frames 6..11: the collapse is called once the noise started and at the latest `patience`
    # frames after it ended (the damage the noise frames did shows on the clean frames that follow)
    noise_start, noise_end, patience = 6, 11, safe.cfg.safety.patience
    assert noise_start < safe.rollback_frames[0] <= noise_end + patience, safe.rollback_frames
    # and it went back to weights from before the noise: the last good snapshot was taken at frame <= 6
    # (a snapshot is "the weights as that frame found them"), never one of the frames that learned noise
    assert safe._good["frame"] <= noise_start, safe._good["frame"]
    assert post >= pre - 1.0, f"after rollback mIoU {post:.2f} is below the pre-collapse {pre:.2f}"
    assert post - post_u > 2.0, "the guarded adapter ends the noise far above the unguarded one"


@pytest.mark.parametrize("setup", ["target-only", "source-anchor", "spread-update"])
def test_resume_after_restart_matches_uninterrupted_run(small_model: Path, tmp_path: Path, setup: str,
                                                        tiny_specs: dict[str, str]) -> None:
    frames = list(FrameStream("scenario:target", 8, ONLINE_SIZE, seed=5))
    # bit-exact from the first frame of the process on: the numba kernels no longer change torch's
    # thread count on their first launch (which made the first adapter ~1e-6 off every later one)
    anchored = setup == "source-anchor"
    extra = ({"source": tiny_specs["source_train"], "source_samples": 4, "lr_gate": (0.9, 1.0), "lr_warmup": 3}
             if anchored else {})
    every = 5
    if setup == "spread-update":  # the save falls between the two halves of an update: gradients carried over
        extra, every = {"batch_frames": 2, "update_spread": 2}, 4
    full = open_adapter(small_model, online_cfg(**extra))
    for f in frames:
        full.process(f.image)

    state = tmp_path / "state.safetensors"
    first = open_adapter(small_model, online_cfg(checkpoint_every=every, **extra), state=state)
    for f in frames[:7]:  # "crashes" after frame 6; the last save was after frame every - 1
        first.process(f.image)
    if setup == "spread-update":
        assert full.counters["updates"] == 5  # frames 3..7, a step after every second one
    del first
    resumed = OnlineAdapter.resume(state)
    assert resumed.frame_index == every
    assert resumed.accumulated == (1 if setup == "spread-update" else 0)
    for f in frames[resumed.frame_index:]:
        resumed.process(f.image)
    assert resumed.counters == full.counters
    for name in ("student", "teacher"):
        a = getattr(full, name) if name == "student" else full.model
        b = getattr(resumed, name) if name == "student" else resumed.model
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), f"{name}.{k} differs after resume"
    assert torch.equal(full.centroids, resumed.centroids)
    assert (resumed.source is not None) == anchored  # the anchor subset is rebuilt from the saved config


def test_spread_update_steps_once_per_spread(small_model: Path) -> None:
    """update_spread 2: the first half of an update only accumulates (the weights stay), the second steps."""
    frames = [f.image for f in FrameStream("scenario:target", 7, ONLINE_SIZE, seed=6)]
    cfg = online_cfg(batch_frames=2, update_spread=2, restore_prob=0.0, safety={"calib_frames": 3, "enabled": False})
    ad = open_adapter(small_model, cfg)
    weights = []
    for img in frames:
        r = ad.process(img)
        weights.append((r.action, ad.accumulated, {k: v.clone() for k, v in ad.student.named_parameters()}))
    assert [a for a, _, _ in weights] == ["calibrate"] * 3 + ["update"] * 4
    assert [acc for _, acc, _ in weights[3:]] == [1, 0, 1, 0]
    same = [all(torch.equal(weights[i][2][k], weights[i - 1][2][k]) for k in weights[i][2]) for i in range(3, 7)]
    assert same == [True, False, True, False]  # a half accumulates, the second half steps
    with pytest.raises(ValueError, match="update_spread 3 must divide batch_frames 4"):
        online_cfg(batch_frames=4, update_spread=3)


def test_source_anchor_is_a_fixed_seeded_labelled_subset(tiny_specs: dict[str, str]) -> None:
    from diga_sdk.data.datasets import open_dataset
    from diga_sdk.errors import DigaError
    from diga_sdk.online.source import SourceAnchor

    a, b = SourceAnchor(tiny_specs["source_train"], 3, seed=1), SourceAnchor(tiny_specs["source_train"], 3, seed=1)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    ds = open_dataset(tiny_specs["source_train"])
    originals = [torch.from_numpy(ds[i].label.astype(np.uint8)) for i in range(len(ds))]
    assert all(any(torch.equal(lab, o) for o in originals) for lab in a.labels)  # real labels, unchanged
    x, y = a.crops(5, (32, 64), np.random.default_rng(0))
    assert x.shape == (5, 3, 32, 64) and y.shape == (5, 32, 64) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert set(y.unique().tolist()) <= set(range(19)) | {255}
    with pytest.raises(DigaError, match="smaller than the update crop"):
        a.check_crop((a.min_hw[0] + 8, a.min_hw[1]))
    target_root = tiny_specs["target_train"].split(":", 1)[1].split("@")[0]
    with pytest.raises(DigaError, match="no labels"):  # a plain image folder cannot anchor anything
        SourceAnchor(f"folder:{target_root}/leftImg8bit/train", 2)


def test_stream_scenarios_are_deterministic_and_conditioned() -> None:
    s = FrameStream("scenario:target", 10, ONLINE_SIZE, segments="fog@0.5,noise@8:9", seed=7)
    conds = [s.condition(i) for i in range(10)]
    assert conds == ["clear"] * 5 + ["fog"] * 3 + ["noise"] + ["fog"]
    a, b = s.frame(6), FrameStream("scenario:target", 10, ONLINE_SIZE, segments="fog@0.5", seed=7).frame(6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    clear = FrameStream("scenario:target", 10, ONLINE_SIZE, seed=7).frame(6)
    assert np.array_equal(a.label, clear.label) and not np.array_equal(a.image, clear.image)
    assert a.image.mean() > clear.image.mean()  # haze brightens toward the airlight
    assert (s.frame(8).label == 255).all()  # a noise frame has nothing to score


def test_bad_stream_specs_raise_clear_errors() -> None:
    from diga_sdk.errors import DigaError

    with pytest.raises(DigaError, match="CONDITION@START"):
        FrameStream("scenario:target", 10, ONLINE_SIZE, segments="rain@0.5")
    with pytest.raises(DigaError, match="outside"):
        FrameStream("scenario:target", 10, ONLINE_SIZE, segments="fog@5:50")
    with pytest.raises(DigaError, match="unknown scenario"):
        FrameStream("scenario:mars", 10, ONLINE_SIZE)


def test_distance_signal_is_one_sided_and_re_measured_after_new_centroids() -> None:
    from diga_sdk.online.safety import HealthMonitor, SafetyConfig

    mon = HealthMonitor(SafetyConfig(calib_frames=2, max_distance_ratio=1.35))
    sig = {"kept": 0.8, "entropy": 0.4, "hist": [0.5, 0.5] + [0.0] * 17, "distance": 5.0}
    for _ in range(2):
        mon.observe(sig, None)
    mon.observe({**sig, "distance": 2.0}, None)  # features closer to the centroids: not a collapse
    assert mon.last_reasons == []
    for _ in range(2):
        mon.observe({**sig, "distance": 9.0}, None)  # far from every centroid (noise-like input)
    assert mon.last_reasons == ["distance"]
    mon.after_rollback()
    mon.rebase_distance()  # new (fleet) centroids: distances of 9 are the new normal
    for _ in range(2):
        mon.observe({**sig, "distance": 9.0}, None)
        assert mon.last_reasons == []
    assert mon.ref["distance"] == pytest.approx(9.0) and mon.rebase_left == 0
    mon.observe({**sig, "distance": 9.5}, None)
    assert mon.last_reasons == []
    for _ in range(3):
        mon.observe({**sig, "distance": 20.0}, None)
    assert mon.last_reasons == ["distance"]


def test_distance_reference_follows_slow_adaptation_but_not_a_jump() -> None:
    from diga_sdk.online.safety import HealthMonitor, SafetyConfig

    sig = {"kept": 0.8, "entropy": 0.4, "hist": [0.5, 0.5] + [0.0] * 17, "distance": 5.0}
    tracking, fixed = HealthMonitor(SafetyConfig(calib_frames=2)), HealthMonitor(SafetyConfig(calib_frames=2,
                                                                                            distance_tracking=0.0))
    for mon in (tracking, fixed):
        for _ in range(2):
            mon.observe(sig, None)
    alarms = {"tracking": 0, "fixed": 0}
    for k in range(200):  # adaptation moves features away from the centroids by 0.4 % a frame
        for name, mon in (("tracking", tracking), ("fixed", fixed)):
            mon.observe({**sig, "distance": 5.0 * (1.004 ** k)}, None)
            alarms[name] += bool(mon.last_reasons)
    assert alarms["tracking"] == 0 and alarms["fixed"] > 50, alarms
    level = 5.0 * 1.004 ** 199
    for _ in range(3):  # then a noise-like jump of 1.45x
        tracking.observe({**sig, "distance": 1.45 * level}, None)
    assert tracking.last_reasons == ["distance"]


@pytest.mark.parametrize("prob", [0.0, 0.02, 0.3, 1.0])  # 0.02: positions drawn, not a mask
def test_stochastic_restore_returns_that_share_of_weights_to_shipped(small_model: Path, prob: float) -> None:
    stream = FrameStream("scenario:target", 5, ONLINE_SIZE, seed=2)
    ad = open_adapter(small_model, online_cfg(restore_prob=prob, safety={"calib_frames": 3, "enabled": False}))
    shipped = {k: v.clone() for k, v in ad.student.named_parameters()}
    for f in stream:
        ad.process(f.image)
    assert ad.counters["updates"] == 2
    same = sum(int((p == shipped[k]).sum()) for k, p in ad.student.named_parameters())
    total = sum(p.numel() for p in shipped.values())
    share = same / total
    if prob == 1.0:
        assert share == 1.0
    elif prob == 0.0:
        assert share < 0.2, share  # SGD with weight decay moves (almost) every weight
    else:  # restored in the last update, or in the one before and untouched since (never: SGD moves it)
        assert abs(share - prob) < 0.1 * prob, share


def test_shadow_check_flags_drift_from_shipped_but_not_a_shared_condition_change() -> None:
    from diga_sdk.online.safety import HealthMonitor, SafetyConfig

    sig = {"kept": 0.88, "entropy": 0.4, "hist": [0.5, 0.5] + [0.0] * 17, "distance": 5.0}
    drift, weather = HealthMonitor(SafetyConfig(calib_frames=2)), HealthMonitor(SafetyConfig(calib_frames=2))
    for mon in (drift, weather):
        for _ in range(2):
            mon.observe(sig, None)
    for k in range(12):  # both frames see kept falling 0.88 -> 0.55; only the drifting teacher falls alone
        kept = 0.88 - 0.03 * k
        drift.observe({**sig, "kept": kept, "kept_shipped": 0.88}, None)
        weather.observe({**sig, "kept": kept, "kept_shipped": kept}, None)
        assert "shipped" not in weather.last_reasons
    assert "shipped" in drift.last_reasons and drift.signals()["kept_vs_shipped"] < 0.85
    drift.after_rollback()
    assert drift.signals()["kept_vs_shipped"] == 1.0


def test_rollback_slows_learning_only_when_the_model_was_to_blame(small_model: Path) -> None:
    ad = open_adapter(small_model, online_cfg(lr=0.004, rollback_lr_factor=0.5))
    for f in FrameStream("scenario:target", 4, ONLINE_SIZE, seed=6):  # calibrated, so a rollback has a reference
        ad.process(f.image)
    lr = lambda: {g["lr"] for g in ad.optimizer.param_groups}  # noqa: E731
    base = lr()
    ad._rollback(["distance"])  # the input was unlike anything (noise, a covered lens): same pace afterwards
    assert lr() == base
    ad._rollback(["shipped"])  # the teacher drifted away from the shipped model's consistency
    assert lr() == {v * 0.5 for v in base}
    ad._rollback(["agreement", "distance"])
    assert lr() == {v * 0.25 for v in base} and ad.counters["rollbacks"] == 3


def test_lr_follows_the_shadow_gate_the_warm_up_and_the_back_off(small_model: Path) -> None:
    ad = open_adapter(small_model, online_cfg(lr=0.004, lr_gate=(0.9, 1.0), lr_warmup=4, rollback_lr_factor=0.5))
    mults = [g.get("lr_mult", 1.0) for g in ad.optimizer.param_groups]
    lrs = lambda: [g["lr"] / m for g, m in zip(ad.optimizer.param_groups, mults, strict=True)]  # noqa: E731
    ad.counters["updates"] = 0
    ad._set_lr()
    assert lrs() == pytest.approx([0.001] * len(mults))  # first update of a 4-update warm-up
    ad.counters["updates"] = 10
    ad.monitor.smooth["kept_vs_shipped"] = 1.02  # no worse than shipped: the full lr
    ad._set_lr()
    assert lrs() == pytest.approx([0.004] * len(mults))
    ad.monitor.smooth["kept_vs_shipped"] = 0.95  # half-way down the gate
    ad._set_lr()
    assert ad.lr_gate() == pytest.approx(0.5) and lrs() == pytest.approx([0.002] * len(mults))
    ad.monitor.smooth["kept_vs_shipped"] = 0.88  # below the gate: no weight learning at all
    ad._set_lr()
    assert lrs() == [0.0] * len(mults)
    ad.monitor.smooth["kept_vs_shipped"] = 0.95
    ad.lr_backoff = 0.5
    ad._set_lr()
    assert lrs() == pytest.approx([0.001] * len(mults))
    with pytest.raises(ValueError, match="lr_gate"):
        online_cfg(lr_gate=(1.0, 0.9))


@pytest.mark.parametrize("mode", ["adapt", "adapt-batch"])
def test_adapt_bn_statistics_come_from_the_clean_crops_only(small_model: Path, mode: str) -> None:
    """'adapt' moves the running statistics with the clean target crops, so how strongly the training
    views are augmented cannot change them; 'adapt-batch' takes them from the (augmented) training batch."""
    frames = list(FrameStream("scenario:target", 2, ONLINE_SIZE, seed=4))
    stats = []
    for beta in (0.0, 1.0):
        ad = open_adapter(small_model, online_cfg(bn=mode, aug_beta=beta, safety={"enabled": False, "calib_frames": 1}))
        for f in frames:
            ad.process(f.image)
        assert ad.counters["updates"] == 1
        stats.append({k: v for k, v in ad.student.state_dict().items() if "running_" in k})
    same = all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])
    assert same == (mode == "adapt")


def test_fleet_weights_replace_the_teacher_and_move_the_student_alike(small_model: Path) -> None:
    ad = open_adapter(small_model, online_cfg())
    for f in FrameStream("scenario:target", 6, ONLINE_SIZE, seed=3):
        ad.process(f.image)
    teacher, student = ad.weights(), {k: v.clone() for k, v in ad.student.state_dict().items()}
    lead = [k for k, v in student.items() if v.is_floating_point() and not torch.equal(v, teacher[k])]
    assert lead, "after updates the student leads its EMA teacher"
    fleet = {k: v + 0.01 if v.is_floating_point() else v for k, v in teacher.items()}
    ad.load_weights(fleet)
    for k, v in ad.model.state_dict().items():
        assert torch.equal(v, fleet[k]), k
    for k, v in ad.student.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, student[k] + 0.01, atol=1e-6), k  # the lead is kept, not reset


def test_onnxruntime_predictions_equal_torch_ones_through_updates_and_rollbacks(small_model: Path) -> None:
    """The adapter's two predict runtimes see the same weights at every frame: equal labels while it learns,
    after a rollback (noise frames) and in probation (the shipped model from its embedded-weights session)."""
    pytest.importorskip("onnxruntime")
    frames = [f.image for f in FrameStream("scenario:target", 10, ONLINE_SIZE, seed=3)]
    rng = np.random.default_rng(0)
    frames += [rng.integers(0, 256, frames[0].shape, dtype=np.uint8) for _ in range(6)]  # a collapse to roll back
    frames += [f.image for f in FrameStream("scenario:target", 6, ONLINE_SIZE, seed=4)]
    runs = {}
    for runtime in ("torch", "onnxruntime"):
        ad = open_adapter(small_model, online_cfg(predict_runtime=runtime))
        assert ad.onnx_predict == (runtime == "onnxruntime")
        runs[runtime] = ([ad.process(img) for img in frames], dict(ad.counters))
    (torch_out, torch_counts), (ort_out, ort_counts) = runs["torch"], runs["onnxruntime"]
    assert torch_counts["updates"] >= 5 and torch_counts == ort_counts
    for a, b in zip(torch_out, ort_out, strict=True):
        assert a.action == b.action
        assert float((a.pred != b.pred).mean()) < 1e-3, a.index


def test_frozen_parts_keep_their_shipped_weights(small_model: Path) -> None:
    from diga_sdk.errors import DigaError

    ad = open_adapter(small_model, online_cfg(frozen=["stem"], restore_prob=0.01))
    before = {k: v.clone() for k, v in ad.student.named_parameters()}
    for f in FrameStream("scenario:target", 6, ONLINE_SIZE, seed=1):
        ad.process(f.image)
    assert ad.counters["updates"] >= 2
    for k, v in ad.student.named_parameters():
        assert torch.equal(v, before[k]) == k.startswith("stem."), k
    with pytest.raises(DigaError, match="'stemm' names no parameter.*stem"):
        open_adapter(small_model, online_cfg(frozen=["stemm"]))


def test_bernoulli_positions_draws_each_position_with_that_probability() -> None:
    from diga_sdk.online.adapter import bernoulli_positions

    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(500)
    counts = []
    for _ in range(4000):
        idx = bernoulli_positions(500, 0.02, gen)
        assert bool((idx[1:] > idx[:-1]).all()) and (idx.numel() == 0 or 0 <= int(idx[0]) and int(idx[-1]) < 500)
        hits[idx] += 1
        counts.append(idx.numel())
    freq = hits / 4000
    assert abs(float(freq.mean()) - 0.02) < 0.001
    assert float(freq.std()) < 3 * (0.02 * 0.98 / 4000) ** 0.5  # no position favoured beyond binomial spread
    assert abs(float(np.var(counts)) - 500 * 0.02 * 0.98) < 2.0  # the count is Binomial(500, 0.02)
