"""int8 inference on x86 CPUs: post-training quantization through PyTorch 2 export quantization (``torch.export``,
then torchao's ``prepare_pt2e`` / ``convert_pt2e`` with the x86 Inductor quantizer) and inductor's int8 kernels.

The model is folded first (``fuse``): the pooling mixer is then one statistics pass and one pooling-and-blend pass,
which stays in float32 (its per-sample scale ``ls * g / sigma`` and the residual stream need the range), as do the
norms and the classifier head (its error goes straight into the logits, and it costs nothing). The convolutions and
the channel MLP run in int8 with per-channel weight scales and calibrated per-tensor activation scales. The MLP is
written as token-wise linear layers on the channels-last map (the same products as its 1x1 convolutions) because the
quantizer fuses GELU into a linear layer's int8 kernel but not into a convolution's, and that GELU would otherwise
be a float32 pass over the widest tensor of the block.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..errors import ConfigError, UsageError
from ..models.metaformer import MetaFormer
from ..models.pretrained import Recorded
from .apply import fuse, swap_modules

CL = torch.channels_last
# Kept in float32: the classifier (an error there is an error in the logits, and it is one small product).
KEEP_FLOAT = ("head",)


def int8_unsupported_reason() -> str | None:
    """Why int8 inference cannot run well here, or None when it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"int8 inference runs on x86 CPUs (oneDNN's VNNI/AMX kernels); this machine is {platform.machine()}"
    if not torch.cpu._is_vnni_supported():
        return (
            "this CPU has no VNNI or AMX int8 instructions, where int8 would be emulated and slower than float32; "
            "use --dtype bfloat16 or float32"
        )
    try:
        with _quiet():
            import torchao  # noqa: F401
    except ImportError:
        return "int8 inference needs torchao: pip install 'metaformer[int8]'"
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what torchao's import and inductor's int8 lowering print for their own developers (deprecations of
    their internals, a CUDA probe on a CPU machine): a user can do nothing about them."""
    loggers = [logging.getLogger(name) for name in ("torch.utils._pytree", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def quantization_form(model: MetaFormer) -> nn.Module:
    """The folded float32 model in the form the quantizer sees (the table's int8 rows): same outputs as ``model``
    (to rounding)."""
    folded = fuse(model)
    swap_modules(folded, "int8")
    return folded


class Int8MetaFormer(Recorded, nn.Module):
    """What ``quantize`` returns: the int8 program of a classifier, compiled by inductor on the first call (about
    half a minute on two cores, once per process and image size; the batch size may vary, though a batch of one
    compiles once more, PyTorch specialising the size 1). Takes float32 pixels as the float model does and returns
    float32 logits."""

    input_dtype = torch.float32
    is_quantized = True

    def __init__(self, program: nn.Module, model: MetaFormer, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.program = program
        self.config = model.config
        self.pretrained_cfg = model.pretrained_cfg
        self.image_size = image_size
        self._num_classes = model.num_classes
        self._compiled: nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def train(self, mode: bool = True) -> Int8MetaFormer:
        if mode:
            raise ConfigError("an int8 model is for inference; train the float model and quantize it again")
        self.training = False  # the exported program has no modes to switch
        return self

    def _apply(self, fn, recurse: bool = True) -> nn.Module:  # noqa: ANN001
        probe = fn(torch.zeros(1))
        if probe.device.type != "cpu" or probe.dtype != torch.float32:
            raise ConfigError(
                f"an int8 model stays on the CPU and takes float32 pixels (asked for {probe.dtype} on "
                f"{probe.device.type}); quantize runs on x86 CPUs only"
            )
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ConfigError(
                f"this int8 model was calibrated and exported at {self.image_size[0]}x"
                f"{self.image_size[1]}; got images of {x.shape[-2]}x{x.shape[-1]}: quantize again at "
                "that size"
            )
        if self._compiled is None:
            self._compiled = torch.compile(self.program)
        x = x.float().contiguous(memory_format=CL)
        torch._dynamo.mark_dynamic(x, 0)  # one program for every batch size, not one compile each
        import torch._inductor.config as inductor_config  # inductor is imported only when an int8 model runs

        # int8 kernels need the weights folded in as constants and prepacked: freezing, for this program only
        with torch.no_grad(), _quiet(), inductor_config.patch(freezing=True):
            return self._compiled(x)


def _batches(images: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    if not batches or any(b.ndim != 4 or b.shape[1] != 3 or not b.is_floating_point() or not len(b) for b in batches):
        raise UsageError(
            "calibration images must be float tensors [N, 3, H, W] (processed pixels, as the model "
            "takes them), or a non-empty list of such batches"
        )
    sizes = {tuple(b.shape[-2:]) for b in batches}
    if len(sizes) > 1:
        raise UsageError(f"calibration batches must share one image size; got {sorted(sizes)}")
    return [b.float().cpu().contiguous(memory_format=CL) for b in batches]


def quantize(model: nn.Module, calibration_images: torch.Tensor | Iterable[torch.Tensor]) -> Int8MetaFormer:
    """An int8 copy of a MetaFormer classifier for x86 CPUs with VNNI or AMX, calibrated on ``calibration_images``
    (processed pixels ``[N, 3, H, W]``, or a list of such batches; a few hundred images of the data it will see).

    Weights: int8, symmetric, one scale per output channel. Activations: uint8 with one scale per tensor, from the
    calibration's observed ranges. Norms, the pooling mixer's blend, the residual stream and the head stay in
    float32. The model runs at the calibration's image size, at any batch size.
    """
    if type(model) is not MetaFormer:
        raise UsageError(f"quantize takes a plain MetaFormer classifier (not fused), got {type(model).__name__}")
    batches = _batches(calibration_images)  # the caller's arguments first, whatever the CPU
    reason = int8_unsupported_reason()
    if reason is not None:
        raise UsageError(reason)
    converted, example = calibrated_program(model, batches)
    return Int8MetaFormer(converted, model, tuple(example.shape[-2:]))


def calibrated_program(model: MetaFormer, batches: list[torch.Tensor]) -> tuple[nn.Module, torch.Tensor]:
    """The quantized program before inductor lowers it to int8 kernels: run as it is, each int8 operation is its
    float reference (quantize, dequantize, compute), so it gives the int8 model's numbers to rounding on any CPU;
    ``quantize`` wraps it, and the tests and benchmarks measure agreement with it where VNNI is missing."""
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    form = quantization_form(model).float().cpu()  # a folded copy: the caller's model is left as it was
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    for name in KEEP_FLOAT:
        quantizer.set_module_name_qconfig(name, None)
    example = batches[0][:2] if batches[0].shape[0] >= 2 else batches[0].expand(2, -1, -1, -1)
    with torch.no_grad():
        program = torch.export.export(
            form, (example.contiguous(memory_format=CL),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
        ).module()
        prepared = prepare_pt2e(program, quantizer)
        for batch in batches:
            prepared(batch)
        converted = convert_pt2e(prepared)
    return converted, example


__all__ = ["Int8MetaFormer", "calibrated_program", "int8_unsupported_reason", "quantization_form", "quantize"]
