"""Flags shared by several commands, each defined once so it means the same everywhere, and the refusal of flags
that the chosen model's task does not use."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..models.zoo import get_spec, list_models
from ..task_table import TASKS, task, tasks_taking

if TYPE_CHECKING:  # the parser imports no torch: `metaformer --help`, `list` and `info` start in well under a second
    import torch

    from ..checkpoints import Checkpoint

DETECTION = tuple(kind for kind, entry in TASKS.items() if entry.command == "detect")
COMPILE_HELP = "torch.compile the model (with freezing): 10-30 s to start, then up to ~10%% faster on CPU"


def _integer_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


positive = _integer_at_least(1, "a positive integer")
non_negative = _integer_at_least(0, "an integer >= 0")


def _number_within(low: float, high: float, what: str, *, above_low: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (low < value if above_low else low <= value) or not value <= high:  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


probability = _number_within(0.0, 1.0, "a probability from 0 to 1")
non_negative_float = _number_within(0.0, float("inf"), "a number >= 0")
positive_float = _number_within(0.0, float("inf"), "a number > 0", above_low=True)


def add_scale(flags: TaskFlags, parser: argparse.ArgumentParser, help: str) -> None:
    """Semantic FPN's resize scale (long and short side), on train and eval."""
    flags.add(parser, "--scale", type=positive, nargs=2, metavar=("LONG", "SHORT"), help=help)


def device(name: str) -> str:
    """A device PyTorch knows and this machine has: cpu, cuda or cuda:N."""
    import torch

    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: use cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but PyTorch sees no CUDA GPU here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return name


def add_device(parser: argparse.ArgumentParser, under_torchrun: bool = False) -> None:
    extra = " (under torchrun: each process takes its local GPU)" if under_torchrun else ""
    parser.add_argument("--device", default="cpu", help=f"cpu, cuda or cuda:N (default cpu){extra}")


def add_batch_size(parser: argparse.ArgumentParser, default: int | None, what: str = "") -> None:
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument(
        "--batch-size", type=positive, default=default, help=f"images per batch, per process{shown}{what}"
    )


def add_num_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-workers",
        type=non_negative,
        default=None,
        help="data-loading processes per process (default: up to 4, at most the cores)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_weights(parser: argparse.ArgumentParser, pretrained: bool = True) -> None:
    parser.add_argument("--checkpoint", help="weights: ours, official .pth.tar, timm, Hugging Face folder, mmseg/mmdet")
    if pretrained:
        parser.add_argument(
            "--pretrained",
            action="store_true",
            help="download released weights: the model's "
            "first (ImageNet-1k at 224), or the release its name carries, as timm spells it "
            "(--model caformer_s18.sail_in22k_ft_in1k_384; `metaformer info` lists them)",
        )


