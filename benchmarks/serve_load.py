"""Load on ``metaformer serve``: throughput and latency with 1, 4 and 16 concurrent clients, the gain of batching, and
``predict`` on the same photos as the baseline.

    python benchmarks/serve_load.py                                   # ~4 minutes on 2 cores
    python benchmarks/serve_load.py --seconds 5 --rounds 1            # a quick look
    python benchmarks/serve_load.py --output benchmarks/results/serve-load-cpu-2core.json

Two servers run as subprocesses (``metaformer serve`` on free ports, the same fused poolformer_s12 weights): one
batching (``--max-batch 16``), one answering one image at a time (``--max-batch 1``). The clients (asyncio tasks
with httpx, in this process) each loop over the real photos of ``../shared/data/imagenet-samples``, sending the
JPEG bytes as the body, for ``--seconds``; the rows alternate round by round, and each figure is the median over
rounds (latency percentiles over every request of a row). The baseline is ``predict`` (decode, resize, crop, model;
batch 16, no worker processes) on the same fused model and photos, timed in this process between the rows. On a
2-core machine the clients, the server and its decoding share the two cores: figures are for the whole system.
Without ``--checkpoint`` the weights are random (non-trivial, as the tests make them): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's randomize, for the weights

import metaformer
from metaformer.tasks.classification.predict import predict

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
MODEL = "poolformer_s12"


@dataclass
class Row:
    name: str
    url: str
    clients: int
    throughputs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    images: int = 0
    batches: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(checkpoint: Path, max_batch: int, max_wait_ms: float, log: Path) -> Iterator[str]:
    """``metaformer serve`` in a subprocess; its URL once /health answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "metaformer",
        "serve",
        "--model",
        MODEL,
        "--checkpoint",
        str(checkpoint),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(max_wait_ms),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health").status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(60)


async def load(url: str, photos: list[bytes], clients: int, seconds: float) -> tuple[int, list[float], int, float]:
    """``clients`` loops posting photos for ``seconds``: (answered, latencies in s, errors, elapsed s)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        deadline = start + seconds

        async def client(offset: int) -> None:
            nonlocal errors
            index = offset
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    answer = await http.post(
                        "/predict", content=photos[index % len(photos)], headers={"Content-Type": "image/jpeg"}
                    )
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1
                index += clients  # the clients spread over the photos

        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies), latencies, errors, elapsed


def stats(url: str) -> tuple[int, int]:
    info = httpx.get(url + "/info").json()
    return info["images_run"], info["batches_run"]


def measure(row: Row, photos: list[bytes], seconds: float) -> None:
    images_before, batches_before = stats(row.url)
    answered, latencies, errors, elapsed = asyncio.run(load(row.url, photos, row.clients, seconds))
    images_after, batches_after = stats(row.url)
    row.throughputs.append(answered / elapsed)
    row.latencies += latencies
    row.errors += errors
    row.images += images_after - images_before
    row.batches += batches_after - batches_before
    print(f"   {row.name:28s} {answered / elapsed:7.1f} images/s  {errors} errors", flush=True)


def time_predict(model: torch.nn.Module, files: list[Path], batch_size: int) -> float:
    processor = metaformer.ImageProcessor.for_model(model)
    start = time.perf_counter()
    results = list(predict(model, files, processor, topk=5, batch_size=batch_size, num_workers=0))
    elapsed = time.perf_counter() - start
    if any(r.error for r in results):
        raise RuntimeError("predict could not read every photo")
    return len(files) / elapsed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="weights for poolformer_s12 (default: random, saved to a temporary file)")
    parser.add_argument("--seconds", type=float, default=12.0, help="each row's load per round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row, alternating (default 3)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="the batching server's wait (default 10)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    files = sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    if not files:
        sys.exit(f"error: no photos in {DATA / 'imagenet-samples'} (set METAFORMER_DATA to the shared data folder)")
    photos = [f.read_bytes() for f in files]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None:
            from conftest import randomize

            random = randomize(metaformer.create_model(MODEL), seed=0).eval()
            checkpoint = metaformer.save_checkpoint(random, Path(folder) / f"{MODEL}.safetensors")
        fused = metaformer.fuse(metaformer.create_model(MODEL, checkpoint=checkpoint, strict=True).eval())
        batched = server(checkpoint, 16, args.max_wait_ms, Path(folder) / "batched.log")
        single = server(checkpoint, 1, 0.0, Path(folder) / "single.log")
        with batched as batched_url, single as single_url:
            rows = [Row(f"{n} client(s), batching", batched_url, n) for n in args.clients]
            rows.append(Row(f"{max(args.clients)} clients, one-by-one", single_url, max(args.clients)))
            baseline: list[float] = []
            print("warm-up", flush=True)
            for url in (batched_url, single_url):
                asyncio.run(load(url, photos, 4, 2.0))
            time_predict(fused, files[:32], 16)
            for round_ in range(args.rounds):
                print(f"== round {round_ + 1}/{args.rounds}", flush=True)
                for row in rows:
                    measure(row, photos, args.seconds)
                baseline.append(time_predict(fused, files, 16))
                print(f"   {'predict (batch 16, in-process)':28s} {baseline[-1]:7.1f} images/s", flush=True)
    report = summarize(rows, baseline, args)
    report["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]  # other work on the machine
    print_report(report)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


def summarize(rows: list[Row], baseline: list[float], args: argparse.Namespace) -> dict:
    results = []
    for row in rows:
        results.append(
            {
                "name": row.name,
                "clients": row.clients,
                "max_batch": 1 if "one-by-one" in row.name else 16,
                "images_per_s": statistics.median(row.throughputs),
                "throughputs": row.throughputs,
                "p50_ms": percentile(row.latencies, 0.5) * 1e3,
                "p99_ms": percentile(row.latencies, 0.99) * 1e3,
                "requests": len(row.latencies),
                "errors": row.errors,
                "mean_batch": row.images / row.batches if row.batches else None,
            }
        )
    top = max(args.clients)
    batched = next(r for r in results if r["clients"] == top and r["max_batch"] == 16)
    single = next(r for r in results if r["max_batch"] == 1)
    predict_speed = statistics.median(baseline)
    return {
        "model": MODEL,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "photos": len(list((DATA / "imagenet-samples").glob("*.JPEG"))),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "max_wait_ms": args.max_wait_ms,
        "rows": results,
        "predict_images_per_s": predict_speed,
        "predict_throughputs": baseline,
        f"serve_at_{top}_over_predict": batched["images_per_s"] / predict_speed,
        "batching_gain": batched["images_per_s"] / single["images_per_s"],
    }


def print_report(report: dict) -> None:
    print(f"\n{'':30s} {'images/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'mean batch':>11s}")
    for row in report["rows"]:
        batch = f"{row['mean_batch']:11.1f}" if row["mean_batch"] else f"{'-':>11s}"
        print(
            f"{row['name']:30s} {row['images_per_s']:9.1f} {row['p50_ms']:8.0f} {row['p99_ms']:8.0f} "
            f"{row['errors']:7d} {batch}"
        )
    print(f"{'predict (batch 16, in-process)':30s} {report['predict_images_per_s']:9.1f}")
    top = max(r["clients"] for r in report["rows"])
    print(
        f"serve at {top} clients / predict: {report[f'serve_at_{top}_over_predict']:.2f}; "
        f"batching gain at {top} clients (max-batch 16 / 1): {report['batching_gain']:.2f}"
    )


if __name__ == "__main__":
    main()
