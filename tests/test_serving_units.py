"""Serving parts that need no server: image decoding and every colour mode, encoders (PNG, overlay,
JSON + RLE), the guard middleware (auth, admin lock-out, body cap), settings, hot-swap path checks
and the parity smoke test."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diga_sdk.errors import DigaError
from diga_sdk.serving.codecs import (
    RequestError,
    decode_image,
    encode_png,
    histogram,
    label_json,
    overlay,
    resize_labels,
    rle_decode,
    rle_per_class,
)


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ decode
def test_decode_rgb_png_is_lossless():
    assert np.array_equal(decode_image(_encode(Image.fromarray(RGB)), 10_000), RGB)


def _grey16_png(grey8: np.ndarray) -> bytes:
    import png  # pypng writes 16-bit greyscale PNGs

    buf = io.BytesIO()
    png.Writer(grey8.shape[1], grey8.shape[0], greyscale=True, bitdepth=16).write(buf, (grey8.astype(np.uint16) * 257).tolist())
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "grey16"])
def test_every_colour_mode_becomes_rgb(mode):
    img = Image.fromarray(RGB).convert("RGBA" if mode == "LA" else "RGB")
    data = _grey16_png(RGB[..., 0]) if mode == "grey16" else _encode(img.convert(mode))
    out = decode_image(data, 10_000)
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    if mode in ("L", "grey16"):  # grey replicated into three equal channels
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    if mode == "grey16":  # 16-bit scaled down to the 8-bit values it came from
        assert np.array_equal(out[..., 0], RGB[..., 0])
    if mode == "RGBA":
        assert np.array_equal(out, RGB)


def test_palette_with_transparency_and_cmyk_jpeg_and_webp_decode():
    pal = Image.fromarray(RGB).convert("P")
    pal.info["transparency"] = 0
    assert decode_image(_encode(pal, transparency=0), 10_000).shape == (24, 40, 3)
    cmyk = Image.fromarray(RGB).convert("CMYK")
    assert decode_image(_encode(cmyk, "JPEG"), 10_000).shape == (24, 40, 3)
    webp = decode_image(_encode(Image.fromarray(RGB), "WEBP", lossless=True), 10_000)
    assert np.array_equal(webp, RGB)


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = decode_image(_encode(img, "JPEG", exif=exif, quality=95), 10_000)
    assert out.shape == (40, 24, 3)


@pytest.mark.parametrize("data, status", [
    (b"", 400),
    (b"this is not an image at all", 400),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400),
])
def test_garbage_is_a_400(data, status):
    with pytest.raises(RequestError) as err:
        decode_image(data, 10_000)
    assert err.value.status == status


def test_truncated_png_is_a_400():
    data = _encode(Image.fromarray(RGB))
    with pytest.raises(RequestError) as err:
        decode_image(data[: len(data) // 2], 10_000)
    assert err.value.status == 400


def test_gif_and_bmp_are_refused_with_415():
    for fmt in ("GIF", "BMP"):
        with pytest.raises(RequestError) as err:
            decode_image(_encode(Image.fromarray(RGB), fmt), 10_000)
        assert err.value.status == 415 and fmt in str(err.value)


def test_decompression_bomb_refused_from_the_header():
    bomb = _encode(Image.new("1", (4000, 3000)))  # 12 Mpx in a few kB
    assert len(bomb) < 20_000
    with pytest.raises(RequestError) as err:
        decode_image(bomb, 1_000_000)
    assert err.value.status == 413 and "12000000" in str(err.value)


# ------------------------------------------------------------------------------------------ encode
def test_label_png_round_trip_and_nearest_resize():
    labels = np.random.default_rng(1).integers(0, 19, (16, 32), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(encode_png(labels))))
    assert np.array_equal(back, labels)
    up = resize_labels(labels, (32, 64))
    assert set(np.unique(up)) <= set(np.unique(labels))  # nearest never invents a label
    assert np.array_equal(up[::2, ::2], labels)


def test_overlay_blends_classes_and_keeps_ignore_pixels():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 255
    palette = [[200, 0, 0]] + [[0, 0, 0]] * 18
    out = overlay(image, labels, palette, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[1, 1].tolist() == [150, 50, 50]
    assert overlay(image, labels, palette, alpha=1.0)[2, 2].tolist() == [200, 0, 0]


def test_histogram_and_json():
    labels = np.array([[0, 0, 1], [2, 255, 1]], np.uint8)
    names = ["a", "b", "c"]
    hist = histogram(labels, names)
    assert [c["pixels"] for c in hist] == [2, 2, 1]
    body = label_json(labels, names, rle=True)
    assert body["ignored_pixels"] == 1 and body["height"] == 2 and body["width"] == 3
    masks = {r["id"]: rle_decode(r["counts"], tuple(r["size"])) for r in body["rle"]}
    for k, m in masks.items():
        assert np.array_equal(m, labels == k)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.lists(st.sampled_from([0, 3, 18, 255]), min_size=1, max_size=4),
       st.integers(0, 2**32 - 1))
def test_rle_round_trips(h, w, values, seed):
    labels = np.random.default_rng(seed).choice(values, (h, w)).astype(np.uint8)
    runs = rle_per_class(labels)
    assert set(runs) == set(np.unique(labels).tolist())
    for k, counts in runs.items():
        assert sum(counts) == h * w
        assert np.array_equal(rle_decode(counts, (h, w)), labels == k)


# -------------------------------------------------------------------------------------- middleware
def _guarded(token: str | None, max_body: int = 1024):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from diga_sdk.serving.middleware import GuardMiddleware

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"n": len(body), "sum": sum(body) % 997})

    async def ok(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/healthz", ok), Route("/readyz", ok),
                            Route("/admin/reload", echo, methods=["POST"])])
    app.add_middleware(GuardMiddleware, api_token=token, max_body_bytes=max_body)
    return TestClient(app)


def test_auth_required_everywhere_but_health_probes():
    c = _guarded("s3cret")
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    assert c.post("/echo", content=b"x").status_code == 401
    assert c.post("/echo", content=b"x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/echo", content=b"x", headers={"Authorization": "Bearer s3cre"}).status_code == 401
    assert c.post("/echo", content=b"x", headers={"Authorization": "Basic s3cret"}).status_code == 401
    r = c.post("/echo", content=b"x", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["n"] == 1
    assert c.post("/echo", content=b"x").headers["www-authenticate"].startswith("Bearer")


def test_admin_routes_refused_without_a_token_even_with_a_header():
    c = _guarded(None)
    assert c.post("/echo", content=b"x").status_code == 200  # inference open when no token
    r = c.post("/admin/reload", json={"path": "m.safetensors"}, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "DIGA_API_TOKEN" in r.json()["error"]


def test_body_cap_declared_and_streamed():
    c = _guarded(None, max_body=1000)
    payload = bytes(range(256)) * 3  # 768 bytes: under the cap, passed through intact
    r = c.post("/echo", content=payload)
    assert r.status_code == 200 and r.json() == {"n": 768, "sum": sum(payload) % 997}
    assert c.post("/echo", content=b"x" * 1001).status_code == 413

    def chunks():  # no Content-Length: the cap must hold on the streamed bytes
        for _ in range(5):
            yield b"y" * 300

    r = c.post("/echo", content=chunks())
    assert r.status_code == 413 and "DIGA_MAX_BODY_BYTES" in r.json()["error"]


# ------------------------------------------------------------------------------------- settings
def test_settings_from_env_and_back():
    from diga_sdk.serving.settings import ServeSettings

    s = ServeSettings.from_env({"DIGA_MODEL": "/m/a.onnx", "DIGA_MAX_BATCH_SIZE": "4", "DIGA_BATCHING": "0",
                                "DIGA_API_TOKEN": "", "DIGA_THREADS": "2", "DIGA_MAX_MIOU_DROP": "1.5"})
    assert s.max_batch_size == 4 and s.batching is False and s.api_token is None and s.threads == 2
    assert s.max_miou_drop == 1.5 and ServeSettings.from_env({}).max_miou_drop == 0.5
    assert ServeSettings.from_env(s.to_env()) == s
    assert s.resolved_models_dir() == Path("/m").resolve()
    with pytest.raises(DigaError, match="DIGA_MAX_BATCH_SIZE"):
        ServeSettings.from_env({"DIGA_MAX_BATCH_SIZE": "zero"})
    with pytest.raises(DigaError, match="DIGA_MAX_MIOU_DROP"):
        ServeSettings.from_env({"DIGA_MAX_MIOU_DROP": "-1"})
    with pytest.raises(DigaError, match="DIGA_MODEL"):
        ServeSettings.from_env({}).model_path()


# ------------------------------------------------------------------------------------- hot-swap
def test_model_paths_stay_inside_the_models_dir(tmp_path):
    from diga_sdk.serving.swap import resolve_model_file

    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "a.onnx").write_bytes(b"x")
    (models / "sub" / "b.onnx").write_bytes(b"x")
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"x")
    (models / "link.onnx").symlink_to(outside)
    assert resolve_model_file(models, "a.onnx") == (models / "a.onnx").resolve()
    assert resolve_model_file(models, "sub/b.onnx") == (models / "sub" / "b.onnx").resolve()
    for bad, status in [("../secret.onnx", 403), (str(outside), 403), ("link.onnx", 403), ("sub/../../secret.onnx", 403),
                        ("missing.onnx", 404), ("", 400), ("a\x00.onnx", 400), ("x" * 4000, 400)]:
        with pytest.raises(RequestError) as err:
            resolve_model_file(models, bad)
        assert err.value.status == status, bad


def test_smoke_test_passes_a_real_runtime_and_refuses_broken_ones(tiny_checkpoint):
    from diga_sdk.runtime.runtimes import open_runtime
    from diga_sdk.serving.swap import smoke_test

    rt = open_runtime(tiny_checkpoint, runtime="torch")
    report = smoke_test(rt, list(rt.meta.class_names))
    assert report["argmax_agreement"] == 1.0 and report["batch_agreement"] == 1.0

    with pytest.raises(DigaError, match="classes"):
        smoke_test(rt, list(rt.meta.class_names)[::-1])

    class BatchBroken:  # a real runtime whose batched calls answer garbage (a bad dynamic-batch export)
        def __init__(self, inner):
            self.inner, self.meta = inner, inner.meta

        def predict(self, images):
            out = self.inner.predict(images)
            return out if len(images) == 1 else (out + 1) % len(self.meta.class_names)

        def logits(self, images):
            return self.inner.logits(images)

    with pytest.raises(DigaError, match="parity"):
        smoke_test(BatchBroken(rt), None)
