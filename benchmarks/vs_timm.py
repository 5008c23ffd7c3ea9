"""Forward throughput of our PoolFormer against timm's, same weights and input, alternating in one process.

    python benchmarks/vs_timm.py --model poolformer_s12 --batch-size 32 --rounds 7

Both run eagerly on CPU in channels-last layout, float32, under ``torch.inference_mode``. Each round times a few
forward passes of each model back to back; the ratio is taken per round and its median printed, so a drift in
the machine's speed affects both sides alike. Requires timm (``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import timm
import torch

import metaformer
from metaformer.checkpoints import save_checkpoint


def seconds_per_batch(model: torch.nn.Module, images: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        model(images)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poolformer_s12", help="a PoolFormer that timm also has")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3, help="forward passes per model per round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours = metaformer.create_model(args.model).eval()
    with tempfile.TemporaryDirectory() as folder:
        weights = save_checkpoint(ours, f"{folder}/w.safetensors", to="timm")
        theirs = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    theirs.eval()
    ours = ours.to(memory_format=torch.channels_last)
    theirs = theirs.to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=torch.channels_last
    )

    ours_times, theirs_times, ratios = [], [], []
    with torch.inference_mode():
        torch.testing.assert_close(ours.forward_features(images), theirs.forward_features(images))
        for model in (ours, theirs):  # warm-up: oneDNN picks its kernels on first use
            seconds_per_batch(model, images, 1)
        for _ in range(args.rounds):
            a = seconds_per_batch(ours, images, args.iters)
            b = seconds_per_batch(theirs, images, args.iters)
            ours_times.append(a)
            theirs_times.append(b)
            ratios.append(b / a)  # > 1: ours is faster

    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ours_images_per_s": args.batch_size / statistics.median(ours_times),
        "timm_images_per_s": args.batch_size / statistics.median(theirs_times),
        "speedup_median": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
    }
    print(
        f"{args.model}, batch {args.batch_size}, {args.image_size}px, CPU fp32 eager channels-last, "
        f"{result['threads']} threads, {args.rounds} rounds x {args.iters} passes\n"
        f"  metaformer  {result['ours_images_per_s']:8.1f} images/s\n"
        f"  timm        {result['timm_images_per_s']:8.1f} images/s\n"
        f"  ours / timm speed: median {result['speedup_median']:.3f} "
        f"(min {result['speedup_min']:.3f}, max {result['speedup_max']:.3f})"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
