"""End to end: a real BentoML server (the serving issue's launcher) serves the shipped model; the
online adapter adapts, exports its model (ONNX, parity-checked on its recent frames) and pushes it
through /admin/reload while clients keep sending requests. No request fails, and afterwards the
served label maps are the adapted model's."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from online_fixtures import ONLINE_SIZE, train_small_model

pytestmark = [pytest.mark.server, pytest.mark.slow]
TOKEN = "online-hotswap-token"


def test_push_adapted_model_into_running_endpoint(tmp_path: Path, tiny_specs: dict[str, str]) -> None:
    from diga_sdk.data.streams import FrameStream
    from diga_sdk.data.transforms import to_tensor
    from diga_sdk.evaluate import predict_logits
    from diga_sdk.fleet.hotswap import push_model
    from diga_sdk.models.checkpoint import load_checkpoint
    from diga_sdk.online.adapter import OnlineConfig, open_adapter
    from diga_sdk.serving.client import SegmentClient
    from diga_sdk.serving.launch import background_server
    from diga_sdk.serving.settings import ServeSettings

    models = tmp_path / "models"
    ckpt = train_small_model(models, tiny_specs["source_train"])
    torch.set_num_threads(1)
    # safety off: this test is about the swap (a 25-step model's signals are too noisy for the
    # monitor); a fast teacher (ema 0.5) so that a few frames change its predictions visibly
    cfg = OnlineConfig.model_validate({"crop": ONLINE_SIZE, "lr": 0.05, "ema_decay": 0.5,
                                       "safety": {"enabled": False, "calib_frames": 2}})
    adapter = open_adapter(ckpt, cfg)
    for f in FrameStream("scenario:target", 6, ONLINE_SIZE, seed=11):
        adapter.process(f.image)
    assert adapter.counters["updates"] >= 3
    probe = FrameStream("scenario:target", 1, ONLINE_SIZE, seed=12).frame(0).image
    want_adapted = predict_logits(adapter.model, to_tensor(probe)[None]).argmax(1)[0].numpy()
    shipped, _ = load_checkpoint(ckpt)
    want_shipped = predict_logits(shipped, to_tensor(probe)[None]).argmax(1)[0].numpy()
    assert (want_adapted != want_shipped).mean() > 0.01, "the adapted model must predict differently to tell them apart"

    from diga_sdk.export.pipeline import export_model

    shipped_onnx = models / "shipped.onnx"  # the endpoint serves ONNX (onnxruntime), as the pushed model will be
    export_model(ckpt, "onnx", shipped_onnx, parity_data=tiny_specs["target_val"], parity_images=2)
    settings = ServeSettings(model=shipped_onnx, models_dir=models, runtime="onnxruntime", threads=1,
                             api_token=TOKEN, max_latency_ms=30_000)
    with background_server(settings, tmp_path / "server.log") as srv, SegmentClient(srv.url, token=TOKEN) as client:
        before = client.segment(probe)
        assert (before == want_shipped).mean() > 0.999
        errors: list[str] = []
        done = threading.Event()
        count = [0]

        def hammer() -> None:
            with SegmentClient(srv.url, token=TOKEN) as c:
                while not done.is_set():
                    try:
                        c.segment(probe)
                        count[0] += 1
                    except Exception as exc:  # noqa: BLE001 (any failure counts)
                        errors.append(repr(exc))

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            report = push_model(adapter, models, srv.url, TOKEN, name="adapted.onnx")
        finally:
            done.set()
            for t in threads:
                t.join(60)
        assert report["parity"]["passed"]
        assert errors == [] and count[0] > 0
        after = client.segment(probe)
    assert (after == want_adapted).mean() > 0.999
    assert (after != before).mean() > 0.01
