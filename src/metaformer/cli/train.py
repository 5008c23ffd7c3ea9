"""``metaformer train``: any model of the zoo on its task's data, with the paper's recipe for that task."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ..task_table import TASKS
from ..tasks.classification.recipe import RECIPES
from ..tasks.segmentation.recipe import HEADS as SEGMENTATION_HEADS
from .options import (
    TaskFlags,
    add_batch_size,
    add_device,
    add_num_workers,
    add_progress,
    add_scale,
    device,
    non_negative,
    non_negative_float,
    positive,
    positive_float,
    probability,
    task_of,
)

FLAGS = TaskFlags("train")
# Flags whose recipe setting is spelt otherwise, or takes another value than the flag's; the rest are the setting.
RECIPE_FIELDS = {"recipe": "name", "randaugment": "randaugment_magnitude", "ema": "ema_decay", "no_augment": "augment"}
RECIPE_VALUES = {"ema": lambda on: 0.9998 if on else None, "no_augment": lambda on: False if on else None}
RUN_FLAGS = {
    "compile",
    "no_channels_last",
    "custom_backward",
    "train_split",
    "val_split",
    "image_column",
    "label_column",
    "streaming",
}  # task flags that are run settings, not recipe ones
# Flags that --resume takes: how much longer, and how to show it. Everything else comes from config.json.
RESUMABLE = {"epochs", "iterations", "stop_after", "no_progress", "resume", "schedule_extend"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune any model on its task's data (classification, segmentation, detection)",
        description="Train with the paper's recipe for the model's task. Runs on CPU, one GPU, or under "
        "`torchrun --nproc_per_node N` (distributed data parallel). The run folder gets config.json, "
        "metrics.jsonl, steps.jsonl, curves.png, last/best .safetensors and last.state.pt (for --resume). A flag of "
        "another task than the model's is refused.",
    )
    p.add_argument(
        "data",
        nargs="?",
        help="dataset folder: ImageNet layout (train/, val/), ADE20K or COCO layout; for classification also "
        "hf:NAME_OR_FOLDER, a Hugging Face dataset (Hub id from the cache, save_to_disk folder, parquet files), or "
        "wds:FOLDER, WebDataset tar shards named after their split (timm's *-wds layout)",
    )
    p.add_argument("--model", help="model name (see `metaformer list`); its task decides the recipe")
    p.add_argument("--output", help="run folder (default runs/MODEL)")
    p.add_argument("--init", help="initial weights: a classifier's (any format) or a whole model of this task")
    p.add_argument("--resume", help="continue the run in this folder exactly where it stopped")
    p.add_argument("--force", action="store_true", help="start afresh in an --output that holds a run (deletes it)")
    p.add_argument(
        "--schedule-extend",
        action="store_true",
        help="with --resume and a longer --epochs/--iterations: spread the learning-rate schedule over the longer "
        "run (the rate rises again), as timm's scheduler does; without it the schedule keeps its length and the "
        "extra epochs train at its final rate (segmentation's poly decay ends at 0, so it needs this flag)",
    )
    add_batch_size(p, None, f" (the recipe's, per GPU as in the papers: {_recipe_batch_sizes()})")
    p.add_argument(
        "--lr",
        type=positive_float,
        help="learning rate (classification: 1e-3 x global batch / 1024, "
        "CAFormer 2e-3; finetune 2e-4; Semantic FPN 2e-4; UperNet 6e-5; RetinaNet 1e-4; Mask R-CNN 2e-4)",
    )
    p.add_argument(
        "--weight-decay", type=non_negative_float, help="AdamW weight decay (classification 0.05, dense 1e-4)"
    )
    p.add_argument(
        "--grad-accum-steps",
        type=positive,
        default=1,
        help="micro-batches of --batch-size per optimizer step (1): the global batch is batch x this x processes, "
        "which the learning-rate rule, the schedule, EMA, logging and --eval-every count in; one GPU reaches the "
        "papers' 4096 with --batch-size 128 --grad-accum-steps 32",
    )
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute each MetaFormer block's activations in the backward pass instead of keeping them: less "
        "memory for a larger batch, about a third more compute",
    )
    p.add_argument(
        "--log",
        choices=["tensorboard"],
        help="also write the run's figures (those of metrics.jsonl and steps.jsonl) as TensorBoard events in the "
        "run folder (pip install 'metaformer[log]')",
    )
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="mixed precision (default none)")
    add_num_workers(p)
    add_device(p, under_torchrun=True)
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    add_progress(p)
    p.add_argument(
        "--stop-after",
        type=positive,
        help="stop after this many epochs (segmentation: iterations), "
        "with a checkpoint; the schedule stays the full run's; continue with --resume",
    )
    p.add_argument(
        "--eval-every",
        type=positive,
        help="evaluate every N epochs (default 1; a checkpoint is written "
        "every epoch); segmentation: evaluate and checkpoint every N iterations (4000)",
    )
    p.add_argument(
        "--log-every",
        type=positive,
        default=50,
        help="log the training loss (the mean since the last line) and learning rate every N optimizer steps, to "
        "steps.jsonl and curves.png (50)",
    )

    FLAGS.add(
        p,
        "--epochs",
        type=positive,
        help="epochs to train (classification 300, detection 12); with --resume, extends the run",
    )
    FLAGS.add(
        p,
        "--recipe",
        choices=list(RECIPES),
        help="paper: the official ImageNet recipe (default); short: 30 epochs from scratch on small data, lr 1e-3, "
        "light augmentation; finetune: 10 epochs from pretrained weights, lr 2e-4, light augmentation; "
        "finetune_384: the official 384 fine-tuning of ConvFormer, CAFormer and InceptionNeXt-B (30 epochs, "
        "constant lr, EMA)",
    )
    FLAGS.add(
        p,
        "--warmup-epochs",
        type=non_negative_float,
        help="linear warm-up epochs from 1e-6 (5; ConvFormer and CAFormer 20)",
    )
    FLAGS.add(p, "--min-lr", type=non_negative_float, help="cosine schedule's final learning rate (1e-5)")
    FLAGS.add(p, "--image-size", type=positive, help="training crop and evaluation size (224)")
    FLAGS.add(
        p,
        "--crop-scale",
        type=probability,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="RandomResizedCrop's range of image areas (0.08 1.0; small images do better with 0.35 1.0)",
    )
    FLAGS.add(p, "--label-smoothing", type=probability, help="label smoothing (0.1)")
    FLAGS.add(
        p, "--randaugment", type=non_negative_float, help="RandAugment magnitude on timm's 0-10 scale, 0 = off (9)"
    )
    FLAGS.add(p, "--random-erasing", type=probability, help="random erasing probability (0.25)")
    FLAGS.add(p, "--mixup", type=non_negative_float, help="MixUp alpha, 0 = off (0.8)")
    FLAGS.add(p, "--cutmix", type=non_negative_float, help="CutMix alpha, 0 = off (1.0)")
    FLAGS.add(
        p,
        "--drop-path",
        type=probability,
        help="stochastic depth (the model's official rate, "
        "see `metaformer info`: PoolFormer S12/S24 0.1, S36 0.2, M36 0.3, M48 0.4)",
    )
    FLAGS.add(
        p,
        "--head-dropout",
        type=probability,
        help="dropout in ConvFormer's and CAFormer's MLP head (the model's official rate)",
    )
    FLAGS.add(
        p,
        "--optimizer",
        choices=["adamw", "lamb"],
        help="the model's official one by default: AdamW, LAMB for CAFormer (timm's, which needs timm installed)",
    )
    FLAGS.add(p, "--clip-grad", type=positive_float, help="clip the gradient norm to this value (off)")
    FLAGS.add(
        p,
        "--layer-decay",
        type=positive_float,
        help="layer-wise learning-rate decay for fine-tuning (timm's and BEiT's): the head trains at the rate, "
        "each block below at RATE times the one above, the stem lowest (off; 0.7-0.9 usual); config.json records "
        "the scales",
    )
    FLAGS.add(p, "--ema", action="store_true", help="keep an exponential moving average of the weights (0.9998)")
    FLAGS.add(p, "--no-augment", action="store_true", help="train on the evaluation transform")
    FLAGS.add(p, "--no-channels-last", action="store_true", help="keep NCHW contiguous tensors")
    FLAGS.add(p, "--compile", action="store_true", help="torch.compile the model")
    FLAGS.add(
        p,
        "--custom-backward",
        action="store_true",
        help="train PoolFormer's blocks through hand-written "
        "autograd functions: less memory kept for the backward; faster on AMX Xeons, slower on AVX-512 EPYCs "
        "(README, Training speed). Off: the reference modules, which hooks see",
    )
    FLAGS.add(p, "--train-split", help="the training split: DATA/<this>/ or an hf: dataset's split (train)")
    FLAGS.add(p, "--val-split", help="the validation split: DATA/<this>/ (val) or an hf: dataset's (validation)")
    FLAGS.add(
        p,
        "--streaming",
        action="store_true",
        help="read an hf: dataset as a stream (iterable; shards dealt to processes and workers, a shuffle buffer) "
        "instead of by index; wds: shards always stream",
    )
    FLAGS.add(p, "--image-column", help="an hf: dataset's image column (image)")
    FLAGS.add(p, "--label-column", help="an hf: dataset's class column (label; names from its ClassLabel)")
    FLAGS.add(p, "--iterations", type=positive, help="training iterations (Semantic FPN 40000, UperNet 160000)")
    FLAGS.add(p, "--crop-size", type=positive, help="training crop (512)")
    add_scale(FLAGS, p, "the resize scale of training and evaluation (2048 512)")
    FLAGS.add(
        p,
        "--num-classes",
        type=positive,
        help="classes (ADE20K: 150 unless given; otherwise from classes.txt when there is one)",
    )
    FLAGS.add(p, "--ignore-index", type=int, help="the masks' ignore value (255)")
    FLAGS.add(p, "--warmup-iters", type=non_negative, help="linear warm-up iterations (500)")
    FLAGS.add(p, "--min-size", type=positive, help="resize the short side to this (800)")
    FLAGS.add(p, "--max-size", type=positive, help="... keeping the long side within this (1333)")
    p.set_defaults(run=run)
    p.set_defaults(defaults=vars(p.parse_args([])))  # to tell which flags a command line gave


def run(args: argparse.Namespace) -> int:
    from .. import tasks

    if args.resume:
        given = sorted(
            k for k, v in vars(args).items() if k in args.defaults and k not in RESUMABLE and v != args.defaults[k]
        )
        if given:
            shown = ", ".join(k.upper() if k == "data" else "--" + k.replace("_", "-") for k in given)
            raise UsageError(
                f"--resume continues with the run's own settings (its config.json); {shown} cannot "
                "change. Only --epochs/--iterations (longer, with --schedule-extend), --stop-after and "
                "--no-progress can."
            )
        records = tasks.resume(
            args.resume,
            stop_after=args.stop_after,
            progress=False if args.no_progress else None,
            epochs=args.epochs,
            iterations=args.iterations,
            schedule_extend=args.schedule_extend,
        )
        _summary(args.resume, records)
        return 0
    if not args.data or not args.model:
        raise UsageError("DATA and --model are required (or --resume RUN_FOLDER)")
    if args.schedule_extend:
        raise UsageError("--schedule-extend goes with --resume RUN_FOLDER and a longer --epochs/--iterations")
    FLAGS.refuse_foreign(args, args.model, "train")
    device(args.device)
    kind = task_of(args.model)
    if kind != "classification" and str(args.data).startswith(("hf:", "wds:")):
        raise UsageError(
            f"{args.model} is a {kind} model: it trains on its folder layout (README, Train); hf: and wds: data "
            "are for classification"
        )
    settings = tasks.RunSettings(
        data=args.data,
        model=args.model,
        output=args.output or f"runs/{args.model}",
        init=args.init,
        device=args.device,
        seed=args.seed,
        amp=args.amp,
        compile=args.compile,
        custom_backward=args.custom_backward,
        channels_last=not args.no_channels_last,
        progress=not args.no_progress,
        stop_after=args.stop_after,
        eval_every=args.eval_every,
        log_every=args.log_every,
        grad_accum_steps=args.grad_accum_steps,
        grad_checkpointing=args.grad_checkpointing,
        train_split=getattr(args, "train_split", None),
        val_split=getattr(args, "val_split", None),
        image_column=getattr(args, "image_column", None),
        label_column=getattr(args, "label_column", None),
        streaming=getattr(args, "streaming", False),
        log=args.log,
    )
    if args.num_workers is not None:
        settings.num_workers = args.num_workers
    records = tasks.train(settings, _recipe(args, kind), force=args.force)
    _summary(settings.output, records)
    return 0


def _recipe_batch_sizes() -> str:
    """Each recipe's batch size, read from the recipes themselves."""
    sizes = [f"classification {name} {recipe.batch_size}" for name, recipe in RECIPES.items()]
    sizes += [f"segmentation {head} {settings['batch_size']}" for head, settings in SEGMENTATION_HEADS.items()]
    detection = [kind for kind in TASKS if kind not in ("classification", "segmentation")]
    sizes += [f"{kind} {TASKS[kind].load('recipe')().batch_size}" for kind in detection]
    return ", ".join(sizes)


