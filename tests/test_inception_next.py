"""InceptionNeXt (Yu et al., CVPR 2024): exact sizes, timm's models computing what ours computes both ways, the
official files (timm's names), the release records, fusing and a training step."""

from __future__ import annotations

import dataclasses

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
from metaformer.models.metaformer import MetaFormer
from metaformer.models.pretrained import INCEPTION_NEXT, RELEASES
from metaformer.models.zoo import get_spec

# Parameters with 1000 classes, as the official code and timm give them.
PARAMS = {
    "inception_next_atto": 4_156_520,
    "inception_next_tiny": 28_055_680,
    "inception_next_small": 49_374_016,
    "inception_next_base": 86_672_136,
}
DEFAULT = {"inception_next_atto", "inception_next_tiny"}


def perturbed(name: str, seed: int = 0) -> MetaFormer:
    """Weights that would expose any difference: layer scales of order 0.1-1, random BatchNorm affines and
    running statistics (not 0 and 1), random biases."""
    return randomize(metaformer.create_model(name), seed).eval()


@pytest.mark.parametrize("name", list(PARAMS))
def test_exact_parameter_counts_and_the_papers_macs(name):
    with torch.device("meta"):
        model = MetaFormer(get_spec(name).config)
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
        macs = metaformer.count_macs(model) / 1e9
    release = RELEASES[f"{name}.sail_in1k"]
    assert abs(macs - release.macs_g) < 0.06  # fvcore's count, as the paper's table: atto 0.505 against "0.51"


def test_the_384_release_counts_as_the_paper():
    config = dataclasses.replace(get_spec("inception_next_base").config, image_size=384)
    with torch.device("meta"):
        assert round(metaformer.count_macs(MetaFormer(config), 384) / 1e9, 1) == 43.6


@pytest.mark.peer
@pytest.mark.parametrize("name", slow_but(list(PARAMS), DEFAULT))
def test_equal_to_timm_both_ways(name):
    timm = pytest.importorskip("timm")
    # The larger ones differ only in depths and widths: each with its own widths at one or two blocks per stage.
    depths = {} if name in DEFAULT else {"depths": (1, 1, 2, 1)}
    ours = randomize(metaformer.create_model(name, **depths), 0).eval()
    with torch.device("meta"):  # every weight comes from ours
        theirs = timm.create_model(name, **depths).eval()
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), ours.config, "timm"), assign=True)
    side = 224 if name in DEFAULT else 96
    assert_equal_to_timm_both_ways(name, ours, theirs, torch.randn(2, 3, side, side), **depths)


def test_an_official_file_loads_and_names_its_model(tmp_path):
    ours = perturbed("inception_next_atto", seed=1)
    official = convert_state_dict(ours.state_dict(), ours.config, "official")
    assert {"stem.0.weight", "stages.1.downsample.0.running_var", "stages.0.blocks.0.gamma"} <= set(official)
    assert official.keys() == convert_state_dict(ours.state_dict(), ours.config, "timm").keys()
    path = tmp_path / "inceptionnext_atto.pth"
    torch.save(official, path)  # a plain state_dict, as the official release
    assert detect_format(official) == "timm"
    assert metaformer.api.infer_model_name(open_checkpoint(path)) == "inception_next_atto"
    loaded = metaformer.create_model("inception_next_atto", checkpoint=path, strict=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_the_releases_are_timms_and_the_papers():
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    tags = [name for name in timm.list_pretrained() if name.startswith("inception_next_")]
    assert sorted(tags) == sorted(INCEPTION_NEXT)
    for name in tags:
        cfg, release = get_pretrained_cfg(name), RELEASES[name]
        assert (cfg.hf_hub_id, cfg.input_size[-1], cfg.crop_pct) == (
            f"timm/{name}",
            release.image_size,
            release.crop_pct,
        )
        assert release.url.startswith("https://github.com/sail-sg/inceptionnext/releases/download/model/")
    assert RELEASES["inception_next_base.sail_in1k_384"].top1 == 85.2
    model = metaformer.create_model("inception_next_base.sail_in1k_384")
    assert model.pretrained_cfg.image_size == 384 and model.config.image_size == 384


def test_the_official_recipes():
    from metaformer.tasks.classification.recipe import PAPER, get_recipe

    tiny, atto = PAPER.resolved("inception_next_tiny"), PAPER.resolved("inception_next_atto")
    assert (tiny.optimizer, tiny.resolved_lr(4096), tiny.warmup_epochs, tiny.drop_path) == ("adamw", 4e-3, 20, 0.1)
    assert PAPER.resolved("inception_next_base").drop_path == 0.4 and atto.resolved_lr(1280) == pytest.approx(1e-3)
    base_384 = get_recipe("finetune_384").resolved("inception_next_base")
    assert (base_384.resolved_lr(1024), base_384.drop_path, base_384.head_dropout) == (5e-5, 0.7, 0.5)


def test_fused_equals_plain_and_features():
    model = perturbed("inception_next_atto", seed=2)
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(metaformer.fuse(model)(x), model(x), atol=1e-4, rtol=0)
    features = metaformer.create_model("inception_next_atto", features_only=True)
    maps = features(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(40, 56, 56), (80, 28, 28), (160, 14, 14), (320, 7, 7)]
    assert features.strides == [4, 8, 16, 32]


def test_a_training_step_reaches_every_weight():
    assert_a_training_step_reaches_every_weight("inception_next_atto")


def test_the_readme_table_is_the_metadata():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = readme.split("<!-- inception-next-table -->")[1].strip().split("\n\n")[0].splitlines()[2:]
    assert len(rows) == len(PARAMS)
    for row, (arch, params) in zip(rows, PARAMS.items(), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        release = RELEASES[f"{arch}.sail_in1k"]
        big = RELEASES.get(f"{arch}.sail_in1k_384")
        assert cells[0] == f"`{arch}`" and float(cells[1]) == round(params / 1e6, 3)
        assert cells[2] == (f"{release.macs_g} / {big.macs_g}" if big else f"{release.macs_g}")
        assert float(cells[3]) == release.top1 and cells[4] == (f"{big.top1}" if big else "")


def test_dense_models_on_its_trunk():
    assert_semantic_fpn_trains_and_folds("fpn_inception_next_atto")
    assert {"retinanet_inception_next_tiny", "mask_rcnn_inception_next_small"} <= set(metaformer.list_models())
    detector = metaformer.create_model("retinanet_inception_next_tiny", min_size=128, max_size=160).eval()
    with torch.no_grad():
        found = detector([torch.rand(3, 120, 150)])[0]
    assert set(found) == {"boxes", "labels", "scores"}
