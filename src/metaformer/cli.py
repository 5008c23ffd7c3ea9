"""The ``metaformer`` command: predict, list, info, convert, benchmark."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .models.zoo import get_spec, list_models


def _device(name: str) -> str:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but PyTorch sees no CUDA GPU here")
    return name


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` for inference: inductor's freezing folds the weights in as constants and prepacks them."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # a process-wide setting; this process only ever runs inference after this
    return torch.compile(model, dynamic=False)


def _load_classifier(args: argparse.Namespace):
    from .api import create_model
    from .models.fused import fuse

    if args.pretrained and args.checkpoint:
        raise SystemExit("error: pass either --checkpoint FILE or --pretrained, not both")
    if not (args.pretrained or args.checkpoint):
        raise SystemExit("error: pass --checkpoint FILE (any supported format) or --pretrained")
    model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    return model if args.no_fuse else fuse(model)


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import ImageProcessor
    from .tasks.classification import find_images, predict

    device = _device(args.device)
    model = _load_classifier(args).to(device, getattr(torch, args.dtype))
    processor = ImageProcessor(size=model.config.image_size, crop_pct=model.config.crop_pct)
    files = find_images(args.paths)  # searched once, here
    count = len(files)
    if count == 0:
        print("error: no image files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else (2 if count > args.batch_size else 0)
    failed = 0
    for result in predict(
        _compiled(model) if args.compile else model,
        files,
        processor,
        args.topk,
        args.batch_size,
        device,
        workers,
        progress=count > args.batch_size,
    ):
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
        print(f"{failed} of {count} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [get_spec(name) for name in list_models(args.filter)]
    if not rows:
        print(f"no model name contains {args.filter!r}; `metaformer list` shows them all", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"name": s.name, "description": s.description, "weights": s.url} for s in rows]))
        return 0
    width = max(len(s.name) for s in rows)
    for spec in rows:
        mark = "weights" if spec.url else "       "
        print(f"{spec.name:<{width}}  {mark}  {spec.description}")
    return 0


def model_info(name: str, image_size: int | None = None) -> dict:
    from .api import create_model
    from .profile import count_macs, count_params

    spec = get_spec(name)
    if spec.task != "classification":  # the paper reports parameters only for the dense models
        from .models.dense import backbone_of

        model = create_model(name)
        trainable, frozen = count_params(model)
        config = backbone_of(model).config.to_dict()
        config.pop("labels")
        return {"name": name, "description": spec.description, "task": spec.task, "backbone": spec.backbone,
                "num_classes": model.num_classes, "config": config, "params": trainable, "frozen_params": frozen,
                "macs": None}  # fmt: skip
    overrides = {"image_size": image_size} if image_size else {}
    model = create_model(name, **overrides).eval()
    trainable, frozen = count_params(model)
    config = model.config.to_dict()
    config.pop("labels")
    return {
        "name": name,
        "description": spec.description,
        "config": config,
        "params": trainable,
        "frozen_params": frozen,
        "macs": count_macs(model, model.config.image_size),
        "image_size": model.config.image_size,
        "crop_pct": model.config.crop_pct,
        "weights_url": spec.url,
        "hf_hub_id": spec.hf_hub_id,
        "timm_name": spec.timm_name,
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.name, args.image_size)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['name']}: {info['description']}")
    print(
        f"  params      {info['params'] / 1e6:.3f} M"
        + (f" (+{info['frozen_params'] / 1e6:.3f} M frozen)" if info["frozen_params"] else "")
    )
    if info["macs"] is None:
        print(f"  task        {info['task']} ({info['num_classes']} classes) on {info['backbone']}")
        return 0
    print(f"  MACs        {info['macs'] / 1e9:.3f} G at {info['image_size']}x{info['image_size']}")
    print(f"  eval        crop_pct {info['crop_pct']}, bicubic, ImageNet mean/std")
    for key, value in info["config"].items():
        print(f"  {key:<17} {value}")
    for key in ("weights_url", "hf_hub_id", "timm_name"):
        if info[key]:
            print(f"  {key:<17} {info[key]}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_checkpoint

    to = {"safetensors": "metaformer"}.get(args.to, args.to)
    out = convert_checkpoint(args.src, args.dst, to, model_name=args.model)
    print(f"wrote {out} ({args.to} format)")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .api import create_model
    from .benchmark import time_forward
    from .models.fused import fuse

    device = _device(args.device)
    model = create_model(args.model, image_size=args.image_size)
    if not args.no_fuse:
        model = fuse(model)
    if args.compile:
        model = _compiled(model.to(device))
    result = time_forward(
        model,
        args.batch_size,
        args.image_size,
        device,
        args.dtype,
        args.warmup,
        args.iters,
        not args.no_channels_last,
    )
    result["model"] = args.model
    result["fused"] = not args.no_fuse
    result["compiled"] = args.compile
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model}: {result['images_per_s']:.1f} images/s (batch {args.batch_size}, "
            f"{args.image_size}px, {device}, {args.dtype}), peak memory {result['peak_memory_mib']:.0f} MiB"
        )
    return 0


RECIPE_FLAGS = {  # flag: (recipe field, type, help)
    "--epochs": ("epochs", int, "epochs to train (paper: 300); with --resume, extends the run"),
    "--batch-size": ("batch_size", int, "images per process and step (paper: 128 on each of 8 GPUs)"),
    "--lr": ("lr", float, "learning rate (default: 1e-3 x global batch / 1024; finetune: 2e-4)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay (0.05)"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warm-up epochs from 1e-6 (5)"),
    "--min-lr": ("min_lr", float, "cosine schedule's final learning rate (1e-5)"),
    "--image-size": ("image_size", int, "training crop and evaluation size (224)"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing (0.1)"),
    "--randaugment": ("randaugment_magnitude", float, "RandAugment magnitude on timm's 0-10 scale, 0 = off (9)"),
    "--random-erasing": ("random_erasing", float, "random erasing probability (0.25)"),
    "--mixup": ("mixup", float, "MixUp alpha, 0 = off (0.8)"),
    "--cutmix": ("cutmix", float, "CutMix alpha, 0 = off (1.0)"),
    "--drop-path": ("drop_path", float, "stochastic depth (S12/S24 0.1, S36 0.2, M36 0.3, M48 0.4)"),
    "--clip-grad": ("clip_grad", float, "clip the gradient norm to this value (off)"),
}


def cmd_train(args: argparse.Namespace) -> int:
    from .tasks.classification.recipe import get_recipe
    from .tasks.classification.train import TrainArgs, resume_args, train

    if args.resume:
        config = Path(args.resume) / "config.json"
        task = get_spec(json.loads(config.read_text())["model"]).task if config.exists() else "classification"
        if task == "segmentation":
            from .tasks.segmentation.engine import resume_segmentation, train_segmentation

            train_segmentation(resume_segmentation(args.resume), resume=True)
            return 0
        if task != "classification":
            from .tasks.detection.engine import resume_detection, train_detection

            train_detection(resume_detection(args.resume), resume=True)
            return 0
        run = resume_args(args.resume, epochs=args.epochs)
        train(run, resume=True)
        return 0
    if not args.data or not args.model:
        raise SystemExit("error: DATA and --model are required (or --resume RUN_DIR)")
    if get_spec(args.model).task != "classification":
        return _train_dense(args, get_spec(args.model).task)
    _device(args.device)
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in RECIPE_FLAGS.items()}
    if args.ema:
        overrides["ema_decay"] = 0.9998
    if args.no_augment:
        overrides["augment"] = False
    recipe = get_recipe(args.recipe, **overrides)
    output = args.output or f"runs/{args.model}"
    run = TrainArgs(
        data=args.data, model=args.model, output=output, recipe=recipe, init=args.init,
        num_workers=args.num_workers, device=args.device, seed=args.seed, amp=args.amp, compile=args.compile,
        channels_last=not args.no_channels_last, progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs,
    )  # fmt: skip
    records = train(run)
    if records and _is_main_process():
        last = records[-1]
        print(f"done: {output} (top-1 {last['top1']:.2f}%, top-5 {last['top5']:.2f}% after {last['epoch']} epochs)")
    return 0


def _is_main_process() -> bool:
    """False in torchrun's other processes, so summaries print once."""
    return int(os.environ.get("RANK", "0")) == 0


