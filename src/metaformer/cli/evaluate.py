"""``metaformer eval``: a trained model on its task's validation data, with the papers' protocols."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..files import atomic_write, write_json
from ..task_table import task
from .options import (
    DTYPE_HELP,
    DTYPES,
    FROM_CHECKPOINT,
    TaskFlags,
    add_device,
    add_fuse,
    add_progress,
    add_scale,
    add_weights,
    calibration_help,
    calibration_pixels,
    check_inference,
    int8_model,
    load_trained,
    non_negative,
    positive,
    refuse_existing,
    task_of,
)

if TYPE_CHECKING:
    import torch

    from ..engine.distributed import DistributedContext

FLAGS = TaskFlags("eval")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained model: top-1 (classification), mIoU (segmentation), COCO AP",
        description="Classification: top-1/top-k and per-class accuracy on DATA/val (or DATA) with the "
        "ImageNet protocol (resize to size/crop_pct, bicubic, centre crop, no EXIF rotation). "
        "Segmentation: mmseg's aAcc/mIoU/mAcc. Detection: pycocotools' 12 figures. Every task "
        "runs under torchrun too (each process evaluates its share; each image once).",
    )
    p.add_argument(
        "data",
        help="dataset folder (a folder of class folders, or one with val/; ADE20K; COCO); for classification also "
        "hf:NAME_OR_FOLDER (its validation split) or wds:FOLDER_OR_PATTERN (WebDataset shards, validation)",
    )
    p.add_argument(
        "--model",
        help="model name (see `metaformer list`)" + FROM_CHECKPOINT,
    )
    add_weights(p)
    add_device(p, under_torchrun=True)
    add_fuse(p)
    add_progress(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (what eval.json holds: with the confusion matrix, but for detection)",
    )
    p.add_argument(
        "--output",
        help="also write the full result (eval.json) and, but for detection, the confusion "
        "matrix (confusion.png) to this folder",
    )
    p.add_argument("--force", action="store_true", help="overwrite the files of --output")
    FLAGS.add(
        p,
        "--batch-size",
        type=positive,
        help="images per batch, per process (classification 64, detection 2)",
    )
    FLAGS.add(
        p,
        "--num-workers",
        type=non_negative,
        help="data-loading processes (default: up to 4, no more than the cores)",
    )
    FLAGS.add(p, "--dtype", choices=DTYPES, help=f"float32 (default); {DTYPE_HELP}")
    FLAGS.add(p, "--calibration", nargs="+", metavar="PATH", help=calibration_help("DATA/train"))
    FLAGS.add(p, "--tta", action="store_true", help="multi-scale (0.5-1.75) + flip inference")
    FLAGS.add(p, "--num-classes", type=positive, help="classes of the dataset (the model's)")
    FLAGS.add(
        p,
        "--ignore-index",
        type=int,
        help="the masks' ignore value (default: the one the checkpoint was trained with, else 255)",
    )
    add_scale(FLAGS, p, "resize scale of the images (default: the checkpoint's, as trained)")
    FLAGS.add(
        p,
        "--split",
        help="the split to evaluate: classification, DATA/SPLIT (default val/, else DATA); segmentation, its "
        "folder (default val, or ADE20K's validation); COCO, the annotations' split (default val2017)",
    )
    FLAGS.add(
        p, "--min-size", type=positive, help="resize the short side to this (default: the checkpoint's training size)"
    )
    FLAGS.add(p, "--max-size", type=positive, help="... and the long side within this (the checkpoint's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    FLAGS.refuse_foreign(args, args.model, "eval")
    kind = task_of(args.model)
    output = Path(args.output) if args.output else None
    if output is not None:
        refuse_existing([output / "eval.json", output / "confusion.png"], args.force)
    return REPORTS[kind](args, kind, output)


def _no_images(result: dict, args: argparse.Namespace) -> int:
    print(json.dumps(result) if args.json else f"images: 0 ({args.data})")
    print(f"error: no image of {args.data} could be read; nothing was evaluated", file=sys.stderr)
    return 1


def _write(output: Path | None, result: dict, picture: bytes | None) -> None:
    if output is None:
        return
    write_json(output / "eval.json", result)
    if picture is not None:
        atomic_write(output / "confusion.png", picture)


def _classification(args: argparse.Namespace, kind: str, output: Path | None) -> int:
    import torch

    from ..data.hf import is_hf
    from ..data.wds import is_wds
    from ..processor import ImageProcessor
    from ..tasks.classification.data import ImageFolder, class_to_output, eval_folder, image_dataset
    from ..tasks.drawing import confusion_png

    evaluate = task(kind).load("evaluation")  # the task table's scorer
    args.dtype = args.dtype or "float32"
    check_inference(args)
    calibration = _calibration(args) if args.dtype == "int8" else []  # refused before any weights load
    model = load_trained(args, "classification", fused=args.dtype != "int8").to(memory_format=torch.channels_last)
    processor = ImageProcessor.from_record(
        model.pretrained_cfg, exif_transpose=False
    )  # ImageNet's protocol: raw pixels
    if args.dtype != "int8":
        model = model.to(getattr(torch, args.dtype))
    with _distributed(args, model) as context:
        if is_hf(args.data) or is_wds(args.data):  # its validation split, or --split
            dataset = image_dataset(args.data, args.split, processor.transform, validation=True)
        else:
            folder = Path(args.data) / args.split if args.split else eval_folder(args.data)
            dataset = ImageFolder(folder, processor.transform, exif_transpose=False)
        if len(dataset.classes) == 1:
            warnings.warn(
                f"{dataset.root} has a single class folder ({dataset.classes[0]}): top-1 counts how often "
                "the model picks that class",
                stacklevel=1,
            )
        outputs = class_to_output(dataset.classes, model.pretrained_cfg.label_names, model.num_classes)
        if calibration:  # once the data is known to fit the model
            model = int8_model(model, calibration_pixels(calibration, processor), " ".join(calibration))
        batch_size = args.batch_size or 64
        workers = args.num_workers if args.num_workers is not None else _workers(len(dataset), batch_size)
        result = evaluate(
            model,
            dataset,
            outputs,
            context,
            batch_size=batch_size,
            num_workers=workers,
            progress=not (args.json or args.no_progress),
        )
    if not context.is_main:
        return 0
    confusion = result.confusion
    columns = [*dataset.classes, "other"]  # "other": an output of the model that is none of the dataset's classes
    if model.num_classes == len(dataset.classes):  # no other output exists
        confusion, columns = confusion[:, :-1], columns[:-1]
    summary = {
        "top1": result.top1,
        **({f"top{result.k}": result.topk} if result.topk is not None else {}),
        "images": result.images,
        "errors": result.errors,
        "per_class": result.per_class(),
    }
    if result.images == 0:
        return _no_images(summary, args)
    full = {**summary, "confusion": {"rows": dataset.classes, "columns": columns, "matrix": confusion.long().tolist()}}
    _write(
        output,
        full,
        confusion_png(confusion, dataset.classes, columns, f"{args.model} on {args.data}") if output else None,
    )
    if args.json:
        print(json.dumps(full))  # the confusion matrix too, as eval.json holds it
        return 0
    topk = f"  top-{result.k} {result.topk:.2f}%" if result.topk is not None else ""
    print(f"top-1 {result.top1:.2f}%{topk}  ({result.images} images, {len(dataset.classes)} classes)")
    for name, accuracy in result.per_class().items():
        print(f"  {name:<24} {'n/a' if accuracy is None else f'{accuracy:6.2f}%'}")
    _print_skipped(result.errors)
    return 0


def _calibration(args: argparse.Namespace) -> list[str]:
    """int8's calibration images: --calibration, else the training split beside the evaluated one (never the
    evaluated images themselves: their ranges would flatter the result)."""
    if args.calibration:
        return args.calibration
    train = Path(args.data) / "train"
    if not train.is_dir():
        raise UsageError(
            f"--dtype int8 calibrates on training images, and {args.data} has no train/ folder: pass "
            "--calibration with a few hundred images like the ones evaluated"
        )
    return [str(train)]


def _workers(images: int, batch_size: int) -> int:
    from ..engine.task import default_num_workers

    return default_num_workers() if images > batch_size else 0


def _segmentation(args: argparse.Namespace, kind: str, output: Path | None) -> int:
    from ..errors import DatasetError
    from ..tasks.drawing import confusion_png
    from ..tasks.segmentation.data import SegmentationFolder, detect_layout
    from ..tasks.segmentation.predict import TTA_SCALES

    evaluate = task(kind).load("evaluation")  # the task table's scorer
    model = load_trained(args, "segmentation", test_scale=tuple(args.scale) if args.scale else None)
    ignore = model.ignore_index if args.ignore_index is None else args.ignore_index  # the checkpoint's, else 255
    layout = detect_layout(args.data, args.num_classes, ignore, model_classes=model.num_classes)
    if layout.num_classes != model.num_classes:
        source = "--num-classes" if args.num_classes else "its classes.txt" if layout.classes else "ADE20K"
        raise DatasetError(
            f"{args.data} has {layout.num_classes} classes ({source}) but the model has "
            f"{model.num_classes} ({args.checkpoint.source if args.checkpoint else 'its weights'})"
        )
    if layout.num_classes == 1:
        warnings.warn(f"{args.data}: a single class; its IoU is the share of pixels not ignored", stacklevel=1)
    dataset = SegmentationFolder(args.data, args.split or layout.val_split, layout)
    scales = TTA_SCALES if args.tta else (1.0,)
    with _distributed(args, model) as context:
        result = evaluate(
            model, dataset, context, scales=scales, flip=args.tta, progress=not (args.json or args.no_progress)
        )
    if not context.is_main:
        return 0
    names = list(model.pretrained_cfg.label_names or layout.classes or model.labels)
    scores = result.scores()
    summary = {
        **{k: scores[k] for k in ("mIoU", "mAcc", "aAcc")},
        "images": result.images,
        "errors": result.errors,
        "IoU": dict(zip(names, _undefined_nan(scores["IoU"]), strict=False)),
    }
    if result.images == 0:
        return _no_images(summary, args)
    full = {**summary, "confusion": {"rows": names, "columns": names, "matrix": result.confusion.long().tolist()}}
    _write(output, full, confusion_png(result.confusion, names, names, f"{args.model}: pixels") if output else None)
    if args.json:
        print(json.dumps(full))
        return 0
    print(
        f"mIoU {scores['mIoU']:.2f}%  mAcc {scores['mAcc']:.2f}%  aAcc {scores['aAcc']:.2f}%  ({result.images} "
        f"images{', multi-scale + flip' if args.tta else ''})"
    )
    for name, iou in summary["IoU"].items():
        print(f"  {name:<24} IoU {'   n/a' if iou is None else f'{iou:6.2f}'}")
    _print_skipped(result.errors)
    return 0


@contextlib.contextmanager
def _distributed(args: argparse.Namespace, model: torch.nn.Module) -> Iterator[DistributedContext]:
    """One process, or each process of torchrun evaluating its share of the images on its device."""
    from ..engine.distributed import init_distributed, shutdown_distributed

    context = init_distributed(args.device)
    try:
        model.to(context.device)
        yield context
    finally:
        shutdown_distributed()


def _print_skipped(errors: list[str]) -> None:
    for error in errors:
        print(f"skipped: {error}", file=sys.stderr)


def _undefined_nan(values: list[float]) -> list[float | None]:
    return [None if v != v else v for v in values]  # NaN: a class neither present nor predicted


def _detection(args: argparse.Namespace, kind: str, output: Path | None) -> int:
    from ..tasks.detection.metrics import format_table
    from ..tasks.detection.task import coco_dataset

    evaluate = task(kind).load("evaluation")  # the task table's scorer
    model = load_trained(args, kind, min_size=args.min_size, max_size=args.max_size)
    dataset = coco_dataset(args.data, args.split or "val2017", kind == "instance_segmentation", train=False)
    if len(dataset.labels) == 1:
        warnings.warn(f"{args.data}: a single category ({dataset.labels[0]})", stacklevel=1)
    batch_size = args.batch_size or 2
    workers = args.num_workers if args.num_workers is not None else _workers(len(dataset), batch_size)
    with _distributed(args, model) as context:
        result = evaluate(
            model,
            dataset,
            context,
            batch_size=batch_size,
            num_workers=workers,
            progress=not (args.json or args.no_progress),
        )
    if not context.is_main:
        return 0
    sizes = model.input_settings()
    summary = {**result, "min_size": sizes["min_size"], "max_size": sizes["max_size"]}
    if result["images"] == 0:
        return _no_images(summary, args)
    _write(output, summary, None)
    if args.json:
        print(json.dumps(summary))
        return 0
    print("\n".join(format_table(result)))
    print(
        f"({result['images']} images at {sizes['min_size']}/{sizes['max_size']} px, {result['detections']} detections)"
    )
    _print_skipped(result["errors"])
    return 0


# How `metaformer eval` reports each task of the task table (tests check that every task has one).
REPORTS = {
    "classification": _classification,
    "segmentation": _segmentation,
    "detection": _detection,
    "instance_segmentation": _detection,
}
