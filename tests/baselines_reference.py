"""A reading of the official MetaFormer Baselines' structure (sail-sg/metaformer, ``metaformer_baselines.py``) as a
plain functional forward over an official-format state dict: channels-last tensors, ``nn.Linear`` pointwise layers,
the official key names. Written for the tests from the paper's and the code's description, independently of our
model code, so that our model, our key maps and the official files can be checked against it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6  # every norm of the Baselines' trunk
GROUP_NORM_FAMILIES = ("identityformer", "randformer", "poolformerv2")  # normalised over (H, W, C)
MIXERS = {
    "identityformer": ("identity",) * 4,
    "randformer": ("identity", "identity", "random", "random"),
    "poolformerv2": ("pooling",) * 4,
    "convformer": ("sepconv",) * 4,
    "caformer": ("sepconv", "sepconv", "attention", "attention"),
}


def _norm(x: torch.Tensor, weight: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    centred = x - x.mean(dims, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dims, keepdim=True) + EPS) * weight


def _star_relu(x: torch.Tensor, weights: dict, prefix: str) -> torch.Tensor:
    return weights[prefix + "scale"] * F.relu(x) ** 2 + weights[prefix + "bias"]


def _mix(kind: str, x: torch.Tensor, weights: dict, prefix: str) -> torch.Tensor:
    batch, height, width, channels = x.shape
    if kind == "identity":
        return x
    if kind == "random":
        tokens = x.reshape(batch, height * width, channels)
        return torch.einsum("mn,bnc->bmc", weights[prefix + "random_matrix"], tokens).reshape(x.shape)
    if kind == "pooling":
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False)
        return pooled.permute(0, 2, 3, 1) - x
    if kind == "sepconv":
        h = _star_relu(F.linear(x, weights[prefix + "pwconv1.weight"]), weights, prefix + "act1.")
        kernel = weights[prefix + "dwconv.weight"]
        h = F.conv2d(h.permute(0, 3, 1, 2), kernel, padding=kernel.shape[-1] // 2, groups=kernel.shape[0])
        return F.linear(h.permute(0, 2, 3, 1), weights[prefix + "pwconv2.weight"])
    heads = channels // 32
    qkv = F.linear(x.reshape(batch, -1, channels), weights[prefix + "qkv.weight"])
    q, k, v = qkv.reshape(batch, -1, 3, heads, 32).permute(2, 0, 3, 1, 4)
    attention = (q @ k.transpose(-2, -1) * 32**-0.5).softmax(-1)
    out = (attention @ v).transpose(1, 2).reshape(batch, height, width, channels)
    return F.linear(out, weights[prefix + "proj.weight"])


def official_forward(weights: dict, family: str, depths: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """Logits of the official model ``family`` with ``depths`` for the NCHW batch ``x``."""
    dims = (1, 2, 3) if family in GROUP_NORM_FAMILIES else (-1,)
    x = F.conv2d(x, weights["downsample_layers.0.conv.weight"], weights["downsample_layers.0.conv.bias"], 4, 2)
    x = _norm(x.permute(0, 2, 3, 1), weights["downsample_layers.0.post_norm.weight"], (-1,))
    for stage, depth in enumerate(depths):
        if stage:
            down = f"downsample_layers.{stage}."
            x = _norm(x, weights[down + "pre_norm.weight"], (-1,)).permute(0, 3, 1, 2)
            x = F.conv2d(x, weights[down + "conv.weight"], weights[down + "conv.bias"], 2, 1).permute(0, 2, 3, 1)
        for index in range(depth):
            block = f"stages.{stage}.{index}."
            branch = _mix(
                MIXERS[family][stage], _norm(x, weights[block + "norm1.weight"], dims), weights, block + "token_mixer."
            )
            x = x * weights.get(block + "res_scale1.scale", 1.0) + branch
            h = F.linear(_norm(x, weights[block + "norm2.weight"], dims), weights[block + "mlp.fc1.weight"])
            branch = F.linear(_star_relu(h, weights, block + "mlp.act."), weights[block + "mlp.fc2.weight"])
            x = x * weights.get(block + "res_scale2.scale", 1.0) + branch
    pooled = F.layer_norm(x.mean((1, 2)), x.shape[-1:], weights["norm.weight"], weights["norm.bias"], EPS)
    if "head.weight" in weights:
        return F.linear(pooled, weights["head.weight"], weights["head.bias"])
    h = F.relu(F.linear(pooled, weights["head.fc1.weight"], weights["head.fc1.bias"])) ** 2
    h = F.layer_norm(h, h.shape[-1:], weights["head.norm.weight"], weights["head.norm.bias"])  # nn.LayerNorm's 1e-5
    return F.linear(h, weights["head.fc2.weight"], weights["head.fc2.bias"])
