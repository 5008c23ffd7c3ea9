"""Training, evaluation and prediction of Semantic FPN models."""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms.v2 import functional as TF

from ...engine import StepResult, Trainer, TrainerConfig, init_distributed
from ...engine.distributed import DistributedContext, shutdown_distributed
from ...engine.trainer import STATE_FILE
from ..classification.data import ShardSampler
from ..dense import DenseRunArgs, create_dense_model, palette, save_dense
from .data import (
    IGNORE,
    SegmentationFolder,
    TrainTransform,
    collate,
    detect_layout,
    eval_size,
    normalize,
)
from .metrics import confusion, scores

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class SegmentationArgs(DenseRunArgs):
    """The official Semantic FPN recipe (ADE20K, 40k iterations) unless overridden."""

    iterations: int = 40_000
    batch_size: int = 32  # global, split over the processes (the paper: 8 GPUs x 4)
    lr: float = 2e-4
    weight_decay: float = 1e-4
    power: float = 0.9
    scale: tuple[int, int] = (2048, 512)
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    epochs_between_evals: int = 1  # an "epoch" is one pass over the training images
    num_classes: int | None = None
    ignore_index: int = 255


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, image: torch.Tensor, scale: tuple[int, int] | None = None,
                  scales: tuple[float, ...] = (1.0,), flip: bool = False) -> torch.Tensor:  # fmt: skip
    """Class probabilities ``[K, H, W]`` of a uint8 ``[3, H, W]`` image: whole-image inference after resizing to
    ``scale`` (sides multiples of 32), averaged over ``scales`` and horizontal flips when asked."""
    model.eval()
    scale = scale or getattr(model, "test_scale", None) or (2048, 512)
    height, width = image.shape[-2:]
    device = next(model.parameters()).device
    total = None
    for factor in scales:
        size = eval_size(height, width, (int(scale[0] * factor), int(scale[1] * factor)))
        x = normalize(TF.resize(image, size, antialias=True))[None].to(device)
        for flipped in (False, True) if flip else (False,):
            logits = model(x.flip(-1) if flipped else x)
            logits = logits.flip(-1) if flipped else logits
            probs = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False).softmax(1)[0]
            total = probs if total is None else total + probs
    return total


def evaluate_dataset(model, dataset: SegmentationFolder, context: DistributedContext, scales=(1.0,), flip=False,
                     scale=None) -> dict:  # fmt: skip
    scale = scale or getattr(model, "test_scale", None) or (2048, 512)
    matrix = torch.zeros(model.num_classes, model.num_classes, dtype=torch.float64)
    for index in ShardSampler(len(dataset), context.rank, context.world_size):
        image, mask = dataset.read(index)
        prediction = predict_probs(model, image, scale, scales, flip).argmax(0).cpu()
        matrix += confusion(prediction, mask, model.num_classes)
    matrix = context.all_reduce_sum(matrix).cpu()
    return scores(matrix)


def train_segmentation(args: SegmentationArgs, resume: bool = False) -> list[dict]:
    context = init_distributed(args.device)
    try:
        layout = detect_layout(args.data, args.num_classes, args.ignore_index)
        output = Path(args.output)
        if not resume and (output / STATE_FILE).exists():
            raise FileExistsError(f"{output} already holds a run; continue it with --resume {output}")
        torch.manual_seed(args.seed)
        model = create_dense_model(_spec(args.model), num_classes=layout.num_classes, checkpoint=args.init)
        model.labels = layout.classes
        model.test_scale = tuple(args.scale)
        if context.enabled and context.device.type == "cuda":
            # The official head syncs BatchNorm statistics across GPUs; SyncBatchNorm has no CPU kernel, so CPU
            # (gloo) runs keep per-process statistics.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        torch.manual_seed(args.seed + context.rank)
        random.seed(args.seed + context.rank)
        train_set = SegmentationFolder(args.data, layout.train_split, layout,
                                       TrainTransform(args.scale, args.crop_size, args.cat_max_ratio))  # fmt: skip
        val_set = SegmentationFolder(args.data, layout.val_split, layout)
        per_process = max(1, args.batch_size // context.world_size)
        sampler = DistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=args.seed)
        loader = DataLoader(train_set, per_process, sampler=sampler, num_workers=args.num_workers, collate_fn=collate,
                            drop_last=len(train_set) >= per_process * context.world_size,
                            pin_memory=context.device.type == "cuda")  # fmt: skip
        steps = max(len(loader), 1)
        epochs = -(-args.iterations // steps)

        def make_loader(epoch: int):
            sampler.set_epoch(epoch)
            return loader

        def step(net, batch, device) -> StepResult:
            images, masks = (t.to(device, non_blocking=True) for t in batch)
            logits = net(images).float()  # through the DDP wrapper, at the crop's (= the masks') resolution
            return StepResult(F.cross_entropy(logits, masks, ignore_index=IGNORE), len(images))

        def lr_at(epoch: float) -> float:
            return args.lr * max(1 - epoch * steps / args.iterations, 0.0) ** args.power

        def evaluate(net) -> dict:
            result = evaluate_dataset(net, val_set, context, scale=args.scale)
            return {k: v for k, v in result.items() if k != "IoU"}

        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)  # fmt: skip
        resolved = {"epochs": epochs, "steps_per_epoch": steps, "layout": dataclasses.asdict(layout),
                    "world_size": context.world_size}  # fmt: skip
        config = TrainerConfig(
            epochs=epochs, output=output, amp=args.amp, channels_last=False, best_metric="mIoU",
            progress=args.progress, stop_after_epochs=args.stop_after_epochs,
            run_config={**dataclasses.asdict(args), "resolved": resolved},
        )  # fmt: skip
        trainer = Trainer(model, optimizer, lr_at, make_loader, step, evaluate, lambda net, path: save_dense(net, path),
                          config, context)  # fmt: skip
        return trainer.fit(output if resume else None)
    finally:
        shutdown_distributed()


def _spec(name: str):
    from ...models.zoo import get_spec

    spec = get_spec(name)
    if spec.task != "segmentation":
        raise ValueError(f"{name} is not a segmentation model (see `metaformer list fpn_`)")
    return spec


def write_pictures(image: torch.Tensor, prediction: torch.Tensor, num_classes: int, stem: Path) -> tuple[Path, Path]:
    """``<stem>_mask.png`` (a colour per class) and ``<stem>_overlay.png`` (the mask blended over the photo)."""
    colours = palette(num_classes)[prediction.numpy()]
    mask_path, overlay_path = stem.with_name(stem.name + "_mask.png"), stem.with_name(stem.name + "_overlay.png")
    Image.fromarray(colours).save(mask_path)
    photo = image.permute(1, 2, 0).numpy().astype(np.float32)
    Image.fromarray((0.5 * photo + 0.5 * colours).astype(np.uint8)).save(overlay_path)
    return mask_path, overlay_path


def resume_segmentation(run: str | Path) -> SegmentationArgs:
    config = json.loads((Path(run) / "config.json").read_text())
    config.pop("resolved", None)
    config["scale"] = tuple(config["scale"])
    args = SegmentationArgs(**config)
    args.output = str(run)
    args.stop_after_epochs = None
    return args
