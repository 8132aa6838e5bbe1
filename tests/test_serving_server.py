"""The real server: `bentoml serve` in a subprocess on a free loopback port (one per module), called
over HTTP. Output equal to in-process prediction, every bad input, auth, a schemathesis fuzz run
finding no 5xx, and hot-swap under concurrent load with no failed request (last: it changes the model)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_fixtures import write_perturbed_models

pytestmark = [pytest.mark.server, pytest.mark.slow]

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 1_000_000


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


def _decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """a.safetensors, b.safetensors (perturbed weights: different answers), corrupt.safetensors."""
    return write_perturbed_models(tmp_path_factory.mktemp("models"), tiny_checkpoint)


@pytest.fixture(scope="module")
def runtimes(models_dir: Path):
    """In-process runtimes of both models (single-threaded like the server's)."""
    import torch

    from diga_sdk.runtime.runtimes import open_runtime

    threads = torch.get_num_threads()
    rts = {k: open_runtime(models_dir / f"{k}.safetensors", runtime="torch", threads=1) for k in ("a", "b")}
    yield rts
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from diga_sdk.serving.launch import background_server
    from diga_sdk.serving.settings import ServeSettings

    settings = ServeSettings(model=models_dir / "a.safetensors", models_dir=models_dir, runtime="torch", threads=1,
                             api_token=TOKEN, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, max_batch_size=8,
                             max_latency_ms=20_000)
    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    with background_server(settings, log) as srv:
        yield srv
        assert srv.proc.poll() is None, f"the server died during the tests:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 64x128 frame (the tiny model's input size) with structure, so labels vary across the image."""
    from diga_sdk.serving.swap import probe_images

    return probe_images((64, 128), n=1, seed=5)[0]


# ------------------------------------------------------------------------------------- equality
def test_metadata(http, runtimes):
    meta = http.get("/metadata").json()
    rt = runtimes["a"]
    assert meta["model_hash"] == rt.model_hash and meta["runtime"] == "torch"
    assert meta["class_names"] == list(rt.meta.class_names) and meta["input_size"] == [64, 128]
    assert len(meta["palette"]) == len(meta["class_names"]) and meta["batching"]["enabled"] is True
    assert meta["auth"] is True and meta["limits"] == {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS}


def test_label_map_equals_in_process_prediction(http, runtimes, image):
    r = http.post("/segment", content=_png(image), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    served = _decode_png(r.content)
    expected = runtimes["a"].predict(image[None])[0]
    assert served.dtype == np.uint8 and served.shape == (64, 128)
    assert len(np.unique(expected)) > 1  # a non-trivial map, so equality means something
    assert np.array_equal(served, expected)


def test_other_sizes_resized_and_labels_back_at_original_size(http, runtimes, image):
    from diga_sdk.serving.codecs import resize_image, resize_labels

    odd = np.asarray(Image.fromarray(image).resize((171, 93)))  # not the model's size nor its aspect
    r = http.post("/segment", content=_png(odd), headers={"Content-Type": "image/png"})
    served = _decode_png(r.content)
    expected = resize_labels(runtimes["a"].predict(resize_image(odd, (64, 128))[None])[0], (93, 171))
    assert r.status_code == 200 and served.shape == (93, 171)
    assert np.array_equal(served, expected)


def test_multipart_jpeg_webp_and_client_agree(server, http, runtimes, image):
    from diga_sdk.serving.client import SegmentClient
    from diga_sdk.serving.codecs import decode_image

    raw = _decode_png(http.post("/segment", content=_png(image), headers={"Content-Type": "image/png"}).content)
    multi = _decode_png(http.post("/segment", files={"image": ("x.png", _png(image), "image/png")}).content)
    assert np.array_equal(raw, multi)
    for fmt in ("JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=fmt, quality=90)
        decoded = decode_image(buf.getvalue(), MAX_PIXELS)  # the same decoder the server runs
        r = http.post("/segment", content=buf.getvalue(), headers={"Content-Type": f"image/{fmt.lower()}"})
        assert r.status_code == 200
        assert np.array_equal(_decode_png(r.content), runtimes["a"].predict(decoded[None])[0])
    with SegmentClient(server.url, token=TOKEN) as client:
        assert np.array_equal(client.segment(image), raw)
        assert client.metadata()["model_hash"] == runtimes["a"].model_hash


def test_overlay_and_json_outputs(http, runtimes, image):
    from diga_sdk.serving.codecs import overlay, rle_decode

    labels = runtimes["a"].predict(image[None])[0]
    r = http.post("/segment?format=overlay&alpha=0.4", content=_png(image), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert np.array_equal(_decode_png(r.content), overlay(image, labels, runtimes["a"].meta.palette, 0.4))
    r = http.post("/segment?format=json&rle=true", content=_png(image), headers={"Content-Type": "image/png"})
    body = r.json()
    assert r.status_code == 200 and body["height"] == 64 and body["width"] == 128
    assert [c["pixels"] for c in body["classes"]] == np.bincount(labels.ravel(), minlength=19)[:19].tolist()
    rebuilt = np.full(labels.shape, 255, np.uint8)
    for run in body["rle"]:
        rebuilt[rle_decode(run["counts"], tuple(run["size"]))] = run["id"]
    assert np.array_equal(rebuilt, labels)


def test_grey_palette_rgba_inputs_are_converted(http, runtimes, image):
    for mode in ("L", "P", "RGBA", "LA"):
        img = Image.fromarray(image).convert("RGBA" if mode == "LA" else "RGB").convert(mode)
        expected = runtimes["a"].predict(np.asarray(img.convert("RGB"))[None])[0]
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        r = http.post("/segment", content=buf.getvalue(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, (mode, r.text)
        assert np.array_equal(_decode_png(r.content), expected), mode


# ------------------------------------------------------------------------------------ bad input
def test_every_bad_input_is_a_4xx_and_the_server_survives(http, image):
    from diga_sdk.serving.codecs import encode_png

    png = _png(image)
    gif = io.BytesIO()
    Image.fromarray(image).save(gif, format="GIF")
    bomb = io.BytesIO()
    Image.new("1", (2000, 1000)).save(bomb, format="PNG")  # 2 Mpx > 1 Mpx limit, a few kB on the wire
    big = encode_png(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))  # ~3 MB > 2 MB
    assert len(big) > MAX_BODY and len(bomb.getvalue()) < 50_000
    cases = [
        (dict(content=b"definitely not an image", headers={"Content-Type": "image/png"}), 400, "not an image"),
        (dict(content=b""), 400, "empty"),
        (dict(content=png[: len(png) // 2], headers={"Content-Type": "image/png"}), 400, "corrupt"),
        (dict(content=gif.getvalue()), 415, "GIF"),
        (dict(content=bomb.getvalue()), 413, "pixels"),
        (dict(content=big), 413, "DIGA_MAX_BODY_BYTES"),
        (dict(files={"other": ("a.txt", b"hello", "text/plain")}, data={"x": "1"}), 400, "image"),
        (dict(content=b"--xx\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=xx"}), 400, ""),
    ]
    for kwargs, status, words in cases:
        r = http.post("/segment", **kwargs)
        assert r.status_code == status, (kwargs.get("headers"), r.status_code, r.text)
        assert words in r.json()["error"]
    for query in ("format=bmp", "alpha=2", "rle=maybe"):
        r = http.post(f"/segment?{query}", content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and r.json()["error"], query
    assert http.post("/segment", content=png, headers={"Content-Type": "image/png"}).status_code == 200


def test_diga_predict_url_writes_the_served_label_maps(server, runtimes, image, tmp_path, monkeypatch):
    from diga_sdk.cli import main

    src = tmp_path / "frame.png"
    src.write_bytes(_png(image))
    monkeypatch.setenv("DIGA_API_TOKEN", TOKEN)
    assert main(["predict", str(src), "--url", server.url, "--out", str(tmp_path / "out"), "--color"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "frame.png"))
    assert np.array_equal(labels, runtimes["a"].predict(image[None])[0])
    assert np.asarray(Image.open(tmp_path / "out" / "frame_color.png")).shape == (64, 128, 3)
    monkeypatch.setenv("DIGA_API_TOKEN", "wrong")
    assert main(["predict", str(src), "--url", server.url, "--out", str(tmp_path / "out2")]) == 1


def test_diga_serve_refuses_a_missing_model_before_starting(tmp_path, capsys):
    from diga_sdk.cli import main

    assert main(["serve", "--model", str(tmp_path / "nope.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ auth
def test_auth(server, image):
    png = _png(image)
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        for path in ("/healthz", "/livez", "/readyz"):
            assert anon.get(path).status_code == 200, path
        assert anon.post("/segment", content=png).status_code == 401
        assert anon.get("/metadata").status_code == 401
        assert anon.get("/metrics").status_code == 401
        assert anon.post("/admin/reload", json={"path": "b.safetensors"}).status_code == 401
        for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer  {TOKEN} x"):
            assert anon.get("/metadata", headers={"Authorization": header}).status_code == 401, header
        metrics = anon.get("/metrics", headers=AUTH)
        assert metrics.status_code == 200 and "bentoml_" in metrics.text


# ------------------------------------------------------------------------------------- fuzzing
def test_schemathesis_finds_no_server_error(server, tmp_path):
    """A bounded schemathesis run over the service's own OpenAPI schema: every response below 500."""
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/docs.json", "--checks", "not_a_server_error",
           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "12", "--seed", "7", "--workers", "2",
           "--request-timeout", "30", "--report", "junit",
           "--report-dir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    tested = "".join(p.read_text() for p in tmp_path.glob("*.xml"))
    assert "<failure" not in tested and "<error" not in tested, tested[-3000:]
    for op in ("POST /segment", "GET /metadata", "POST /admin/reload", "GET /healthz"):
        assert f'testcase name="{op}"' in tested, op


# ------------------------------------------------------------------------------------- hot-swap
def test_reload_refuses_bad_paths_and_models(http, runtimes, models_dir):
    for body, status in [({"path": "../a.safetensors"}, 403), ({"path": "/etc/passwd"}, 403),
                         ({"path": "nope.safetensors"}, 404), ({"path": "corrupt.safetensors"}, 422),
                         ({"path": ""}, 400), ({"wrong": 1}, 400)]:
        r = http.post("/admin/reload", json=body)
        assert r.status_code == status, (body, r.text)
    assert http.get("/metadata").json()["model_hash"] == runtimes["a"].model_hash  # still serving a


def test_hot_swap_under_concurrent_load_fails_no_request(server, http, runtimes, image):
    from diga_sdk.serving.client import SegmentClient

    png = _png(image)
    ref_a = runtimes["a"].predict(image[None])[0]
    ref_b = runtimes["b"].predict(image[None])[0]
    assert (ref_a != ref_b).mean() > 0.05  # the two models are told apart by their answers
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/segment", content=png, headers={"Content-Type": "image/png"})
                which = "?"
                if r.status_code == 200:
                    got = _decode_png(r.content)
                    agree_a, agree_b = (got == ref_a).mean(), (got == ref_b).mean()
                    which = "a" if agree_a >= 0.999 else "b" if agree_b >= 0.999 else f"neither {agree_a:.3f}/{agree_b:.3f}"
                with lock:
                    results.append((time.monotonic(), r.status_code, which))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with SegmentClient(server.url, token=TOKEN) as client:
        t_swap0 = time.monotonic()
        swap = client.reload("b.safetensors")
        t_swap1 = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(60)
    statuses = [s for _, s, _ in results]
    assert len(results) >= 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert {w for _, _, w in results} <= {"a", "b"}, [w for _, _, w in results if w not in "ab"][:5]
    assert any(w == "a" and t < t_swap0 for t, _, w in results)
    after = [w for t, _, w in results if t > t_swap1 + 0.5]
    assert after and set(after) == {"b"}
    assert swap["current"]["model_hash"] == runtimes["b"].model_hash and swap["smoke_test"]["batch_agreement"] >= 0.999
    meta = http.get("/metadata").json()
    assert meta["model_hash"] == runtimes["b"].model_hash
    assert max(int(k) for k in meta["batching"]["batch_sizes"]) > 1  # the adaptive batcher merged requests