def _run_arguments(args: argparse.Namespace) -> dict:
    """The arguments every dense training run takes from the command line."""
    return {
        "data": args.data, "model": args.model, "output": args.output or f"runs/{args.model}", "init": args.init,
        "num_workers": args.num_workers, "device": args.device, "seed": args.seed, "amp": args.amp,
        "progress": not args.no_progress, "stop_after_epochs": args.stop_after_epochs,
    }  # fmt: skip


# The flags each dense task takes besides the common ones, and the metric its summary line reports.
DENSE_FLAGS = {
    "segmentation": (("iterations", "batch_size", "lr", "weight_decay", "crop_size", "num_classes", "ignore_index",
                      "scale"), "mIoU"),
    "detection": (("epochs", "batch_size", "lr", "weight_decay", "min_size", "max_size", "warmup_iters"), "AP"),
}  # fmt: skip


def _train_dense(args: argparse.Namespace, task: str) -> int:
    kind = "segmentation" if task == "segmentation" else "detection"  # instance segmentation trains as detection
    if kind == "segmentation":
        from .tasks.segmentation.engine import SegmentationArgs as RunArgs
        from .tasks.segmentation.engine import train_segmentation as run
    else:
        from .tasks.detection.engine import DetectionArgs as RunArgs
        from .tasks.detection.engine import train_detection as run
    flags, metric = DENSE_FLAGS[kind]
    _device(args.device)
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    if "scale" in given:
        given["scale"] = tuple(given["scale"])
    settings = RunArgs(**_run_arguments(args), **given)
    records = run(settings)
    if records and _is_main_process():
        print(f"done: {settings.output} ({metric} {records[-1][metric]:.2f} after {records[-1]['epoch']} epochs)")
    return 0


