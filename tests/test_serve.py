"""``metaformer serve``: the HTTP API against ``metaformer predict/segment/detect --json`` on real photos, batching,
bad uploads, graceful shutdown on SIGTERM, and the web page in a headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import randomize
from PIL import Image

import metaformer
from metaformer.cli import build_parser, main
from metaformer.cli import serve as serve_cli
from metaformer.serve.batching import Batcher

MISSING = serve_cli.missing_modules() + ([] if importlib.util.find_spec("httpx") else ["httpx"])
needs_serve = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (the [serve] extra)")
if not MISSING:
    import httpx
    import uvicorn
    from fastapi.testclient import TestClient

CLASSIFIER = "poolformer_s12"
LOCAL = "http://127.0.0.1:8000"  # the Host a browser on this machine sends; the service answers no other by default


def save_random(folder: Path, name: str, seed: int, **kwargs: object) -> Path:
    model = randomize(metaformer.create_model(name, **kwargs), seed).eval()
    return metaformer.save_checkpoint(model, folder / f"{name}.safetensors")


def build_app(name: str, checkpoint: Path, *flags: str):
    """The application exactly as `metaformer serve` builds it."""
    args = build_parser().parse_args(["serve", "--model", name, "--checkpoint", str(checkpoint), *flags])
    return serve_cli.build_app(args)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_random(tmp_path_factory.mktemp("serve"), CLASSIFIER, seed=5)


@pytest.fixture(scope="module")
def client(weights):
    with TestClient(build_app(CLASSIFIER, weights, "--max-upload-mb", "1"), base_url=LOCAL) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """A real uvicorn server for ``app`` in a thread, on a free port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def live_server(weights):
    """A real server that waits long enough for concurrent requests to meet in one batch."""
    with running(build_app(CLASSIFIER, weights, "--max-wait-ms", "1000", "--max-batch", "8")) as url:
        yield url


def post_file(client, path: Path, query: str = "") -> httpx.Response:
    return client.post(f"/predict{query}", files={"image": (path.name, path.read_bytes(), "image/jpeg")})


