"""``metaformer train``: the paper's recipe on an ImageNet-layout folder, on CPU, one GPU or many under torchrun."""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ...api import create_model
from ...checkpoints import save_checkpoint
from ...engine import StepResult, Trainer, TrainerConfig, init_distributed
from ...engine.distributed import shutdown_distributed
from ...engine.trainer import STATE_FILE, cosine_lr
from .data import ImageFolder, batch_mixer, collate, train_transform, train_val_folders
from .evaluate import eval_loader, evaluate
from .recipe import Recipe


@dataclass
class TrainArgs:
    data: str
    model: str
    output: str
    recipe: Recipe
    init: str | None = None
    num_workers: int = 4
    device: str = "cpu"
    seed: int = 0
    amp: str = "none"
    compile: bool = False
    channels_last: bool = True
    progress: bool = True
    stop_after_epochs: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainArgs:
        data = {k: v for k, v in data.items() if k != "resolved"}
        recipe = data.pop("recipe")
        recipe["scale"] = tuple(recipe["scale"])
        return cls(recipe=Recipe(**recipe), **data)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases (all 1-D tensors), layer scales and position embeddings."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resume_args(run: str | Path, epochs: int | None = None) -> TrainArgs:
    """The arguments a run folder was started with (``--epochs`` may extend it)."""
    config = Path(run) / "config.json"
    if not config.exists() or not (Path(run) / STATE_FILE).exists():
        raise FileNotFoundError(f"{run} is not a run folder of `metaformer train` (no config.json / {STATE_FILE})")
    args = TrainArgs.from_json(json.loads(config.read_text()))
    args.output = str(run)
    args.stop_after_epochs = None
    if epochs is not None:
        args.recipe = dataclasses.replace(args.recipe, epochs=epochs)
    return args


def train(args: TrainArgs, resume: bool = False) -> list[dict]:
    """Train (or, with ``resume``, continue) a classifier; returns one metrics record per epoch trained."""
    context = init_distributed(args.device)
    try:
        return _train(args, resume, context)
    finally:
        shutdown_distributed()


def _train(args: TrainArgs, resume: bool, context) -> list[dict]:
    recipe = args.recipe
    output = Path(args.output)
    if not resume and (output / STATE_FILE).exists():
        raise FileExistsError(f"{output} already holds a run; continue it with --resume {output} or pick --output")
    train_dir, val_dir = train_val_folders(args.data)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    train_set = ImageFolder(train_dir, train_transform(recipe.image_size, recipe))
    classes = train_set.classes
    model = create_model(
        args.model,
        num_classes=len(classes),
        checkpoint=args.init,
        drop_path_rate=recipe.resolved_drop_path(args.model),
        labels=tuple(classes),
        image_size=recipe.image_size,  # the recipe's, not the size an --init checkpoint was trained at
    )
    torch.manual_seed(args.seed + context.rank)  # each process its own augmentation stream
    random.seed(args.seed + context.rank)

    global_batch = recipe.batch_size * context.world_size
    if len(train_set) < global_batch:
        raise ValueError(f"{train_dir} has {len(train_set)} images, fewer than one global batch ({global_batch})")
    sampler = DistributedSampler(
        train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=args.seed
    )
    loader = DataLoader(
        train_set, batch_size=recipe.batch_size, sampler=sampler, num_workers=args.num_workers, collate_fn=collate,
        drop_last=True, pin_memory=context.device.type == "cuda", persistent_workers=False,
    )  # fmt: skip

    def make_loader(epoch: int) -> DataLoader:
        sampler.set_epoch(epoch)  # the shuffle is a function of (seed, epoch): resuming repeats it exactly
        return loader

    val_loader, outputs = eval_loader(val_dir, model, recipe.batch_size, args.num_workers, context, classes)
    mixer = batch_mixer(len(classes), recipe)
    reported: set[str] = set()

    def step(net: torch.nn.Module, batch, device: torch.device) -> StepResult:
        images, labels, errors = batch
        for error in errors:
            if error not in reported:
                reported.add(error)
                warnings.warn(f"skipping unreadable training image: {error}", stacklevel=1)
        if len(labels) == 0:
            return StepResult(None, 0, len(errors))
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if mixer is not None:
            images, labels = mixer(images, labels)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(images).float(), labels, label_smoothing=recipe.label_smoothing)
        return StepResult(loss, len(images), len(errors))

    lr = recipe.resolved_lr(global_batch)
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=lr)
    trainer = Trainer(
        model,
        optimizer,
        cosine_lr(lr, recipe.epochs, recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr),
        make_loader,
        step,
        lambda net: {k: v for k, v in evaluate(net, val_loader, outputs, context).items() if k != "errors"},
        lambda net, path: save_checkpoint(net, path),
        TrainerConfig(
            epochs=recipe.epochs,
            output=output,
            amp=args.amp,
            channels_last=args.channels_last,
            compile=args.compile,
            clip_grad=recipe.clip_grad,
            ema_decay=recipe.ema_decay,
            progress=args.progress,
            stop_after_epochs=args.stop_after_epochs,
            run_config={
                **args.to_json(),
                "resolved": {
                    "lr": lr,
                    "global_batch": global_batch,
                    "drop_path": recipe.resolved_drop_path(args.model),
                    "world_size": context.world_size,
                    "classes": classes,
                },
            },
        ),  # fmt: skip
        context,
    )
    return trainer.fit(output if resume else None)
