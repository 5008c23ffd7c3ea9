"""``metaformer cam``: Grad-CAM heat maps over the images a classifier sees, captioned with its decision."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import ImageLoadError, UsageError
from ..files import atomic_write
from .infer import pictures
from .options import FROM_CHECKPOINT, add_device, add_weights, expect_task, load_trained


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cam", help="Grad-CAM: heat maps of where a classifier's evidence lies (captioned PNGs)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument(
        "--model",
        help="a classifier's name (see `metaformer list`)" + FROM_CHECKPOINT,
    )
    add_weights(p)
    p.add_argument("--output", default="cams", help="folder for the <image>_cam.png pictures (default cams/)")
    p.add_argument("--target", help="explain this class (index or name) in every image, not each image's top class")
    p.add_argument("--force", action="store_true", help="overwrite pictures already in --output")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    add_device(p)
    p.set_defaults(run=cam)


def target_index(target: str | None, labels: Sequence[str]) -> int | None:
    """``--target`` as a class index: a number, or a class name."""
    if target is None:
        return None
    if target.isdigit():
        if int(target) >= len(labels):
            raise UsageError(f"--target {target}: the model has {len(labels)} classes (0..{len(labels) - 1})")
        return int(target)
    if target not in labels:
        close = [name for name in labels if target.lower() in name.lower()][:5]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; pass a class index or exact name"
        raise UsageError(f"--target {target!r} is not one of the model's class names{hint}")
    return list(labels).index(target)


def cam(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_image
    from ..explain import cam_on_photo, cam_stage, grad_cam
    from ..processor import ImageProcessor
    from ..tasks.drawing import png_bytes, with_caption

    expect_task(args.model, "cam", "Grad-CAM here explains classifiers")
    model = load_trained(args, "classification", fused=False)  # gradients need the plain modules
    labels = model.labels
    target = target_index(args.target, labels)
    processor = ImageProcessor.from_record(model.pretrained_cfg)
    _say_stage(model, processor.size, cam_stage(model, (processor.size, processor.size)))
    failed = 0
    for path, stem in pictures(args, ("_cam.png",)):
        try:
            photo = load_image(path, exif_transpose=processor.exif_transpose)
            pixels = processor.transform(photo)[None].to(args.device)
        except ImageLoadError as error:
            failed += 1
            print(
                json.dumps({"path": str(path), "error": error.reason})
                if args.json
                else f"{path}: error: {error.reason}"
            )
            continue
        with torch.no_grad():
            probs = model(pixels).float().softmax(-1)[0].cpu()
        index = int(probs.argmax()) if target is None else target
        heat = grad_cam(model, pixels, None if target is None else [target])[0]
        caption = f"{labels[index]} ({index}): {probs[index]:.1%}"
        picture = stem.with_name(stem.name + "_cam.png")
        drawn = cam_on_photo(photo, heat, processor.crop_box(*photo.size))
        atomic_write(picture, png_bytes(with_caption(drawn, caption)))
        result = {
            "path": str(path),
            "picture": str(picture),
            "index": index,
            "label": labels[index],
            "prob": round(float(probs[index]), 6),
        }
        print(json.dumps(result) if args.json else f"{path}: {caption}  ->  {picture}", flush=True)
    if failed:
        print(f"{failed} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _say_stage(model: object, size: int, stage: int) -> None:
    """A note when the model's input is too small for its last stage to have a map worth explaining."""
    last = len(model.stages) - 1
    if stage == last:
        return
    grids = model.config.stage_grids(size)
    print(
        f"note: at {size}x{size} pixels the last stage's map is {grids[last][0]}x{grids[last][1]}, which gives a flat "
        f"heat map; explaining stage {stage} ({grids[stage][0]}x{grids[stage][1]}) instead",
        file=sys.stderr,
    )
