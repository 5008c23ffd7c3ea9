"""Training (the 1x schedule), COCO evaluation and drawing of RetinaNet and Mask R-CNN models."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ...engine import StepResult, Trainer, TrainerConfig, init_distributed
from ...engine.distributed import DistributedContext, shutdown_distributed
from ...engine.trainer import STATE_FILE
from ..classification.data import ShardSampler
from ..dense import DenseRunArgs, create_dense_model, palette, save_dense
from .data import CocoDetection, coco_split, collate

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class DetectionArgs(DenseRunArgs):
    """The official 1x schedule (12 epochs, global batch 16) unless overridden."""

    epochs: int = 12
    batch_size: int = 16  # global, split over the processes (the paper: 8 GPUs x 2)
    lr: float | None = None  # AdamW: 1e-4 for RetinaNet, 2e-4 for Mask R-CNN
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    decay_epochs: tuple[int, ...] = (8, 11)
    min_size: int = 800  # resize to 1333x800 keeping the ratio
    max_size: int = 1333
    train_split: str = "train2017"
    val_split: str = "val2017"


def is_instance(model) -> bool:
    return getattr(model, "task", "") == "instance_segmentation"


def build_dataset(data: str, split: str, instance: bool, train: bool) -> CocoDetection:
    images, annotations = coco_split(data, split)
    return CocoDetection(images, annotations, masks=instance, background=instance, train=train)


@torch.inference_mode()
def coco_results(model, dataset: CocoDetection, context: DistributedContext, batch_size: int = 2) -> list[dict]:
    """This process's share of the detections, in COCO's result format."""
    from pycocotools import mask as mask_utils

    model.eval()
    loader = DataLoader(dataset, batch_size, sampler=ShardSampler(len(dataset), context.rank, context.world_size),
                        collate_fn=collate)  # fmt: skip
    results = []
    for images, targets in loader:
        outputs = model([image.to(context.device) for image in images])
        for output, target in zip(outputs, targets, strict=True):
            boxes = output["boxes"].cpu()
            masks = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8) if "masks" in output else None
            boxes[:, 2:] -= boxes[:, :2]
            for k, (box, score, label) in enumerate(
                zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist(), strict=True)
            ):
                entry = {"image_id": target["image_id"], "category_id": dataset.label_to_category(label),
                         "bbox": [round(v, 2) for v in box], "score": round(score, 5)}  # fmt: skip
                if masks is not None:
                    rle = mask_utils.encode(np.asfortranarray(masks[k]))
                    rle["counts"] = rle["counts"].decode("ascii")
                    entry["segmentation"] = rle
                results.append(entry)
    return results


def coco_evaluate(model, dataset: CocoDetection, context: DistributedContext) -> dict:
    """COCO AP/AP50/AP75/APs/APm/APl (percent) for boxes, and masks for Mask R-CNN, via pycocotools."""
    from pycocotools.cocoeval import COCOeval

    results = coco_results(model, dataset, context)
    if context.enabled:
        gathered: list = [None] * context.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: dict = {}
    if context.is_main:
        for kind in ("bbox", "segm") if is_instance(model) else ("bbox",):
            prefix = "" if kind == "bbox" else "mask_"
            if not results:
                metrics.update({prefix + name: 0.0 for name in METRIC_NAMES})
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), kind)
                evaluation.evaluate()
                evaluation.accumulate()
                evaluation.summarize()
            metrics.update(
                {
                    prefix + name: max(100 * float(v), 0.0)
                    for name, v in zip(METRIC_NAMES, evaluation.stats[:6], strict=True)
                }
            )
    metrics = context.broadcast_object(metrics)
    metrics["detections"] = len(results) if context.is_main else 0
    return metrics


def train_detection(args: DetectionArgs, resume: bool = False) -> list[dict]:
    context = init_distributed(args.device)
    try:
        output = Path(args.output)
        if not resume and (output / STATE_FILE).exists():
            raise FileExistsError(f"{output} already holds a run; continue it with --resume {output}")
        spec = _spec(args.model)
        torch.manual_seed(args.seed)
        instance = spec.task == "instance_segmentation"
        train_set = build_dataset(args.data, args.train_split, instance, train=True)
        val_set = build_dataset(args.data, args.val_split, instance, train=False)
        model = create_dense_model(spec, num_classes=len(train_set.labels), checkpoint=args.init,
                                   min_size=args.min_size, max_size=args.max_size)  # fmt: skip
        model.labels = train_set.labels
        torch.manual_seed(args.seed + context.rank)
        random.seed(args.seed + context.rank)
        per_process = max(1, args.batch_size // context.world_size)
        sampler = DistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=args.seed)
        loader = DataLoader(train_set, per_process, sampler=sampler, num_workers=args.num_workers, collate_fn=collate,
                            drop_last=len(train_set) >= per_process * context.world_size)  # fmt: skip
        steps = max(len(loader), 1)
        lr = args.lr or (2e-4 if is_instance(model) else 1e-4)

        def lr_at(epoch: float) -> float:
            iteration = epoch * steps
            factor = 0.1 ** bisect.bisect_right(args.decay_epochs, epoch)
            if iteration < args.warmup_iters:
                factor *= args.warmup_ratio + (1 - args.warmup_ratio) * iteration / args.warmup_iters
            return lr * factor

        def make_loader(epoch: int):
            sampler.set_epoch(epoch)
            return loader

        def step(net, batch, device) -> StepResult:
            images, targets = batch
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            losses = net(images, targets)
            return StepResult(sum(losses.values()), len(images))

        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=lr)  # fmt: skip
        config = TrainerConfig(
            epochs=args.epochs, output=output, amp=args.amp, channels_last=False, best_metric="AP",
            progress=args.progress, stop_after_epochs=args.stop_after_epochs,
            run_config={**dataclasses.asdict(args), "resolved": {"lr": lr, "steps_per_epoch": steps,
                                                                 "classes": list(train_set.labels),
                                                                 "world_size": context.world_size}},
        )  # fmt: skip
        evaluate = lambda net: coco_evaluate(net, val_set, context)  # noqa: E731
        trainer = Trainer(model, optimizer, lr_at, make_loader, step, evaluate, lambda net, p: save_dense(net, p),
                          config, context)  # fmt: skip
        return trainer.fit(output if resume else None)
    finally:
        shutdown_distributed()


def resume_detection(run: str | Path) -> DetectionArgs:
    config = json.loads((Path(run) / "config.json").read_text())
    config.pop("resolved", None)
    config["decay_epochs"] = tuple(config["decay_epochs"])
    args = DetectionArgs(**config)
    args.output, args.stop_after_epochs = str(run), None
    return args


def _spec(name: str):
    from ...models.zoo import get_spec

    spec = get_spec(name)
    if spec.task not in ("detection", "instance_segmentation"):
        raise ValueError(f"{name} is not a detection model (see `metaformer list retinanet_` / `mask_rcnn_`)")
    return spec


@functools.cache
def _caption_font() -> str | None:
    """A scalable font for readable captions: matplotlib's bundled DejaVu Sans (PIL's default is 11 px, fixed)."""
    from matplotlib import font_manager

    with contextlib.suppress(ValueError, RuntimeError):
        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    return None


def draw(image: torch.Tensor, output: dict, labels, threshold: float, path: Path, offset: int = 0) -> list[dict]:
    """Boxes (and masks) scoring at least ``threshold`` drawn with their labels on the uint8 image, saved as PNG."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= threshold
    indices = [i - offset for i in output["labels"][keep].tolist()]  # Mask R-CNN's labels start at 1 (0: background)
    names = [labels[i] if labels and 0 <= i < len(labels) else str(i) for i in indices]
    scores = output["scores"][keep].tolist()
    captions = [f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)]
    if captions:  # torchvision warns on an empty box list; the picture is then the photo as it is
        table, side = palette(max(indices) + 1), min(image.shape[-2:])
        colours = [tuple(table[i].tolist()) for i in indices]  # one colour per class, as in the segmentation masks
        if "masks" in output:
            image = draw_segmentation_masks(image, output["masks"][keep, 0] > 0.5, alpha=0.45, colors=colours)
        image = draw_bounding_boxes(image, output["boxes"][keep], captions, colours,
                                    width=max(2, side // 160), font=_caption_font(), font_size=max(12, side // 28),
                                    label_colors="black", fill_labels=True)  # fmt: skip
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return [{"label": n, "score": round(s, 4), "box": [round(v, 1) for v in b]}
            for n, s, b in zip(names, scores, output["boxes"][keep].tolist(), strict=True)]  # fmt: skip