def add_fuse(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-fuse", action="store_true", help="run the plain model, not the folded (fused) one")


def task_of(model: str) -> str:
    return get_spec(model.partition(".")[0]).task  # a name may carry a release tag: caformer_s18.sail_in1k_384


def given(value: object) -> bool:
    """Whether a flag that defaults to None (or False, for switches) was given: ``--mixup 0`` was."""
    return value is not None and value is not False


class TaskFlags:
    """Flags that only some tasks use (the task table says which); one given for a model of another task is refused,
    naming both."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.flags: dict[str, tuple[str, tuple[str, ...]]] = {}  # dest: (flag, tasks)

    def add(self, parser: argparse.ArgumentParser, flag: str, **kwargs: object) -> None:
        tasks = tasks_taking(flag, self.command)
        if not tasks:
            raise AssertionError(f"{flag} of {self.command} is in no task's row of the task table")
        kwargs.setdefault("default", False if kwargs.get("action") == "store_true" else None)
        action = parser.add_argument(flag, **kwargs)
        self.flags[action.dest] = (flag, tasks)

    def refuse_foreign(self, args: argparse.Namespace, model: str, command: str) -> None:
        kind = task_of(model)
        foreign = [
            (flag, tasks)
            for dest, (flag, tasks) in self.flags.items()
            if given(getattr(args, dest, None)) and kind not in tasks
        ]
        if foreign:
            flags = ", ".join(flag for flag, _ in foreign)
            users = "; ".join(
                f"{flag}: {' and '.join(sorted({task(t).title for t in tasks}))}" for flag, tasks in foreign
            )
            raise UsageError(
                f"{flags} {'is' if len(foreign) == 1 else 'are'} not used by {command} for {model}, a "
                f"{task(kind).title} model (settings of other tasks: {users})"
            )


FROM_CHECKPOINT = " (default: the model the --checkpoint records: ours, timm and Hugging Face folders)"


def model_from_checkpoint(args: argparse.Namespace) -> None:
    """--model, when not given, from the --checkpoint that records it (read once: the command builds from the
    opened file)."""
    from ..api import infer_model_name
    from ..checkpoints import open_checkpoint

    if args.model:
        return
    if not args.checkpoint:
        raise UsageError("pass --model NAME (see `metaformer list`), or a --checkpoint that records its model")
    args.checkpoint = open_checkpoint(args.checkpoint)
    args.model = infer_model_name(args.checkpoint)


def check_recorded_model(checkpoint: Checkpoint, model: str) -> None:
    """A --model other than the one the file records is refused, naming the file's: a silent wrong result otherwise
    where two models share a layout (PoolFormer-S12 and its identity-mixer ablation)."""
    recorded = checkpoint.metadata.get("model")
    if recorded and recorded != model and recorded in list_models():
        raise UsageError(
            f"{checkpoint.source} holds {recorded}, not {model}: pass --model {recorded}, or leave --model out "
            "(the file says which model it is)"
        )


def needs_trained_weights(args: argparse.Namespace, kind: str) -> None:
    """Inference and evaluation run a model whose every layer is trained: --checkpoint, or --pretrained where a
    release exists (classifiers)."""
    pretrained = getattr(args, "pretrained", False)
    if pretrained and args.checkpoint:
        raise UsageError("pass either --checkpoint FILE or --pretrained, not both")
    if kind != "classification" and (pretrained or not args.checkpoint):
        raise UsageError(
            f"{args.model} is a {task(kind).title} model with no released weights here (--pretrained "
            "would initialise only its backbone): pass --checkpoint FILE, trained by `metaformer "
            "train` or an mmseg/mmdet checkpoint"
        )
    if not (pretrained or args.checkpoint):
        raise UsageError("pass --checkpoint FILE (any supported format) or --pretrained")


def expect_task(model: str, command: str, why: str = "") -> str:
    """The task of ``model``, which ``command`` (predict, segment, detect, benchmark, cam) must run; otherwise the
    one command that runs it."""
    kind = task_of(model)
    runs = [k for k, entry in TASKS.items() if entry.command == command]
    if command in ("benchmark", "cam", "embed"):
        runs = ["classification"]
    if kind not in runs:
        right = task(kind).command
        advice = why or f"use `metaformer {right}`, which runs {task(kind).title} models"
        raise UsageError(f"{command} does not take {model}, a {task(kind).title} model: {advice}")
    return kind


def load_trained(args: argparse.Namespace, kind: str, *, fused: bool = True, **overrides: object) -> torch.nn.Module:
    """The model ``args`` name with every layer trained (refused otherwise), on --device; folded in place when
    ``fused`` and not --no-fuse (Grad-CAM and export need the plain modules): one build, one copy of the weights."""
    from ..api import create_model
    from ..checkpoints import open_checkpoint
    from ..fast import fuse

    needs_trained_weights(args, kind)
    given = {k: v for k, v in overrides.items() if v is not None}
    checkpoint = open_checkpoint(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None:
        check_recorded_model(checkpoint, args.model)
    model = create_model(
        args.model, pretrained=getattr(args, "pretrained", False), checkpoint=checkpoint, strict=True, **given
    ).eval()
    model = fuse(model, inplace=True) if fused and not getattr(args, "no_fuse", False) else model
    return model.to(device(args.device))


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """No file is overwritten without --force."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing[:3])} exist(s); pass --force to overwrite, or choose another --output"
        )


