"""``metaformer list``, ``info``, ``convert`` and ``benchmark``: the zoo, its files and its speed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import UsageError
from ..models.pretrained import releases_of, split_tag
from ..models.zoo import get_spec, list_models
from ..task_table import TASKS
from .options import (
    COMPILE_HELP,
    add_batch_size,
    add_device,
    add_dtype,
    add_fuse,
    check_inference,
    device,
    expect_task,
    int8_model,
    positive,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the model names")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.add_argument(
        "--task",
        choices=list(TASKS),
        help="only the models of this task",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=list_command)

    p = sub.add_parser("info", help="a model's configuration, parameters and MACs")
    p.add_argument("name")
    p.add_argument(
        "--image-size", type=positive, help="count MACs at this input size (classifiers; default: the model's)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=info)

    p = sub.add_parser("convert", help="convert weights between our, timm's, Hugging Face's and the official format")
    p.add_argument(
        "src", help="checkpoint file, or a Hugging Face or timm folder; any supported format (mmseg/mmdet too)"
    )
    p.add_argument(
        "dst",
        help="output: .safetensors (ours, timm), .pth/.pth.tar (official, timm), or a folder: hf (a folder "
        "transformers loads) or timm (model.safetensors and config.json, a folder timm builds from)",
    )
    p.add_argument(
        "--to",
        required=True,
        choices=["safetensors", "timm", "hf", "official"],
        help="safetensors: ours, with the model's name, configuration and classes (any model); timm: timm's keys, "
        "a file or a folder; hf: a Hugging Face folder; official: the papers' release layout",
    )
    p.add_argument("--model", help="model name, when it cannot be told from the file")
    p.add_argument("--force", action="store_true", help="overwrite an existing destination")
    p.set_defaults(run=convert)

    p = sub.add_parser("benchmark", help="a classifier's forward images/s and peak memory (random input)")
    p.add_argument("--model", required=True)
    add_batch_size(p, 32)
    p.add_argument("--image-size", type=positive, default=224)
    add_device(p)
    add_dtype(p, calibration=None)
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    p.add_argument("--iters", type=positive, default=10)
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW contiguous tensors")
    p.add_argument("--json", action="store_true")
    add_fuse(p)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(run=benchmark)


def list_command(args: argparse.Namespace) -> int:
    rows = [get_spec(name) for name in list_models(args.filter, task=args.task)]
    if not rows:
        print(f"no model name contains {args.filter!r}; `metaformer list` shows them all", file=sys.stderr)
        return 1
    releases = {s.name: releases_of(s.name) for s in rows}
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "task": s.task,
                        "description": s.description,
                        "weights": next((r.url or r.hf_hub_id for r in releases[s.name]), None),
                        "releases": [r.name for r in releases[s.name]],
                    }
                    for s in rows
                ]
            )
        )
        return 0
    width = max(len(s.name) for s in rows)
    for spec in rows:
        count = len(releases[spec.name])
        mark = f"{count} release{'s' if count > 1 else ''}" if count else ""
        print(f"{spec.name:<{width}}  {mark:<10}  {spec.description}")
    return 0


def model_info(name: str, image_size: int | None = None) -> dict:
    """What ``info`` shows: the architecture, its counts (from ``counts.json``: no torch for a zoo model at its own
    size), its default evaluation record, its releases and, for a classifier, the official training settings."""
    from ..counts import measure, stored_counts
    from ..models.pretrained import default_cfg

    spec = get_spec(name)
    if image_size and spec.task != "classification":
        raise UsageError(f"--image-size counts a classifier's MACs; {name} is a {spec.task} model")
    counts = stored_counts(name) if not image_size or image_size == spec.config.image_size else None
    counts = counts or measure(name, image_size)
    result = {
        "name": name,
        "description": spec.description,
        "task": spec.task,
        "config": spec.config.to_dict(),
        **counts,
    }
    if spec.task != "classification":
        return {**result, "backbone": spec.backbone, "num_classes": spec.default_classes}
    from ..tasks.classification.recipe import official

    arch, release = split_tag(name)  # a tag shows its release's evaluation, size and classes
    size = counts["input"]["image_size"]
    record = release if release is not None else default_cfg(arch, size, spec.config.in_chans)
    result["config"].update(image_size=size, num_classes=record.num_classes)
    return {
        **result,
        "image_size": size,
        "pretrained_cfg": record.to_dict(),
        "training": dataclasses.asdict(official(arch)),
        "pretrained": [r.name for r in releases_of(arch)],
    }


def info(args: argparse.Namespace) -> int:
    result = model_info(args.name, args.image_size)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['name']}: {result['description']}")
    frozen = f" (+{result['frozen_params'] / 1e6:.3f} M frozen)" if result["frozen_params"] else ""
    print(f"  params      {result['params'] / 1e6:.3f} M{frozen}")
    if result["macs"] is None:
        print(f"  task        {result['task']} ({result['num_classes']} classes) on {result['backbone']}")
        print(f"  input       {', '.join(f'{k} {v}' for k, v in result['input'].items())}")
        return 0
    record = result["pretrained_cfg"]
    print(f"  MACs        {result['macs'] / 1e9:.3f} G at {result['image_size']}x{result['image_size']}")
    print(
        f"  eval        crop_pct {record['crop_pct']}{' (squash)' if record['crop_mode'] == 'squash' else ''}, "
        f"{record['interpolation']}, mean {record['mean']}, "
        f"std {record['std']}"
    )
    for key, value in result["config"].items():
        print(f"  {key:<17} {value}")
    training = result["training"]
    print(
        f"  training    {training['optimizer']}, lr {training['base_lr']:g} x batch/1024, warm-up "
        f"{training['warmup_epochs']:g} epochs, drop path {training['drop_path']:g}, head dropout "
        f"{training['head_dropout']:g}"
    )
    for release in releases_of(split_tag(result["name"])[0]):
        top1 = f"top-1 {release.top1}%" if release.top1 is not None else f"{release.num_classes} classes"
        print(f"  pretrained  {release.name} ({release.image_size}px, {top1}; {release.hf_hub_id or release.url})")
    return 0


def convert(args: argparse.Namespace) -> int:
    from ..api import convert_checkpoint

    to = {"safetensors": "metaformer"}.get(args.to, args.to)
    if Path(args.dst).exists() and not args.force:  # said with the flag; the library says overwrite=True
        raise FileExistsError(f"{args.dst} exists; pass --force to overwrite it, or choose another destination")
    out = convert_checkpoint(args.src, args.dst, to, model_name=args.model, overwrite=args.force)
    print(f"wrote {out} ({args.to} format)")
    return 0


def benchmark(args: argparse.Namespace) -> int:
    from ..api import create_model
    from ..fast import prepare
    from ..fast.benchmark import time_forward

    expect_task(args.model, "benchmark", "it times classifiers on random images")
    if args.dtype == "int8" and args.no_channels_last:  # the flags' conflict first, whatever this CPU can do
        raise UsageError(
            "--dtype int8 runs on channels-last maps (its program was exported so); drop --no-channels-last"
        )
    check_inference(args)
    target = device(args.device)
    model = create_model(args.model, image_size=args.image_size)
    if args.dtype == "int8":  # random weights and pixels: the timing does not depend on the ranges
        import torch

        pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        model = int8_model(model.eval(), [pixels], "random pixels", advise=False)
    else:
        model = prepare(model, fuse=not args.no_fuse, compile=args.compile, device=target, inplace=True)
    result = time_forward(
        model, args.batch_size, args.image_size, target, args.dtype, args.warmup, args.iters, not args.no_channels_last
    )
    result.update(model=args.model, fused=not args.no_fuse, compiled=args.compile or args.dtype == "int8")
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model}: {result['images_per_s']:.1f} images/s (batch {args.batch_size}, {args.image_size}px, "
            f"{target}, {args.dtype}), peak memory {result['peak_memory_mib']:.0f} MiB"
        )
    return 0
