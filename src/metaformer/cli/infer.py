"""``metaformer predict``, ``segment`` and ``detect``: a trained model on image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageLoadError, UsageError
from ..files import atomic_write
from .options import (
    COMPILE_HELP,
    FROM_CHECKPOINT,
    add_batch_size,
    add_device,
    add_dtype,
    add_fuse,
    add_num_workers,
    add_progress,
    add_weights,
    calibration_pixels,
    check_inference,
    expect_task,
    int8_model,
    load_trained,
    output_folder,
    positive,
    probability,
    refuse_existing,
)
from .outputs import FeatureShards, JsonLines

if TYPE_CHECKING:
    import torch

    from ..engine.distributed import DistributedContext


SAMPLES_HELP = (
    "image files or folders; also wds:FOLDER_OR_PATTERN (the images of WebDataset shards, named SHARD.tar:KEY) "
    "and hf:NAME_OR_FOLDER (a Hugging Face dataset split's images, named hf:NAME[SPLIT][ROW])"
)


def add_sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", help="an hf: dataset's split (validation), or the wds: shards of a split (all)")
    p.add_argument("--image-column", help="an hf: dataset's image column (image)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images (files or folders, searched recursively)")
    p.add_argument("paths", nargs="+", help=SAMPLES_HELP)
    add_sample_flags(p)
    p.add_argument(
        "--model",
        help="a classifier's name (see `metaformer list`)" + FROM_CHECKPOINT,
    )
    add_weights(p)
    p.add_argument("--topk", type=positive, default=5, help="classes to show per image (default 5)")
    add_batch_size(p, 32)
    add_device(p)
    add_num_workers(p)
    add_progress(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument(
        "--output",
        help="write one JSON line per image to this file as each batch finishes (under torchrun each process takes "
        "its share of the images, and the parts are merged in the images' order at the end)",
    )
    p.add_argument("--resume", action="store_true", help="with --output: classify only the images it lacks")
    p.add_argument("--force", action="store_true", help="replace an --output that holds predictions")
    add_dtype(p, calibration="the images to classify")
    add_fuse(p)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(run=predict)

    p = sub.add_parser("embed", help="write images' features (pooled, or a stage's) to .npy shards")
    p.add_argument("paths", nargs="+", help=SAMPLES_HELP)
    add_sample_flags(p)
    p.add_argument("--model", help="a classifier's name (see `metaformer list`)" + FROM_CHECKPOINT)
    add_weights(p)
    p.add_argument("--output", required=True, help="folder for features-R-K.npy and files-R-K.txt shards")
    p.add_argument(
        "--stage",
        type=int,
        help="a stage's map averaged over its positions (0 to 3; forward_intermediates) instead of the pooled "
        "features the head takes",
    )
    p.add_argument("--shard-size", type=positive, default=10000, help="images per shard (default 10000)")
    p.add_argument("--resume", action="store_true", help="embed only the images the shards in --output lack")
    p.add_argument("--force", action="store_true", help="replace the shards in --output")
    add_batch_size(p, 32)
    add_device(p)
    add_num_workers(p)
    add_fuse(p)
    p.set_defaults(run=embed, dtype="float32", compile=False)

    for name, what, default in (
        ("segment", "semantic segmentation: colour mask and overlay PNGs", "segmentations"),
        ("detect", "detect objects (RetinaNet) or instances (Mask R-CNN): PNGs", "detections"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("paths", nargs="+", help="image files or folders")
        p.add_argument(
            "--model",
            help=(
                "e.g. fpn_poolformer_s12"
                if name == "segment"
                else "e.g. retinanet_poolformer_s12, mask_rcnn_poolformer_s12"
            )
            + FROM_CHECKPOINT,
        )
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
            p.add_argument(
                "--score-threshold",
                type=probability,
                default=0.5,
                help="draw and print detections scoring at least this, from 0 to 1; below the model's own floor "
                "(0.05) that floor is lowered to it (default: %(default)s)",
            )
            p.add_argument("--min-size", type=positive, help="resize the short side to this (the checkpoint's)")
            p.add_argument("--max-size", type=positive, help="keep the long side within this (the checkpoint's)")
            p.set_defaults(run=detect)


def predict(args: argparse.Namespace) -> int:
    from ..data.samples import find_samples
    from ..engine.distributed import init_distributed, shutdown_distributed

    expect_task(args.model, "predict")
    check_inference(args)
    if (args.resume or args.force) and not args.output:
        raise UsageError("--resume and --force apply to an --output file of predictions; give --output FILE")
    if args.output:
        JsonLines.check(Path(args.output), args.resume, args.force)
    files = find_samples(args.paths, split=args.split, image_column=args.image_column)  # searched once, here
    if not files:
        raise UsageError("no image files found in " + " ".join(args.paths))
    context = init_distributed(args.device)  # one process, or this one's share under torchrun
    try:
        return _predict(args, files, context)
    finally:
        shutdown_distributed()


def _predict(args: argparse.Namespace, files: list, context: DistributedContext) -> int:
    import torch

    from ..engine.distributed import on_main
    from ..engine.task import default_num_workers
    from ..fast import prepare
    from ..processor import ImageProcessor
    from ..tasks.classification.predict import Classifier

    log = JsonLines(Path(args.output), context.rank, context.world_size) if args.output else None
    if log is not None and args.force:
        on_main(context, log.clear)
        context.barrier()
    done = log.done() if log is not None and args.resume else set()
    mine = [f for f in files[context.rank :: context.world_size] if str(f) not in done]
    model = load_trained(args, "classification", fused=False)  # one build; `prepare` folds it in place
    if args.dtype == "int8":
        processor = ImageProcessor.from_record(model.pretrained_cfg)
        if not args.calibration and not all(isinstance(f, Path) for f in files):
            raise UsageError("--dtype int8 calibrates on image files: with wds: or hf: images give --calibration")
        calibration = calibration_pixels(args.calibration or [str(f) for f in files], processor)
        model = int8_model(model, calibration, " ".join(args.calibration or args.paths))
    else:
        device = str(context.device) if context.enabled else args.device
        model = prepare(
            model, dtype=args.dtype, fuse=not args.no_fuse, compile=args.compile, device=device, inplace=True
        )
    classifier = Classifier(model)  # photos as a viewer shows them: EXIF rotation applied
    workers = (
        args.num_workers
        if args.num_workers is not None
        else (default_num_workers() if len(mine) > args.batch_size else 0)
    )
    progress = len(mine) > args.batch_size and not args.no_progress and context.is_main
    failed, batch = 0, []
    for result in classifier.predict_files(mine, args.topk, args.batch_size, workers, progress=progress):
        failed += result.error is not None
        if log is not None:
            batch.append(result.to_dict())
            if len(batch) == args.batch_size:
                log.append(batch)
                batch = []
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        elif log is None and result.error is not None:
            print(f"{result.path}: error: {result.error}")
        elif log is None:
            print(result.path)
            for entry in result.topk:
                print(f"  {entry['prob']:7.4f}  {entry['label']} ({entry['index']})")
    if log is not None:
        log.append(batch)
        failed = int(context.all_reduce_sum(torch.tensor([float(failed)]))[0])
        context.barrier()
        if context.is_main:
            lines = log.merge([str(f) for f in files])
            print(f"{args.output}: {lines} of {len(files)} image(s) ({len(done)} from before, {failed} unreadable)")
    if failed and context.is_main:
        print(f"{failed} of {len(files)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def embed(args: argparse.Namespace) -> int:
    from ..data.samples import find_samples
    from ..engine.distributed import init_distributed, shutdown_distributed

    expect_task(args.model, "embed")
    check_inference(args)
    output = Path(args.output)
    FeatureShards.check(output, args.resume, args.force)
    files = find_samples(args.paths, split=args.split, image_column=args.image_column)
    if not files:
        raise UsageError("no image files found in " + " ".join(args.paths))
    context = init_distributed(args.device)
    try:
        return _embed(args, files, output, context)
    finally:
        shutdown_distributed()


def _embed(args: argparse.Namespace, files: list, output: Path, context: DistributedContext) -> int:
    import torch

    from ..engine.distributed import on_main
    from ..fast import prepare
    from ..tasks.classification.predict import Classifier

    model = load_trained(args, "classification", fused=False)
    stages = len(model.config.depths)
    if args.stage is not None and not 0 <= args.stage < stages:
        raise UsageError(f"--stage {args.stage}: {model.name or 'this model'} has stages 0 to {stages - 1}")
    on_main(context, lambda: FeatureShards.tidy(output, args.force))
    context.barrier()
    shards = FeatureShards(output, context.rank, args.shard_size)
    done = shards.done() if args.resume else set()
    mine = [f for f in files[context.rank :: context.world_size] if str(f) not in done]
    device = str(context.device) if context.enabled else args.device
    model = prepare(model, fuse=not args.no_fuse, device=device, inplace=True)
    workers = args.num_workers if args.num_workers is not None else 0
    failed = 0
    for paths, features, errors in Classifier(model).embed_files(mine, args.stage, args.batch_size, workers):
        for path, error in errors:
            print(f"{path}: error: {error}", file=sys.stderr)
        failed += len(errors)
        if paths:
            shards.add(paths, features)
    shards.flush()
    failed = int(context.all_reduce_sum(torch.tensor([float(failed)]))[0])
    written = int(context.all_reduce_sum(torch.tensor([float(shards.written)]))[0])
    if context.is_main:
        what = f"stage {args.stage}, averaged" if args.stage is not None else "pooled"
        print(f"{output}: features ({what}) of {written} image(s), {len(done)} from before, {failed} unreadable")
    return 1 if failed else 0


def pictures(args: argparse.Namespace, suffixes: tuple[str, ...]) -> Iterator[tuple[Path, Path]]:
    """Each image with the stem of its pictures in --output (unique, even for files of the same name); pictures
    that would overwrite files are refused, all before the first is drawn, unless --force."""
    from ..data import find_images

    files = find_images(args.paths)
    if not files:
        raise UsageError("no image files found in " + " ".join(args.paths))
    output = output_folder(args.output)  # before the first picture is drawn
    stems, taken = [], set()
    for path in files:
        stem, count = path.stem, 1
        while stem in taken:
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem)
        stems.append(output / stem)
    refuse_existing([s.with_name(s.name + suffix) for s in stems for suffix in suffixes], args.force)
    yield from zip(files, stems, strict=True)


def _each_image(
    args: argparse.Namespace, suffixes: tuple[str, ...], handle: Callable[[Path, torch.Tensor, Path], dict]
) -> int:
    from torchvision.transforms.v2 import functional as TF

    from ..data import load_image

    failed = 0
    for path, stem in pictures(args, suffixes):
        try:
            image = TF.pil_to_tensor(load_image(path))  # photos upright, as a viewer shows them
        except ImageLoadError as error:
            failed += 1
            print(
                json.dumps({"path": str(path), "error": error.reason})
                if args.json
                else f"{path}: error: {error.reason}"
            )
            continue
        try:
            result = {"path": str(path), **handle(path, image, stem)}
        except (MemoryError, RuntimeError) as error:  # torch's allocator says "can't allocate" as a RuntimeError
            if isinstance(error, RuntimeError) and "alloc" not in str(error).lower():
                raise
            failed += 1
            reason = f"not enough memory for this {image.shape[-1]}x{image.shape[-2]} photo; the others go on"
            print(json.dumps({"path": str(path), "error": reason}) if args.json else f"{path}: error: {reason}")
            continue
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
    from ..tasks.segmentation.predict import Segmenter

    expect_task(args.model, "segment")
    segmenter = Segmenter(load_trained(args, "segmentation"))

    def handle(path: Path, image: torch.Tensor, stem: Path) -> dict:
        prediction, result = segmenter.segment(image, tta=args.tta)
        mask, overlay = (stem.with_name(stem.name + suffix) for suffix in ("_mask.png", "_overlay.png"))
        for picture, data in zip((mask, overlay), segmenter.pictures(image, prediction), strict=True):
            atomic_write(picture, data)
        return {"mask": str(mask), "overlay": str(overlay), **result}

    return _each_image(args, ("_mask.png", "_overlay.png"), handle)


def detect(args: argparse.Namespace) -> int:
    from ..tasks.detection.predict import Detector
    from ..tasks.drawing import png_bytes

    kind = expect_task(args.model, "detect")
    detector = Detector(load_trained(args, kind, min_size=args.min_size, max_size=args.max_size))

    def handle(path: Path, image: torch.Tensor, stem: Path) -> dict:
        picture = stem.with_name(stem.name + "_detections.png")
        pixels, found = detector.detect(image, args.score_threshold)
        atomic_write(picture, png_bytes(pixels))
        return {"picture": str(picture), "detections": found}

    return _each_image(args, ("_detections.png",), handle)
