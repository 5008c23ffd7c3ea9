"""``prepare``: a loaded model made ready to run for inference as asked (folded, in a low precision, quantized,
compiled), for the command line and the service alike."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UsageError
from .apply import fuse as fold
from .int8 import int8_unsupported_reason, quantize
from .onednn import native_bfloat16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": None}


def check_options(
    *, dtype: str = "float32", fuse: bool = True, compile: bool = False, device: str = "cpu", calibration: bool = False
) -> None:
    """Refuse what ``prepare`` cannot honour, before any model is built or any weights load. ``calibration``: whether
    calibration images were given."""
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if calibration and dtype != "int8":
        raise UsageError("--calibration sets int8's activation ranges; it needs --dtype int8 (dtype='int8')")
    if dtype == "bfloat16" and torch.device(device).type == "cpu" and not native_bfloat16():
        warnings.warn(
            "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX): bfloat16 runs emulated, several times "
            "slower than float32 (7x measured on an AVX2 AMD EPYC); float32 is the faster choice here",
            stacklevel=1,  # one place: said once however many callers check the same options
        )
    if dtype != "int8":
        return
    if torch.device(device).type != "cpu":
        raise UsageError("--dtype int8 runs on x86 CPUs (oneDNN's int8 kernels); on a GPU use --dtype bfloat16")
    if not fuse:
        raise UsageError("--dtype int8 quantizes the folded model; --no-fuse cannot apply to it (fuse=False)")
    if compile:
        raise UsageError("--dtype int8 is always compiled (inductor's int8 kernels); drop --compile")
    reason = int8_unsupported_reason()
    if reason is not None:
        raise UsageError(f"--dtype int8: {reason}")


def prepare(
    model: nn.Module,
    *,
    dtype: str = "float32",
    fuse: bool = True,
    compile: bool = False,
    device: str | torch.device = "cpu",
    calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """``model`` for inference: folded (``fuse``, unless False), cast to ``dtype`` (float32, bfloat16, float16), or
    quantized to int8 with ``calibration`` (processed pixel batches); compiled with inductor's freezing when
    ``compile``; on ``device``. ``inplace`` folds the model itself rather than a copy (it is then spent)."""
    check_options(dtype=dtype, fuse=fuse, compile=compile, device=str(device), calibration=calibration is not None)
    model = model.eval()
    if dtype == "int8":
        if calibration is None:
            raise UsageError("int8 needs calibration images (a few hundred processed images like the ones it will see)")
        return quantize(model, calibration)
    if fuse:
        model = fold(model, inplace=inplace)
    model = model.to(device, DTYPES[dtype])
    return compiled(model) if compile else model


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` for inference: inductor's freezing folds the weights in as constants and prepacks them."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # a process-wide setting; this process only ever runs inference after this
    return torch.compile(model, dynamic=False)
