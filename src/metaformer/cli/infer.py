"""``metaformer predict``, ``segment`` and ``detect``: a trained model on image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from ..data import find_images, load_image
from ..errors import ImageLoadError, UsageError
from ..files import atomic_write
from .options import (
    COMPILE_HELP,
    DETECTION,
    add_batch_size,
    add_device,
    add_dtype,
    add_fuse,
    add_num_workers,
    add_progress,
    add_weights,
    calibration_pixels,
    check_int8,
    compiled_for_inference,
    expect_task,
    int8_model,
    load_trained,
    positive,
    refuse_existing,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images (files or folders, searched recursively)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a classifier's name (see `metaformer list`)")
    add_weights(p)
    p.add_argument("--topk", type=positive, default=5, help="classes to show per image (default 5)")
    add_batch_size(p, 32)
    add_device(p)
    add_num_workers(p)
    add_progress(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    add_dtype(p, calibration="the images to classify")
    add_fuse(p)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(run=predict)

    for name, what, default in (("segment", "semantic segmentation: colour mask and overlay PNGs", "segmentations"),
                                ("detect", "detect objects (RetinaNet) or instances (Mask R-CNN): PNGs",
                                 "detections")):  # fmt: skip
        p = sub.add_parser(name, help=what)
        p.add_argument("paths", nargs="+", help="image files or folders")
        p.add_argument("--model", required=True, help="e.g. fpn_poolformer_s12" if name == "segment"
                       else "e.g. retinanet_poolformer_s12, mask_rcnn_poolformer_s12")  # fmt: skip
        add_weights(p)
        p.add_argument("--output", default=default, help=f"folder for the PNGs (default {default}/)")
        p.add_argument("--force", action="store_true", help="overwrite pictures already in --output")
        p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
        add_device(p)
        add_fuse(p)
        if name == "segment":
            p.add_argument("--tta", action="store_true", help="multi-scale + flip inference")
            p.set_defaults(run=segment)
        else:
            p.add_argument("--score-threshold", type=float, default=0.5, help="draw and print detections above this")
            p.add_argument("--min-size", type=positive, help="resize the short side to this (the checkpoint's)")
            p.add_argument("--max-size", type=positive, help="keep the long side within this (the checkpoint's)")
            p.set_defaults(run=detect)


def predict(args: argparse.Namespace) -> int:
    from ..engine.task import default_num_workers
    from ..processor import ImageProcessor
    from ..tasks.classification.predict import predict as classify

    expect_task(args.model, ("classification",), "predict", "use `metaformer segment` or `metaformer detect`")
    check_int8(args)
    int8 = args.dtype == "int8"
    files = find_images(args.paths)  # searched once, here
    if not files:
        raise UsageError("no image files found in " + " ".join(args.paths))
    model = load_trained(args, "classification", fused=not int8)
    processor = ImageProcessor.for_model(model)  # photos as a viewer shows them: EXIF rotation applied
    if int8:
        calibration = args.calibration or [str(f) for f in files]
        model = int8_model(model, calibration_pixels(calibration, processor), " ".join(args.calibration or args.paths))
    else:
        model = model.to(dtype=getattr(torch, args.dtype))
    workers = args.num_workers if args.num_workers is not None else (
        default_num_workers() if len(files) > args.batch_size else 0)  # fmt: skip
    failed = 0
    runner = compiled_for_inference(model) if args.compile else model
    progress = len(files) > args.batch_size and not args.no_progress
    results = classify(runner, files, processor, args.topk, args.batch_size, args.device, workers, progress=progress)
    for result in results:
        failed += result.error is not None
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        elif result.error is not None:
            print(f"{result.path}: error: {result.error}")
        else:
            print(result.path)
            for entry in result.topk:
                print(f"  {entry['prob']:7.4f}  {entry['label']} ({entry['index']})")
    if failed:
        print(f"{failed} of {len(files)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def pictures(args: argparse.Namespace, suffixes: tuple[str, ...]) -> Iterator[tuple[Path, Path]]:
    """Each image with the stem of its pictures in --output (unique, even for files of the same name); pictures
    that would overwrite files are refused, all before the first is drawn, unless --force."""
    files = find_images(args.paths)
    if not files:
        raise UsageError("no image files found in " + " ".join(args.paths))
    output = Path(args.output)
    stems, taken = [], set()
    for path in files:
        stem, count = path.stem, 1
        while stem in taken:
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem)
        stems.append(output / stem)
    refuse_existing([s.with_name(s.name + suffix) for s in stems for suffix in suffixes], args.force)
    output.mkdir(parents=True, exist_ok=True)
    yield from zip(files, stems, strict=True)


def _each_image(args: argparse.Namespace, suffixes: tuple[str, ...],
                handle: Callable[[Path, torch.Tensor, Path], dict]) -> int:  # fmt: skip
    failed = 0
    for path, stem in pictures(args, suffixes):
        try:
            image = TF.pil_to_tensor(load_image(path))  # photos upright, as a viewer shows them
        except ImageLoadError as error:
            failed += 1
            print(json.dumps({"path": str(path), "error": error.reason}) if args.json
                  else f"{path}: error: {error.reason}")  # fmt: skip
            continue
        result = {"path": str(path), **handle(path, image, stem)}
        print(json.dumps(result) if args.json else _describe(result), flush=True)
    return 1 if failed else 0


def _describe(result: dict) -> str:
    pictures = ", ".join(str(result[k]) for k in ("mask", "overlay", "picture") if k in result)
    if "classes" in result:
        found = ", ".join(f"{name} {share:.0%}" for name, share in result["classes"].items())
    else:
        found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in result["detections"]) or "nothing"
    return f"{result['path']}: {found}  ->  {pictures}"


def segment(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.predict import TTA_SCALES, class_shares, predict_probs, write_pictures

    expect_task(args.model, ("segmentation",), "segment", "use `metaformer predict` or `metaformer detect`")
    model = load_trained(args, "segmentation")
    names = list(model.labels or [f"class_{i}" for i in range(model.num_classes)])

    def handle(path: Path, image: torch.Tensor, stem: Path) -> dict:
        probs = predict_probs(model, image, scales=TTA_SCALES if args.tta else (1.0,), flip=args.tta)
        prediction = probs.argmax(0).cpu()
        mask, overlay = write_pictures(image, prediction, model.num_classes, stem)
        return {"mask": str(mask), "overlay": str(overlay), "classes": class_shares(prediction, names)}

    return _each_image(args, ("_mask.png", "_overlay.png"), handle)


def detect(args: argparse.Namespace) -> int:
    from ..tasks.detection.predict import detect as run_detector
    from ..tasks.detection.predict import draw
    from ..tasks.drawing import png_bytes

    kind = expect_task(args.model, DETECTION, "detect", "use `metaformer predict` or `metaformer segment`")
    model = load_trained(args, kind, min_size=args.min_size, max_size=args.max_size)

    def handle(path: Path, image: torch.Tensor, stem: Path) -> dict:
        picture = stem.with_name(stem.name + "_detections.png")
        pixels, found = draw(image, run_detector(model, image), model, args.score_threshold)
        atomic_write(picture, png_bytes(pixels))
        return {"picture": str(picture), "detections": found}

    return _each_image(args, ("_detections.png",), handle)
