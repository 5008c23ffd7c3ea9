"""``metaformer export``: a trained model as ONNX or a ``torch.export`` program, checked against PyTorch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MetaformerError, UsageError
from ..files import TEMPORARY_MARK, file_problem
from .options import FROM_CHECKPOINT, add_weights, load_trained, positive, refuse_existing, task_of

if TYPE_CHECKING:
    import torch

SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a classifier or Semantic FPN to ONNX (checked in ONNX Runtime) or a "
        "torch.export program (.pt2, or an AOTInductor package with --aot)",
    )
    p.add_argument(
        "model",
        metavar="NAME",
        nargs="?",
        help="the model's name (see `metaformer list`)" + FROM_CHECKPOINT,
    )
    add_weights(p)
    p.add_argument("--format", required=True, choices=list(SUFFIXES), help="onnx or pt2")
    p.add_argument("--output", required=True, help="the file to write (.onnx or .pt2)")
    p.add_argument("--opset", type=positive, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--static",
        action="store_true",
        help="fix the batch and image size to the example's (default: both dynamic, sides multiples of 32)",
    )
    p.add_argument("--aot", action="store_true", help="pt2: compile an AOTInductor package for this machine")
    p.add_argument(
        "--image-size",
        type=positive,
        help="the example's side (default: the model's evaluation size; segmentation 512)",
    )
    p.add_argument("--batch-size", type=positive, default=1, help="the example's batch (what --static fixes)")
    p.add_argument("--check-image", help="a photo to compare the export with PyTorch on (default: random pixels)")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    p.set_defaults(run=export, device="cpu")


def _refuse_mismatched(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    if output.suffix.lower() != SUFFIXES[args.format]:
        raise UsageError(f"--output {output}: --format {args.format} is written to a {SUFFIXES[args.format]} file")
    if args.opset is not None and args.format != "onnx":
        raise UsageError("--opset is an ONNX setting; it does not apply to --format pt2")
    if args.aot and args.format != "pt2":
        raise UsageError("--aot compiles a torch.export program; use it with --format pt2")
    if args.opset is not None:
        from ..fast.export import onnx_opsets

        opsets = onnx_opsets()
        if args.opset not in opsets:
            raise UsageError(f"--opset {args.opset}: the exporter writes opsets {opsets.start} to {opsets.stop - 1}")
    problem = file_problem(args.check_image) if args.check_image else None
    if problem:
        raise UsageError(f"--check-image {args.check_image}: {problem}")
    refuse_existing([output], args.force)
    return output


def _example(args: argparse.Namespace, model: torch.nn.Module, kind: str) -> tuple[torch.Tensor, str]:
    """The input to trace and check with: the photo, preprocessed as the model is evaluated, or random pixels."""
    import torch

    from ..processor import ImageProcessor

    side = args.image_size or (512 if kind == "segmentation" else model.config.image_size)
    if args.check_image:
        if kind == "segmentation":
            processor = ImageProcessor(size=side, crop_pct=1.0)
        else:
            record = model.pretrained_cfg
            processor = ImageProcessor(size=side, crop_pct=record.crop_pct, crop_mode=record.crop_mode)
        return processor([args.check_image]).expand(args.batch_size, -1, -1, -1).contiguous(), args.check_image
    generator = torch.Generator().manual_seed(0)
    return torch.randn(args.batch_size, 3, side, side, generator=generator), "random pixels"


def export(args: argparse.Namespace) -> int:
    from ..fast.export import ONNX_TOLERANCE, check_onnx, check_program, export_onnx, export_program

    kind = task_of(args.model)  # every task exports
    output = _refuse_mismatched(args)
    model = load_trained(args, kind, fused=False)  # exporters trace the plain modules
    example, seen = _example(args, model, kind)
    from ..fast.export import sizes_fixed

    side = "x".join(map(str, example.shape[-2:]))
    shape = "static" if args.static else f"dynamic batch, {side} pixels" if sizes_fixed(model, example) else (
        "dynamic batch and size"
    )  # fmt: skip
    # Written and checked under a temporary name, then renamed: a failed export never replaces a good file.
    written = output.with_name(f".{output.stem}{TEMPORARY_MARK}export{output.suffix}")
    try:
        if args.format == "onnx":
            export_onnx(model, written, example, static=args.static, opset=args.opset)
            difference = check_onnx(written, model, example).max_abs_diff
            runtime = "ONNX Runtime"
        else:
            export_program(model, written, example, static=args.static, aot=args.aot)
            difference = check_program(written, model, example, aot=args.aot)
            runtime = "the AOTInductor package" if args.aot else "the exported program"
        if not difference <= ONNX_TOLERANCE:  # NaN fails too
            raise MetaformerError(
                f"{runtime} differs from PyTorch by {difference:.3g} (over {ONNX_TOLERANCE:g}) on {seen}; "
                f"nothing was written to {output}"
            )
        os.replace(written, output)
    finally:
        written.unlink(missing_ok=True)
    print(
        f"wrote {output} ({args.format}, {shape}); {runtime} on {seen}: largest logit difference "
        f"{difference:.2e} (<= {ONNX_TOLERANCE:g})"
    )
    return 0