def _recipe(args: argparse.Namespace, kind: str) -> object:
    """The task's recipe (its class from the task table) with the settings the command line gave."""
    from ..task_table import task

    settings = {"batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay}
    for dest, (_, tasks) in FLAGS.flags.items():
        if kind in tasks and dest not in RUN_FLAGS:
            value = getattr(args, dest)
            settings[RECIPE_FIELDS.get(dest, dest)] = RECIPE_VALUES[dest](value) if dest in RECIPE_VALUES else value
    return task(kind).load("recipe").preset(settings.pop("name", None), **settings)


def _summary(output: str, records: list[dict]) -> None:
    """The last round's figures (in last.safetensors) and, where another round scored higher, the best one's (in
    best.safetensors)."""
    if not records or int(os.environ.get("RANK", "0")) != 0:  # torchrun's other processes stay quiet
        return
    last = records[-1]
    metrics = [k for k in ("top1", "mIoU", "AP", "mask_AP") if k in last]
    shown = [f"{k} {last[k]:.2f}" if isinstance(last[k], float) else f"{k} undefined" for k in metrics]
    line = f"done: {output} ({', '.join(shown) or 'no evaluation yet'} after {_round(last)}: last.safetensors"
    key = metrics[0] if metrics else None
    scored = [r for r in records if isinstance(r.get(key), float)]
    best = max(scored, key=lambda r: r[key]) if scored else None
    ended = last.get(key)
    if best is not None and best is not last and (not isinstance(ended, float) or best[key] > ended):
        line += f"; best {key} {best[key]:.2f} after {_round(best)}: best.safetensors"
    print(line + ")")


def _round(record: dict) -> str:
    return f"epoch {record['epoch']}" if "iteration" not in record else f"iteration {record['iteration']}"
