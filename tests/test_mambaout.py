"""MambaOut (Yu and Wang, 2024) and timm's *_rw models of it: exact sizes, timm's models computing what ours computes
both ways, the official files, the release records (timm's test sizes, the squashed 384 fine-tune, the 11,821-class
ImageNet-12k head), fusing and a training step."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_a_training_step_reaches_every_weight,
    assert_equal_to_timm_both_ways,
    assert_semantic_fpn_trains_and_folds,
    randomize,
    slow_but,
)

import metaformer
from metaformer.checkpoints import open_checkpoint
from metaformer.checkpoints.formats import convert_state_dict, detect_format
from metaformer.models.config import MLP_HEADS
from metaformer.models.metaformer import MLP_HEAD_SHAPES, MetaFormer
from metaformer.models.pretrained import MAMBAOUT, RELEASES
from metaformer.models.zoo import get_spec
from metaformer.processor import ImageProcessor

# Parameters with 1000 classes, as the official code and timm give them.
PARAMS = {
    "mambaout_femto": 7_304_536,
    "mambaout_kobe": 9_141_208,
    "mambaout_tiny": 26_545_096,
    "mambaout_small": 48_488_072,
    "mambaout_base": 84_813_092,
    "mambaout_small_rw": 48_495_560,
    "mambaout_base_short_rw": 88_827_688,
    "mambaout_base_tall_rw": 86_481_448,
    "mambaout_base_wide_rw": 94_448_104,
    "mambaout_base_plus_rw": 101_656_552,
}
OFFICIAL = [name for name in PARAMS if not name.endswith("_rw")]
DEFAULT = {"mambaout_femto", "mambaout_small_rw"}  # one of the official kind, one of timm's (SiLU apart)


def perturbed(name: str, seed: int = 0) -> MetaFormer:
    """Weights that would expose any difference: random norm affines and biases, layer scales of order 0.1-1."""
    return randomize(metaformer.create_model(name), seed).eval()


@pytest.mark.parametrize("name", list(PARAMS))
def test_exact_parameter_counts_and_the_papers_macs(name):
    with torch.device("meta"):
        model = MetaFormer(get_spec(name).config)
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
        macs = metaformer.count_macs(model) / 1e9
    release = next(RELEASES[tag] for tag in MAMBAOUT if tag.startswith(f"{name}."))
    if release.macs_g is not None:
        # Counted as the paper's other tables are; its MambaOut figures round loosely: femto 1.148 G is "1.2G", kobe
        # 1.506 G "1.5G", small 8.936 G "9.0G" (tiny 4.470 G, base 15.794 G).
        assert abs(macs - release.macs_g) < 0.07


@pytest.mark.peer
@pytest.mark.parametrize("name", slow_but(list(PARAMS), DEFAULT))
def test_equal_to_timm_both_ways(name):
    timm = pytest.importorskip("timm")
    # Femto at its full depth; each other with its own widths, ratios, activation, stem, downsampling, layer scale
    # and head, at one or two blocks per stage (depth adds nothing the first blocks do not check).
    depths = {} if name == "mambaout_femto" else {"depths": (1, 1, 2, 1)}
    ours = randomize(metaformer.create_model(name, **depths), 0).eval()
    with torch.device("meta"):  # every weight comes from ours
        theirs = timm.create_model(name, **depths).eval()
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), ours.config, "timm"), assign=True)
    side = 128 if name == "mambaout_femto" else 64
    assert_equal_to_timm_both_ways(name, ours, theirs, torch.randn(2, 3, side, side), **depths)


def test_an_official_file_loads_and_names_its_model(tmp_path):
    ours = perturbed("mambaout_femto", seed=1)
    official = convert_state_dict(ours.state_dict(), ours.config, "official")
    # The official names and shapes: the stem as downsampling layer 0, blocks' linear layers, the head's fc1/norm/fc2.
    assert official["downsample_layers.0.norm1.weight"].shape == (24,)
    assert official["stages.0.0.fc1.weight"].shape == (256, 48) and official["stages.3.2.conv.weight"].shape[-1] == 7
    assert {"downsample_layers.1.conv.weight", "norm.weight", "head.norm.bias", "head.fc2.weight"} <= set(official)
    path = tmp_path / "mambaout_femto.pth"
    torch.save(official, path)  # a plain state_dict, as the official release
    assert detect_format(official) == "official"
    assert metaformer.api.infer_model_name(open_checkpoint(path)) == "mambaout_femto"
    loaded = metaformer.create_model("mambaout_femto", checkpoint=path, strict=True).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    ours_file = metaformer.save_checkpoint(ours, tmp_path / "ours.safetensors")
    assert detect_format(open_checkpoint(ours_file).state_dict) == "metaformer"  # same stem names as timm's


def test_an_official_model_read_independently(tmp_path):
    """The official forward pass, written out from the official code's structure (channels-last tensors, linear
    layers, the norm after each downsampling convolution, pool, norm, MLP head) on the official file's weights."""
    ours = perturbed("mambaout_femto", seed=3)
    w = convert_state_dict(ours.state_dict(), ours.config, "official")
    F = torch.nn.functional

    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], 1e-6)

    def conv(x, prefix, **kw):  # channels-last in and out
        return F.conv2d(x.permute(0, 3, 1, 2), w[f"{prefix}.weight"], w[f"{prefix}.bias"], **kw).permute(0, 2, 3, 1)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = conv(x.permute(0, 2, 3, 1), "downsample_layers.0.conv1", stride=2, padding=1)
        h = F.gelu(ln(h, "downsample_layers.0.norm1"))
        h = ln(conv(h, "downsample_layers.0.conv2", stride=2, padding=1), "downsample_layers.0.norm2")
        for stage, depth in enumerate((3, 3, 9, 3)):
            if stage:
                h = ln(
                    conv(h, f"downsample_layers.{stage}.conv", stride=2, padding=1), f"downsample_layers.{stage}.norm"
                )
            for block in range(depth):
                p = f"stages.{stage}.{block}"
                y = F.linear(ln(h, f"{p}.norm"), w[f"{p}.fc1.weight"], w[f"{p}.fc1.bias"])
                hidden = w[f"{p}.fc2.weight"].shape[1]
                channels = w[f"{p}.conv.weight"].shape[0]
                g, i, c = torch.split(y, (hidden, hidden - channels, channels), dim=-1)
                c = conv(c, f"{p}.conv", padding=3, groups=channels)
                h = h + F.linear(F.gelu(g) * torch.cat((i, c), -1), w[f"{p}.fc2.weight"], w[f"{p}.fc2.bias"])
        pooled = ln(h.mean((1, 2)), "norm")
        hidden = F.layer_norm(F.gelu(F.linear(pooled, w["head.fc1.weight"], w["head.fc1.bias"])), (1152,),
                              w["head.norm.weight"], w["head.norm.bias"], 1e-6)  # fmt: skip
        expected = F.linear(hidden, w["head.fc2.weight"], w["head.fc2.bias"])
        assert torch.allclose(ours(x), expected, atol=1e-4, rtol=0)


