"""Deterministic weights and inputs for the parity fixtures made with mmsegmentation and mmdetection.

The fixtures in ``tests/data/openmmlab/`` were made by running OpenMMLab's own modules with exactly these weights
(named as OpenMMLab names them) on exactly these inputs; the tests load the same weights into our models through
the checkpoint key maps and compare. Nothing here depends on OpenMMLab.
"""

from __future__ import annotations

import math
import zlib

import torch


def reference_weights(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A tensor for every name: seeded by the name, scaled to keep activations of order one."""
    weights = {}
    for key in sorted(shapes):
        shape = list(shapes[key])
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("running_mean"):
            value = torch.randn(shape, generator=generator) * 0.1
        elif len(shape) == 1 and key.endswith("weight"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) <= 1:
            value = torch.randn(shape, generator=generator) * 0.1
        else:
            value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        weights[key] = value
    return weights


def reference_inputs(shapes: list[list[int]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]
