"""Parameter and MAC counts, counted the way the paper's tables (fvcore) count them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


def _sdpa_on_cpu(query: torch.Size, key: torch.Size, value: torch.Size, *args: object, **kwargs: object) -> int:
    return sdpa_flop_count(query, key, value)


# Attention on the CPU runs through this kernel, which torch's counter only knows from 2.15 on: without it the
# attention products would be missing from the hybrids' and CAFormer's counts on older releases.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_on_cpu}


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts; the paper reports the frozen random matrices separately."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def count_macs(model: nn.Module, image_size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a square image (default: the model's ``image_size``).

    As fvcore (which the paper used): convolutions, linear layers and matrix products, plus normalisation layers
    at 5 operations per element with an affine transform (4 without; 2 and 1 for BatchNorm, counted in eval mode).
    The channel LayerNorm is not counted either, nor the Baselines' norms: the official ones are built of
    elementwise operations, which fvcore skips. Pooling, activations and elementwise sums are not counted.
    """
    norm_ops = 0

    def count_norm(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal norm_ops
        affine = getattr(module, "weight", None) is not None
        if isinstance(module, nn.BatchNorm2d):
            norm_ops += output.numel() * (2 if affine else 1)
        else:
            norm_ops += output.numel() * (5 if affine else 4)

    # The Baselines' bias-free one-group norm is the official LayerNormGeneral, elementwise operations too.
    counted = [
        m for m in model.modules() if isinstance(m, _NORMS) and not (isinstance(m, nn.GroupNorm) and m.bias is None)
    ]
    hooks = [m.register_forward_hook(count_norm) for m in counted]
    config = model.config
    size = image_size or config.image_size
    parameter = next(model.parameters())
    image = torch.zeros(1, config.in_chans, size, size, device=parameter.device, dtype=parameter.dtype)
    training = model.training
    model.eval()  # counting must not update BatchNorm statistics
    try:
        with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter, torch.no_grad():
            model(image)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + norm_ops