def _eval_detection(args: argparse.Namespace) -> int:
    from .engine.distributed import DistributedContext
    from .tasks.detection.engine import build_dataset, coco_evaluate, is_instance

    model = _load_dense(args).to(_device(args.device))
    dataset = build_dataset(args.data, args.split, is_instance(model), train=False)
    result = coco_evaluate(model, dataset, DistributedContext(device=torch.device(args.device)))
    if args.json:
        print(json.dumps({**result, "images": len(dataset)}))
        return 0
    for prefix, title in (("", "bbox"), ("mask_", "segm")):
        if prefix + "AP" in result:
            values = "  ".join(f"{n} {result[prefix + n]:.2f}" for n in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
            print(f"{title}: {values}")
    print(f"({len(dataset)} images, {result['detections']} detections)")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from torchvision.transforms.v2 import functional as TF

    from .data import ImageLoadError, load_image
    from .tasks.classification.predict import find_images
    from .tasks.detection.engine import draw, is_instance

    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    model = _load_dense(args, **overrides).to(_device(args.device))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in find_images(args.paths):
        try:
            image = TF.pil_to_tensor(load_image(path))
        except (ImageLoadError, FileNotFoundError) as error:
            print(json.dumps({"path": str(path), "error": str(error)}))
            failed += 1
            continue
        with torch.inference_mode():
            result = model([TF.to_dtype(image, torch.float32, scale=True).to(args.device)])[0]
        result = {k: v.cpu() for k, v in result.items()}
        picture = output / (path.stem + "_detections.png")
        found = draw(image, result, model.labels, args.score_threshold, picture, 1 if is_instance(model) else 0)
        print(json.dumps({"path": str(path), "picture": str(picture), "detections": found}))
    return 1 if failed else 0


def _eval_segmentation(args: argparse.Namespace) -> int:
    from .engine.distributed import DistributedContext
    from .tasks.segmentation.data import SegmentationFolder, detect_layout
    from .tasks.segmentation.engine import TTA_SCALES, evaluate_dataset

    model = _load_dense(args).to(_device(args.device))
    layout = detect_layout(args.data, args.num_classes or model.num_classes, args.ignore_index)
    dataset = SegmentationFolder(args.data, layout.val_split, layout)
    scales = TTA_SCALES if args.tta else (1.0,)
    result = evaluate_dataset(model, dataset, DistributedContext(device=torch.device(args.device)), scales, args.tta)
    names = model.labels or layout.classes or [str(i) for i in range(model.num_classes)]
    if args.json:
        print(json.dumps({**{k: result[k] for k in ("mIoU", "mAcc", "aAcc")}, "images": len(dataset),
                          "IoU": dict(zip(names, result["IoU"], strict=True))}))  # fmt: skip
        return 0
    print(f"mIoU {result['mIoU']:.2f}%  mAcc {result['mAcc']:.2f}%  aAcc {result['aAcc']:.2f}%  ({len(dataset)} images"
          f"{', multi-scale + flip' if args.tta else ''})")  # fmt: skip
    for name, iou in zip(names, result["IoU"], strict=True):
        print(f"  {name:<24} IoU {iou:6.2f}")
    return 0


def _load_dense(args: argparse.Namespace, **overrides):
    from .api import create_model
    from .models.fused import fuse

    if not args.checkpoint:
        # --pretrained would only initialise the backbone: the heads have no released weights here.
        raise SystemExit("error: pass --checkpoint FILE (weights saved by `metaformer train`)")
    model = create_model(args.model, checkpoint=args.checkpoint, **overrides).eval()
    return model if args.no_fuse else fuse(model)


def cmd_segment(args: argparse.Namespace) -> int:
    from torchvision.transforms.v2 import functional as TF

    from .data import ImageLoadError, load_image
    from .tasks.classification.predict import find_images
    from .tasks.segmentation.engine import TTA_SCALES, predict_probs, write_pictures

    model = _load_dense(args).to(_device(args.device))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in find_images(args.paths):
        try:
            image = TF.pil_to_tensor(load_image(path))
        except (ImageLoadError, FileNotFoundError) as error:
            print(json.dumps({"path": str(path), "error": str(error)}))
            failed += 1
            continue
        probs = predict_probs(model, image, scales=TTA_SCALES if args.tta else (1.0,), flip=args.tta)
        prediction = probs.argmax(0).cpu()
        mask, overlay = write_pictures(image, prediction, model.num_classes, output / path.stem)
        counts = torch.bincount(prediction.flatten(), minlength=model.num_classes).double() / prediction.numel()
        names = model.labels or [str(i) for i in range(model.num_classes)]
        top = counts.topk(min(5, model.num_classes))
        classes = {
            names[i]: round(v, 4) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True) if v > 0
        }
        print(json.dumps({"path": str(path), "mask": str(mask), "overlay": str(overlay), "classes": classes}))
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    if get_spec(args.model).task == "segmentation":
        return _eval_segmentation(args)
    if get_spec(args.model).task != "classification":
        return _eval_detection(args)
    from .engine.distributed import init_distributed, shutdown_distributed
    from .tasks.classification.evaluate import eval_folder, eval_loader, evaluate

    _device(args.device)
    model = _load_classifier(args)
    context = init_distributed(args.device)
    try:
        model = model.to(context.device, memory_format=torch.channels_last)
        loader, outputs = eval_loader(eval_folder(args.data), model, args.batch_size, args.num_workers, context)
        result = evaluate(model, loader, outputs, context, progress=not args.json)
    finally:
        shutdown_distributed()
    if not context.is_main:
        return 0
    if args.json:
        keys = ("top1", "top5", "images", "errors")
        print(json.dumps({k: result[k] for k in keys}))
    else:
        print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({result['images']} images)")
        for error in result["errors"]:
            print(f"skipped: {error}", file=sys.stderr)
    return 0


