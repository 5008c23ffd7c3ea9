"""The fast paths: metaformer.fuse()'s folded inference form, and the pooling branch PoolFormer trains through."""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIFIERS, FIXED_GRID, randomize, slow_but
from tiny import TINY

import metaformer
from metaformer.fast.inference import FusedBlock, FusedIdentity, FusedMlp, FusedPooling, PlainToken
from metaformer.fast.training import mlp_branch_with_custom_backward, pooling_branch_with_custom_backward
from metaformer.models.zoo import get_spec


def pair(name: str, seed: int = 0, **overrides: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = randomize(metaformer.create_model(name, **overrides), seed).eval()
    return model, metaformer.fuse(model)


# One model of each block kind, token mixer and stage layout by default; the full suite runs every one.
FUSED_BY_DEFAULT = {"poolformer_s12", "metaformer_ppaa_s12_224", "metaformer_random_s12", "poolformer_s12_layernorm",
                    "poolformer_s12_noresidual", "convformer_s18", "caformer_s18", "inception_next_atto",
                    "mambaout_femto"}  # fmt: skip


@pytest.mark.parametrize("name", slow_but(CLASSIFIERS, FUSED_BY_DEFAULT))
def test_fused_equals_plain_on_every_model(name):
    # Every block of a stage is folded alike: two a stage check each stage's blocks, their widths and mixers.
    depths = tuple(min(depth, 2) for depth in get_spec(name).config.depths)
    model, fused = pair(name, depths=depths)
    sizes = [(224, 224)] if name in FIXED_GRID else [(224, 224), (97, 130)]
    for batch, (height, width) in zip((3, 1), sizes, strict=False):
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = x.contiguous(memory_format=memory_format)
            with torch.inference_mode():
                expected, got = model(x), fused(x)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= 1e-4, name  # the issue allows 1e-3


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
def test_fused_equals_plain_over_batch_sizes_and_shapes(batch):
    model, fused = pair("poolformer_s12", seed=batch)
    for side in (32, 64, 161):
        x = torch.randn(batch, 3, side, side + 31)
        with torch.inference_mode():
            assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=0)


def test_packed_weights_follow_shapes_casts_and_edits():
    # On x86 CPUs the fused model keeps oneDNN-packed copies of its convolution weights, per input shape.
    model, fused = pair("poolformer_s12")
    shapes = [(1, 64), (2, 64), (1, 64), (3, 80), (2, 64), (1, 96)]  # more shapes than are kept: some are packed again
    for batch, side in shapes:
        x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=0), (batch, side)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # an in-place edit of a weight must reach the packed copy
        for m in (model, fused):
            m.stem.proj.weight.mul_(0.5)
            m.stages[3].downsample.proj.weight.mul_(-1)
    with torch.inference_mode():
        assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=0)
    copied = copy.deepcopy(fused)  # the packed copies are not copied: the copy packs its own
    with torch.inference_mode():
        assert torch.allclose(copied(x), model(x), atol=1e-4, rtol=0)
        low = fused.to(torch.bfloat16)(x.to(torch.bfloat16)).float()  # a cast packs the bfloat16 weights
        assert (low - model(x)).abs().max().item() < 0.1 * model(x).abs().max().item()
    fused.float()
    assert all(m.fc1_packed.source is None for m in fused.modules() if isinstance(m, FusedMlp))  # old copies freed


def test_packed_weights_follow_a_loaded_state_dict_under_inference_mode():
    # Tensors made under inference mode have no version counter: loading new weights must drop the packed copies.
    model, other = (randomize(metaformer.create_model("poolformer_s12"), seed).eval() for seed in (0, 1))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fused = metaformer.fuse(model)
        fused(x)
        fused.load_state_dict(metaformer.fuse(other).state_dict())
        assert torch.allclose(fused(x), other(x), atol=1e-4, rtol=0)


def test_fused_model_passes_gradients_to_its_input():
    # The oneDNN calls have no backward; an input that asks for gradients takes the differentiable path.
    model, fused = pair("poolformer_s12")
    grads = []
    for m in (model, fused):
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        m(x).logsumexp(1).sum().backward()
        grads.append(x.grad)
    assert grads[1] is not None and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_fused_blocks_are_the_folded_ones():
    kinds = {
        "poolformer_s12": FusedPooling,
        "poolformer_s12_batchnorm": FusedPooling,
        "poolformer_s12_nonorm": FusedPooling,
        "metaformer_id_s12": FusedIdentity,
        "poolformer_s12_layernorm": PlainToken,  # per-token statistics: no fold through the pooling
        "metaformer_dwconv_s12": PlainToken,
    }
    for name, kind in kinds.items():
        fused = metaformer.fuse(metaformer.create_model(name))
        block = fused.stages[0].blocks[0]
        assert isinstance(block, FusedBlock) and isinstance(block.token, kind) and isinstance(block.mlp, FusedMlp), name
    hybrid = metaformer.fuse(metaformer.create_model("metaformer_ppaa_s12_224"))
    assert isinstance(hybrid.stages[3].blocks[0].token, PlainToken)
    assert isinstance(hybrid.stages[3].blocks[0].mlp, FusedMlp)
    plain_block = metaformer.fuse(metaformer.create_model("poolformer_s12_noresidual")).stages[0].blocks[0]
    assert not isinstance(plain_block, FusedBlock)  # the identities need the residual: this ablation stays plain


