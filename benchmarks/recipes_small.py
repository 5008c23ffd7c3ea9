"""The paper's recipe against the short one, from scratch on small data: the measurement behind ``--recipe short``
and the warning that the paper's recipe holds a short run back.

    python benchmarks/recipes_small.py                    # PoolFormer-S12, CIFAR-10-small at 32 px, 10 epochs each
    python benchmarks/recipes_small.py --epochs 5 --json benchmarks/results/recipes-cifar-2core.json

Both runs train the same model on the shared CIFAR-10 subset (5,000 training images, 1,000 test images) for the same
epochs at the same batch and seed; only the recipe differs: ``paper`` (RandAugment m9, MixUp 0.8 / CutMix 1.0, random
erasing 0.25, label smoothing 0.1, the model's drop path, 5 warm-up epochs) and ``short`` (random resized crops of
35-100% and flips only, label smoothing 0.1, no drop path, one warm-up epoch). Both at lr 1e-3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import torch
from speed import machine
from train_small import cifar_layout, run

from metaformer.tasks.classification.recipe import PAPER, SHORT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poolformer_s12")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    same = {"epochs": args.epochs, "batch_size": args.batch_size, "image_size": 32, "lr": 1e-3}
    recipes = {"paper": dataclasses.replace(PAPER, **same), "short": dataclasses.replace(SHORT, **same)}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        data = cifar_layout(Path(tempfile.mkdtemp(dir=scratch)))
        for name, recipe in recipes.items():
            results.append(run(f"{name} recipe", data, Path(scratch) / name, recipe, args, None))
    print(f"\n{'run':<16} {'epochs':>6} {'best top-1':>10} {'last top-1':>10} {'train img/s':>12}")
    for r in results:
        print(
            f"{r['run']:<16} {r['epochs']:>6} {r['best_top1']:>9.1f}% {r['last_top1']:>9.1f}% "
            f"{r['train_images_per_s_median']:>12.1f}"
        )
    if args.json:
        record = {
            "what": f"{args.model} on CIFAR-10-small (5,000 train, 1,000 test) at 32 px, from scratch",
            "machine": machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "settings": {**same, "device": args.device, "amp": args.amp},
            "runs": [{k: v for k, v in r.items() if k != "output"} for r in results],
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
