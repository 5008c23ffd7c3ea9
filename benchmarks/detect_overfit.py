"""Can the detectors learn? Overfit a few real COCO-mini photos, evaluate on them, and draw the detections.

    python benchmarks/detect_overfit.py --model retinanet_poolformer_s12 --output overfit/   # ~15 min, 2 CPU cores
    python benchmarks/detect_overfit.py --model mask_rcnn_poolformer_s12 --epochs 40 --output overfit/   # ~8 min

With no ImageNet-initialised backbone (none is reachable offline here) and only a CPU, a detector trained briefly on
COCO-mini finds nothing yet. Memorising a handful of photos, one large object each, is the check that the whole
path learns: data, anchors and losses, the COCO evaluation, and ``metaformer detect``'s pictures, which should
show the right boxes (and masks) with the right labels. The photos are both the training and the evaluation set,
so the AP printed says "memorised", not "generalises". Measured on 2 CPU cores: RetinaNet-S12 reached AP 62.6
(AP50 77.8) after 120 epochs, Mask R-CNN-S12 bbox AP 50-70 and mask AP 61-66 after 40.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from metaformer.tasks import RunSettings, train
from metaformer.tasks.detection.recipe import DetectionRecipe

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
# One large object each: sheep, stop sign, fire hydrant, bear, giraffe, two zebras.
IMAGE_IDS = (187334, 525891, 194322, 249346, 163497, 281789)


def make_subset(root: Path, image_ids: tuple[int, ...]) -> Path:
    source = json.loads((DATA / "coco-mini" / "annotations" / "instances_train2017.json").read_text())
    subset = {
        **source,
        "images": [i for i in source["images"] if i["id"] in image_ids],
        "annotations": [a for a in source["annotations"] if a["image_id"] in image_ids],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(subset))
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for image in subset["images"]:
            link = folder / image["file_name"]
            if not link.exists():
                link.symlink_to((DATA / "coco-mini" / "images" / "train2017" / image["file_name"]).resolve())
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="retinanet_poolformer_s12")
    parser.add_argument("--output", default="overfit")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    output = Path(args.output)
    data = make_subset(output / "data", IMAGE_IDS)
    run = output / args.model
    settings = RunSettings(
        data=str(data), model=args.model, output=str(run), num_workers=0, device=args.device, progress=False
    )
    recipe = DetectionRecipe(
        epochs=args.epochs,
        batch_size=2,
        lr=args.lr,
        min_size=320,
        max_size=480,
        warmup_iters=10,
        decay_epochs=(args.epochs * 4 // 5,),
    )
    records = train(settings, recipe, force=True)
    first, last = records[0], records[-1]
    print(
        json.dumps(
            {
                "model": args.model,
                "epochs": len(records),
                "first_loss": first["train_loss"],
                "last_loss": last["train_loss"],
                "AP": last["AP"],
                "AP50": last["AP50"],
                "train_images_per_s": last["images_per_s"],
            }
        )
    )
    photos = sorted((data / "images" / "val2017").iterdir())
    command = [
        sys.executable,
        "-m",
        "metaformer",
        "detect",
        *map(str, photos),
        "--model",
        args.model,
        "--checkpoint",
        str(run / "last.safetensors"),
        "--output",
        str(output / f"{args.model}-pictures"),
        "--min-size",
        "320",
        "--max-size",
        "480",
        "--device",
        args.device,
        "--force",
    ]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