def cli_json(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def assert_same_topk(ours: list[dict], theirs: list[dict]) -> None:
    assert [e["index"] for e in ours] == [e["index"] for e in theirs]
    assert [e["label"] for e in ours] == [e["label"] for e in theirs]
    assert all(abs(a["prob"] - b["prob"]) < 1e-4 for a, b in zip(ours, theirs, strict=True))


@needs_serve
def test_predict_answers_what_the_predict_command_prints(client, weights, imagenet_samples, capsys):
    photos = imagenet_samples[::17]
    photos += [p for p in imagenet_samples if Image.open(p).mode == "L"][:1]  # a grayscale JPEG too
    expected = cli_json(
        capsys,
        "predict",
        *map(str, photos),
        "--model",
        CLASSIFIER,
        "--checkpoint",
        str(weights),
        "--json",
        "--batch-size",
        "16",
    )
    for photo, theirs in zip(photos, expected, strict=True):
        answer = post_file(client, photo)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"path", "topk"} and answer.json()["path"] == photo.name
        assert_same_topk(answer.json()["topk"], theirs["topk"])
    raw = client.post("/predict?topk=3", content=photos[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["path"] == "upload"
    assert_same_topk(raw.json()["topk"], expected[0]["topk"][:3])


@needs_serve
def test_health_info_and_the_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"] == CLASSIFIER and info["task"] == "classification" and info["device"] == "cpu"
    assert len(info["classes"]) == 1000 and info["classes"][1] == "goldfish"
    assert info["parameters"] == 11_915_176  # the plain model's count, as the paper's (fusing folds the norms)
    assert (info["image_size"], info["max_batch"], info["max_wait_ms"]) == (224, 16, 10.0)
    assert info["batching"] and info["fused"] and info["grad_cam"] and info["images_run"] >= 0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN


@needs_serve
def test_grad_cam_picture(client, imagenet_samples):
    answer = post_file(client, imagenet_samples[3], "?cam=1")
    assert answer.status_code == 200, answer.text
    picture = Image.open(io.BytesIO(base64.b64decode(answer.json()["cam_png"])))
    width, height = Image.open(imagenet_samples[3]).size  # the whole photo, its short side drawn at 384
    assert picture.format == "PNG" and picture.mode == "RGB"
    assert picture.size == (round(width * 384 / min(width, height)), round(height * 384 / min(width, height)))
    assert answer.json()["topk"] == post_file(client, imagenet_samples[3]).json()["topk"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: bytes = b"", bit_depth: int = 1) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # grayscale
    idat = png_chunk(b"IDAT", rows) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + idat + png_chunk(b"IEND", b"")


def decompression_bomb(side: int = 15_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: ~30 KB on disk, 225 million pixels decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png(side, side, data)


def bad_uploads(photo: Path, tmp_path: Path) -> list[tuple[str, dict, int, str]]:
    strip = io.BytesIO()
    Image.new("L", (100_000, 1)).save(strip, format="PNG")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 20)
    jpeg = {"Content-Type": "image/jpeg"}
    data = photo.read_bytes()
    return [
        ("corrupt", {"content": data[: len(data) // 3], "headers": jpeg}, 400, "corrupt or truncated"),
        ("text file", {"files": {"image": (text.name, text.read_bytes(), "image/jpeg")}}, 400, "not an image"),
        ("empty body", {"content": b"", "headers": jpeg}, 400, "empty"),
        ("over the limit", {"content": data * 20, "headers": jpeg}, 413, "Content-Length"),
        ("chunked over the limit", {"content": iter([data] * 20), "headers": jpeg}, 413, "received so far"),
        ("bomb", {"content": decompression_bomb(), "headers": {"Content-Type": "image/png"}}, 400, "bomb"),
        ("huge header", {"content": png(100_000, 100_000), "headers": {"Content-Type": "image/png"}}, 400, "bomb"),
        ("a thin strip", {"content": strip.getvalue(), "headers": {"Content-Type": "image/png"}}, 400, "elongated"),
        ("text type", {"content": data, "headers": {"Content-Type": "text/plain"}}, 415, "not an image"),
        ("no field", {"files": {"photo": (photo.name, data, "image/jpeg")}}, 400, "no field 'image'"),
        ("text field", {"data": {"image": "cat"}, "files": {"x": ("x", b"1")}}, 400, "is text"),
        ("broken form", {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400, "multipart"),
        ("bad topk", {"content": data, "headers": jpeg, "params": {"topk": "0"}}, 400, "topk"),
        ("png for a classifier", {"content": data, "headers": jpeg, "params": {"png": "1"}}, 400, "png is not used"),
    ]


@needs_serve
def test_bad_uploads_are_refused_and_the_server_stays_healthy(client, imagenet_samples, tmp_path):
    photo = imagenet_samples[0]
    good = post_file(client, photo).json()
    for what, request, status, message in bad_uploads(photo, tmp_path):
        answer = client.post("/predict", **request)
        assert answer.status_code == status, (what, answer.text)
        assert message in answer.json()["error"], (what, answer.json())
        assert client.get("/health").json() == {"status": "ok"}, what
        assert post_file(client, photo).json() == good, what


@needs_serve
def test_concurrent_requests_run_as_batches(live_server, imagenet_samples):
    photos = imagenet_samples[:8]
    with httpx.Client(base_url=live_server, timeout=60) as http:
        before = http.get("/info").json()
        with ThreadPoolExecutor(len(photos)) as pool:
            answers = list(pool.map(lambda p: post_file(http, p), photos))
        after = http.get("/info").json()
        start = time.perf_counter()
        alone = [post_file(http, p).json() for p in photos[:2]]  # one at a time: batches of 1
        lone_seconds = (time.perf_counter() - start) / 2
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert after["images_run"] - before["images_run"] == len(photos)
    assert after["batches_run"] - before["batches_run"] < len(photos) and after["largest_batch"] > 1, after
    assert lone_seconds < 1.0  # a lone request does not wait --max-wait-ms for others
    for batched, single in zip(answers, alone, strict=False):
        assert_same_topk(batched.json()["topk"], single["topk"])  # batching changes no result


def test_the_batcher_runs_what_is_queued_before_it_stops():
    async def scenario() -> tuple[list[int], Batcher]:
        batcher = Batcher(lambda items: [2 * i for i in items], max_batch=4, max_wait_s=30.0)
        batcher.start()
        jobs = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        await asyncio.wait_for(batcher.stop(), 5)  # does not wait the 30 s out
        return await asyncio.gather(*jobs), batcher

    results, batcher = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8, 10] and (batcher.batches_run, batcher.largest_batch) == (2, 4)


@pytest.fixture(scope="module")
def dense_weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dense")
    fpn = save_random(folder, "fpn_poolformer_s12", seed=2, test_scale=(512, 256))
    retinanet = save_random(folder, "retinanet_poolformer_s12", seed=3, min_size=256, max_size=384)
    return {"fpn_poolformer_s12": fpn, "retinanet_poolformer_s12": retinanet}


@pytest.mark.slow
@needs_serve
def test_a_segmentation_model_answers_as_segment(dense_weights, imagenet_samples, tmp_path, capsys):
    name, photo = "fpn_poolformer_s12", imagenet_samples[40]
    checkpoint = dense_weights[name]
    (expected,) = cli_json(
        capsys,
        "segment",
        str(photo),
        "--model",
        name,
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(tmp_path),
        "--json",
    )
    with TestClient(build_app(name, checkpoint), base_url=LOCAL) as client:
        info = client.get("/info").json()
        answer = post_file(client, photo, "?png=1").json()
        plain = post_file(client, photo).json()
    assert (info["task"], info["batching"], info["image_size"]) == (
        "segmentation",
        False,
        {"test_scale": [512, 256], "ignore_index": 255},
    )
    assert answer["classes"] == expected["classes"] and plain == {"path": photo.name, "classes": expected["classes"]}
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["png"])))
    assert overlay.tobytes() == Image.open(expected["overlay"]).convert("RGB").tobytes()


@needs_serve
def test_a_detection_model_answers_as_detect(dense_weights, imagenet_samples, tmp_path, capsys):
    name, photo = "retinanet_poolformer_s12", imagenet_samples[60]
    checkpoint = dense_weights[name]
    (expected,) = cli_json(
        capsys,
        "detect",
        str(photo),
        "--model",
        name,
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(tmp_path),
        "--json",
        "--score-threshold",
        "0.55",
    )
    with TestClient(build_app(name, checkpoint), base_url=LOCAL) as client:
        answer = post_file(client, photo, "?png=1&score_threshold=0.55").json()
        refused = post_file(client, photo, "?cam=1")
    assert expected["detections"] and answer["detections"] == expected["detections"]
    picture = Image.open(io.BytesIO(base64.b64decode(answer["png"])))
    assert picture.tobytes() == Image.open(expected["picture"]).convert("RGB").tobytes()
    assert refused.status_code == 400 and "cam is not used for a detection model" in refused.json()["error"]


def post_slowly(http: httpx.Client, photo: Path) -> httpx.Response:
    """The photo in two chunks a second apart: the request is in flight that long."""

    def body() -> Iterator[bytes]:
        data = photo.read_bytes()
        yield data[: len(data) // 2]
        time.sleep(1.0)
        yield data[len(data) // 2 :]

    return http.post("/predict", content=body(), headers={"Content-Type": "image/jpeg"})


@pytest.mark.slow
@needs_serve
def test_sigterm_answers_the_requests_in_flight_then_exits(weights, imagenet_samples, tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "metaformer",
        "serve",
        "--model",
        CLASSIFIER,
        "--checkpoint",
        str(weights),
        "--port",
        str(port),
        "--max-wait-ms",
        "3000",
    ]
    log = (tmp_path / "server.log").open("w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 60
            while server.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/health").status_code == 200:
                        break
                time.sleep(0.1)
            with ThreadPoolExecutor(6) as pool:
                answers = [pool.submit(post_slowly, http, p) for p in imagenet_samples[:6]]
                while http.get("/info").json()["arriving"] < 6 and time.monotonic() < deadline:
                    time.sleep(0.02)  # until all six are half sent
                server.send_signal(signal.SIGTERM)
                answers = [a.result() for a in answers]
        code = server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log.seek(0)
    output = log.read()
    assert [a.status_code for a in answers] == [200] * 6, output
    assert all(len(a.json()["topk"]) == 5 for a in answers)
    assert code == 0, output
    # The signal came while all six were half sent: uvicorn stopped listening, then answered them.
    assert output.index("Shutting down") < output.index('"POST /predict HTTP/1.1" 200'), output


def test_usage_errors(weights, monkeypatch, capsys):
    if not MISSING:
        assert main(["serve", "--model", "fpn_poolformer_s12", "--pretrained"]) == 2
        assert "pass --checkpoint FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", CLASSIFIER, "--pretrained", "--port", "70000"])
    assert "port number" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", CLASSIFIER, "--checkpoint", str(weights), "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err  # refused before the model loads
    monkeypatch.setitem(serve_cli.SERVE_PACKAGES, "fastapi", ("fastapi_not_installed_here",))
    assert main(["serve", "--model", CLASSIFIER, "--checkpoint", str(weights), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and 'pip install "metaformer[serve]"' in err


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
@needs_serve
@pytest.mark.browser
def test_the_page_shows_the_top5_in_a_browser(live_server, imagenet_samples):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or os.environ.get("CHROMIUM")
    if not chromium:
        pytest.skip("no chromium executable on PATH (apt-get install chromium)")
    photo = imagenet_samples[25]
    expected = [e["label"] for e in post_file(httpx.Client(base_url=live_server), photo).json()["topk"]]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.wait_for_selector("body[data-ready='1']")
            page.set_input_files("#file", str(photo))
            page.wait_for_function("document.querySelectorAll('#results .row').length === 5")
            assert page.locator("#results .row .label").all_inner_texts() == expected
            assert page.locator("#error").is_hidden()
            page.check("#cam")  # re-runs the photo with the Grad-CAM picture
            page.wait_for_function("document.getElementById('photo').src.startsWith('data:image/png;base64,')")
            assert page.locator("#results .row .label").all_inner_texts() == expected
        finally:
            browser.close()


@needs_serve
def test_probes_use_head_405s_say_allow_and_only_the_bound_host_names_are_answered(client, weights):
    for path in ("/", "/health", "/info"):
        assert client.head(path).status_code == 200
    refused = client.delete("/predict")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
    rebound = client.get("/info", headers={"Host": "attacker.example:8000"})  # DNS rebinding: a foreign name
    assert rebound.status_code == 400
    with TestClient(build_app(CLASSIFIER, weights, "--allow-host", "box.lan"), base_url="http://box.lan") as named:
        assert named.get("/health").status_code == 200
        assert named.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    assert serve_cli.allowed_hosts("0.0.0.0", []) is None  # every interface: the network already reaches it