def test_the_releases_are_timms_and_the_papers():
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    tags = [name for name in timm.list_pretrained() if name.startswith("mambaout_")]
    assert sorted(tags) == sorted(MAMBAOUT)
    for name in tags:
        cfg, release = get_pretrained_cfg(name), RELEASES[name]
        assert (cfg.hf_hub_id, cfg.input_size, cfg.crop_pct, cfg.num_classes, cfg.crop_mode) == (
            f"timm/{name}",
            release.input_size,
            release.crop_pct,
            release.num_classes,
            release.crop_mode,
        )
        assert (cfg.test_input_size, cfg.test_crop_pct) == (release.test_input_size, release.test_crop_pct)
        assert (release.url is None) == name.split(".")[0].endswith("_rw")  # timm's own have no official file
    assert RELEASES["mambaout_kobe.in1k"].top1 == 80.0 and RELEASES["mambaout_base.in1k"].macs_g == 15.8
    model = metaformer.create_model("mambaout_base_plus_rw.sw_e150_in12k")
    assert model.num_classes == 11821 and model.head.fc2.out_features == 11821


def test_the_squashed_release_is_evaluated_squashed(imagenet_samples):
    """timm evaluates the 384 fine-tune by resizing both sides (its 'squash' mode), not by a centre crop."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    processor = ImageProcessor.for_model("mambaout_base_plus_rw.sw_e150_r384_in12k_ft_in1k")
    assert processor.crop_mode == "squash"
    image = Image.open(imagenet_samples[0]).convert("RGB")
    assert image.width != image.height
    expected = TF.to_dtype(TF.pil_to_tensor(TF.resize(image, [384, 384], TF.InterpolationMode.BICUBIC)), scale=True)
    expected = TF.normalize(expected, list(processor.mean), list(processor.std))
    assert torch.allclose(processor(image)[0], expected)
    assert processor.crop_box(image.width, image.height) == (0.0, 0.0, image.width, image.height)
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        ImageProcessor(crop_mode="stretch")


def test_the_official_recipes():
    from metaformer.tasks.classification.recipe import PAPER

    tiny = PAPER.resolved("mambaout_tiny")
    assert (tiny.optimizer, tiny.resolved_lr(4096), tiny.warmup_epochs, tiny.drop_path) == ("adamw", 4e-3, 20, 0.2)
    drops = [PAPER.resolved(f"mambaout_{size}").drop_path for size in ("femto", "kobe", "small", "base")]
    assert drops == [0.025, 0.025, 0.4, 0.6]
    wide = PAPER.resolved("mambaout_base_wide_rw")  # timm's own: the official settings of its size
    assert (wide.warmup_epochs, wide.drop_path) == (20, 0.6) and PAPER.resolved("mambaout_small_rw").drop_path == 0.4


def test_info_of_a_tag_is_that_release():
    from metaformer.cli.models import model_info

    at_384 = model_info("caformer_s18.sail_in1k_384")
    assert at_384["pretrained_cfg"]["crop_pct"] == 1.0 and at_384["config"]["image_size"] == 384  # not 0.9, 224
    assert model_info("convformer_s18.sail_in22k")["config"]["num_classes"] == 21841


def test_fused_equals_plain_and_features():
    for name in ("mambaout_femto", "mambaout_small_rw"):
        model = perturbed(name, seed=2)
        x = torch.randn(3, 3, 96, 128)
        with torch.no_grad():
            assert torch.allclose(metaformer.fuse(model)(x), model(x), atol=1e-4, rtol=0), name
    features = metaformer.create_model("mambaout_femto", features_only=True)
    maps = features(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(48, 56, 56), (96, 28, 28), (192, 14, 14), (288, 7, 7)]
    assert features.strides == [4, 8, 16, 32]


def test_a_training_step_reaches_every_weight():
    assert_a_training_step_reaches_every_weight("mambaout_femto")


def test_every_mlp_head_has_its_shape():
    assert set(MLP_HEAD_SHAPES) == set(MLP_HEADS)


def test_the_readme_table_is_the_metadata():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = readme.split("<!-- mambaout-table -->")[1].strip().split("\n\n")[0].splitlines()[2:]
    assert len(rows) == len(MAMBAOUT)
    for row, name in zip(rows, MAMBAOUT, strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        release = RELEASES[name]
        with torch.device("meta"):
            params = sum(p.numel() for p in metaformer.create_model(name).parameters())
        assert cells[0] == f"`{name}`" and float(cells[1]) == round(params / 1e6, 1)
        assert cells[2] == f"{release.image_size}" and cells[3] == f"{release.crop_pct}"
        assert cells[4] == (f"{release.macs_g}" if release.macs_g else "") and cells[5] == (
            f"{release.top1}" if release.top1 else ""
        )


def test_dense_models_on_its_trunk():
    assert_semantic_fpn_trains_and_folds("fpn_mambaout_femto")
    assert {"retinanet_mambaout_tiny", "mask_rcnn_mambaout_small"} <= set(metaformer.list_models())
    detector = metaformer.create_model("retinanet_mambaout_tiny", min_size=128, max_size=160).eval()
    with torch.no_grad():
        found = detector([torch.rand(3, 120, 150)])[0]
    assert set(found) == {"boxes", "labels", "scores"}
