"""oneDNN on x86 CPUs: packed convolution weights and the convolution calls with fused epilogues that ``fuse()``
uses (inductor's own kernels), and when they apply."""

from __future__ import annotations

import platform
from collections import OrderedDict

import torch
from torch import nn

# oneDNN's names for the activations it can run inside a convolution's epilogue ("none" selects the exact erf GELU).
ONEDNN_ACT = {nn.GELU: ("gelu", "none"), nn.ReLU: ("relu", ""), nn.SiLU: ("swish", "")}
# The fused-epilogue operators are inductor's x86 kernels; other builds and machines take the portable form.
_ONEDNN = (
    torch.backends.mkldnn.is_available()
    and platform.machine().lower() in ("x86_64", "amd64")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
    and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
)
# bf16 only where the CPU has native bf16 instructions (AVX-512 BF16, AMX); elsewhere oneDNN would emulate it.
_ONEDNN_DTYPES = (
    (torch.float32, torch.bfloat16) if _ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)
)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere it is emulated, and slow."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing (torch 2.7 and later can tell; before, export traced through dynamo,
    which ``is_compiling`` sees)."""
    probe = getattr(torch.compiler, "is_exporting", None)
    return probe() if probe is not None else False


def is_tracing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing the forward, rather than eager mode running it."""
    return torch.compiler.is_compiling() or is_exporting()


def use_onednn(x: torch.Tensor) -> bool:
    # Under torch.compile or torch.export the portable form is traced instead: inductor makes the same epilogue
    # fusions itself, and an exported graph must not hold this build's private operators.
    # The oneDNN calls have no backward: an input that wants gradients takes the portable form too.
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype in _ONEDNN_DTYPES
        and not is_tracing()
        and not (x.requires_grad and torch.is_grad_enabled())
    )


class OneDnnWeight:
    """A convolution weight in oneDNN's blocked layout, reordered once per input shape rather than on every call.

    Unpacked, oneDNN reorders the weight inside each call: at batch 1 that costs as much as the last stage's GEMMs.
    The layout it picks depends on the input shape, so the last few shapes are kept. The copies follow the weight:
    moving, casting or ``load_state_dict`` drops them, and in-place edits through the parameter are seen by its
    version counter. Edits that bypass the counter (through ``.data``, or to tensors made under
    ``torch.inference_mode``) are not: a fused model is a snapshot, so change the original and fuse again. The copies
    are not in the state dict, and are not copied or pickled.
    """

    SHAPES = 2

    def __init__(self, padding: list[int], stride: list[int]) -> None:
        self.padding = padding
        self.stride = stride
        self.source: torch.Tensor | None = None  # held so that no other weight can take its memory while it is the key
        self.key: tuple = ()
        self.by_shape: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def __reduce__(self) -> tuple:
        return OneDnnWeight, (self.padding, self.stride)

    def clear(self) -> None:
        self.source, self.key = None, ()
        self.by_shape.clear()

    def __call__(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight.dtype, 0 if weight.is_inference() else weight._version)
        if key != self.key:
            self.clear()
            self.source, self.key = weight.detach(), key
        shape = tuple(x.shape)
        packed = self.by_shape.pop(shape, None)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(weight, self.padding, self.stride, [1, 1], 1, shape)
        self.by_shape[shape] = packed
        while len(self.by_shape) > self.SHAPES:
            self.by_shape.popitem(last=False)
        return packed


class Packing(nn.Module):
    """A module whose ``OneDnnWeight`` attributes are dropped when its weights are moved, cast or loaded."""

    def _clear_packed(self) -> None:
        for value in vars(self).values():
            if isinstance(value, OneDnnWeight):
                value.clear()

    def _apply(self, *args, **kwargs) -> nn.Module:
        self._clear_packed()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._clear_packed()
        super()._load_from_state_dict(*args, **kwargs)


def conv_pointwise(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: OneDnnWeight,
    attr: str = "none",
    algorithm: str = "",
) -> torch.Tensor:
    """``act(conv(x))`` through oneDNN with the weight packed for ``x``'s shape (``attr``: the epilogue)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed(weight, x), bias, packed.padding, packed.stride, [1, 1], 1, attr, [], algorithm
    )


def conv_add_(
    y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: OneDnnWeight
) -> torch.Tensor:
    """``y += conv(x)`` in one oneDNN call (the sum epilogue writes into ``y``)."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        y, x, packed(weight, x), bias, packed.padding, packed.stride, [1, 1], 1, "add", 1.0, None, [None], None
    )
