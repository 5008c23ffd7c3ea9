"""Forward-pass throughput and peak memory of a model, as ``metaformer benchmark`` reports them."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time

import torch
from torch import nn

from .apply import is_fused

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident memory on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes, Linux KiB


@torch.inference_mode()
def time_forward(
    model: nn.Module,
    batch_size: int = 32,
    image_size: int = 224,
    device: str = "cpu",
    dtype: str = "float32",
    warmup: int = 3,
    iters: int = 10,
    channels_last: bool = True,
) -> dict:
    """Median images/s over ``iters`` timed forward passes after ``warmup`` untimed ones."""
    target = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(target, memory_format=memory_format)
    images = torch.randn(batch_size, 3, image_size, image_size, device=target).contiguous(memory_format=memory_format)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    half = dtype in ("bfloat16", "float16")  # int8 programs take float32 pixels, as float32 models do
    autocast = torch.autocast(target.type, dtype=DTYPES[dtype]) if half else contextlib.nullcontext()
    if is_fused(model) and half:
        # The folded model has no training to keep in float32: it runs in the low precision throughout.
        model, images, autocast = model.to(DTYPES[dtype]), images.to(DTYPES[dtype]), contextlib.nullcontext()
    times = []
    with autocast:
        for step in range(warmup + iters):
            _sync(target)
            start = time.perf_counter()
            model(images)
            _sync(target)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "batch_size": batch_size,
        "image_size": image_size,
        "device": str(target),
        "dtype": dtype,
        "images_per_s": batch_size / median,
        "median_batch_ms": median * 1e3,
        "peak_memory_mib": peak_memory_mib(target),
    }
