"""Short real-data runs of the dense tasks on CPU (or GPU): Semantic FPN on CamVid, RetinaNet / Mask R-CNN on
COCO-mini. Prints the metric and training images/s of each; a smoke check that they learn, not a paper number.

    python benchmarks/dense_small.py                       # about 15 minutes on 2 CPU cores
    python benchmarks/dense_small.py --init poolformer_s12.pth.tar --device cuda --amp bf16

Segmentation: fpn_poolformer_s12, crops of 256 from images resized around 1024x256, batch 8, AdamW 2e-4 (poly),
``--seg-iterations`` iterations. Detection: retinanet_poolformer_s12 at 320x512, batch 4, AdamW 1e-4 with a
20-iteration warm-up, ``--det-epochs`` epochs. Without ``--init`` the backbones start from random weights, so the
figures show the pipelines learning (loss falling, metrics rising from zero), far below what ImageNet
initialisation gives.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from metaformer.tasks import RunSettings, train
from metaformer.tasks.detection.recipe import DetectionRecipe
from metaformer.tasks.segmentation.recipe import SegmentationRecipe

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def summary(name: str, records: list[dict], metric: str) -> dict:
    speeds = sorted(r["images_per_s"] for r in records)
    result = {
        "run": name,
        "rounds": len(records),
        "first_loss": records[0]["train_loss"],
        "last_loss": records[-1]["train_loss"],
        metric: records[-1][metric],
        "best_" + metric: max(r[metric] for r in records),
        "train_images_per_s_median": speeds[len(speeds) // 2],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg-iterations", type=int, default=300)
    parser.add_argument("--det-epochs", type=int, default=3)
    parser.add_argument("--init", help="ImageNet weights for the backbones (any supported checkpoint)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--output", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--only", choices=["segmentation", "detection"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.output or scratch)
        common = {"init": args.init, "device": args.device, "amp": args.amp, "num_workers": 2, "progress": False}
        if args.only != "detection":
            settings = RunSettings(
                data=str(DATA / "camvid"),
                model="fpn_poolformer_s12",
                output=str(root / "fpn"),
                eval_every=args.seg_iterations // 6,
                **common,
            )
            recipe = SegmentationRecipe(
                iterations=args.seg_iterations,
                batch_size=8,
                crop_size=256,
                scale=(1024, 256),
                num_classes=11,
                ignore_index=11,
            )
            summary("camvid fpn_poolformer_s12", train(settings, recipe, force=True), "mIoU")
        if args.only != "segmentation":
            settings = RunSettings(
                data=str(DATA / "coco-mini"), model="retinanet_poolformer_s12", output=str(root / "retinanet"), **common
            )
            recipe = DetectionRecipe(
                epochs=args.det_epochs,
                batch_size=4,
                min_size=320,
                max_size=512,
                warmup_iters=20,
                decay_epochs=(args.det_epochs,),
            )
            summary("coco-mini retinanet_poolformer_s12", train(settings, recipe, force=True), "AP50")


if __name__ == "__main__":
    main()