def test_fused_model_is_frozen_and_leaves_the_original_alone():
    model = randomize(metaformer.create_model("poolformer_s12"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = metaformer.fuse(model)
    assert model.training and not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert metaformer.is_fused(fused) and not metaformer.is_fused(model)


def test_portable_path_equals_plain_in_float64():
    # float64 skips oneDNN's fused kernels: this is the path CUDA and other devices take.
    for name in ("poolformer_s12", "metaformer_id_s12", "poolformer_s12_batchnorm", "poolformer_s12_layernorm"):
        model = randomize(metaformer.create_model(name)).eval().double()
        fused = metaformer.fuse(model)  # folded in float64: only the algebra can differ
        x = torch.randn(2, 3, 96, 80, dtype=torch.float64)
        with torch.inference_mode():
            assert torch.allclose(fused(x), model(x), atol=1e-10, rtol=0), name


@pytest.mark.slow
def test_bfloat16_fused_agrees_with_float32():
    model, fused = pair("poolformer_s12")
    x = torch.randn(8, 3, 128, 128)  # bfloat16 is emulated on CPUs without it: a smaller input
    with torch.inference_mode():
        reference = model(x)
        low = fused.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert (low - reference).abs().max().item() < 0.1 * reference.abs().max().item()
    assert (low.argmax(1) == reference.argmax(1)).float().mean().item() >= 0.75


def test_dense_models_fuse_their_backbones():
    segmenter = randomize(metaformer.create_model("fpn_poolformer_s12", num_classes=5)).eval()
    x = torch.randn(2, 3, 97, 130)
    with torch.inference_mode():
        assert torch.allclose(metaformer.fuse(segmenter)(x), segmenter(x), atol=1e-4)
    detector = randomize(metaformer.create_model("retinanet_poolformer_s12", num_classes=3)).eval()
    fused = metaformer.fuse(detector)
    assert metaformer.is_fused(fused) and isinstance(fused.backbone.body.stages[1].blocks[0], FusedBlock)
    with torch.inference_mode():
        expected, got = detector.backbone(x), fused.backbone(x)
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], atol=1e-4) for k in expected)


def test_fuse_refuses_other_models():
    with pytest.raises(TypeError, match="MetaFormer backbone"):
        metaformer.fuse(torch.nn.Conv2d(3, 3, 1))


def test_custom_backward_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = (torch.rand(4, dtype=torch.float64, generator=generator) + 0.5).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)
    layer_scale = (torch.rand(4, dtype=torch.float64, generator=generator) + 0.1).requires_grad_()
    for pool_size, sample_scale in ((3, None), (5, torch.tensor([0.0, 1.25, 1.25], dtype=torch.float64))):

        def branch(x, weight, bias, layer_scale, pool_size=pool_size, sample_scale=sample_scale):
            return pooling_branch_with_custom_backward(x, weight, bias, layer_scale, pool_size, 1e-5, sample_scale)

        assert torch.autograd.gradcheck(branch, (x, weight, bias, layer_scale))
        norm = F.group_norm(x, 1, weight, bias, 1e-5)
        pooled = F.avg_pool2d(norm, pool_size, 1, pool_size // 2, count_include_pad=False)
        scale = 1.0 if sample_scale is None else sample_scale.view(-1, 1, 1, 1)
        literal = x + scale * layer_scale.view(1, -1, 1, 1) * (pooled - norm)
        assert torch.allclose(branch(x, weight, bias, layer_scale), literal, atol=1e-12)


@pytest.mark.parametrize("channels_last", slow_but([False, True], {True}))
def test_mlp_custom_backward_gradcheck_in_float64(channels_last):
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int, low: float | None = None) -> torch.Tensor:
        t = (
            torch.rand(*shape, dtype=torch.float64, generator=generator) + low
            if low is not None
            else torch.randn(*shape, dtype=torch.float64, generator=generator)
        )
        return t.requires_grad_()

    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format).requires_grad_()
    fc1, fc2 = torch.nn.Conv2d(4, 12, 1).double(), torch.nn.Conv2d(12, 4, 1).double()
    weight, bias, layer_scale = tensor(4, low=0.5), tensor(4), tensor(4, low=0.1)
    params = (x, weight, bias, layer_scale, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    for norm_bias, sample_scale in ((True, None), (False, torch.tensor([0.0, 1.25, 1.25], dtype=torch.float64))):

        def branch(x, weight, bias, layer_scale, *_, norm_bias=norm_bias, sample_scale=sample_scale):
            return mlp_branch_with_custom_backward(
                x, weight, bias if norm_bias else None, fc1, fc2, layer_scale, 1e-5, sample_scale
            )

        assert torch.autograd.gradcheck(branch, params)
        norm = F.group_norm(x, 1, weight, bias if norm_bias else None, 1e-5)
        scale = 1.0 if sample_scale is None else sample_scale.view(-1, 1, 1, 1)
        literal = x + scale * layer_scale.view(1, -1, 1, 1) * fc2(F.gelu(fc1(norm)))
        assert torch.allclose(branch(*params), literal, atol=1e-12)


def test_training_with_the_custom_backward_equals_the_literal_modules():
    def gradients(custom_backward: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)  # the same initial weights, and then the same stochastic-depth draws, on both paths
        model = randomize(metaformer.create_model("poolformer_s12", num_classes=7, drop_path_rate=0.3)).train()
        if custom_backward:
            metaformer.use_custom_backward(model)
        logits = model(torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(1)))
        logits.logsumexp(1).sum().backward()
        return logits, {n: p.grad for n, p in model.named_parameters()}

    fast_logits, fast = gradients(True)
    literal_logits, literal = gradients(False)
    assert torch.allclose(fast_logits, literal_logits, atol=1e-4)
    for name, grad in literal.items():
        assert fast[name] is not None, name  # every parameter gets a gradient (DDP needs it)
        assert torch.allclose(fast[name], grad, atol=1e-3, rtol=1e-3), name


