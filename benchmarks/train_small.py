"""Short real-data training runs on CPU (or GPU): from scratch, and fine-tuning, on the shared Flowers-5 photos.

    python benchmarks/train_small.py                      # both runs, about 10 minutes on 2 CPU cores
    python benchmarks/train_small.py --init poolformer_s12.pth.tar   # fine-tune the official weights instead
    python benchmarks/train_small.py --device cuda --amp bf16

The short recipe (documented here, not the paper's 300-epoch ImageNet recipe): PoolFormer-S12 at 64x64, batch 64,
AdamW with lr 2e-3 (one warm-up epoch, cosine), light augmentation (random resized crop 0.35-1, flip; no
RandAugment, mixup or erasing), drop path 0.05 (the ``finetune`` preset with a higher lr). Fine-tuning starts from
``--init``, or by default from a model first trained briefly on the shared CIFAR-10 images (10 classes), so the
head is reset from 10 to 5 classes as with any pretrained checkpoint. Prints validation accuracy and training
images/s for each run, read from each run folder's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from metaformer.tasks import RunSettings, train
from metaformer.tasks.classification.recipe import FINETUNE

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def cifar_layout(root: Path) -> Path:
    """CIFAR-10-small has train/ and test/; the trainer wants train/ and val/."""
    (root / "val").symlink_to(DATA / "cifar10-small" / "test")
    (root / "train").symlink_to(DATA / "cifar10-small" / "train")
    return root


def run(name: str, data: Path, output: Path, recipe, args: argparse.Namespace, init: str | None) -> dict:
    settings = RunSettings(
        data=str(data),
        model=args.model,
        output=str(output),
        init=init,
        num_workers=args.num_workers,
        device=args.device,
        amp=args.amp,
        progress=False,
    )
    records = train(settings, recipe, force=True)
    best = max(records, key=lambda r: r["top1"])
    speed = sorted(r["images_per_s"] for r in records)[len(records) // 2]
    summary = {
        "run": name,
        "epochs": len(records),
        "best_top1": best["top1"],
        "last_top1": records[-1]["top1"],
        "train_images_per_s_median": speed,
        "output": str(output),
    }
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poolformer_s12")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=int, default=4, help="CIFAR-10 epochs before fine-tuning")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--init", help="fine-tune from these weights instead of a short CIFAR-10 pre-training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--output", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()

    recipe = dataclasses.replace(
        FINETUNE, lr=2e-3, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.output or scratch)
        root.mkdir(parents=True, exist_ok=True)
        flowers = DATA / "flowers5"
        results = [run("flowers5 from scratch", flowers, root / "scratch", recipe, args, None)]
        init = args.init
        if init is None:
            cifar = cifar_layout(Path(tempfile.mkdtemp(dir=scratch)))
            pre = dataclasses.replace(recipe, epochs=args.pretrain_epochs, image_size=32)
            results.append(run("cifar10 pre-training", cifar, root / "cifar", pre, args, None))
            init = str(root / "cifar" / "last.safetensors")
        results.append(run("flowers5 fine-tuned", flowers, root / "finetune", recipe, args, init))
        print(f"\n{'run':<24} {'epochs':>6} {'best top-1':>10} {'train img/s':>12}")
        for r in results:
            print(f"{r['run']:<24} {r['epochs']:>6} {r['best_top1']:>9.1f}% {r['train_images_per_s_median']:>12.1f}")


if __name__ == "__main__":
    main()