def output_folder(path: str | Path) -> Path:
    """``--output``, created if needed, or a one-line error in the command line's terms."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {path} is a file; --output names a folder for the pictures")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output {path}: cannot create this folder ({error.strerror or error})") from error
    if not os.access(path, os.W_OK):
        raise UsageError(f"--output {path}: this folder is not writable; choose another --output")
    return path


DTYPES = ("float32", "bfloat16", "float16", "int8")
DTYPE_HELP = (
    "float32 (default); bfloat16: ~1.6x faster on CPUs with AVX-512 BF16 or AMX; float16: half precision, for "
    "GPUs (CPUs without AVX-512 FP16 or AMX-FP16 run it slower than float32); int8: post-training quantization for "
    "x86 CPUs with VNNI or AMX (needs metaformer[int8]; calibrates, then compiles for about a minute)"
)
CALIBRATION_IMAGES = 128


def add_dtype(parser: argparse.ArgumentParser, calibration: str | None) -> None:
    """--dtype, and where int8 takes its calibration images (``calibration`` says what the default is)."""
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    if calibration is not None:
        parser.add_argument("--calibration", nargs="+", metavar="PATH", help=calibration_help(calibration))


def calibration_help(default: str) -> str:
    return (
        f"--dtype int8: image files or folders; {CALIBRATION_IMAGES} of their images, spread over them, set the "
        f"activation ranges (default: {default})"
    )


def check_inference(args: argparse.Namespace) -> None:
    """Refuse what ``fast.prepare`` cannot honour (int8 on a GPU, int8 unfolded, ...) before any model is built."""
    import torch

    from ..fast.prepare import check_options

    try:
        torch.device(args.device)
    except RuntimeError:
        device(args.device)  # the usual message for a name that is no device
    check_options(
        dtype=args.dtype,
        fuse=not getattr(args, "no_fuse", False),
        compile=getattr(args, "compile", False),
        device=args.device,
        calibration=bool(getattr(args, "calibration", None)),
    )


def calibration_pixels(paths: Iterable[str], processor: object, batch_size: int = 32) -> list[torch.Tensor]:
    """Processed batches of the first ``CALIBRATION_IMAGES`` readable images of ``paths``."""
    import torch

    from ..data import ImageLoadError, find_images

    files = find_images(list(paths))
    step = max(1, len(files) // CALIBRATION_IMAGES)  # spread over the folders (classes), not the first ones
    pixels: list[torch.Tensor] = []
    for path in files[::step] + [f for i, f in enumerate(files) if i % step]:  # the rest stand in for unreadables
        if len(pixels) == CALIBRATION_IMAGES:
            break
        try:
            pixels.append(processor.transform(path))
        except ImageLoadError:
            continue  # the run itself reports unreadable files
    if not pixels:
        raise UsageError(f"--dtype int8: no readable image to calibrate on in {' '.join(map(str, paths))}")
    return list(torch.stack(pixels).split(batch_size))


def int8_model(
    model: torch.nn.Module, batches: list[torch.Tensor], source: str, *, advise: bool = True
) -> torch.nn.Module:
    from ..fast import quantize

    count = sum(len(b) for b in batches)
    print(
        f"int8: calibrating on {count} images of {source}; the first batch compiles (about a minute)",
        file=sys.stderr,
        flush=True,
    )
    if count < 32 and advise:
        print(
            f"int8: {count} calibration image(s) give unsteady activation ranges; pass --calibration with a few "
            "hundred images like the ones classified",
            file=sys.stderr,
            flush=True,
        )
    return quantize(model, batches)