@pytest.mark.slow
def test_training_under_bfloat16_autocast_follows_the_literal_modules():
    def gradients(custom_backward: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = randomize(metaformer.create_model("poolformer_s12", num_classes=7)).train()
        if custom_backward:
            metaformer.use_custom_backward(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the stem hands the first block a bfloat16 map
            logits = model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        logits.float().logsumexp(1).sum().backward()
        return logits.float(), {n: p.grad for n, p in model.named_parameters()}

    (fast_logits, fast), (literal_logits, literal) = gradients(True), gradients(False)
    assert (fast_logits - literal_logits).abs().max() < 0.05 * literal_logits.abs().max()
    for name, grad in literal.items():
        if name.endswith("norm1.bias"):  # it cancels in the mixer: zero here, bfloat16 rounding noise there
            assert fast[name].abs().max() == 0 and grad.abs().max() < 1e-2, name
            continue
        assert (fast[name] - grad).norm() <= 0.05 * grad.norm(), name


def test_bfloat16_autocast_keeps_the_residual_stream_as_the_literal_modules_do():
    """With the initial layer scales (1e-5) a bfloat16 residual stream would drop every block's update: the custom
    functions promote it to float32 as the literal modules' ``addcmul`` with the float32 layer scale does."""

    def block_outputs(custom_backward: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = metaformer.create_model("poolformer_s12", num_classes=7).train()
        if custom_backward:
            metaformer.use_custom_backward(model)
        outputs: list[torch.Tensor] = []
        for stage in model.stages:
            for block in stage.blocks:
                block.register_forward_hook(lambda _, __, out: outputs.append(out))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))).float().sum().backward()
        return outputs

    fast, literal = block_outputs(True), block_outputs(False)
    assert [t.dtype for t in fast] == [t.dtype for t in literal]
    assert all(t.dtype == torch.float32 for t in fast)
    for ours, theirs in zip(fast, literal, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-2 * theirs.abs().max().item())


def test_training_keeps_less_for_the_backward_than_timm():
    timm = pytest.importorskip("timm")

    def saved_bytes(model: torch.nn.Module) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if not isinstance(tensor, torch.nn.Parameter):
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()(torch.randn(4, 3, 128, 128)).sum().backward()
        return sum(storages.values())

    ours = metaformer.create_model("poolformer_s12")
    assert len(metaformer.use_custom_backward(ours)) == 12  # every block of S12
    ours, theirs = saved_bytes(ours), saved_bytes(timm.create_model("poolformer_s12"))
    assert ours <= 0.9 * theirs, (ours, theirs)  # measured: 0.87


def test_bfloat16_on_a_cpu_without_it_is_warned_once(monkeypatch, imagenet_samples, tmp_path):
    from metaformer.cli import main

    preparing = importlib.import_module("metaformer.fast.prepare")  # the module: the package exports prepare()

    monkeypatch.setattr(preparing, "native_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preparing.check_options(dtype="bfloat16")  # a CPU with bfloat16 instructions: nothing to say
    monkeypatch.setattr(preparing, "native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 instructions .* runs emulated, several times slower"):
        preparing.check_options(dtype="bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preparing.check_options(dtype="bfloat16", device="cuda")  # GPUs have it
        preparing.check_options(dtype="float32")
    checkpoint = metaformer.save_checkpoint(metaformer.create_model(TINY, num_classes=3), tmp_path / "t.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the command line's: each place once
        assert main(["predict", str(imagenet_samples[0]), "--checkpoint", str(checkpoint), "--dtype", "bfloat16"]) == 0
    assert sum("no bfloat16 instructions" in str(w.message) for w in caught) == 1  # checked twice, said once
