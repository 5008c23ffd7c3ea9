"""How far bfloat16 and int8 inference move a trained classifier from float32: top-1 on its validation set, the
drop, and how often the top-1 class agrees with float32's, on the validation images and on the real photos of
``../shared/data/imagenet-samples``.

    python benchmarks/train_small.py --output runs/small          # trained weights (Flowers-5, 64 px)
    python benchmarks/low_precision.py --checkpoint runs/small/finetune/best.safetensors --data ../shared/data/flowers5

int8 calibrates on the first 128 images of DATA/train, as ``metaformer eval --dtype int8`` does; bfloat16 is the
folded model cast to bfloat16, as ``--dtype bfloat16`` runs it. Writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import metaformer
from metaformer import ImageProcessor
from metaformer.cli.options import calibration_pixels
from metaformer.data import find_images
from metaformer.tasks.classification.data import ImageFolder, eval_folder

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@torch.inference_mode()
def logits(model: torch.nn.Module, pixels: torch.Tensor, dtype: torch.dtype, batch: int = 64) -> torch.Tensor:
    parts = pixels.split(batch)
    return torch.cat([model(p.to(dtype).contiguous(memory_format=torch.channels_last)).float() for p in parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained weights (ours, timm, official, HF)")
    parser.add_argument("--model", default="poolformer_s12", help="the architecture the weights are for")
    parser.add_argument("--data", default=str(DATA / "flowers5"), help="a folder with train/ and val/")
    parser.add_argument("--json", default="low-precision.json")
    args = parser.parse_args()

    name = args.model
    model = metaformer.create_model(name, checkpoint=args.checkpoint, strict=True).eval()
    processor = ImageProcessor.for_model(model, exif_transpose=False)
    val = ImageFolder(eval_folder(args.data), processor.transform, exif_transpose=False)
    pixels = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    photos = torch.stack([processor.transform(p) for p in find_images([DATA / "imagenet-samples"])])
    calibration = calibration_pixels([str(Path(args.data) / "train")], processor)

    variants = {
        "float32": (model, torch.float32),
        "bfloat16": (metaformer.fuse(model).to(torch.bfloat16), torch.bfloat16),
        "int8": (metaformer.quantize(model, calibration), torch.float32),
    }
    reference_val = logits(model, pixels, torch.float32).argmax(1)
    reference_photos = logits(model, photos, torch.float32).argmax(1)
    report = {
        "model": name,
        "checkpoint": args.checkpoint,
        "data": args.data,
        "val_images": len(val),
        "photos": len(photos),
        "calibration_images": sum(len(b) for b in calibration),
        "rows": [],
    }
    print(f"{'':10s} {'top-1':>7s} {'drop':>6s} {'agrees (val)':>13s} {'agrees (photos)':>16s}")
    for key, (variant, dtype) in variants.items():
        top_val = logits(variant, pixels, dtype).argmax(1)
        top_photos = logits(variant, photos, dtype).argmax(1)
        row = {
            "dtype": key,
            "top1": (top_val == labels).float().mean().item() * 100,
            "val_agreement": (top_val == reference_val).float().mean().item() * 100,
            "photo_agreement": (top_photos == reference_photos).float().mean().item() * 100,
        }
        row["drop"] = report["rows"][0]["top1"] - row["top1"] if report["rows"] else 0.0
        report["rows"].append(row)
        print(
            f"{key:10s} {row['top1']:6.2f}% {row['drop']:6.2f} {row['val_agreement']:12.2f}% "
            f"{row['photo_agreement']:15.2f}%"
        )
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