COMPILE_HELP = "torch.compile the model (with freezing): 10-30 s to start, then up to ~10%% faster on CPU"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaformer", description="MetaFormer / PoolFormer models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="classify images (files or folders, searched recursively)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="model name (see `metaformer list`)")
    p.add_argument("--checkpoint", help="weights: official .pth.tar, timm or our .safetensors, HF folder")
    p.add_argument("--pretrained", action="store_true", help="download the official ImageNet-1k weights")
    p.add_argument("--topk", type=_positive, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: 2 for many images)")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="bfloat16: ~1.6x faster on CPUs with AVX-512 BF16 or AMX")  # fmt: skip
    p.add_argument("--no-fuse", action="store_true", help="run the plain model, not the folded one")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "train",
        help="train or fine-tune a classifier on an ImageNet-layout folder (DATA/train/<class>, DATA/val/<class>)",
        description="Train with the paper's recipe (or --recipe finetune). Runs on CPU, one GPU, or under "
        "`torchrun --nproc_per_node N` for distributed data parallel training. The run folder gets config.json, "
        "metrics.jsonl, curves.png, last/best .safetensors and last.state.pt (for --resume).",
    )
    p.add_argument("data", nargs="?", help="dataset folder with train/ and val/")
    p.add_argument("--model", help="model name (see `metaformer list`)")
    p.add_argument("--output", help="run folder (default runs/MODEL)")
    p.add_argument(
        "--recipe",
        default="paper",
        choices=["paper", "finetune"],
        help="paper: the official ImageNet recipe; finetune: short, lr 2e-4, light augmentation",
    )
    p.add_argument("--init", help="initial weights (any supported checkpoint); a new class count resets the head")
    p.add_argument("--resume", help="continue the run in this folder exactly where it stopped")
    for flag, (_, kind, text) in RECIPE_FLAGS.items():
        p.add_argument(flag, type=_positive if kind is int else kind, default=None, help=text)
    p.add_argument("--iterations", type=_positive, help="segmentation: training iterations (40000)")
    p.add_argument("--crop-size", type=_positive, help="segmentation: training crop (512)")
    p.add_argument("--scale", type=_positive, nargs=2, help="segmentation: the resize scale, long short (2048 512)")
    p.add_argument("--num-classes", type=_positive, help="segmentation: classes, unless ADE20K or classes.txt")
    p.add_argument("--ignore-index", type=int, help="segmentation: the masks' ignore value (255)")
    p.add_argument("--warmup-iters", type=int, help="detection: linear warm-up iterations (500)")
    p.add_argument("--min-size", type=_positive, help="detection: resize the short side to this (800)")
    p.add_argument("--max-size", type=_positive, help="detection: ... keeping the long side within this (1333)")
    p.add_argument("--ema", action="store_true", help="keep an exponential moving average of the weights (0.9998)")
    p.add_argument("--no-augment", action="store_true", help="train on the evaluation transform (no random crops)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="mixed precision (default none)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--num-workers", type=int, default=4, help="data loading processes per training process (4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each process its local GPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW contiguous tensors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--stop-after-epochs",
        type=_positive,
        help="stop after this many epochs (the schedule stays the full run's); continue with --resume",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 on DATA/val (or DATA) with the ImageNet validation protocol")
    p.add_argument("data", help="folder of class folders, or a dataset folder with val/")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", help="weights in any supported format")
    p.add_argument("--pretrained", action="store_true", help="the official ImageNet-1k weights")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help='print {"top1", "top5", "images", "errors"} (or mIoU ...)')
    p.add_argument("--tta", action="store_true", help="segmentation: multi-scale (0.5-1.75) + flip inference")
    p.add_argument("--num-classes", type=_positive, help="segmentation: classes of the dataset")
    p.add_argument("--ignore-index", type=int, default=255, help="segmentation: the masks' ignore value")
    p.add_argument("--split", default="val2017", help="detection: the COCO split to evaluate (val2017)")
    p.add_argument("--no-fuse", action="store_true", help="run the plain model (or backbone), not the folded one")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("detect", help="detect objects (RetinaNet) or instances (Mask R-CNN): PNGs and JSON")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="e.g. retinanet_poolformer_s12, mask_rcnn_poolformer_s12")
    p.add_argument("--checkpoint", required=True, help="weights saved by `metaformer train`")
    p.add_argument("--output", default="detections", help="folder for the PNGs (default detections/)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw and print detections above this")
    p.add_argument("--min-size", type=_positive, help="resize the short side to this (the model's: 800)")
    p.add_argument("--max-size", type=_positive, help="keep the long side within this (1333)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-fuse", action="store_true", help="run the plain backbone, not the folded one")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("segment", help="semantic segmentation of images: colour mask and overlay PNGs")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a segmentation model, e.g. fpn_poolformer_s12")
    p.add_argument("--checkpoint", required=True, help="weights saved by `metaformer train`")
    p.add_argument("--output", default="segmentations", help="folder for the PNGs (default segmentations/)")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip inference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-fuse", action="store_true", help="run the plain backbone, not the folded one")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("list", help="list the model names")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="a model's configuration, parameters and MACs")
    p.add_argument("name")
    p.add_argument("--image-size", type=int, help="count MACs at this input size (default: the model's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert weights between our, timm's, Hugging Face's and the official format")
    p.add_argument("src", help="checkpoint file or Hugging Face folder, any supported format")
    p.add_argument("dst", help="output file (.safetensors or .pth[.tar]) or folder for --to hf")
    p.add_argument("--to", required=True, choices=["safetensors", "timm", "hf", "official"])
    p.add_argument("--model", help="model name, when it cannot be told from the file")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("benchmark", help="forward images/s and peak memory (random input)")
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    p.add_argument("--iters", type=_positive, default=10)
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW contiguous tensors")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-fuse", action="store_true", help="run the plain model, not the folded one")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import CheckpointError, CheckpointWarning
    from .engine.trainer import NonFiniteLossError

    args = build_parser().parse_args(argv)
    warnings.simplefilter("always", CheckpointWarning)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, TypeError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`metaformer predict ... | head`): stop quietly, and keep Python's final flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
