"""Every named variant: construction, forward on odd sizes, the official configurations and counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIFIERS, FIXED_GRID, slow_but

import metaformer
from metaformer.models.blocks import MetaFormerBlock, MixerOnlyBlock
from metaformer.models.mixers import Attention, Pooling

# Official parameter counts (1000 classes) and the official README's / paper's MACs at 224x224 (fvcore).
OFFICIAL = {
    "poolformer_s12": (11_915_176, 1.8),
    "poolformer_s24": (21_388_968, 3.4),
    "poolformer_s36": (30_862_760, 5.0),
    "poolformer_m36": (56_172_520, 8.8),
    "poolformer_m48": (73_473_448, 11.6),
    "metaformer_id_s12": (11_915_176, 1.8),
    "metaformer_pppa_s12_224": (14.0e6, 1.9),
    "metaformer_ppaa_s12_224": (16.5e6, 2.5),
    "metaformer_pppf_s12_224": (11.9e6, 1.8),
    "metaformer_ppff_s12_224": (12.2e6, 1.9),
    "metaformer_random_s12": (11.9e6, 3.3),
    "metaformer_dwconv_s12": (11.9e6, 1.8),
    "poolformer_s12_nomlp": (2.5e6, 0.2),
}


def final_side(side: int, config: metaformer.MetaFormerConfig) -> int:
    """The last stage's side for an input side, through the stem and downsampling convolutions ``config`` names
    (PoolFormer: 7x7 stride 4 padding 2, then 3x3 stride 2 padding 1; InceptionNeXt: 4x4 and 2x2, no padding)."""
    (kernel, stride, padding), step = config.stem, config.downsample
    for _ in range(config.stem_convs):  # MambaOut's stem: two such convolutions
        side = (side + 2 * padding - kernel) // stride + 1
    for _ in range(3):
        side = (side + 2 * step[2] - step[0]) // step[1] + 1
    return side


def test_registry_has_every_paper_model():
    names = set(metaformer.list_models())
    official = {f"poolformer_{s}" for s in ("s12", "s24", "s36", "m36", "m48")}
    hybrids = {"metaformer_id_s12"} | {f"metaformer_{h}_s12_224" for h in ("pppa", "ppaa", "pppf", "ppff")}
    ablations = {
        "poolformer_s12_pool5",
        "poolformer_s12_pool7",
        "poolformer_s12_pool9",
        "metaformer_random_s12",
        "metaformer_dwconv_s12",
        "poolformer_s12_layernorm",
        "poolformer_s12_batchnorm",
        "poolformer_s12_nonorm",
        "poolformer_s12_relu",
        "poolformer_s12_silu",
        "poolformer_s12_noresidual",
        "poolformer_s12_nomlp",
    }
    assert official | hybrids | ablations <= names


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_on_odd_sizes(name, random_model):
    model = random_model(name, depths=(2, 2, 2, 2))  # the sizes meet the stems and downsamplings; depth adds nothing
    sizes = [(224, 224)] if name in FIXED_GRID else [(33, 47), (97, 65), (224, 224)]
    for height, width in sizes:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            logits = model(x)
            features = model.forward_features(x)
        assert logits.shape == (2, 1000)
        assert torch.isfinite(logits).all()
        assert features.shape[:2] == (2, model.config.widths[-1])
        assert tuple(features.shape[-2:]) == (final_side(height, model.config), final_side(width, model.config))
    # Different images give different logits: the model really looks at its input.
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("name", sorted(FIXED_GRID))
def test_fixed_grid_mixers_reject_other_sizes_clearly(name):
    model = metaformer.create_model(name)
    with pytest.raises(ValueError, match="fixed .* token grid"):
        model(torch.randn(1, 3, 160, 160))
    # Built for another resolution, they work there.
    assert metaformer.create_model(name, image_size=160)(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


def test_bad_input_tensors():
    model = metaformer.create_model("poolformer_s12")
    with pytest.raises(ValueError, match=">= 32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 64, 64))


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="did you mean .*poolformer_s12"):
        metaformer.create_model("poolformer_s21")
    with pytest.raises(metaformer.ConfigError, match="unknown option"):
        metaformer.create_model("poolformer_s12", depth=3)


@pytest.mark.parametrize("name", slow_but(sorted(OFFICIAL), {"poolformer_s12", "metaformer_ppaa_s12_224"}))
def test_params_and_macs_match_the_paper(name):
    model = metaformer.create_model(name).eval()
    params, frozen = metaformer.count_params(model)
    expected_params, expected_macs = OFFICIAL[name]
    if expected_params > 1e6 and float(expected_params).is_integer() and expected_params % 100_000:
        assert params == expected_params
    else:
        assert round(params / 1e6, 1) == round(expected_params / 1e6, 1)
    assert round(metaformer.count_macs(model) / 1e9, 1) == expected_macs
    # The paper counts the random matrices apart: 21M frozen parameters for S12.
    assert (frozen > 0) == (name == "metaformer_random_s12")
    if frozen:
        assert round(frozen / 1e6, 1) == 21.1


@pytest.mark.parametrize(
    "name, layer_scale, crop_pct, norm",
    [
        ("poolformer_s12", 1e-5, 0.9, "groupnorm"),
        ("poolformer_s24", 1e-5, 0.9, "groupnorm"),
        ("poolformer_s36", 1e-6, 0.9, "groupnorm"),
        ("poolformer_m36", 1e-6, 0.95, "groupnorm"),
        ("poolformer_m48", 1e-6, 0.95, "groupnorm"),
        ("metaformer_id_s12", 1e-5, 0.9, "groupnorm"),
        ("metaformer_pppa_s12_224", 1e-5, 0.95, "layernorm"),
        ("metaformer_ppaa_s12_224", 1e-5, 0.95, "layernorm"),
        ("metaformer_pppf_s12_224", 1e-5, 0.9, "groupnorm"),
        ("metaformer_ppff_s12_224", 1e-5, 0.95, "groupnorm"),
    ],
)
def test_official_configurations(name, layer_scale, crop_pct, norm):
    model = metaformer.create_model(name)
    assert model.pretrained_cfg.crop_pct == crop_pct and model.config.norm == norm
    block = model.stages[0].blocks[0]
    assert torch.all(block.layer_scale1.scale == layer_scale) and torch.all(block.layer_scale2.scale == layer_scale)
    assert metaformer.ImageProcessor.for_model(name).crop_pct == crop_pct


def test_stochastic_depth_rises_linearly_over_all_blocks():
    model = metaformer.create_model("poolformer_s24", drop_path_rate=0.1)
    rates = [block.drop_path1.p for stage in model.stages for block in stage.blocks]
    assert len(rates) == 24 and rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx([0.1 * i / 23 for i in range(24)])
    model.train()
    x = torch.randn(4, 3, 64, 64)
    assert not torch.equal(model(x), model(x))  # blocks are dropped at random in training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_pooling_mixer_is_avgpool_without_padding_minus_input():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = Pooling(1)(x)
    corner = (0 + 1 + 4 + 5) / 4  # only the four real pixels are averaged at the corner
    assert out[0, 0, 0, 0] == pytest.approx(corner - 0)
    centre = x[0, 0, 0:3, 0:3].mean()
    assert out[0, 0, 1, 1] == pytest.approx(centre - x[0, 0, 1, 1])
    for size in (5, 7, 9):
        model = metaformer.create_model(f"poolformer_s12_pool{size}")
        assert model.stages[0].blocks[0].token_mixer.pool.kernel_size == size


def test_attention_mixer_matches_the_textbook_formula():
    torch.manual_seed(0)
    mixer = Attention(64).eval()
    x = torch.randn(2, 64, 5, 6)
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = mixer.qkv(tokens).reshape(2, 30, 3, 2, 32).permute(2, 0, 3, 1, 4)
    weights = ((q / math.sqrt(32)) @ k.transpose(-2, -1)).softmax(-1)
    expected = mixer.proj((weights @ v).transpose(1, 2).reshape(2, 30, 64)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-5)


def test_random_mixing_is_frozen_and_row_stochastic():
    model = metaformer.create_model("metaformer_random_s12")
    matrices = [b.token_mixer.random_matrix for s in model.stages for b in s.blocks]
    assert [m.shape[0] for m in matrices] == [3136] * 2 + [784] * 2 + [196] * 6 + [49] * 2
    assert all(not m.requires_grad for m in matrices)
    torch.testing.assert_close(matrices[-1].sum(-1), torch.ones(49))
    assert not torch.equal(matrices[0], matrices[1])  # one matrix per block


def test_ablation_switches_change_the_block():
    plain = metaformer.create_model("poolformer_s12_nomlp").stages[0].blocks[0]
    assert isinstance(plain, MixerOnlyBlock) and not hasattr(plain, "mlp") and not hasattr(plain, "norm2")
    block = metaformer.create_model("poolformer_s12_noresidual", layer_scale_init=1.0).stages[0].blocks[0]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        mixed = block.token_mixer(block.norm1(x))
        expected = block.mlp(block.norm2(mixed))
    torch.testing.assert_close(block(x), expected)
    assert isinstance(metaformer.create_model("poolformer_s12_batchnorm").norm, torch.nn.BatchNorm2d)
    assert isinstance(metaformer.create_model("poolformer_s12_relu").stages[0].blocks[0].mlp.act, torch.nn.ReLU)
    assert isinstance(metaformer.create_model("poolformer_s12_silu").stages[0].blocks[0].mlp.act, torch.nn.SiLU)
    assert isinstance(metaformer.create_model("poolformer_s12_nonorm").norm, torch.nn.Identity)


def test_block_formula_with_layer_scale(random_model):
    model = random_model("poolformer_s12")
    block: MetaFormerBlock = model.stages[1].blocks[0]
    x = torch.randn(2, 128, 9, 7)
    with torch.no_grad():
        norm = F.group_norm(x, 1, block.norm1.weight, block.norm1.bias, 1e-5)
        pooled = F.avg_pool2d(norm, 3, 1, 1, count_include_pad=False)
        y = x + block.layer_scale1.scale[:, None, None] * (pooled - norm)
        norm = F.group_norm(y, 1, block.norm2.weight, block.norm2.bias, 1e-5)
        z = y + block.layer_scale2.scale[:, None, None] * block.mlp.fc2(F.gelu(block.mlp.fc1(norm)))
        torch.testing.assert_close(block(x), z)


def test_position_embedding_resizes_for_other_inputs(random_model):
    model = random_model("metaformer_ppaa_s12_224")
    assert model.stages[2].pos_embed.shape == (1, 320, 14, 14)
    assert model(torch.randn(1, 3, 320, 256)).shape == (1, 1000)


def test_grad_checkpointing_gives_the_same_gradients(random_model):
    model = random_model("poolformer_s12").train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters(), strict=False):
        torch.testing.assert_close(a, p.grad)


def test_reset_classifier():
    model = metaformer.create_model("poolformer_s12")
    model.reset_classifier(10, labels=[str(i) for i in range(10)])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert model.config.num_classes == 10 and model.pretrained_cfg.label_names[3] == "3" and model.labels[3] == "3"
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (
        1,
        512,
    )


@pytest.mark.parametrize("name", ["poolformer_s12", "poolformer_m36", "metaformer_ppaa_s12_224"])
def test_features_only(name):
    model = metaformer.create_model(name, features_only=True, depths=(2, 2, 2, 2)).eval()
    outs = model(torch.randn(2, 3, 97, 129))
    assert [o.shape[1] for o in outs] == list(model.config.widths) == model.out_channels
    assert model.strides == [4, 8, 16, 32]
    assert [tuple(o.shape[-2:]) for o in outs] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    assert not hasattr(model, "head")
    last3 = metaformer.create_model(name, features_only=True, out_indices=(1, 2, 3), depths=(1, 1, 1, 1))
    assert len(last3(torch.randn(1, 3, 64, 64))) == 3 and list(last3.out_norms) == ["1", "2", "3"]


def test_backward_through_hybrid_and_random_models(random_model):
    for name in ("metaformer_pppa_s12_224", "metaformer_ppff_s12_224"):
        model = random_model(name).train()
        model(torch.randn(2, 3, 224, 224)).logsumexp(-1).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_channels_last_gives_the_same_output(random_model):
    model = random_model("poolformer_s12")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_classes": -1}, "num_classes must be >= 0"),
        ({"drop_path_rate": 1.5}, "drop_path_rate is a probability"),
        ({"image_size": 16}, "image_size must be >= 32"),
        ({"mixer_settings": {"pool_size": 4}}, "pool_size must be odd"),
        ({"mixer_settings": {"kernel": 4}}, "unexpected keyword argument 'kernel'"),
        ({"blocks": ("metaformer", "metaformer", "rwkv", "metaformer")}, "unknown block 'rwkv'"),
        ({"norm": "rmsnorm"}, "norm must be one of"),
        ({"mixers": ("pooling", "conv", "pooling", "pooling")}, "unknown token mixer"),
        ({"depths": (2, 2, 6)}, "widths has 4 entries but depths has 3"),
    ],
)
def test_invalid_configurations_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        metaformer.create_model("poolformer_s12", **override)


def test_reset_classifier_keeps_device_and_dtype():
    model = metaformer.create_model("poolformer_s12_nonorm").to(torch.bfloat16)
    model.reset_classifier(3)
    assert model.head.weight.dtype == torch.bfloat16
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).shape == (1, 3)
    assert model.get_classifier() is model.head


def test_count_macs_leaves_the_model_as_it_was():
    model = metaformer.create_model("poolformer_s12_batchnorm").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metaformer.count_macs(model)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    small = metaformer.create_model("metaformer_pppf_s12_224", image_size=160)
    assert metaformer.count_macs(small) < metaformer.count_macs(metaformer.create_model("metaformer_pppf_s12_224"))


def test_timm_style_helpers():
    model = metaformer.create_model("metaformer_ppaa_s12_224")
    no_decay = model.no_weight_decay()
    assert "stages.2.pos_embed" in no_decay and "stages.0.blocks.0.layer_scale1.scale" in no_decay
    assert not any("weight" in name for name in no_decay)
    assert model.pretrained_cfg["crop_pct"] == 0.95 and model.pretrained_cfg["input_size"] == (3, 224, 224)
    backbone = metaformer.create_model("poolformer_s12", features_only=True)
    assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(random_model):
    model = random_model("metaformer_ppaa_s12_224")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
